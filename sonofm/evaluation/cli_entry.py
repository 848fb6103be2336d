"""``sonofm probe``: a typed :class:`~sonofm.config.schema.ProbeConfig` -> :func:`run_probe`.

Features are read once through the stream's evaluation loader (letterbox, every sample of the split
exactly once, per-sample metadata for labels and groups) and cached in ``out_dir/features.npz``.
"""

from __future__ import annotations

from typing import Any

import torch


def probe_from_config(cfg: Any) -> dict[str, Any]:
    """Run the probe described by a ``ProbeConfig``; returns the report written to ``out_dir/probe.json``."""
    from sonofm.datasets.stream import StreamSpec, make_eval_loader
    from sonofm.evaluation.probe import run_probe

    if not cfg.data.shards:
        raise ValueError("probe: data.shards is empty; give the shard folder(s) to evaluate on")
    spec = StreamSpec(list(cfg.data.shards), split=cfg.data.split)
    loader = make_eval_loader(
        spec, batch_size=cfg.data.batch_size, img_size=cfg.data.img_size, num_workers=cfg.data.num_workers,
        return_meta=True,
    )
    return run_probe(
        cfg.encoder, loader, cfg.out_dir, label_key=cfg.label_key, group_key=cfg.group_key, folds=cfg.folds,
        methods=list(cfg.methods), knn_k=cfg.knn_k, knn_temperature=cfg.knn_temperature,
        concat_prev_stage=cfg.concat_prev_stage, in_chans=cfg.in_chans, seed=cfg.seed,
        device="cuda" if torch.cuda.is_available() else "cpu",
        data_id=f"{list(cfg.data.shards)}:{cfg.data.split}:{cfg.data.img_size}",
    )
