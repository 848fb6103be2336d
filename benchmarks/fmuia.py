"""FM_UIA 2026 on a challenge-layout set made from ../shared/data (+ synthetic): the nine numbers of four
predictors side by side, heatmap vs regression keypoints, and prediction throughput and memory.

One command runs every piece in order, each one's result cached in ``--work`` (``results.json``) so a
rerun resumes where the last one stopped:

1. ``root``: a challenge-layout root (``python -m sonofm.datasets.sources.fmuia_root``; BUSI, CCA, POCUS
   and synthetic subtasks of all four kinds), ``shards``: ``sonofm shards build --source fmuia:ROOT/train``;
2. ``trivial``: mean training box, mean training points (both normalised by the image size), the
   majority training class (probabilities: the training class frequencies) and a centred ellipse
   (half the image's width and height, the task's most common foreground class), written through
   :class:`~sonofm.evaluation.fmuia_predictions.PredictionWriter`;
3. ``random_and_smp``: ``sonofm finetune universal --config configs/finetune/fmuia.yaml
   encoder=random:convnextv2_atto`` (then ``sonofm predict``, ``sonofm score``: the README's commands)
   and, in this process, started at the same moment, a plain version of the challenge's baseline
   design written here: an EfficientNet-B4 encoder with an FPN (segmentation_models_pytorch, no
   pretrained weights), one head per subtask (segmentation: the FPN's segmentation head;
   classification: a linear layer on the pooled deepest feature; detection: the normalised box
   regressed from it; keypoints: the K normalised points), trained on the same training images
   until the finetuning command ends: the same wall time under the same load (on a shared machine a
   budget measured in one window and spent in another would not be the same compute). Its CPU
   seconds are recorded beside sonofm's. (``random`` and ``smp_fpn`` alone: one after the other,
   the baseline given ``--smp-budget`` seconds or the finetuning's wall time);
4. ``memory``: ``sonofm predict`` of ``random``'s run over ``val/`` and over a copy of its CSVs with every
   row repeated ``--repeat`` times (same image files, hard-linked), each in its own child process whose
   peak RSS is read from ``os.wait4``; images/s from the predictor's summary line;
5. ``kp_regression``: ``random``'s finetuning again with ``keypoint_head=regression`` (``random`` uses
   the default heatmap head): MRE per keypoint subtask after the same steps;
6. ``pretrain`` + ``pretrained``: ``sonofm pretrain`` (the quickstart recipe) on the shards' images, labels
   unused, then the same finetuning with ``encoder=<pretraining run dir>``.

Stages can run in separate instances sharing ``--work`` (``--only``); results.json is merged.

    python benchmarks/fmuia.py --work /tmp/fmuia_bench --n 60 --n-val 20     # the run in RESULTS_fmuia.md
    python benchmarks/fmuia.py --tiny --work /tmp/fmuia_tiny                 # smoke test: tiny sizes

It prints one table and writes ``results.json`` in the work folder (``--out`` copies it elsewhere).
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from sonofm.atomic_io import to_jsonable, write_json
from sonofm.datasets.sources.fmuia import Row, read_root
from sonofm.evaluation.fmuia_predictions import PredictionWriter
from sonofm.evaluation.fmuia_score import AVERAGES

REPO = Path(__file__).resolve().parents[1]
FINETUNE_RECIPE = "configs/finetune/fmuia.yaml"
PRETRAIN_RECIPE = "sonofm/configs/pretrain/quickstart.yaml"
STAGES = ("root", "shards", "trivial", "random_and_smp", "random", "smp_fpn", "memory", "kp_regression", "pretrain",
          "pretrained", "kp_only")
PREDICTORS = ("trivial", "smp_fpn", "random", "pretrained")
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


# ------------------------------------------------------------------------------------------ running commands


def _env() -> dict[str, str]:
    """The children import sonofm from this script's checkout (a snapshot of a commit runs that commit)."""
    path = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}


def _argv(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "sonofm", *args[1:]] if args[0] == "sonofm" else list(args)


