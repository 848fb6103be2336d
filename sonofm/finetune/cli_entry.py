"""``sonofm finetune seg|universal``: a typed ``FinetuneConfig`` -> :func:`finetune_segmentation` /
:func:`finetune_universal`.

Training batches stream from the shard sets' ``train`` split (augmented in the loader workers,
memory independent of the data's size), validation reads the ``val`` split exactly once across
processes at each sample's stored size. Launch on several processes with
``accelerate launch -m sonofm finetune ...``; ``resume`` is ``auto`` (the last checkpoint of
``out_dir``) or a checkpoint directory.
"""

from __future__ import annotations

import copy
import os
from operator import attrgetter
from pathlib import Path
from typing import Any

#: What a finetuning run leaves in ``out_dir``, in the order the summary names it.
OUTPUTS = (("report.json", "report"), ("metrics.jsonl", "per-step log"), ("best", "best weights (model.safetensors, "
           "meta.json)"), ("overlays", "validation overlays"), ("checkpoints", "resumable checkpoints"))


def _figures(node: dict[str, Any], prefix: str = "") -> list[str]:
    """``name value`` of the numbers in a report section (one level of per-dataset sections too)."""
    out = []
    for k, v in node.items():
        if isinstance(v, bool) or k in ("n", "step"):
            continue
        if isinstance(v, (int, float)):
            out.append(f"{prefix}{k} {v:.3f}" if isinstance(v, float) else f"{prefix}{k} {v}")
        elif isinstance(v, dict) and not prefix:
            out += _figures(v, f"{k} ")
    return out


def summary(cfg: Any, report: dict[str, Any]) -> str:
    """The lines a finetuning run ends with: its headline figures, then each file and folder it wrote."""
    out = Path(cfg.out_dir)
    best = report.get("best") or {}
    lines = [f"finetune {cfg.task} done: {report.get('steps', cfg.steps)} steps on {report.get('processes', 1)} "
             f"process(es); loss {report.get('first_loss', float('nan')):.3f} -> {report.get('last_loss', float('nan')):.3f}",
             "  validation (final): " + ", ".join(_figures(report.get("final") or {})),
             f"  best checkpoint: step {best.get('step')}"]
    lines += [f"  {out / name}{'/' if (out / name).is_dir() else ''}: {what}" for name, what in OUTPUTS
              if (out / name).exists()]
    return "\n".join(lines)


def finetune_from_config(cfg: Any, resume: str | None = None) -> dict[str, Any]:
    """Dispatch on ``cfg.task``; returns the run's report (also written to ``out_dir/report.json``).

    Shows a progress bar over the steps and ends by printing the figures and the files it wrote (on
    the main process).
    """
    from sonofm.evaluation.compare import baseline_dir, baselines_for
    from sonofm.models.encoder_spec import check_spec

    check_spec(cfg.encoder)
    baselines = baselines_for(cfg.encoder, list(getattr(cfg, "baselines", None) or []))
    report = _finetune_one(cfg, resume)
    if not baselines:
        return report
    reports = {cfg.encoder: report}
    for spec in baselines:  # the same recipe, seed and data; each its own out_dir (resumable on its own)
        sub = copy.deepcopy(cfg)
        sub.encoder, sub.out_dir, sub.baselines = spec, str(baseline_dir(cfg.out_dir, spec)), []
        reports[spec] = _finetune_one(sub, resume if resume == "auto" else None)  # a checkpoint dir is the encoder's
    return {**report, "comparison": _compare(cfg, reports)}


def _segmentation(cfg: Any, resume: str | None) -> dict[str, Any]:
    from sonofm.finetune.seg_train import finetune_segmentation

    if not cfg.data.shards:
        raise ValueError("finetune seg: data.shards is empty")
    return finetune_segmentation(cfg, resume=resume, progress=f"finetune seg ({cfg.encoder})")


def _universal(cfg: Any, resume: str | None) -> dict[str, Any]:
    from sonofm.finetune.universal import finetune_universal

    if not cfg.datasets:
        raise ValueError("finetune universal: 'datasets' is empty; list one shard folder per dataset")
    return finetune_universal(cfg, resume=resume, progress=f"finetune universal ({cfg.encoder})")


#: ``sonofm finetune <command>`` -> (the function it runs, the config key naming its shard sets)
COMMANDS: dict[str, tuple[Any, str]] = {"seg": (_segmentation, "data.shards"), "universal": (_universal, "datasets")}


def _finetune_one(cfg: Any, resume: str | None) -> dict[str, Any]:
    if cfg.task not in COMMANDS:
        raise ValueError(f"unknown finetune task {cfg.task!r}; choose one of {', '.join(COMMANDS)}")
    report = COMMANDS[cfg.task][0](cfg, resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(summary(cfg, report))
    return report


def _compare(cfg: Any, reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One row per encoder (the final validation figures): table, chart and results records in ``out_dir``."""
    from sonofm.evaluation.compare import finetune_rows, write_comparison

    sets = list(attrgetter(COMMANDS[cfg.task][1])(cfg) or [])
    dataset = ", ".join(Path(s).name for s in sets)
    rows, records = finetune_rows(reports, cfg.task, dataset)
    if int(os.environ.get("RANK", "0")) != 0:
        return {"rows": rows}
    written = write_comparison(cfg.out_dir, rows, records, f"finetune {cfg.task} on {dataset}: encoder vs baselines "
                               f"({cfg.steps} steps, validation split)")
    print(f"\nfinetune {cfg.task} comparison (final validation figures):")
    print(written["table"])
    print(f"wrote {written['markdown']}, {written['figure']} and {written['results']} "
          f"(sonofm export --results {written['results']} puts these rows on the model card)")
    return {"rows": rows, **written}
