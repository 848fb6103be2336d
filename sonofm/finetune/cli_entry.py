"""``sonofm finetune seg|universal``: a typed ``FinetuneConfig`` -> :func:`run_seg_finetune` / :func:`run_universal`.

Training and validation samples are read from the shard sets' ``train`` and ``val`` splits into
memory (:func:`sonofm.finetune.data.samples_from_shards`), so label fractions can select whole
groups and validation metrics are computed at each sample's stored size.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _lr(cfg: Any) -> float:
    from sonofm.train.schedule import scaled_lr

    return scaled_lr(cfg.optim.base_lr, cfg.data.batch_size, cfg.optim.lr)


def finetune_from_config(cfg: Any) -> dict[str, Any]:
    """Dispatch on ``cfg.task``; returns the run's report (also written to ``out_dir/report.json``)."""
    common = dict(
        img_size=cfg.data.img_size, steps=cfg.steps, batch_size=cfg.data.batch_size, lr=_lr(cfg),
        weight_decay=cfg.optim.weight_decay, layer_decay=cfg.layer_decay, warmup_steps=cfg.optim.warmup_steps,
        min_lr=cfg.optim.min_lr, ce_weight=cfg.seg.ce_weight, dice_weight=cfg.seg.dice_weight,
        dice_per_image=cfg.seg.dice_per_image,
        decoder_channels=cfg.seg.decoder_channels, ema=cfg.ema, clip_grad=cfg.optim.clip_grad,
        eval_every=cfg.eval_every, in_chans=cfg.in_chans, seed=cfg.seed, device=_device(),
        precision=cfg.precision, aug=asdict(cfg.data.augment), betas=tuple(cfg.optim.betas),
    )
    if cfg.optim.accum_steps != 1:
        raise ValueError(f"optim.accum_steps={cfg.optim.accum_steps}: finetuning does not accumulate gradients; "
                         "raise data.batch_size instead")
    if cfg.task == "seg":
        from sonofm.finetune.data import samples_from_shards
        from sonofm.finetune.seg_train import run_seg_finetune

        if not cfg.data.shards:
            raise ValueError("finetune seg: data.shards is empty")
        binary = cfg.seg.num_classes == 2
        train = [s for s in samples_from_shards(cfg.data.shards, "train", binary) if s.mask is not None]
        val = [s for s in samples_from_shards(cfg.data.shards, "val", binary) if s.mask is not None]
        if not train or not val:
            raise ValueError(f"finetune seg: {cfg.data.shards} has {len(train)} train / {len(val)} val samples with masks")
        return run_seg_finetune(cfg.encoder, train, val, cfg.out_dir, num_classes=cfg.seg.num_classes,
                                label_fraction=cfg.label_fraction, **common)
    if cfg.task == "universal":
        from sonofm.finetune.universal import run_universal, task_specs_from_shards

        if not cfg.datasets:
            raise ValueError("finetune universal: 'datasets' is empty; list one shard folder per dataset")
        tasks = task_specs_from_shards(list(cfg.datasets), weights=cfg.dataset_weights)
        if cfg.label_fraction < 1.0:
            from sonofm.finetune.label_efficiency import select_groups

            for t in tasks:
                t.train = [t.train[i] for i in select_groups([s.group for s in t.train], cfg.label_fraction, cfg.seed)]
        return run_universal(cfg.encoder, tasks, cfg.out_dir, use_prompts=cfg.prompt.enabled,
                             temperature=cfg.data.temperature, **common)
    raise ValueError(f"unknown finetune task {cfg.task!r}; choose seg or universal")