class Child:
    """One command (``sonofm ...`` runs as ``python -m sonofm``) running in the repository root, its output
    into ``log``; :meth:`done` polls it and :meth:`result` gives its wall time, CPU time and peak RSS,
    read from ``os.wait4`` (the child's own figures, whatever else runs)."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.args, self.log = args, log
        log.parent.mkdir(parents=True, exist_ok=True)
        self.start = time.perf_counter()
        with open(log, "w") as fh:
            self.proc = subprocess.Popen(_argv(args), cwd=REPO, env=_env(), stdout=fh, stderr=subprocess.STDOUT)
        self.status: tuple[int, Any, float] | None = None

    def done(self) -> bool:
        if self.status is None:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                self.status = (status, usage, time.perf_counter() - self.start)
        return self.status is not None

    def result(self) -> dict[str, Any]:
        if self.status is None:
            _, status, usage = os.wait4(self.proc.pid, 0)
            self.status = (status, usage, time.perf_counter() - self.start)
        status, usage, wall = self.status
        code = os.waitstatus_to_exitcode(status)
        self.proc.returncode = code
        if code != 0:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{shlex.join(self.args)} failed (exit {code}); log {self.log}:\n{tail}")
        return {"command": shlex.join(self.args), "wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
                "peak_rss_mb": usage.ru_maxrss / 1024, "log": str(self.log)}


def run_cmd(args: list[str], log: Path) -> dict[str, Any]:
    """Run one command to its end (see :class:`Child`)."""
    return Child(args, log).result()


def run_progress(run_dir: Path, steps: int) -> float:
    """How far a finetuning run is (its last logged step / ``steps``), from its metrics.jsonl."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0.0
    last = 0
    for line in path.read_text().splitlines():
        try:
            last = max(last, int(json.loads(line).get("step", 0)))
        except (ValueError, AttributeError):
            continue
    return min(1.0, last / max(1, steps))


def predict_rate(log: Path) -> float:
    """images/s from ``sonofm predict``'s summary line."""
    m = re.search(r"\(([0-9.]+) images/s on", log.read_text(errors="replace"))
    if not m:
        raise RuntimeError(f"{log}: no 'images/s' summary line")
    return float(m.group(1))


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


# ------------------------------------------------------------------------------------------ reading images


def image_rgb(root: Path, row: Row) -> np.ndarray:
    with Image.open(root / row.image) as im:
        return np.asarray(im.convert("RGB"))


def image_hw(root: Path, row: Row) -> tuple[int, int]:
    with Image.open(root / row.image) as im:
        return im.height, im.width


# ------------------------------------------------------------------------------------------ trivial predictor


def trivial_predict(train: Path, val: Path, out: Path) -> dict[str, Any]:
    """Predict every row of ``val`` from training statistics alone (see the module docstring)."""
    table = read_root(train)
    boxes: dict[str, list[np.ndarray]] = {}
    points: dict[str, list[np.ndarray]] = {}
    labels: dict[str, Counter] = {}
    fg: dict[str, Counter] = {}
    for row in table.rows:
        if not row.labelled:
            continue
        if row.kind == "classification":
            labels.setdefault(row.task_id, Counter())[int(row.label)] += 1
            continue
        if row.kind == "segmentation":
            with Image.open(table.root / row.mask) as m:
                values, counts = np.unique(np.asarray(m), return_counts=True)
            fg.setdefault(row.task_id, Counter()).update({int(v): int(c) for v, c in zip(values, counts) if v})
            continue
        h, w = image_hw(table.root, row)
        scale = np.array([w, h], float)
        if row.kind == "detection":
            boxes.setdefault(row.task_id, []).append(np.asarray(row.box, float) / np.tile(scale, 2))
        elif row.kind == "keypoints":
            points.setdefault(row.task_id, []).append(np.asarray(row.points, float) / scale)
    mean_box = {t: np.mean(v, axis=0) for t, v in boxes.items()}
    mean_pts = {t: np.mean(v, axis=0) for t, v in points.items()}
    vtable = read_root(val, labels=False)
    with PredictionWriter(out) as writer:
        for row in vtable.rows:
            t = row.task_id
            if row.kind == "classification":
                counts = labels.get(t, Counter())
                probs = np.array([counts.get(c, 0) for c in range(row.num_classes)], float) + 1e-6
                writer.add_classification(row.image_path, t, probs / probs.sum())
                continue
            h, w = image_hw(vtable.root, row)
            scale = np.array([w, h], float)
            if row.kind == "segmentation":
                cls = fg[t].most_common(1)[0][0] if fg.get(t) else 1
                pil = Image.new("L", (w, h), 0)
                ImageDraw.Draw(pil).ellipse([w / 4, h / 4, 3 * w / 4, 3 * h / 4], fill=cls)
                writer.add_segmentation(row.mask_path, np.asarray(pil))
            elif row.kind == "detection":
                writer.add_detection(row.image_path, t, mean_box[t] * np.tile(scale, 2), (h, w))
            else:
                writer.add_keypoints(row.image_path, t, mean_pts[t] * scale, (h, w))
    return {"rows": len(vtable.rows)}


