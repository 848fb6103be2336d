"""``sonofm finetune seg|universal``: a typed ``FinetuneConfig`` -> :func:`finetune_segmentation` /
:func:`finetune_universal`.

Training batches stream from the shard sets' ``train`` split (augmented in the loader workers,
memory independent of the data's size), validation reads the ``val`` split exactly once across
processes at each sample's stored size. Launch on several processes with
``accelerate launch -m sonofm finetune ...``; ``resume`` is ``auto`` (the last checkpoint of
``out_dir``) or a checkpoint directory.
"""

from __future__ import annotations

from typing import Any


def finetune_from_config(cfg: Any, resume: str | None = None) -> dict[str, Any]:
    """Dispatch on ``cfg.task``; returns the run's report (also written to ``out_dir/report.json``)."""
    if cfg.task == "seg":
        from sonofm.finetune.seg_train import finetune_segmentation

        if not cfg.data.shards:
            raise ValueError("finetune seg: data.shards is empty")
        return finetune_segmentation(cfg, resume=resume)
    if cfg.task == "universal":
        from sonofm.finetune.universal import finetune_universal

        if not cfg.datasets:
            raise ValueError("finetune universal: 'datasets' is empty; list one shard folder per dataset")
        return finetune_universal(cfg, resume=resume)
    raise ValueError(f"unknown finetune task {cfg.task!r}; choose seg or universal")
