"""The sizes and fixed settings of a quickstart run (the full default and the reduced ``--small`` one)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

RECIPE = "configs/pretrain/quickstart.yaml"
#: Split fractions of every quickstart shard set (val is kept for ``sonofm finetune`` users).
SPLITS: dict[str, float] = {"train": 0.6, "val": 0.1, "test": 0.3}
RANDOM_SPEC = "random:convnextv2_atto"
#: The ImageNet baseline row (timm's FCMAE pretrained, ImageNet-1k finetuned atto), added when it is in the local cache.
IMAGENET_SPEC = "timm:convnextv2_atto.fcmae_ft_in1k"
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