# ------------------------------------------------------------------------------------------ the smp FPN baseline


class BaselineFPN(torch.nn.Module):
    """EfficientNet-B4 + FPN from segmentation_models_pytorch, one head per subtask (the challenge's design)."""

    def __init__(self, tasks: dict[str, tuple[str, int]], encoder: str = "efficientnet-b4") -> None:
        super().__init__()
        import segmentation_models_pytorch as smp
        from segmentation_models_pytorch.base import SegmentationHead

        fpn = smp.FPN(encoder, encoder_weights=None, classes=1)
        self.encoder, self.decoder = fpn.encoder, fpn.decoder
        self._star = any(p.kind == p.VAR_POSITIONAL for p in inspect.signature(self.decoder.forward).parameters.values())
        deep = self.encoder.out_channels[-1]
        heads: dict[str, torch.nn.Module] = {}
        for task_id, (kind, k) in tasks.items():
            if kind == "segmentation":
                heads[task_id] = SegmentationHead(self.decoder.out_channels, k, kernel_size=1, upsampling=4)
            else:
                heads[task_id] = torch.nn.Linear(deep, {"classification": k, "detection": 4, "keypoints": 2 * k}[kind])
        self.heads = torch.nn.ModuleDict(heads)
        self.kinds = {t: kind for t, (kind, _) in tasks.items()}

    def forward(self, x: torch.Tensor, task_id: str) -> torch.Tensor:
        features = self.encoder(x)
        if self.kinds[task_id] == "segmentation":
            return self.heads[task_id](self.decoder(*features) if self._star else self.decoder(features))
        out = self.heads[task_id](features[-1].mean(dim=(2, 3)))
        return out if self.kinds[task_id] == "classification" else torch.sigmoid(out)  # normalised coordinates


def _to_input(rgb: np.ndarray, size: int) -> torch.Tensor:
    x = torch.from_numpy(np.array(rgb, copy=True)).permute(2, 0, 1).float()[None] / 255.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)[0]
    return (x - IMAGENET_MEAN) / IMAGENET_STD


def _load_training_set(train: Path, size: int) -> dict[str, dict[str, Any]]:
    """Every labelled training row resized to ``size`` x ``size`` (plain resize, as the baseline), with its
    target: a class index, a mask resized nearest, or normalised box / points."""
    table = read_root(train)
    data: dict[str, dict[str, Any]] = {}
    for row in table.rows:
        if not row.labelled:
            continue
        rgb = image_rgb(table.root, row)
        h, w = rgb.shape[:2]
        entry = data.setdefault(row.task_id, {"kind": row.kind, "k": row.num_classes, "x": [], "y": []})
        entry["x"].append(_to_input(rgb, size))
        if row.kind == "classification":
            entry["y"].append(torch.tensor(int(row.label)))
        elif row.kind == "segmentation":
            with Image.open(table.root / row.mask) as m:
                mask = torch.from_numpy(np.asarray(m).astype(np.int64))[None, None].float()
            entry["y"].append(F.interpolate(mask, size=(size, size), mode="nearest")[0, 0].long())
        elif row.kind == "detection":
            entry["y"].append(torch.tensor(row.box, dtype=torch.float32) / torch.tensor([w, h, w, h], dtype=torch.float32))
        else:
            entry["y"].append((torch.tensor(row.points, dtype=torch.float32) / torch.tensor([w, h])).reshape(-1))
    for entry in data.values():
        entry["x"], entry["y"] = torch.stack(entry["x"]), torch.stack(entry["y"])
    return data


