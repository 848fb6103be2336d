"""``sonofm quickstart``: the whole pipeline in one command, the first thing a newcomer runs.

Stages, each announced by a header line with the elapsed time, everything written under ``out``:

1. data: the built-in synthetic corpus (``out/corpus``), or with ``data=PATH`` the real datasets
   found there in known layouts (BUSI, CCA, POCUS, HC18);
2. shards (``out/shards``): train / val / test by group (patient, recording, video);
3. pretraining (``out/pretrain``) with ``configs/pretrain/quickstart.yaml`` on the train split only;
4. probes (``out/probe/<task>/<encoder>``): linear and kNN on frozen features, group-aware k-fold
   cross-validation over the held-out *test* split, for the pretrained and a random encoder. The
   test split is used because no group in it was seen by the pretraining, whose hierarchical
   classifier did train on the train split's diagnostic labels;
5. segmentation (``out/seg/<task>/<encoder>``): UPerNet finetuned on the train split's masks, Dice
   and HD95 on the test split's images that have a foreground, at their stored size;
6. export (``out/export``): the backbone in timm's format, its model card showing ``results.json``;
7. summary: ``comparison.png`` (pretrained vs random), the table, ``summary.json``.

Re-running with the same ``out`` reuses what is finished: a complete corpus is kept, up-to-date
shards are skipped by the shard builder, pretraining continues from its last checkpoint (``--resume
auto``) and probe / segmentation results are reused while their encoder weights and settings are
unchanged. A pretraining folder made with another recipe is an error, never silently mixed.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from sonofm.atomic_io import save_figure, write_json

__all__ = ["Plan", "FULL", "SMALL", "SPLITS", "find_datasets", "run_quickstart"]

RECIPE = "configs/pretrain/quickstart.yaml"
#: Split fractions of every quickstart shard set (val is kept for ``sonofm finetune`` users).
SPLITS: dict[str, float] = {"train": 0.6, "val": 0.1, "test": 0.3}
RANDOM_SPEC = "random:convnextv2_atto"
SEED = 0


@dataclass(frozen=True)
class Plan:
    """Sizes of one quickstart run: the full default, or the reduced ``--small`` one."""

    name: str
    n_images: int  # synthetic corpus
    corpus_size: int  # synthetic image side (px)
    max_side: int  # stored image side in the shards (real data are resized to it)
    pretrain: dict[str, Any]  # overrides of the quickstart recipe
    eval_size: int  # downstream input size (letterboxed)
    probe_folds: int
    seg_steps: int
    seg_batch: int
    seg_lr: float
    seg_channels: int
    n_overlays: int
    pocus_options: dict[str, Any] = field(default_factory=dict)


FULL = Plan(
    name="full", n_images=1000, corpus_size=128, max_side=128,
    pretrain={},  # the recipe as it is
    eval_size=128, probe_folds=5, seg_steps=150, seg_batch=8, seg_lr=1e-3, seg_channels=64, n_overlays=4,
    pocus_options={"frames_per_video": 4},
)
SMALL = Plan(
    name="small", n_images=120, corpus_size=64, max_side=64,
    pretrain={"steps": 40, "data.img_size": 64, "data.batch_size": 8, "data.num_workers": 1,
              "data.shuffle_buffer": 64, "decoder.dim": 32, "optim.warmup_steps": 5, "logging.log_every": 5,
              "logging.sample_every": 20, "checkpoint.every": 20},
    eval_size=64, probe_folds=3, seg_steps=12, seg_batch=4, seg_lr=1e-3, seg_channels=32, n_overlays=2,
    pocus_options={"frames_per_video": 2, "decode_limit": 24},
)


# ------------------------------------------------------------------------------------------ helpers


class _Stages:
    """Header lines ``[quickstart 3/7] pretraining ... (elapsed 0:41)``."""

    def __init__(self, total: int) -> None:
        self.t0 = time.perf_counter()
        self.total = total
        self.i = 0

    def elapsed(self) -> str:
        s = int(time.perf_counter() - self.t0)
        return f"{s // 60}:{s % 60:02d}"

    def __call__(self, title: str) -> None:
        self.i += 1
        print(f"\n[quickstart {self.i}/{self.total}] {title} (elapsed {self.elapsed()})", flush=True)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _reuse(folder: Path, report_name: str, key: dict[str, Any], compute: Callable[[], dict[str, Any]]) -> dict:
    """``folder/report_name`` when ``folder/stamp.json`` equals ``key`` (same inputs), else ``compute()``."""
    stamp, report = folder / "stamp.json", folder / report_name
    key = json.loads(json.dumps(key, default=str))
    if _read_json(stamp) == key and report.is_file():
        data = _read_json(report)
        if isinstance(data, dict):
            print(f"  reusing {report} (same encoder weights and settings)")
            return data
    stamp.unlink(missing_ok=True)
    data = compute()
    write_json(stamp, key)
    return data


def _weights_id(spec: str) -> dict[str, Any]:
    """What identifies an encoder's weights: the spec, plus the latest checkpoint's name and mtime, and the
    input normalisation downstream models apply (results made before it existed are not reused)."""
    from sonofm.models.input_norm import INPUT_MEAN, INPUT_STD

    if spec.startswith("random:"):
        return {"spec": spec, "input_norm": [INPUT_MEAN, INPUT_STD]}
    from sonofm.checkpoints import MODEL_FILE, latest_checkpoint

    ckpt = latest_checkpoint(spec)
    st = (ckpt / MODEL_FILE).stat() if ckpt is not None else None
    return {"spec": spec, "checkpoint": ckpt.name if ckpt else None, "mtime": st.st_mtime_ns if st else None,
            "input_norm": [INPUT_MEAN, INPUT_STD]}


def _bar(it: Iterable[Any], total: int, desc: str) -> Iterator[Any]:
    from tqdm.auto import tqdm

    with tqdm(total=total, desc=desc, dynamic_ncols=True, leave=False) as bar:
        for x in it:
            yield x
            bar.update(1)


# ------------------------------------------------------------------------------------- data stage


@dataclass
class Task:
    """A downstream task on one shard set: a probe (``label_key``) or a segmentation (masks)."""

    name: str  # short display name ("synthetic", "BUSI", ...)
    shards: Path
    kind: str  # "probe" | "seg"
    group_desc: str  # what a group is ("patient", "image", "recording", "video")


#: Known real layouts: adapter -> (display name, what its adapter needs, probe?, seg?, group unit).
KNOWN: dict[str, tuple[str, str, bool, bool, str]] = {
    "busi": ("BUSI", "benign/ malignant/ normal/ (or Dataset_BUSI_with_GT/ holding them)", True, True, "image"),
    "cca": ("CCA", "'US images/' and 'Expert mask images/' (or 'Common Carotid Artery Ultrasound Images/')",
            False, True, "recording"),
    "pocus": ("POCUS", "pocus_videos/ or pocus_images/", True, False, "video"),
    "hc18": ("HC18", "training_set/ (with training_set_pixel_size_and_HC.csv) or test_set/", False, True, "subject"),
}


def _candidates(root: Path, depth: int = 2) -> list[Path]:
    """``root`` and its sub-folders down to ``depth``, shallowest first (hidden folders skipped)."""
    out, level = [root], [root]
    for _ in range(depth):
        nxt = []
        for d in level:
            try:
                nxt.extend(sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")))
            except OSError:
                continue
        out.extend(nxt)
        level = nxt
    return out


def find_datasets(path: str | os.PathLike) -> dict[str, Path]:
    """Adapter name -> dataset root for every known layout under ``path`` (itself or 1-2 levels down).

    Raises ``FileNotFoundError`` listing what was looked for when nothing known is found.
    """
    from sonofm.datasets.adapters import AdapterError, get_adapter

    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"--data {root}: not a folder")
    found: dict[str, Path] = {}
    for cand in _candidates(root):
        for name in KNOWN:
            if name in found:
                continue
            try:
                adapter = get_adapter(name, cand)
                if adapter.items():
                    found[name] = cand
            except (AdapterError, OSError, ValueError):
                continue
    if not found:
        looked = "; ".join(f"{name} ({KNOWN[name][0]}): {KNOWN[name][1]}" for name in KNOWN)
        raise FileNotFoundError(
            f"--data {root}: no known dataset layout found in it or in its sub-folders (2 levels). Looked for {looked}. "
            "Other collections: build shards with `sonofm shards build --source folder:DIR` or `csv:FILE` "
            "(see README) and pretrain with `sonofm pretrain`."
        )
    return found


def _synthetic_corpus(out: Path, plan: Plan, workers: int) -> Path:
    """Generate (or keep) ``out/corpus``; a stamp records the parameters of a complete corpus."""
    from sonofm.datasets.synthetic import generate_corpus

    corpus = out / "corpus"
    stamp = out / ".quickstart" / "corpus.json"
    key = {"n": plan.n_images, "size": plan.corpus_size, "seed": SEED}
    if _read_json(stamp) == key and (corpus / "manifest.csv").is_file():
        print(f"  keeping the complete corpus in {corpus} ({plan.n_images} images of {plan.corpus_size} px)")
        return corpus
    stamp.unlink(missing_ok=True)
    print(f"  generating {plan.n_images} synthetic B-mode images of {plan.corpus_size} px "
          f"(6 sources, 3 organs, labels normal/cyst/benign/malignant, lesion masks) into {corpus}")
    generate_corpus(corpus, n=plan.n_images, seed=SEED, size=plan.corpus_size, workers=workers)
    write_json(stamp, key)
    return corpus


def _build(specs: list[Any], out_dir: Path, plan: Plan, workers: int) -> dict[str, Any]:
    from sonofm.datasets.build import build_shards

    # small shards: the stream reads shard after shard, so many small ones (from every source) mix better
    # in its shuffle buffer than one big shard per source, and the pretraining classifier sees mixed batches
    return build_shards(specs, out_dir, max_side=plan.max_side, samples_per_shard=32, split_fractions=SPLITS,
                        workers=workers, dedup=True, progress=True)


def _data_stage(out: Path, data: str | None, plan: Plan, workers: int, stage: _Stages) -> tuple[list[Path], list[Task], str]:
    """Shard sets to pretrain on, the downstream tasks, and a one-line description of the data."""
    from sonofm.datasets.build import SourceSpec

    if data is None:
        stage("synthetic corpus")
        corpus = _synthetic_corpus(out, plan, workers)
        stage(f"shards: train/val/test = {SPLITS['train']}/{SPLITS['val']}/{SPLITS['test']} by patient")
        shards = out / "shards"
        _build([SourceSpec(adapter="synthetic", root=corpus)], shards, plan, workers)
        tasks = [Task("synthetic", shards, "probe", "patient"), Task("synthetic lesion", shards, "seg", "patient")]
        return [shards], tasks, f"synthetic corpus ({plan.n_images} images of {plan.corpus_size} px)"

    stage(f"looking for known dataset layouts in {data}")
    found = find_datasets(data)
    for name, root in found.items():
        print(f"  found {KNOWN[name][0]} at {root}")
    stage(f"shards: train/val/test = {SPLITS['train']}/{SPLITS['val']}/{SPLITS['test']} by group, "
          f"stored at most {plan.max_side} px")
    sets, tasks = [], []
    for name, root in found.items():
        options = dict(plan.pocus_options) if name == "pocus" else {}
        shards = out / "shards" / name
        _build([SourceSpec(adapter=name, root=root, options=options)], shards, plan, workers)
        sets.append(shards)
        display, _, probe, seg, unit = KNOWN[name]
        if probe:
            tasks.append(Task(display, shards, "probe", unit))
        if seg:
            tasks.append(Task(display, shards, "seg", unit))
    return sets, tasks, "real data: " + ", ".join(KNOWN[n][0] for n in found)


# ------------------------------------------------------------------------------------ pretraining


def _pretrain_config(out: Path, shard_sets: list[Path], plan: Plan) -> Any:
    from sonofm.config import PretrainConfig, load_config

    cfg = load_config(PretrainConfig, RECIPE, [f"{k}={v}" for k, v in plan.pretrain.items()])
    cfg.run_dir = str(out / "pretrain")
    cfg.data.shards = [str(p) for p in shard_sets]
    cfg.data.split = "train"
    return cfg


def _config_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _config_diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def _check_same_recipe(cfg: Any, ignore: tuple[str, ...] = ()) -> None:
    """Refuse to resume a run folder made with another recipe (e.g. ``--small`` then the full run)."""
    from sonofm.checkpoints import latest_checkpoint
    from sonofm.config import PretrainConfig, load_config

    run_dir = Path(cfg.run_dir)
    saved = run_dir / "config.yaml"
    if latest_checkpoint(run_dir) is None or not saved.is_file():
        return
    old = asdict(load_config(PretrainConfig, saved))
    new = asdict(cfg)
    diff = [k for k in _config_diff(old, new) if k not in ("logging.progress", *ignore)]
    if diff:
        raise ValueError(
            f"{run_dir} holds a pretraining run with another recipe (differs in {', '.join(diff)}); "
            "pass another --out (e.g. --out runs/quickstart_small for --small) or remove that folder"
        )


def _pretrain_stage(cfg: Any, stage: _Stages) -> Path:
    from sonofm.checkpoints import latest_checkpoint
    from sonofm.pretrain.engine import run_pretraining

    _check_same_recipe(cfg)
    stage(f"pretraining {cfg.model.name} on the train split: {cfg.steps} steps of {cfg.data.batch_size} images "
          f"at {cfg.data.img_size} px, mask ratio {cfg.masking.ratio}, hierarchical classifier weight "
          f"{cfg.hierarchy.weight} (resumes from {cfg.run_dir}/checkpoints when present)")
    import torch

    threads = torch.get_num_threads()
    try:
        run_dir = run_pretraining(cfg, resume="auto")
    finally:  # the engine sizes its intra-op threads for its loader workers; the next stages use ours
        torch.set_num_threads(threads)
    if latest_checkpoint(run_dir) is None:
        raise RuntimeError(f"{run_dir}: pretraining finished without a checkpoint")
    return Path(run_dir)


# ------------------------------------------------------------------------------ downstream stages


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name.lower())


def _split(shards: Path, split: str, binary_mask: bool = False) -> list[Any]:
    """Samples of one split of a shard set; none (not an error) when the split received no group."""
    from sonofm.datasets.stream import StreamError
    from sonofm.finetune.data import samples_from_shards

    try:
        return samples_from_shards(shards, split, binary_mask)
    except StreamError:
        return []
    except ValueError as e:
        if "no samples of split" in str(e):
            return []
        raise


def _probe(task: Task, encoders: dict[str, str], out: Path, plan: Plan) -> dict[str, Any]:
    """Linear + kNN probes of every encoder on the task's test split; returns reports by encoder."""
    from sonofm.evaluation.probe import run_probe
    from sonofm.finetune.data import iterate_batches

    samples = [s for s in _split(task.shards, "test") if s.meta.get("label") is not None]
    groups = {s.group for s in samples}
    classes = sorted({str(s.meta["label"]) for s in samples})
    folds = min(plan.probe_folds, len(groups))
    if folds < 2 or len(classes) < 2:
        print(f"  {task.name}: skipped ({len(samples)} labelled test images, {len(groups)} {task.group_desc}s, "
              f"{len(classes)} classes: too few for cross-validation)")
        return {}
    print(f"  {task.name}: {len(samples)} held-out test images of {len(groups)} {task.group_desc}s, "
          f"classes {classes}, {folds}-fold CV by {task.group_desc}")
    reports = {}
    n_batches = math.ceil(len(samples) / 32)
    for enc, spec in encoders.items():
        folder = out / "probe" / _safe(task.name) / enc
        key = {"weights": _weights_id(spec), "size": plan.eval_size, "folds": folds, "n": len(samples),
               "shards": str(task.shards), "seed": SEED}

        def compute(spec: str = spec, folder: Path = folder, enc: str = enc) -> dict[str, Any]:
            batches = _bar(iterate_batches(samples, plan.eval_size, 32), n_batches, f"features {enc}")
            return run_probe(spec, batches, folder, classes=classes, folds=folds, seed=SEED,
                             data_id=f"{task.shards}:test:{plan.eval_size}", print_table=False)

        reports[enc] = _reuse(folder, "probe.json", key, compute)
    return reports


