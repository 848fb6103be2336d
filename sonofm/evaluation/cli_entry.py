"""``sonofm probe``: a typed :class:`~sonofm.config.schema.ProbeConfig` -> :func:`run_probe`.

Features are read once through the stream's evaluation loader (letterbox, every sample of the split
exactly once, per-sample metadata for labels and groups) and cached in ``out_dir/features.npz``.
"""

from __future__ import annotations

from typing import Any

import torch


def groups_in_split(shards: list[str], split: str) -> int | None:
    """Groups of ``split`` over these shard sets from their indexes (an upper bound: sources may share
    group names, and unlabelled samples are left out later), or None when an index lacks the count."""
    from sonofm.datasets.stream.loader import shard_indexes

    total = 0
    indexes = shard_indexes(shards)
    for index in indexes:
        per_split = (index.get("counts") or {}).get("groups")
        if not isinstance(per_split, dict):
            return None
        total += int(per_split.get(split, 0))
    return total if indexes else None


def probe_from_config(cfg: Any) -> dict[str, Any]:
    """Run the probe described by a ``ProbeConfig``; returns the report written to ``out_dir/probe.json``.

    Fewer groups in the split than folds stop here, before the encoder is loaded or a feature extracted.
    """
    from sonofm.datasets.stream.loader import StreamSpec, make_eval_loader, shard_indexes
    from sonofm.evaluation.compare import baseline_dir, baselines_for, probe_rows, write_comparison
    from sonofm.evaluation.probe import run_probe, too_few_groups
    from sonofm.models.encoder_spec import check_spec

    if not cfg.data.shards:
        raise ValueError("probe: data.shards is empty; give the shard folder(s) to evaluate on")
    check_spec(cfg.encoder)  # every encoder is loadable before any feature is extracted
    baselines = baselines_for(cfg.encoder, list(cfg.baselines))
    if cfg.group_key == "group":  # the unit the build counts per split
        n_groups = groups_in_split(list(cfg.data.shards), cfg.data.split)
        if n_groups is not None and n_groups < cfg.folds:
            raise too_few_groups(n_groups, cfg.folds, f"probe on {list(cfg.data.shards)} split {cfg.data.split!r}")
    spec = StreamSpec(list(cfg.data.shards), split=cfg.data.split)
    data_info = {"datasets": sorted({str(i.get("source")) for i in shard_indexes(list(cfg.data.shards))}),
                 "split": cfg.data.split}
    reports: dict[str, dict[str, Any]] = {}
    for encoder in (cfg.encoder, *baselines):
        loader = make_eval_loader(
            spec, batch_size=cfg.data.batch_size, img_size=cfg.data.img_size, num_workers=cfg.data.num_workers,
            return_meta=True,
        )
        out_dir = cfg.out_dir if encoder == cfg.encoder else baseline_dir(cfg.out_dir, encoder)
        reports[encoder] = run_probe(
            encoder, loader, out_dir, label_key=cfg.label_key, group_key=cfg.group_key, folds=cfg.folds,
            methods=list(cfg.methods), knn_k=cfg.knn_k, knn_temperature=cfg.knn_temperature,
            concat_prev_stage=cfg.concat_prev_stage, in_chans=cfg.in_chans, seed=cfg.seed,
            device="cuda" if torch.cuda.is_available() else "cpu",
            data_id=f"{list(cfg.data.shards)}:{cfg.data.split}:{cfg.data.img_size}",
            data_info=data_info,
        )
    if not baselines:
        return reports[cfg.encoder]
    rows, records = probe_rows(reports)
    written = write_comparison(cfg.out_dir, rows, records,
                               f"probe on {', '.join(data_info['datasets'])} ({cfg.data.split} split): "
                               "encoder vs baselines")
    print(f"\nprobe comparison ({cfg.data.split} split, {cfg.folds}-fold CV by group; mean ± std over folds):")
    print(written["table"])
    print(f"wrote {written['markdown']}, {written['figure']} and {written['results']} "
          f"(sonofm export --results {written['results']} puts these rows on the model card)")
    return {**reports[cfg.encoder], "comparison": {"rows": rows, **written}}
