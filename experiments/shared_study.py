"""Real-data study: does sonofm's pretraining help on real ultrasound, at CPU scale?

On the three public datasets of ``../shared/data`` (BUSI, CCA, POCUS; found through
:func:`sonofm.paths.shared_data_dir`) and nothing else, this script

1. builds the shards (``sonofm shards build --config configs/shards/shared.yaml``; split 0.7/0.1/0.2
   by group: image for BUSI, recording for CCA, source video for POCUS) or reuses ``--shards``;
2. pretrains two encoders with the CPU recipe (``configs/pretrain/cpu_atto.yaml``) on the *train*
   splits of all three datasets: FCMAE-only (``hierarchy.weight=0``) and sonofm's full objective
   (FCMAE + hierarchical taxonomy loss; reused from ``--full-run`` when given). Before any
   evaluation it verifies that no test-split image can have been seen: the runs' configs read
   ``split=train``, every shard they stream is a train shard of the index, train and test groups
   are disjoint, and, where the run logged its sample keys (``logging.log_keys=true``), every key
   seen in pretraining is a train key;
3. evaluates three encoders (random init, FCMAE-only, full) on the *test* splits:

   - BUSI 3-class probe (benign / malignant / normal) and POCUS 4-class probe (covid / healthy /
     pneumonia / viral; the frames flagged ``label_uncertain`` have no label and are dropped) on
     frozen features. The test split's groups (image for BUSI, source video for POCUS) are cut into
     ``--folds`` folds; each fold is predicted by a probe trained on every other labelled image
     (train + val splits and the other test folds), so every test image is predicted once, by a
     probe that never saw its group, from an encoder that never saw it. Linear probe (L-BFGS logistic
     regression, C chosen on an inner group split) and kNN; mean ± std over folds.
   - BUSI lesion segmentation (benign + malignant images: normal images have no lesion) and CCA lumen
     segmentation with UPerNet, whole encoder finetuned on the train split, Dice and HD95 at the
     stored image size on every test image (mean ± std over test images; one seed).
   - Label efficiency on BUSI segmentation: 1 %, 10 %, 100 % of the training groups (nested
     subsets, :func:`sonofm.finetune.label_efficiency.select_groups`), the three encoders in one figure.

It writes ``results.json``, ``label_efficiency.png`` and ``pretrain_loss.png`` under ``--out`` and
prints the tables (markdown). Everything is seeded; the default budget is about an hour of a
2-core CPU (pretraining ~15-25 min per variant, the rest ~30 min).

Scaling
-------
``--steps`` (pretraining steps), ``--img-size`` (pretraining and downstream resolution),
``--seg-steps`` / ``--seg-batch`` (UPerNet finetuning), ``--folds`` (probe folds), ``--fractions``.
On a GPU run e.g.::

    python experiments/shared_study.py --device cuda --recipe configs/pretrain/gpu_tiny_224.yaml \\
        --steps 20000 --img-size 224 --seg-steps 4000 --seg-batch 32 --threads 8 --out runs/study_gpu

``--recipe`` picks the pretraining recipe (its model, batch, lr schedule); ``--steps`` and
``--img-size`` override it. Pretraining runs as a ``sonofm pretrain`` subprocess, so
``--launcher "accelerate launch --num_processes 8 -m sonofm"`` runs it on 8 GPUs. Downstream
training uses ``--device``. Expect the CPU-scale numbers to move a lot with more steps: at 600
steps the encoder has seen each training image ~15 times at 128 px.

Example (the run reported in docs/results.md)::

    OMP_NUM_THREADS=1 python experiments/shared_study.py --shards /work/runs/shards/shared \\
        --full-run /work/runs/cpu_atto --fcmae-run /work/runs/shared_study/pretrain_fcmae \\
        --out /work/runs/shared_study_fix --seg-steps 120 --folds 5

(``--fcmae-run``: the FCMAE-only run had been made by hand with the exact command :func:`pretrain`
runs, and ``--wait`` lets the script wait for such a run still in progress; without them the script
trains it itself.)
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sonofm.atomic_io import write_json
from sonofm.checkpoints import STATE_FILE, latest_checkpoint, locate_checkpoint, read_state
from sonofm.config import PretrainConfig, load_config
from sonofm.datasets.build.splits import stratified_group_kfold
from sonofm.datasets.shards import base_key, iter_tar_samples, load_indexes
from sonofm.evaluation.features import cached_features, extract_features, fingerprint
from sonofm.evaluation.probe import cross_validate
from sonofm.finetune.data import Sample, iterate_batches, samples_from_shards
from sonofm.finetune.label_efficiency import select_groups
from sonofm.finetune.seg_train import evaluate_segmentation, sample_batches, train_segmentation
from sonofm.models.loading import load_encoder
from sonofm.models.upernet import SegModel
from sonofm.paths import REPO_ROOT, shared_data_dir

SOURCES = ("busi", "cca", "pocus")
BUSI_CLASSES = ("benign", "malignant", "normal")
POCUS_CLASSES = ("covid", "healthy", "pneumonia", "viral")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- shards + pretraining


def build_shards(data: Path, out: Path, threads: int) -> Path:
    """``sonofm shards build`` of BUSI, CCA and POCUS from ``data`` into ``out`` (resumable)."""
    cmd = [sys.executable, "-m", "sonofm", "shards", "build", "--config", "configs/shards/shared.yaml",
           f"out={out}", f"sources=[busi:{data / 'busi'},cca:{data / 'cca'},pocus:{data / 'pocus'}]",
           f"workers={max(1, threads)}"]
    log("building shards: " + shlex.join(cmd))
    subprocess.run(cmd, check=True, cwd=REPO_ROOT)
    return out


def run_complete(run_dir: Path) -> bool:
    """A pretraining run is complete when its latest checkpoint's step equals its configured steps."""
    cfg_file, ckpt = run_dir / "config.yaml", latest_checkpoint(run_dir)
    if not cfg_file.is_file() or ckpt is None:
        return False
    return read_state(ckpt)["step"] >= load_config(PretrainConfig, cfg_file).steps


