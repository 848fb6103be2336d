"""``sonofm quickstart``: the whole pipeline in one command, the first thing a newcomer runs.

Stages, each announced by a header line with the elapsed time, everything written under ``out``:

1. data: the built-in synthetic corpus (``out/corpus``), or with ``data=PATH`` the real datasets
   found there in the layouts the built-in taxonomy describes (BUSI, CCA, POCUS, HC18);
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

The package: :mod:`~sonofm.quickstart.plan` (sizes of a run), :mod:`~sonofm.quickstart.discovery`
(known layouts under ``--data``, read from the taxonomy's source facts),
:mod:`~sonofm.quickstart.stages` (each stage calling the library), :mod:`~sonofm.quickstart.reuse`
(stamps that let a re-run reuse finished results), :mod:`~sonofm.quickstart.report` (table, figure,
footnote); this module runs them in order and prints the summary.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from sonofm.atomic_io import write_json
from sonofm.quickstart import report
from sonofm.quickstart.discovery import Task, find_datasets, known_layouts
from sonofm.quickstart.plan import FULL, SMALL, SPLITS, Plan
from sonofm.quickstart.stages import (
    Stages,
    baseline_encoders,
    check_same_recipe,
    data_stage,
    pretrain_config,
    pretrain_stage,
    probe,
    safe_name,
    seed_root,
    seg,
)

__all__ = ["Plan", "FULL", "SMALL", "SPLITS", "Task", "find_datasets", "known_layouts", "run_quickstart"]


def _latest(folder: Path, pattern: str) -> Path | None:
    files = sorted(folder.glob(pattern))
    return files[-1] if files else None


def run_quickstart(data: str | os.PathLike | None = None, out: str | os.PathLike = "runs/quickstart",
                   small: bool = False, seeds: int = 1, baselines: list[str] | None = None) -> dict[str, Any]:
    """Run the whole pipeline (see the module docstring); returns the summary written to ``out/summary.json``.

    ``data``: a folder holding real datasets in known layouts (None: the built-in synthetic corpus).
    ``small``: the reduced plan (a minute or two on 2 CPU cores) used by the test suite.
    ``seeds``: pretrain and evaluate with seeds 0 .. seeds-1 and report mean ± sd over them, and which
    pretrained-vs-random gaps exceed that spread (each seed costs about one more run).
    ``baselines``: encoder specs evaluated beside the pretrained and the random one, a row each (None: the
    ImageNet row when its weights are in the local Hugging Face cache, else a line saying it is left out).
    """
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be a whole number >= 1, got {seeds!r}")
    os.environ.setdefault("WANDB_MODE", "offline")
    plan = SMALL if small else FULL
    out = Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    workers = 1 if small else max(1, min(4, os.cpu_count() or 1))
    stage = Stages(7)
    print(f"sonofm quickstart ({plan.name} run{'' if seeds == 1 else f', {seeds} seeds'}) -> {out}")
    for k in range(seeds):  # fail before any work
        check_same_recipe(pretrain_config(out, [], plan, seed=k), ignore=("data.shards",))
    rows = baseline_encoders(baselines)
    if len(rows) > 1:
        print(f"  baseline rows: {', '.join(rows)}")

    shard_sets, tasks, data_desc = data_stage(out, None if data is None else str(data), plan, workers, stage)
    per_seed: list[tuple[dict[str, Any], dict[str, Any]]] = []
    run_dirs: list[Path] = []
    for k in range(seeds):
        tag = "" if seeds == 1 else f", seed {k} ({k + 1} of {seeds})"
        cfg_k = pretrain_config(out, shard_sets, plan, seed=k)
        run_dirs.append(pretrain_stage(cfg_k, stage, suffix=tag))
        encoders = {"pretrained": str(run_dirs[-1]), **rows}
        stage(f"probes: linear + kNN on frozen features, pretrained vs {', '.join(rows)}, held-out test split{tag}",
              number=4)
        probes = {t.name: r for t in tasks if t.kind == "probe" for r in [probe(t, encoders, out, plan, k)] if r}
        stage(f"segmentation: UPerNet, {plan.seg_steps} steps per encoder, Dice / HD95 on the held-out test "
              f"split{tag}", number=5)
        segs = {t.name: r for t in tasks if t.kind == "seg" for r in [seg(t, encoders, out, plan, k)] if r}
        if not probes and not segs:
            raise RuntimeError("no downstream task could be evaluated (see the messages above)")
        per_seed.append((probes, segs))
    cfg = pretrain_config(out, shard_sets, plan)  # seed 0's, for the footnote (every seed has its sizes)
    run_dir = run_dirs[0]
    encoders = {"pretrained": str(run_dir), **rows}
    probes, segs = per_seed[0]

    if seeds == 1:
        table, results = report.table(probes, segs, encoders)
    else:
        table, results = report.seeds_table(per_seed, encoders)
    results_path = out / "results.json"
    write_json(results_path, results)
    stage("export: timm backbone + model card" + ("" if seeds == 1 else " (seed 0's backbone)"), number=6)
    from sonofm.export import export_backbone

    export_dir = export_backbone(run_dir, out / "export", results=results_path)

    stage("summary", number=7)
    comparison = report.comparison_figure(per_seed, out / "comparison.png")
    paths: dict[str, Any] = {
        "reconstruction grid": _latest(run_dir / "samples", "step-*.png"),
        "loss curve": run_dir / "plots" / "loss.png",
        "pretrained vs random": comparison,
        "confusion matrices": sorted((out / "probe").glob("*/*/confusion_*.png")),
        "segmentation overlays": sorted((out / "seg").glob("*/*/overlays")),
        "exported backbone": export_dir,
        "results": results_path,
    }
    if seeds > 1:
        paths["other seeds (pretraining, probes, segmentation)"] = [seed_root(out, k) for k in range(1, seeds)]
    footnote = report.footnote(cfg, shard_sets, data_desc, plan, seeds, list(rows)[1:])
    per_seed_scores = [report.scores(p, s) for p, s in per_seed]
    conclusion, wins = report.conclusion(per_seed_scores)
    print()
    print(table)
    print(footnote)
    print(conclusion)
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
        "seeds": seeds,
        "conclusion": conclusion,
        "pretrained_beats_random": wins,
        "per_seed": [{"seed": k, "run_dir": str(d), "scores": {s.key: v for s, v in sc.items()}}
                     for k, (d, sc) in enumerate(zip(run_dirs, per_seed_scores))],
        "probe": {t: {e: str(out / "probe" / safe_name(t) / safe_name(e) / "probe.json") for e in encoders}
                  for t in probes},
        "seg": {t: {e: str(out / "seg" / safe_name(t) / safe_name(e) / "report.json") for e in encoders} for t in segs},
        "paths": {k: [str(q) for q in v] if isinstance(v, list) else str(v) for k, v in paths.items()},
        "seconds": seconds,
    }
    write_json(out / "summary.json", summary)
    return summary
