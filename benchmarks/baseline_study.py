"""Baseline study for a machine with a GPU: does sonofm pretraining beat random and ImageNet weights?

One command compares, on the same shards, protocol and seed, four convnextv2_atto encoders:

- ``random``: random initialisation;
- ``timm:convnextv2_atto.fcmae_ft_in1k``: timm's FCMAE-pretrained, ImageNet-1k finetuned weights (the
  stem adapted to grey by timm, statistics reduced to grey);
- ``pretrained``: sonofm's masked image modelling + hierarchy pretraining from random weights;
- ``continued``: the same pretraining started from ``--init`` (timm's ``convnextv2_atto.fcmae``,
  ``model.init``).

on every task the quickstart finds in ``--data`` (default ``../shared/data``: BUSI, CCA, POCUS): linear
and kNN probes on frozen features (group-aware CV on the held-out test split) and UPerNet segmentation
(train split -> Dice / HD95 on the test split). It reuses the quickstart's stages (shards, pretraining,
probes, segmentation, table, chart) and writes ``OUT/study.json`` (table, results records, seconds per
stage, device, peak GPU memory), ``OUT/comparison.png`` and ``OUT/results.json`` (model-card records).

Sized for a few minutes of one GPU (defaults: 600 pretraining steps of 128 images at 128 px per
pretraining run, 300 segmentation steps per encoder). The published weights must be in the Hugging Face
cache first (``hf download timm/convnextv2_atto.fcmae_ft_in1k``, ``hf download timm/convnextv2_atto.fcmae``);
offline, a missing one stops the study before any work with the one-line error.

    python benchmarks/baseline_study.py --out runs/baseline_study            # GPU, shared data
    python benchmarks/gpu_throughput.py --study --out runs/baseline_study    # the same, from the GPU script
    python benchmarks/baseline_study.py --tiny --out /tmp/study              # CPU smoke: synthetic, seconds

``--tiny`` runs the same code on the built-in synthetic corpus with a handful of steps, and continues
from ``timm:convnextv2_atto.fcmae_ft_in1k`` (the test suite writes a fake of it into a temporary cache).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

IMAGENET = "timm:convnextv2_atto.fcmae_ft_in1k"
FCMAE = "timm:convnextv2_atto.fcmae"


def _plans() -> tuple[Any, Any]:
    from sonofm.quickstart.plan import FULL, SMALL

    gpu = replace(FULL, name="gpu-study", max_side=160,
                  pretrain={"steps": 600, "data.img_size": 128, "data.batch_size": 128, "data.num_workers": 8,
                            "data.shuffle_buffer": 2000, "optim.warmup_steps": 40, "logging.log_every": 20,
                            "logging.sample_every": 300, "checkpoint.every": 300},
                  eval_size=128, seg_steps=300, seg_batch=16, seg_channels=64)
    tiny = replace(SMALL, name="tiny-study",
                   pretrain={**SMALL.pretrain, "steps": 6, "checkpoint.every": 6, "logging.sample_every": 0,
                             "logging.log_every": 3, "optim.warmup_steps": 2},
                   seg_steps=3, n_overlays=1)
    return gpu, tiny


def _peak_gpu_mb() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def run_study(out: Path, data: Path | None, tiny: bool, init: str, pretrain_steps: int | None,
              seg_steps: int | None, continued_lr: float) -> dict[str, Any]:
    """Run the study (see the module doc); returns what ``OUT/study.json`` holds."""
    import torch

    from sonofm.atomic_io import write_json
    from sonofm.models.encoder_spec import check_spec
    from sonofm.quickstart import report
    from sonofm.quickstart.plan import RANDOM_SPEC
    from sonofm.quickstart.stages import Stages, data_stage, pretrain_config, pretrain_stage, probe, seg

    device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu_plan, tiny_plan = _plans()
    plan = tiny_plan if tiny else gpu_plan
    if pretrain_steps:
        plan = replace(plan, pretrain={**plan.pretrain, "steps": pretrain_steps})
    if seg_steps:
        plan = replace(plan, seg_steps=seg_steps)
    if device == "cuda":
        plan = replace(plan, pretrain={**plan.pretrain, "precision": "bf16"})
    for spec in (IMAGENET, init):  # the published weights are at hand, before any work
        check_spec(spec)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    stage = Stages(5)
    t = time.perf_counter()
    workers = 1 if tiny else max(1, min(8, os.cpu_count() or 1))
    shard_sets, tasks, desc = data_stage(out, None if tiny else str(data), plan, workers, stage)
    seconds["shards"] = time.perf_counter() - t

    t = time.perf_counter()
    cfg = pretrain_config(out, shard_sets, plan)
    run = pretrain_stage(cfg, stage)
    seconds["pretrain"] = time.perf_counter() - t
    t = time.perf_counter()
    cont = pretrain_config(out, shard_sets, plan)
    cont.run_dir = str(out / "pretrain_continued")
    cont.model.init = init
    cont.optim.base_lr = continued_lr  # a gentler rate than from scratch: the init is worth keeping
    cont_run = pretrain_stage(cont, stage, suffix=f", continued from {init}")
    seconds["pretrain_continued"] = time.perf_counter() - t

    encoders = {"pretrained": str(run), "random": RANDOM_SPEC, IMAGENET: IMAGENET, f"continued from {init}": str(cont_run)}
    t = time.perf_counter()
    stage(f"probes on {device}: {', '.join(encoders)}", number=4)
    probes = {tk.name: r for tk in tasks if tk.kind == "probe" for r in [probe(tk, encoders, out, plan, device=device)] if r}
    seconds["probes"] = time.perf_counter() - t
    t = time.perf_counter()
    stage(f"segmentation: UPerNet, {plan.seg_steps} steps per encoder", number=5)
    segs = {tk.name: r for tk in tasks if tk.kind == "seg" for r in [seg(tk, encoders, out, plan)] if r}
    seconds["segmentation"] = time.perf_counter() - t
    if not probes and not segs:
        raise RuntimeError("no downstream task could be evaluated (see the messages above)")

    table, results = report.table(probes, segs, encoders)
    write_json(out / "results.json", results)
    figure = report.comparison_figure([(probes, segs)], out / "comparison.png")
    conclusion, _ = report.conclusion([report.scores(probes, segs)])
    summary = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "tiny": tiny, "data": desc, "plan": asdict(plan), "init": init, "continued_base_lr": continued_lr,
        "encoders": encoders, "table": table, "conclusion": conclusion, "results": results["results"],
        "seconds": {k: round(v, 1) for k, v in seconds.items()}, "total_seconds": round(sum(seconds.values()), 1),
        "peak_gpu_mb": _peak_gpu_mb(), "figure": str(figure),
    }
    write_json(out / "study.json", summary)
    print()
    print(table)
    print(conclusion)
    print(f"device {summary['device']}; seconds per stage {summary['seconds']} (total {summary['total_seconds']})")
    print(f"wrote {out / 'study.json'}, {out / 'results.json'} and {figure}")
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from sonofm.paths import shared_data_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="CPU smoke mode: synthetic corpus, a few steps")
    ap.add_argument("--data", type=Path, default=None, help="datasets in known layouts (default: ../shared/data)")
    ap.add_argument("--out", type=Path, default=Path("runs/baseline_study"))
    ap.add_argument("--init", default=None, help=f"the continued run's model.init (default {FCMAE}; tiny: {IMAGENET})")
    ap.add_argument("--pretrain-steps", type=int, default=None, help="per pretraining run (default 600; tiny 6)")
    ap.add_argument("--seg-steps", type=int, default=None, help="per encoder (default 300; tiny 3)")
    ap.add_argument("--continued-lr", type=float, default=1.5e-3,
                    help="base_lr of the continued run (scaled by batch/256; from scratch uses the recipe's 1.2e-2)")
    args = ap.parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "offline")
    data = args.data or shared_data_dir()
    if not args.tiny and not Path(data).is_dir():
        raise SystemExit(f"no data at {data}: give --data (BUSI, CCA, POCUS layouts) or run --tiny")
    summary = run_study(args.out.expanduser().resolve(), Path(data), args.tiny, args.init or (IMAGENET if args.tiny else FCMAE),
                        args.pretrain_steps, args.seg_steps, args.continued_lr)
    print(json.dumps({"total_seconds": summary["total_seconds"]}))
    return summary


if __name__ == "__main__":
    main()