def pretrain(run_dir: Path, shards: Path, args: argparse.Namespace, hier_weight: float) -> Path:
    """Run (or resume, or reuse when complete) ``sonofm pretrain`` on the train splits only."""
    overrides = [f"run_dir={run_dir}", f"data.shards=[{shards}]", "data.split=train",
                 f"data.num_workers={args.workers}", f"hierarchy.weight={hier_weight}", "logging.log_keys=true",
                 "logging.progress=false"]
    if args.steps:
        overrides.append(f"steps={args.steps}")
    if args.img_size:
        overrides.append(f"data.img_size={args.img_size}")
    cmd = [*shlex.split(args.launcher), "pretrain", "--config", args.recipe, "--resume", "auto", *overrides]
    log("pretraining: " + shlex.join(cmd))
    t0 = time.time()
    subprocess.run(cmd, check=True, cwd=REPO_ROOT)
    log(f"pretraining {run_dir.name}: {time.time() - t0:.0f}s")
    if not run_complete(run_dir):
        raise RuntimeError(f"{run_dir}: pretraining ended without a complete final checkpoint")
    return run_dir


def _shard_keys(path: Path) -> set[str]:
    """The sample keys of one shard, read by the shard format's owner."""
    return {base_key(sample["__key__"]) for sample in iter_tar_samples(path)}