def _loss(kind: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if kind in ("segmentation", "classification"):
        return F.cross_entropy(out, y)
    return F.smooth_l1_loss(out, y, beta=0.05)


def smp_train(train: Path, size: int, batch_size: int, lr: float, *, budget_s: float | None = None,
              until: Child | None = None, progress: Callable[[], float] | None = None, seed: int = 0,
              temperature: float = 0.5) -> tuple[BaselineFPN, dict[str, Any]]:
    """Train :class:`BaselineFPN` for ``budget_s`` seconds of wall time counted from the first image read,
    or, given ``until``, for as long as that command runs (started at the same moment: the same wall
    time under the same load), the schedule following ``progress`` (its fraction done); at least one step.

    Each step draws one subtask (probability proportional to its size to the power ``temperature``, as
    the sonofm recipe's ``data.temperature``) and a random batch of it; AdamW with a cosine schedule
    over the time budget; random horizontal flips for classification and segmentation only (a flip
    would swap the keypoints' order)."""
    from tqdm import tqdm

    start, cpu_start = time.perf_counter(), time.process_time()
    torch.manual_seed(seed)
    gen = np.random.default_rng(seed)
    data = _load_training_set(train, size)
    tasks = {t: (d["kind"], d["k"]) for t, d in sorted(data.items())}
    model = BaselineFPN(tasks)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    names = sorted(data)
    weights = np.array([len(data[t]["x"]) for t in names], float) ** temperature
    weights /= weights.sum()
    steps, losses = 0, []
    model.train()
    bar = tqdm(desc="smp FPN (wall-time budget)", unit="step")
    if (budget_s is None) == (until is None):
        raise ValueError("smp_train: give budget_s or until")

    def finished() -> bool:
        return until.done() if until is not None else time.perf_counter() - start >= float(budget_s)

    while steps == 0 or not finished():  # one step at least
        elapsed = time.perf_counter() - start
        frac = progress() if until is not None and progress is not None else elapsed / float(budget_s or 1)
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
        t = names[int(gen.choice(len(names), p=weights))]
        d = data[t]
        idx = torch.from_numpy(gen.choice(len(d["x"]), size=min(batch_size, len(d["x"])), replace=False))
        x, y = d["x"][idx], d["y"][idx]
        if d["kind"] in ("classification", "segmentation") and gen.random() < 0.5:
            x = x.flip(-1)
            y = y.flip(-1) if d["kind"] == "segmentation" else y
        if len(x) == 1 and d["kind"] != "segmentation":
            x, y = torch.cat([x, x]), torch.cat([y, y])  # batch norm needs two samples
        loss = _loss(d["kind"], model(x, t), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        steps += 1
        losses.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix(task=t, loss=f"{losses[-1]:.3f}")
    bar.close()
    return model, {"steps": steps, "train_wall_s": time.perf_counter() - start,
                   "budget": f"{budget_s} s" if budget_s is not None else f"while: {shlex.join(until.args)}",
                   "train_cpu_s": time.process_time() - cpu_start,
                   "final_loss_mean_last20": float(np.mean(losses[-20:])) if losses else None,
                   "tasks": len(names), "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


@torch.no_grad()
def smp_predict(model: BaselineFPN, val: Path, out: Path, size: int) -> dict[str, Any]:
    """Every row of ``val`` through the model, mapped back to original pixels, through the writer."""
    model.eval()
    table = read_root(val, labels=False)
    start = time.perf_counter()
    with PredictionWriter(out) as writer:
        for row in table.rows:
            rgb = image_rgb(table.root, row)
            h, w = rgb.shape[:2]
            out_t = model(_to_input(rgb, size)[None], row.task_id)
            if row.kind == "segmentation":
                logits = F.interpolate(out_t, size=(h, w), mode="bilinear", align_corners=False)
                writer.add_segmentation(row.mask_path, logits[0].argmax(0).numpy().astype(np.uint8))
            elif row.kind == "classification":
                writer.add_classification(row.image_path, row.task_id, torch.softmax(out_t[0], 0).numpy())
            elif row.kind == "detection":
                b = out_t[0].numpy() * np.array([w, h, w, h])
                box = [min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])]
                writer.add_detection(row.image_path, row.task_id, box, (h, w))
            else:
                writer.add_keypoints(row.image_path, row.task_id, out_t[0].numpy().reshape(-1, 2) * [w, h], (h, w))
    seconds = time.perf_counter() - start
    return {"rows": len(table.rows), "predict_s": seconds, "images_per_s": len(table.rows) / seconds}


# ------------------------------------------------------------------------------------------ the 10x root


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def repeated_root(val: Path, out: Path, repeat: int, task_names: set[str] | None = None) -> int:
    """A root whose CSVs repeat every row of ``val``'s ``repeat`` times (only rows whose ``task_name`` is in
    ``task_names`` when given), over ``val``'s files (hard links, or copies across file systems: the
    adapter refuses symlinks that leave the root); returns the rows."""
    import csv

    if out.exists():
        shutil.rmtree(out)
    (out / "csv_files").mkdir(parents=True)
    for child in val.iterdir():
        if child.name != "csv_files":
            shutil.copytree(child, out / child.name, copy_function=_link_or_copy)
    n = 0
    for path in sorted((val / "csv_files").glob("*.csv")):
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            fields, rows = reader.fieldnames, list(reader)
        rows = [r for r in rows if task_names is None or r.get("task_name") in task_names]
        if not rows:
            continue
        with open(out / "csv_files" / path.name, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            for _ in range(repeat):
                writer.writerows(rows)
        n += len(rows) * repeat
    return n


# ------------------------------------------------------------------------------------------ stages


class Bench:
    """The stages, each writing its entry into ``results.json`` in the work folder as it finishes."""

    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.work = Path(a.work).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.path = self.work / "results.json"
        self.results: dict[str, Any] = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.root = self.work / "root"
        self.shards = self.work / "S"
        self.size_args = ([f"data.img_size={a.img_size}", f"data.batch_size={a.batch_size}", "eval_every=0",
                           "data.num_workers=0", f"checkpoint.every={a.steps}"] if a.tiny else [])

    @property
    def warmup_args(self) -> list[str]:
        return [] if self.a.warmup_steps is None else [f"optim.warmup_steps={self.a.warmup_steps}"]

    def save(self) -> None:
        """Merge into the file: two instances of the script (``--only``) may share a work folder."""
        current = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.results = {**current, **self.results}
        write_json(self.path, to_jsonable(self.results))

    def stage(self, name: str) -> None:
        key = "smp_fpn" if name == "random_and_smp" else name  # that stage also stores 'random' itself
        if key in self.results and (name != "random_and_smp" or "random" in self.results):
            print(f"[{name}] cached in {self.path}")
            return
        print(f"[{name}] load average before: {load_average()}", flush=True)
        entry = getattr(self, f"_{name}")()
        entry["load_average_after"] = load_average()
        self.results[key] = entry
        self.save()

    def _score(self, pred: Path, root: Path | None = None) -> dict[str, Any]:
        """``sonofm score PRED --root ROOT/val`` (its function, in this process: the same scorer and files)."""
        from sonofm.evaluation.fmuia_score import score_to_files

        val = (root or self.root) / "val"
        scores, _ = score_to_files(pred, val, progress=False)
        return {"score_command": f"sonofm score {pred} --root {val}", "averages": scores["averages"],
                "subtasks": scores["subtasks"]}

    def _root(self) -> dict[str, Any]:
        if self.root.exists():
            shutil.rmtree(self.root)
        from sonofm.paths import shared_data_dir

        shared = Path(self.a.shared) if self.a.shared else shared_data_dir()
        if not shared.is_dir() and not self.a.tiny:
            raise SystemExit(f"{shared}: no shared data (BUSI, CCA, POCUS); give --shared or $SONOFM_SHARED_DATA")
        from sonofm.datasets.sources import fmuia_root

        argv = [str(self.root), "--n", str(self.a.n), "--n-val", str(self.a.n_val), "--seed", "0", "--shared", str(shared)]
        argv += ["--sources", self.a.sources] if self.a.sources else []
        start = time.perf_counter()
        fmuia_root.main(argv)  # python -m sonofm.datasets.sources.fmuia_root ..., in this process
        rep: dict[str, Any] = {"command": shlex.join(["python", "-m", "sonofm.datasets.sources.fmuia_root", *argv]),
                               "wall_s": time.perf_counter() - start}
        rep["tasks"] = {t: {"kind": k.kind, "num_classes": k.num_classes} for t, k in read_root(self.root / "train").tasks.items()}
        rep["train_rows"] = len(read_root(self.root / "train").rows)
        rep["val_rows"] = len(read_root(self.root / "val").rows)
        return rep

    def _shards(self) -> dict[str, Any]:
        if self.shards.exists():
            shutil.rmtree(self.shards)
        return run_cmd(["sonofm", "shards", "build", "--source", f"fmuia:{self.root}/train", "--out", str(self.shards)],
                       self.work / "logs" / "shards.log")

    def _trivial(self) -> dict[str, Any]:
        pred = self.work / "P_trivial"
        shutil.rmtree(pred, ignore_errors=True)
        start = time.perf_counter()
        info = trivial_predict(self.root / "train", self.root / "val", pred)
        info["predict_s"] = time.perf_counter() - start
        return {**info, **self._score(pred)}

    def _finetune_args(self, name: str, encoder: str, extra: list[str]) -> list[str]:
        return ["sonofm", "finetune", "universal", "--config", FINETUNE_RECIPE, f"encoder={encoder}",
                f"datasets=[{self.shards}]", f"out_dir={self.work / f'R_{name}'}", f"steps={self.a.steps}", *extra,
                *self.size_args, *self.warmup_args]

    def _finetune(self, name: str, encoder: str, extra: list[str]) -> dict[str, Any]:
        shutil.rmtree(self.work / f"R_{name}", ignore_errors=True)
        ft = run_cmd(self._finetune_args(name, encoder, extra), self.work / "logs" / f"finetune_{name}.log")
        return self._predict_and_score(name, ft)

    def _predict_and_score(self, name: str, ft: dict[str, Any], root: Path | None = None) -> dict[str, Any]:
        run_dir, pred, root = self.work / f"R_{name}", self.work / f"P_{name}", root or self.root
        shutil.rmtree(pred, ignore_errors=True)
        pr = run_cmd(["sonofm", "predict", str(run_dir), "--source", f"fmuia:{root}/val", "--out", str(pred)],
                     self.work / "logs" / f"predict_{name}.log")
        return {"finetune": ft, "predict": {**pr, "images_per_s": predict_rate(Path(pr["log"]))},
                **self._score(pred, root)}

    def _kp_only(self) -> dict[str, Any]:
        """Heatmap and regression heads on the keypoint subtasks alone (every step a keypoint step), the two
        finetunings side by side, the same steps; predicted and scored on the keypoint rows of val/."""
        kp_root, shards = self.work / "root_kp", self.work / "S_kp"
        for split in ("train", "val"):
            repeated_root(self.root / split, kp_root / split, 1, task_names={"Regression"})
        shutil.rmtree(shards, ignore_errors=True)
        build = run_cmd(["sonofm", "shards", "build", "--source", f"fmuia:{kp_root}/train", "--out", str(shards)],
                        self.work / "logs" / "shards_kp.log")
        children = {}
        for head in ("heatmap", "regression"):
            name = f"kp_only_{head}"
            shutil.rmtree(self.work / f"R_{name}", ignore_errors=True)
            args = self._finetune_args(name, "random:convnextv2_atto", [f"keypoint_head={head}"])
            args = [a if not a.startswith("datasets=") else f"datasets=[{shards}]" for a in args]
            children[head] = Child(args, self.work / "logs" / f"finetune_{name}.log")
        out: dict[str, Any] = {"shards": build}
        for head, child in children.items():
            out[head] = self._predict_and_score(f"kp_only_{head}", child.result(), kp_root)
        return out

    def _random(self) -> dict[str, Any]:
        return self._finetune("random", "random:convnextv2_atto", self._main_head())

    def _random_and_smp(self) -> dict[str, Any]:
        """``random``'s finetuning and the smp baseline's training side by side, started together: the smp
        model trains until the finetuning command ends (the same wall time under the same load)."""
        name = "random"
        run_dir = self.work / f"R_{name}"
        shutil.rmtree(run_dir, ignore_errors=True)
        child = Child(self._finetune_args(name, "random:convnextv2_atto", self._main_head()), self.work / "logs" / f"finetune_{name}.log")
        model, info = smp_train(self.root / "train", self.a.img_size, self.a.batch_size, self.a.smp_lr, until=child,
                                progress=lambda: run_progress(run_dir, self.a.steps))
        ft = child.result()
        info["finetune_wall_s"] = ft["wall_s"]
        self.results["random"] = self._predict_and_score(name, ft)
        self.results["random"]["load_average_after"] = load_average()
        self.save()
        return self._smp_predict_and_score(model, info)

    def _main_head(self) -> list[str]:
        """The keypoint head of the ``random`` and ``pretrained`` columns, named on the command line so
        that the table does not move with the recipe's default."""
        return [f"keypoint_head={self.a.keypoint_head}"]

    def _kp_regression(self) -> dict[str, Any]:
        return self._finetune("kp_regression", "random:convnextv2_atto", ["keypoint_head=regression"])

    def _pretrain(self) -> dict[str, Any]:
        run_dir = self.work / "pretrain"
        shutil.rmtree(run_dir, ignore_errors=True)
        extra = ["data.img_size=64", "data.batch_size=4", "checkpoint.every=2"] if self.a.tiny else []
        return run_cmd(["sonofm", "pretrain", "--config", PRETRAIN_RECIPE, f"data.shards=[{self.shards}]",
                        f"run_dir={run_dir}", f"steps={self.a.pretrain_steps}", *extra],
                       self.work / "logs" / "pretrain.log")

    def _pretrained(self) -> dict[str, Any]:
        return self._finetune("pretrained", str(self.work / "pretrain"), self._main_head())

    def _smp_fpn(self) -> dict[str, Any]:
        if not self.a.smp_budget:  # another instance of the script may have run 'random'
            self.results = {**json.loads(self.path.read_text()), **self.results}
        budget = self.a.smp_budget or float(self.results["random"]["finetune"]["wall_s"])
        model, info = smp_train(self.root / "train", self.a.img_size, self.a.batch_size, self.a.smp_lr, budget_s=budget)
        return self._smp_predict_and_score(model, info)

    def _smp_predict_and_score(self, model: BaselineFPN, info: dict[str, Any]) -> dict[str, Any]:
        pred = self.work / "P_smp_fpn"
        shutil.rmtree(pred, ignore_errors=True)
        info.update(smp_predict(model, self.root / "val", pred, self.a.img_size))
        return {**info, **self._score(pred)}

    def _memory(self) -> dict[str, Any]:
        run_dir = self.work / "R_random"
        big = self.work / f"root_val_x{self.a.repeat}"
        n_big = repeated_root(self.root / "val", big, self.a.repeat)
        out: dict[str, Any] = {"repeat": self.a.repeat, "runs": {}}
        for label, root in (("1x", self.root / "val"), (f"{self.a.repeat}x", big)):
            pred = self.work / f"P_memory_{label}"
            shutil.rmtree(pred, ignore_errors=True)
            rep = run_cmd(["sonofm", "predict", str(run_dir), "--source", f"fmuia:{root}", "--out", str(pred)],
                          self.work / "logs" / f"predict_memory_{label}.log")
            text = Path(rep["log"]).read_text(errors="replace")
            m = re.search(r"predicted (\d+) images", text)
            rep.update(images=int(m.group(1)) if m else None, images_per_s=predict_rate(Path(rep["log"])))
            expected = n_big if root == big else len(read_root(root, labels=False).rows)
            if rep["images"] != expected:
                raise RuntimeError(f"{rep['log']}: predicted {rep['images']} of {expected} rows of {root}")
            out["runs"][label] = rep
        runs = list(out["runs"].values())
        out["rows_10x_root"] = n_big
        out["peak_rss_ratio"] = runs[1]["peak_rss_mb"] / runs[0]["peak_rss_mb"]
        return out


# ------------------------------------------------------------------------------------------ report


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def table(results: dict[str, Any]) -> str:
    """The nine averages of every predictor measured, one column each (markdown)."""
    cols = [p for p in PREDICTORS if p in results]
    lines = ["| average | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for key, _, _, label in AVERAGES:
        lines.append(f"| {label} | " + " | ".join(_fmt(results[c]["averages"][key]) for c in cols) + " |")
    main_metric = {"segmentation": "dice", "classification": "accuracy", "detection": "iou", "keypoints": "mre"}
    if cols:
        lines += ["", "| subtask (metric) | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
        for t, s in sorted(results[cols[0]]["subtasks"].items(), key=lambda kv: (kv[1]["kind"], kv[0])):
            metric = main_metric[s["kind"]]
            lines.append(f"| {t} ({metric}, n={s['n']}) | "
                         + " | ".join(_fmt(results[c]["subtasks"].get(t, {}).get(metric)) for c in cols) + " |")
    if "kp_regression" in results and "random" in results:
        lines.append("")
        lines.append("| keypoints head (random:convnextv2_atto) | " + " | ".join(
            t for t, s in sorted(results["random"]["subtasks"].items()) if s["kind"] == "keypoints") + " | reg MRE (px) |")
        kp = [t for t, s in sorted(results["random"]["subtasks"].items()) if s["kind"] == "keypoints"]
        lines.append("|---|" + "---:|" * (len(kp) + 1))
        for name, label in (("random", "heatmap (default)"), ("kp_regression", "regression")):
            s = results[name]["subtasks"]
            lines.append(f"| {label} | " + " | ".join(_fmt(s[t]["mre"]) for t in kp)
                         + f" | {_fmt(results[name]['averages']['reg_mre'])} |")
    if "kp_only" in results:
        ko = results["kp_only"]
        kp = sorted(ko["heatmap"]["subtasks"])
        lines += ["", "| keypoints only, random:convnextv2_atto | " + " | ".join(kp) + " | reg MRE (px) |",
                  "|---|" + "---:|" * (len(kp) + 1)]
        for head in ("heatmap", "regression"):
            s = ko[head]["subtasks"]
            lines.append(f"| {head} | " + " | ".join(_fmt(s[t]["mre"]) for t in kp)
                         + f" | {_fmt(ko[head]['averages']['reg_mre'])} |")
    if "memory" in results:
        m = results["memory"]
        lines.append("")
        lines.append("| predict | images | images/s | peak RSS (MB) |")
        lines.append("|---|---:|---:|---:|")
        for label, r in m["runs"].items():
            lines.append(f"| {label} | {r['images']} | {r['images_per_s']:.1f} | {r['peak_rss_mb']:.0f} |")
        lines.append(f"peak RSS ratio {list(m['runs'])[1]} / 1x: {m['peak_rss_ratio']:.3f}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--work", default="runs/fmuia_bench", help="work folder: root, shards, runs, results.json")
    ap.add_argument("--n", type=int, default=60, help="training images per subtask")
    ap.add_argument("--n-val", type=int, default=20, help="validation images per subtask")
    ap.add_argument("--steps", type=int, default=600, help="finetuning steps (the CPU recipe's 600)")
    ap.add_argument("--warmup-steps", type=int, default=None,
                    help="finetuning warm-up steps (default: the recipe's; scale it with a shortened --steps)")
    ap.add_argument("--pretrain-steps", type=int, default=300, help="pretraining steps (the quickstart recipe's 300)")
    ap.add_argument("--img-size", type=int, default=128, help="input side of the smp baseline (the recipe's data.img_size)")
    ap.add_argument("--batch-size", type=int, default=16, help="batch of the smp baseline (the recipe's data.batch_size)")
    ap.add_argument("--smp-lr", type=float, default=1e-3)
    ap.add_argument("--smp-budget", type=float, default=None,
                    help="seconds of training for the smp baseline (default: the wall time of the 'random' finetuning)")
    ap.add_argument("--sources", default=None, help="comma list of the root's sources (default: busi,cca,pocus,synthetic)")
    ap.add_argument("--shared", default=None, help="real-data folder (default $SONOFM_SHARED_DATA or ../shared/data)")
    ap.add_argument("--repeat", type=int, default=10, help="the memory check's larger root repeats val's rows this often")
    ap.add_argument("--only", default=",".join(STAGES), help=f"comma list of stages to run, of {', '.join(STAGES)}")
    ap.add_argument("--keypoint-head", default="heatmap", choices=("heatmap", "regression"),
                    help="keypoint head of the random and pretrained columns (RESULTS_fmuia.md's table: heatmap; "
                         "kp_regression and kp_only compare the two)")
    ap.add_argument("--tiny", action="store_true", help="smoke test: 4 images per task, 2 steps, 64 px")
    ap.add_argument("--out", default=None, help="also copy results.json here")
    a = ap.parse_args(argv)
    if a.tiny:
        a.n, a.n_val, a.steps, a.pretrain_steps, a.img_size, a.batch_size, a.repeat = 4, 2, 2, 2, 64, 2, 3
    return a


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse_args(argv)
    bench = Bench(a)
    bench.results["settings"] = {"n": a.n, "n_val": a.n_val, "steps": a.steps, "tiny": a.tiny,
                                 "pretrain_steps": a.pretrain_steps, "img_size": a.img_size,
                                 "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    wanted = [s for s in a.only.split(",") if s]
    unknown = sorted(set(wanted) - set(STAGES))
    if unknown:
        raise SystemExit(f"unknown stage(s) {unknown}; stages: {', '.join(STAGES)}")
    for name in STAGES:
        if name in wanted:
            bench.stage(name)
    print(table(bench.results))
    if a.out:
        write_json(a.out, to_jsonable(bench.results))
    return bench.results


if __name__ == "__main__":
    main()