def _seg(task: Task, encoders: dict[str, str], out: Path, plan: Plan) -> dict[str, Any]:
    """UPerNet finetuning per encoder on the train split; metrics on test images with a foreground."""
    from sonofm.finetune.seg_train import run_seg_finetune

    train = [s for s in _split(task.shards, "train", binary_mask=True) if s.mask is not None]
    test = [s for s in _split(task.shards, "test", binary_mask=True) if s.mask is not None and s.mask.any()]
    if not train or not test:
        print(f"  {task.name}: skipped ({len(train)} train images with masks, {len(test)} test images with a "
              "foreground)")
        return {}
    mm = all(s.meta.get("pixel_spacing_mm") for s in test)
    print(f"  {task.name}: train on {len(train)} images ({len({s.group for s in train})} {task.group_desc}s), "
          f"evaluate on {len(test)} held-out test images with a foreground, at their stored size; "
          f"{plan.seg_steps} steps of {plan.seg_batch} at {plan.eval_size} px; HD95 in {'mm' if mm else 'px'}")
    reports = {}
    for enc, spec in encoders.items():
        folder = out / "seg" / _safe(task.name) / enc
        key = {"weights": _weights_id(spec), "size": plan.eval_size, "steps": plan.seg_steps,
               "batch": plan.seg_batch, "lr": plan.seg_lr, "channels": plan.seg_channels,
               "n_train": len(train), "n_test": len(test), "shards": str(task.shards), "seed": SEED,
               "loss": "ce + per-image soft dice"}

        def compute(spec: str = spec, folder: Path = folder, enc: str = enc) -> dict[str, Any]:
            return run_seg_finetune(
                spec, train, test, folder, img_size=plan.eval_size, steps=plan.seg_steps, batch_size=plan.seg_batch,
                lr=plan.seg_lr, warmup_steps=max(1, plan.seg_steps // 10), eval_every=0,
                decoder_channels=plan.seg_channels, seed=SEED, n_overlays=plan.n_overlays, progress=f"seg {enc}",
            )

        rep = _reuse(folder, "report.json", key, compute)
        rep["hd95_unit"] = "mm" if mm else "px"
        reports[enc] = rep
        f = rep["final"]
        print(f"    {enc}: Dice {f['dice']:.3f}  HD95 {_hd95(rep):.1f} {rep['hd95_unit']}  "
              f"(loss {rep['first_loss']:.3f} -> {rep['last_loss']:.3f})")
    return reports


def _hd95(rep: dict[str, Any]) -> float:
    f = rep["final"]
    return float(f["hd95"] if rep.get("hd95_unit") == "mm" else f.get("hd95_px", f["hd95"]))


# ------------------------------------------------------------------------------------ the summary


def _ms(d: dict[str, Any] | None) -> str:
    if not d or d.get("mean") is None or (isinstance(d["mean"], float) and math.isnan(d["mean"])):
        return "n/a"
    return f"{d['mean']:.3f} ± {d['std']:.3f}"


def _table(probes: dict[str, dict], segs: dict[str, dict], encoders: dict[str, str]) -> tuple[str, dict]:
    """Markdown table (rows: encoders) and the same numbers as a results dict for the model card."""
    single = len(probes) + len(segs) <= 2
    headers: list[str] = []
    cells: dict[str, list[str]] = {e: [] for e in encoders}
    results: dict[str, Any] = {}
    for task, reps in probes.items():
        p = "" if single else f"{task} "
        headers += [f"{p}probe bal. acc", f"{p}probe AUROC", f"{p}kNN bal. acc"]
        for enc in encoders:
            m = reps[enc]["methods"]
            cells[enc] += [_ms(m["linear"]["summary"]["balanced_accuracy"]), _ms(m["linear"]["summary"]["auroc"]),
                           _ms(m["knn"]["summary"]["balanced_accuracy"])]
            for method in ("linear", "knn"):
                s = m[method]["summary"]
                results.setdefault(f"{task} {method} probe (test split, CV by group)", {})[enc] = {
                    "balanced_accuracy": s["balanced_accuracy"], "auroc": s["auroc"], "accuracy": s["accuracy"]}
    for task, reps in segs.items():
        p = "" if single else f"{task} "
        unit = next(iter(reps.values()))["hd95_unit"]
        headers += [f"{p}seg Dice", f"{p}seg HD95 ({unit})"]
        for enc in encoders:
            f = reps[enc]["final"]
            cells[enc] += [f"{f['dice']:.3f}", f"{_hd95(reps[enc]):.1f}"]
            results.setdefault(f"{task} segmentation (UPerNet, test split)", {})[enc] = {
                "dice": f["dice"], "iou": f["iou"], f"hd95_{unit}": _hd95(reps[enc])}
    width = max(len(e) for e in encoders)
    cols = [max(len(h), *(len(cells[e][i]) for e in encoders)) for i, h in enumerate(headers)]
    lines = [f"| {'encoder':<{width}} | " + " | ".join(h.ljust(w) for h, w in zip(headers, cols)) + " |",
             f"|{'-' * (width + 2)}|" + "|".join("-" * (w + 2) for w in cols) + "|"]
    for enc in encoders:
        lines.append(f"| {enc:<{width}} | " + " | ".join(c.rjust(w) for c, w in zip(cells[enc], cols)) + " |")
    return "\n".join(lines), results


def _wins(probes: dict[str, dict], segs: dict[str, dict]) -> dict[str, bool]:
    """Per metric: does the pretrained encoder beat the random one?"""
    out = {}
    for task, reps in probes.items():
        for method, metric in (("linear", "balanced_accuracy"), ("linear", "auroc"), ("knn", "balanced_accuracy")):
            a, b = (reps[e]["methods"][method]["summary"][metric]["mean"] for e in ("pretrained", "random"))
            out[f"{task} {method} {metric}"] = a is not None and b is not None and a > b
    for task, reps in segs.items():
        out[f"{task} dice"] = reps["pretrained"]["final"]["dice"] > reps["random"]["final"]["dice"]
        out[f"{task} hd95"] = _hd95(reps["pretrained"]) < _hd95(reps["random"])
    return out


def _comparison_figure(probes: dict[str, dict], segs: dict[str, dict], path: Path) -> Path:
    """Grouped bars, pretrained vs random, for every probe and segmentation score in [0, 1]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names: list[str] = []
    vals: dict[str, list[tuple[float, float]]] = {"pretrained": [], "random": []}
    for task, reps in probes.items():
        for method, metric, label in (("linear", "balanced_accuracy", "linear bal. acc"),
                                      ("linear", "auroc", "linear AUROC"), ("knn", "balanced_accuracy", "kNN bal. acc")):
            names.append(f"{task}\n{label}")
            for enc in vals:
                s = reps[enc]["methods"][method]["summary"][metric]
                vals[enc].append((s["mean"] if s["mean"] is not None else float("nan"), s["std"] or 0.0))
    for task, reps in segs.items():
        names.append(f"{task}\nseg Dice")
        for enc in vals:
            vals[enc].append((reps[enc]["final"]["dice"], 0.0))
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(names) + 1.5), 3.8))
    for i, (enc, colour) in enumerate((("pretrained", "tab:blue"), ("random", "tab:gray"))):
        mean = [v[0] for v in vals[enc]]
        std = [v[1] for v in vals[enc]]
        ax.bar(x + (i - 0.5) * 0.38, mean, 0.38, yerr=std, capsize=3, color=colour, label=f"{enc} encoder")
    ax.set_xticks(x, names, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score (higher is better)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("quickstart: pretrained vs random convnextv2_atto (held-out test groups)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def _footnote(cfg: Any, shard_sets: list[Path], data_desc: str, plan: Plan, probes: dict, segs: dict) -> str:
    from sonofm.datasets.shards import load_indexes

    n_train = g_train = 0
    for s in shard_sets:
        for idx in load_indexes(s):
            n_train += int(idx["counts"]["split"].get("train", 0))
            g_train += int(idx["counts"].get("groups", {}).get("train", 0))
    lines = [
        f"Data: {data_desc}. Pretraining ({cfg.steps} steps x {cfg.data.batch_size} images at {cfg.data.img_size} px) "
        f"saw only the TRAIN split ({n_train} images of {g_train} groups) - its hierarchical classifier also "
        "trained on their labels;",
        "evaluation uses held-out groups only: probes = linear (logistic regression) and kNN on frozen features, "
        f"group-aware {plan.probe_folds}-fold CV (fewer if fewer groups) over the TEST split, mean ± std over folds;",
        f"segmentation = UPerNet finetuned {plan.seg_steps} steps on the TRAIN split's masks, Dice / HD95 on the TEST "
        "split's images with a foreground, at their stored size. random = the same architecture, random init.",
    ]
    return "\n".join(lines)


def _latest(folder: Path, pattern: str) -> Path | None:
    files = sorted(folder.glob(pattern))
    return files[-1] if files else None


# --------------------------------------------------------------------------------------- entry


def run_quickstart(data: str | os.PathLike | None = None, out: str | os.PathLike = "runs/quickstart",
                   small: bool = False) -> dict[str, Any]:
    """Run the whole pipeline (see the module docstring); returns the summary written to ``out/summary.json``.

    ``data``: a folder holding real datasets in known layouts (None: the built-in synthetic corpus).
    ``small``: the reduced plan (a minute or two on 2 CPU cores) used by the test suite.
    """
    os.environ.setdefault("WANDB_MODE", "offline")
    plan = SMALL if small else FULL
    out = Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    workers = 1 if small else max(1, min(4, os.cpu_count() or 1))
    stage = _Stages(7)
    print(f"sonofm quickstart ({plan.name} run) -> {out}")
    _check_same_recipe(_pretrain_config(out, [], plan), ignore=("data.shards",))  # fail before any work

    shard_sets, tasks, data_desc = _data_stage(out, None if data is None else str(data), plan, workers, stage)
    cfg = _pretrain_config(out, shard_sets, plan)
    run_dir = _pretrain_stage(cfg, stage)
    encoders = {"pretrained": str(run_dir), "random": RANDOM_SPEC}

    stage("probes: linear + kNN on frozen features, pretrained vs random encoder, held-out test split")
    probes = {t.name: r for t in tasks if t.kind == "probe" for r in [_probe(t, encoders, out, plan)] if r}
    stage(f"segmentation: UPerNet, {plan.seg_steps} steps per encoder, Dice / HD95 on the held-out test split")
    segs = {t.name: r for t in tasks if t.kind == "seg" for r in [_seg(t, encoders, out, plan)] if r}
    if not probes and not segs:
        raise RuntimeError("no downstream task could be evaluated (see the messages above)")

    table, results = _table(probes, segs, encoders)
    results_path = out / "results.json"
    write_json(results_path, results)
    stage("export: timm backbone + model card")
    from sonofm.export import export_backbone

    export_dir = export_backbone(run_dir, out / "export", results=results_path)

    stage("summary")
    comparison = _comparison_figure(probes, segs, out / "comparison.png")
    paths: dict[str, Any] = {
        "reconstruction grid": _latest(run_dir / "samples", "step-*.png"),
        "loss curve": run_dir / "plots" / "loss.png",
        "pretrained vs random": comparison,
        "confusion matrices": sorted((out / "probe").glob("*/*/confusion_*.png")),
        "segmentation overlays": sorted((out / "seg").glob("*/*/overlays")),
        "exported backbone": export_dir,
        "results": results_path,
    }
    footnote = _footnote(cfg, shard_sets, data_desc, plan, probes, segs)
    wins = _wins(probes, segs)
    print()
    print(table)
    print(footnote)
    print(f"pretrained beats random on {sum(wins.values())} of {len(wins)} scores"
          + ("" if all(wins.values()) else f" (not on: {', '.join(k for k, v in wins.items() if not v)})"))
    print("\nfigures and outputs:")
    for name, p in paths.items():
        if isinstance(p, list):
            print(f"  {name}:")
            for q in p:
                print(f"    {q}")
        else:
            print(f"  {name}: {p}")
    seconds = round(time.perf_counter() - stage.t0, 1)
    print(f"\nquickstart done in {stage.elapsed()}; load the backbone with "
          f'timm.create_model("local-dir:{export_dir}", pretrained=True)')
    summary = {
        "plan": asdict(replace(plan)),
        "data": data_desc,
        "out": str(out),
        "run_dir": str(run_dir),
        "table": table,
        "footnote": footnote,
        "results": results,
        "pretrained_beats_random": wins,
        "probe": {t: {e: str(out / "probe" / _safe(t) / e / "probe.json") for e in encoders} for t in probes},
        "seg": {t: {e: str(out / "seg" / _safe(t) / e / "report.json") for e in encoders} for t in segs},
        "paths": {k: [str(q) for q in v] if isinstance(v, list) else str(v) for k, v in paths.items()},
        "seconds": seconds,
    }
    write_json(out / "summary.json", summary)
    return summary