def verify_no_test_leak(run_dir: Path, shards: Path) -> dict[str, Any]:
    """Evidence that pretraining saw train-split images only (raises ``AssertionError`` otherwise).

    Checks: the run's config streams ``split=train`` of ``shards`` only; the shard files that split
    resolves to are all indexed as train; train and test groups of every source are disjoint; the
    sample keys the run logged (``keys/rank*.txt``, when present) are all train keys.
    """
    from sonofm.datasets.shards.discovery import discover_shards

    run_dir, _ = locate_checkpoint(run_dir)  # a run dir, or one checkpoint inside <run>/checkpoints/
    data_cfg = load_config(PretrainConfig, run_dir / "config.yaml").data
    assert data_cfg.split == "train", f"{run_dir}: pretraining split is {data_cfg.split!r}, not 'train'"
    used = [Path(p).resolve() for p in data_cfg.shards]
    assert used == [shards.resolve()], f"{run_dir}: pretraining read {used}, expected only {shards}"
    split_of = {entry["file"]: entry["split"] for index in load_indexes(shards) for entry in index["shards"]}
    streamed = [Path(url).name for url, _ in discover_shards(str(shards), "train")]
    bad = [f for f in streamed if split_of.get(f) != "train"]
    assert streamed and not bad, f"{run_dir}: the train stream resolves to non-train shards {bad}"
    keys = {sp: set() for sp in ("train", "val", "test")}
    for f, sp in split_of.items():
        keys[sp] |= _shard_keys(shards / f)
    assert not keys["train"] & keys["test"], "a sample key is in both the train and the test split"
    groups: dict[str, dict[str, set[str]]] = {}
    for src in SOURCES:
        for sp in ("train", "test"):
            groups.setdefault(src, {})[sp] = {s.group for s in samples_from_shards(shards / f"{src}.index.json", sp)}
        shared = groups[src]["train"] & groups[src]["test"]
        assert not shared, f"{src}: groups in both train and test: {sorted(shared)[:5]}"
    evidence: dict[str, Any] = {
        "run": str(run_dir), "split": data_cfg.split, "streamed_shards": streamed,
        "n_train_keys": len(keys["train"]), "n_test_keys": len(keys["test"]),
        "groups": {src: {sp: len(g) for sp, g in d.items()} for src, d in groups.items()},
    }
    logged: set[str] = set()
    for f in sorted((run_dir / "keys").glob("rank*.txt")):
        for line in f.read_text().splitlines():
            _, _, ks = line.partition("\t")
            logged.update(k for k in ks.split(",") if k)
    if logged:
        leaked = logged - keys["train"]
        assert not leaked, f"{run_dir}: pretraining saw {len(leaked)} non-train keys, e.g. {sorted(leaked)[:3]}"
        evidence.update(logged_keys=len(logged), logged_keys_in_test=len(logged & keys["test"]),
                        train_keys_covered=len(logged) / max(1, len(keys["train"])))
    else:
        evidence["logged_keys"] = 0  # the run did not log keys: the config + index checks above stand
    return evidence


# ----------------------------------------------------------------------------- probes


def probe_features(spec: str, samples: list[Sample], size: int, cache: Path, data_id: str, device: str) -> np.ndarray:
    """Pooled last-stage features of ``samples`` (cached per encoder and data)."""
    model, info = load_encoder(spec)
    fp = fingerprint(info, data=data_id, size=size)

    def compute() -> dict[str, np.ndarray]:
        return extract_features(model, iterate_batches(samples, size, 32), device=device)

    data = cached_features(cache, fp, compute)
    keys = [s.key for s in samples]
    assert list(data["key"]) == keys, f"{cache}: cached features are not in sample order"
    return data["features"]


def probe_test_split(
    feats: np.ndarray, samples: list[Sample], classes: Sequence[str], folds: int, seed: int
) -> dict[str, Any]:
    """Probe every test-split sample once: test groups cut into ``folds`` folds, each predicted by a
    probe trained on all other labelled samples (see the module docstring)."""
    keep = [i for i, s in enumerate(samples) if s.meta.get("label") is not None]
    x = feats[keep]
    y = np.array([classes.index(str(samples[i].meta["label"])) for i in keep])
    g = np.array([samples[i].group for i in keep])
    is_test = np.array([samples[i].meta.get("split") == "test" for i in keep])
    test_idx = np.flatnonzero(is_test)
    test_folds = stratified_group_kfold(y[test_idx], g[test_idx], folds, seed)
    everything = np.arange(len(y))
    splits = [(np.setdiff1d(everything, test_idx[te]), test_idx[te]) for _, te in test_folds]
    report = cross_validate(x, y, g, len(classes), methods=("linear", "knn"), seed=seed, splits=splits)
    out: dict[str, Any] = {"n_labelled": len(keep), "n_test": int(len(test_idx)), "n_dropped": len(samples) - len(keep),
                           "n_test_groups": len(set(g[test_idx])),
                           "methods": {m: {"per_fold": r["per_fold"], "summary": r["summary"]}
                                       for m, r in report["methods"].items()}}
    return out


