"""``sonofm finetune seg|universal``: a typed ``FinetuneConfig`` -> :func:`finetune_segmentation` /
:func:`finetune_universal`.

Training batches stream from the shard sets' ``train`` split (augmented in the loader workers,
memory independent of the data's size), validation reads the ``val`` split exactly once across
processes at each sample's stored size. Launch on several processes with
``accelerate launch -m sonofm finetune ...``; ``resume`` is ``auto`` (the last checkpoint of
``out_dir``) or a checkpoint directory.
"""

from __future__ import annotations

import os
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
    if cfg.task == "seg":
        from sonofm.finetune.seg_train import finetune_segmentation

        if not cfg.data.shards:
            raise ValueError("finetune seg: data.shards is empty")
        report = finetune_segmentation(cfg, resume=resume, progress="finetune seg")
    elif cfg.task == "universal":
        from sonofm.finetune.universal import finetune_universal

        if not cfg.datasets:
            raise ValueError("finetune universal: 'datasets' is empty; list one shard folder per dataset")
        report = finetune_universal(cfg, resume=resume, progress="finetune universal")
    else:
        raise ValueError(f"unknown finetune task {cfg.task!r}; choose seg or universal")
    if int(os.environ.get("RANK", "0")) == 0:
        print(summary(cfg, report))
    return report