# ----------------------------------------------------------------------------- segmentation


def seg_run(spec: str, train: list[Sample], test: list[Sample], args: argparse.Namespace,
            fraction: float = 1.0, seed: int = 0) -> dict[str, Any]:
    """UPerNet on ``spec`` finetuned on ``fraction`` of the training groups, evaluated once at the end
    on every test image at its stored size (no model selection on the test set)."""
    torch.manual_seed(seed)
    chosen = select_groups([s.group for s in train], fraction, seed) if fraction < 1 else list(range(len(train)))
    subset = [train[i] for i in chosen]
    enc, _ = load_encoder(spec)
    model = SegModel(enc, 2, args.seg_channels)
    t0 = time.time()
    hist = train_segmentation(
        model, sample_batches(subset, args.img_size, args.seg_batch, seed), args.seg_steps, lr=args.seg_lr,
        warmup_steps=max(1, args.seg_steps // 10), min_lr=1e-6, device=args.device,
    )
    model.eval()
    res = evaluate_segmentation(model, test, args.img_size, 2, device=args.device)
    per = res["per_sample"]
    summ = {k: {"mean": float(np.mean([p[k] for p in per])), "std": float(np.std([p[k] for p in per]))}
            for k in ("dice", "iou", "hd95")}
    return {"n_train": len(subset), "n_train_groups": len({s.group for s in subset}), "n_test": len(test),
            "fraction": fraction, "first_loss": hist["losses"][0],
            "last_loss": float(np.mean(hist["losses"][-10:])), "seconds": time.time() - t0, **summ}


# ----------------------------------------------------------------------------- report


def ms(d: dict[str, float], digits: int = 3) -> str:
    if d.get("mean") is None or d["mean"] != d["mean"]:  # NaN (null once through JSON): undefined in a fold
        return "n/a"
    return f"{d['mean']:.{digits}f} ± {d['std']:.{digits}f}"


def tables(results: dict[str, Any]) -> str:
    order = [n for n in ("random", "FCMAE-only", "full") if n in results["encoders"]]
    enc = {n: results["encoders"][n] for n in order + sorted(set(results["encoders"]) - set(order))}
    lines = ["### Classification probes (test splits, mean ± std over folds)", "",
             "| encoder | BUSI bal. acc (linear) | BUSI AUROC (linear) | BUSI bal. acc (kNN) | BUSI AUROC (kNN) "
             "| POCUS bal. acc (linear) | POCUS macro F1 (linear) | POCUS bal. acc (kNN) | POCUS macro F1 (kNN) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in enc.items():
        b, p = r.get("busi_probe"), r.get("pocus_probe")
        cells = []
        for rep, metrics in ((b, ("balanced_accuracy", "auroc")), (p, ("balanced_accuracy", "macro_f1"))):
            for method in ("linear", "knn"):
                cells += [ms(rep["methods"][method]["summary"][m]) if rep else "n/a" for m in metrics]
        lines.append(f"| {name} | " + " | ".join([cells[0], cells[1], cells[2], cells[3],
                                                  cells[4], cells[5], cells[6], cells[7]]) + " |")
    lines += ["", "### Segmentation, UPerNet (test splits, mean ± std over test images)", "",
              "| encoder | BUSI lesion Dice | BUSI lesion HD95 (px) | CCA lumen Dice | CCA lumen HD95 (px) |",
              "|---|---|---|---|---|"]
    for name, r in enc.items():
        b, c = r.get("busi_seg", {}).get("1"), r.get("cca_seg")
        lines.append(f"| {name} | {ms(b['dice']) if b else 'n/a'} | {ms(b['hd95'], 1) if b else 'n/a'} | "
                     f"{ms(c['dice']) if c else 'n/a'} | {ms(c['hd95'], 1) if c else 'n/a'} |")
    fracs = sorted({f for r in enc.values() for f in r.get("busi_seg", {})}, key=float)
    if fracs:
        lines += ["", "### Label efficiency, BUSI lesion Dice (test split)", "",
                  "| encoder | " + " | ".join(f"{100 * float(f):g} % ({_n_train(enc, f)} img)" for f in fracs) + " |",
                  "|---|" + "---|" * len(fracs)]
        for name, r in enc.items():
            lines.append(f"| {name} | " + " | ".join(ms(r["busi_seg"][f]["dice"]) if f in r.get("busi_seg", {})
                                                     else "n/a" for f in fracs) + " |")
    return "\n".join(lines)


def _n_train(enc: dict[str, Any], frac: str) -> int:
    for r in enc.values():
        if frac in r.get("busi_seg", {}):
            return r["busi_seg"][frac]["n_train"]
    return 0


def plot_label_efficiency_bars(results: dict[str, Any], path: Path) -> None:
    """BUSI Dice vs label fraction, one line per encoder; error bars = standard error of the mean over
    the test images (std / sqrt(n): the per-image std, ~0.3, would hide every difference)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    ticks: set[float] = set()
    for name, r in results["encoders"].items():
        fr = sorted(r.get("busi_seg", {}), key=float)
        if not fr:
            continue
        xs = [100 * float(f) for f in fr]
        ticks.update(xs)
        ax.errorbar(xs, [r["busi_seg"][f]["dice"]["mean"] for f in fr],
                    yerr=[r["busi_seg"][f]["dice"]["std"] / np.sqrt(r["busi_seg"][f]["n_test"]) for f in fr],
                    marker="o", capsize=3, label=name)
    ax.set_xscale("log")
    ax.set_xticks(sorted(ticks), [f"{t:g}" for t in sorted(ticks)])
    ax.minorticks_off()
    ax.set_xlabel("labelled BUSI training images (%)")
    ax.set_ylabel("lesion Dice (test split, mean ± s.e.)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Label efficiency, UPerNet on BUSI", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_pretrain_losses(runs: dict[str, Path], path: Path) -> None:
    """Reconstruction loss of the pretraining runs on one axis (the full run's total loss too)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    from sonofm.train.loggers import read_metrics

    for name, run in runs.items():
        run, _ = locate_checkpoint(run)  # a run dir, or one of its checkpoints
        rows = read_metrics(run / "metrics.jsonl")
        ax.plot([r["step"] for r in rows], [r["loss_rec"] for r in rows], label=f"{name}: reconstruction")
        if any(r.get("loss_hier", 0) for r in rows):
            ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], "--", label=f"{name}: total")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("CPU pretraining on the train splits", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(shared_data_dir()), help="BUSI/CCA/POCUS root (default ../shared/data)")
    ap.add_argument("--shards", default=None, help="reuse this shard folder (else built under --out/shards)")
    ap.add_argument("--out", default="runs/shared_study")
    ap.add_argument("--full-run", default=None, help="reuse this complete full-objective pretraining run")
    ap.add_argument("--fcmae-run", default=None, help="FCMAE-only run dir (default --out/pretrain_fcmae)")
    ap.add_argument("--wait", type=float, default=0, help="seconds to wait for a given run still in training")
    ap.add_argument("--encoders", default="random,fcmae,full", help="which of random,fcmae,full to evaluate")
    ap.add_argument("--hier-weight", type=float, default=0.1, help="hierarchical loss weight of the full objective")
    ap.add_argument("--recipe", default="configs/pretrain/cpu_atto.yaml")
    ap.add_argument("--launcher", default=f"{shlex.quote(sys.executable)} -m sonofm",
                    help="command that runs the sonofm CLI (e.g. 'accelerate launch --num_processes 8 -m sonofm')")
    ap.add_argument("--steps", type=int, default=0, help="pretraining steps (0 = the recipe's)")
    ap.add_argument("--img-size", type=int, default=128, help="pretraining and downstream image size")
    ap.add_argument("--workers", type=int, default=1, help="pretraining loader workers")
    ap.add_argument("--folds", type=int, default=5, help="probe folds over the test groups")
    ap.add_argument("--seg-steps", type=int, default=300)
    ap.add_argument("--seg-batch", type=int, default=8)
    ap.add_argument("--seg-lr", type=float, default=1e-3)
    ap.add_argument("--seg-channels", type=int, default=64, help="UPerNet decoder width")
    ap.add_argument("--fractions", default="0.01,0.1,1.0", help="label fractions for BUSI segmentation")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: probe,seg,label_eff")
    ap.add_argument("--limit", type=int, default=0, help="samples per split and source (smoke runs only)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.time()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data).resolve()
    skip = {s for s in args.skip.split(",") if s}
    shards = Path(args.shards).resolve() if args.shards else build_shards(data, out / "shards", args.threads)

    ds: dict[str, dict[str, list[Sample]]] = {}
    for src in SOURCES:
        for sp in ("train", "val", "test"):
            s = samples_from_shards(shards / f"{src}.index.json", sp, binary_mask=True)
            ds.setdefault(src, {})[sp] = s[: args.limit] if args.limit else s
    busi_all = ds["busi"]["train"] + ds["busi"]["val"] + ds["busi"]["test"]
    pocus_all = ds["pocus"]["train"] + ds["pocus"]["val"] + ds["pocus"]["test"]
    # BUSI normal images have no lesion (empty mask): lesion segmentation uses benign + malignant
    busi_seg = {sp: [s for s in ds["busi"][sp] if s.meta["label"] != "normal"] for sp in ("train", "test")}
    fractions = [float(f) for f in args.fractions.split(",") if f] if "label_eff" not in skip else [1.0]

    timings: dict[str, float] = {}
    results: dict[str, Any] = {"args": vars(args), "shards": str(shards), "no_test_leak": {},
                               "encoders_spec": {}, "encoders": {}, "timings": timings,
                               "n": {src: {sp: len(v) for sp, v in d.items()} for src, d in ds.items()},
                               "torch_threads": torch.get_num_threads()}
    wanted = [e for e in args.encoders.split(",") if e]
    unknown = sorted(set(wanted) - set(ENCODERS))
    if unknown:
        raise SystemExit(f"--encoders: unknown {unknown}; valid: {', '.join(ENCODERS)}")
    previous = out / "results.json"
    if previous.is_file():  # keep encoders evaluated by an earlier invocation into the same --out
        old = json.loads(previous.read_text())
        for k in ("encoders", "encoders_spec", "no_test_leak", "timings"):
            results[k].update({n: v for n, v in old.get(k, {}).items()
                               if n.split("/")[0] not in {ENCODERS[w] for w in wanted}})
        results["previous_args"] = old.get("args")
    for key in [e for e in ENCODERS if e in wanted]:  # random first: it needs no pretraining
        name = ENCODERS[key]
        t = time.time()
        spec = resolve_encoder(key, args, shards, out)
        if key != "random":
            timings[f"{name}/pretrain_this_invocation"] = time.time() - t
            results["no_test_leak"][name] = leak = verify_no_test_leak(Path(spec), shards)
            log(f"{name}: no test-split image in pretraining (split={leak['split']}, groups {leak['groups']}, "
                f"logged keys {leak['logged_keys']}, of which in test: {leak.get('logged_keys_in_test', 'n/a')})")
            runs = {n: Path(s) for n, s in results["encoders_spec"].items() if not s.startswith("random:")}
            runs[name] = Path(spec)
            plot_pretrain_losses(runs, out / "pretrain_loss.png")
        results["encoders_spec"][name] = spec
        r: dict[str, Any] = {"spec": spec}
        results["encoders"][name] = r
        safe = key
        if "probe" not in skip:
            t = time.time()
            fb = probe_features(spec, busi_all, args.img_size, out / "features" / f"{safe}_busi.npz",
                                f"{shards}:busi:{len(busi_all)}", args.device)
            r["busi_probe"] = probe_test_split(fb, busi_all, BUSI_CLASSES, args.folds, args.seed)
            fp = probe_features(spec, pocus_all, args.img_size, out / "features" / f"{safe}_pocus.npz",
                                f"{shards}:pocus:{len(pocus_all)}", args.device)
            r["pocus_probe"] = probe_test_split(fp, pocus_all, POCUS_CLASSES, args.folds, args.seed)
            timings[f"{name}/probes"] = time.time() - t
            log(f"{name}: BUSI linear bal.acc {ms(r['busi_probe']['methods']['linear']['summary']['balanced_accuracy'])}"
                f", POCUS linear bal.acc {ms(r['pocus_probe']['methods']['linear']['summary']['balanced_accuracy'])}")
            write_json(out / "results.json", results)
        if "seg" not in skip:
            t = time.time()
            r["cca_seg"] = seg_run(spec, ds["cca"]["train"], ds["cca"]["test"], args, seed=args.seed)
            log(f"{name}: CCA Dice {ms(r['cca_seg']['dice'])} HD95 {ms(r['cca_seg']['hd95'], 1)}")
            write_json(out / "results.json", results)
            r["busi_seg"] = {}
            for frac in sorted(fractions, reverse=True):
                r["busi_seg"][f"{frac:g}"] = seg_run(spec, busi_seg["train"], busi_seg["test"], args, frac, args.seed)
                log(f"{name}: BUSI {100 * frac:g}% Dice {ms(r['busi_seg'][f'{frac:g}']['dice'])}")
                write_json(out / "results.json", results)
            timings[f"{name}/seg"] = time.time() - t
    timings["total_seconds"] = time.time() - t_start
    write_json(out / "results.json", results)
    if "seg" not in skip:
        plot_label_efficiency_bars(results, out / "label_efficiency.png")
    text = tables(results)
    (out / "tables.md").write_text(text + "\n")
    print(text)
    log(f"done in {timings['total_seconds']:.0f}s: {out / 'results.json'}")
    return results


# evaluation order (random needs no pretraining; the lead's full run usually finishes first)
ENCODERS = {"random": "random", "full": "full", "fcmae": "FCMAE-only"}


def _wait_complete(run_dir: Path, timeout_s: float) -> None:
    """Wait for a run that another process is training (``--wait``) to write its final checkpoint."""
    t0 = time.time()
    while not run_complete(run_dir):
        if time.time() - t0 > timeout_s:
            raise TimeoutError(f"{run_dir}: not complete after {timeout_s:.0f}s")
        time.sleep(20)


def resolve_encoder(key: str, args: argparse.Namespace, shards: Path, out: Path) -> str:
    """The ``load_encoder`` spec of one study encoder, pretraining it first when needed."""
    if key == "random":
        return f"random:{load_config(PretrainConfig, args.recipe).model.name}"
    given = args.fcmae_run if key == "fcmae" else args.full_run
    if given and Path(given).name.startswith("step-"):  # one checkpoint of a run (e.g. a matched-step comparison)
        step_dir = Path(given).resolve()
        t0 = time.time()
        while args.wait and not (step_dir / STATE_FILE).is_file() and time.time() - t0 < args.wait:
            time.sleep(20)
        locate_checkpoint(step_dir)  # a clear error when it is not a complete checkpoint
        return str(step_dir)
    run_dir = Path(given).resolve() if given else out / f"pretrain_{key}"
    if given and args.wait:
        _wait_complete(run_dir, args.wait)
    if not run_complete(run_dir):
        pretrain(run_dir, shards, args, 0.0 if key == "fcmae" else args.hier_weight)
    return str(run_dir)


if __name__ == "__main__":
    main()
