"""Typed configuration schemas: every recipe in ``configs/`` is validated against these.

Dataclasses (OmegaConf structured configs) give one place where each knob is named, typed and
defaulted, so a misspelt key or a wrong type fails before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class AugmentConfig:
    """Augmentation applied in the loader workers (pretraining and finetuning)."""

    crop_scale: list[float] = field(default_factory=lambda: [0.35, 1.0])
    crop_ratio: list[float] = field(default_factory=lambda: [0.75, 1.3333])
    min_field_fraction: float = 0.5
    hflip: float = 0.5
    gamma: list[float] = field(default_factory=lambda: [0.8, 1.25])
    gain: list[float] = field(default_factory=lambda: [0.85, 1.15])


@dataclass
class DataConfig:
    """Which shards to stream and how to batch them."""

    shards: list[str] = field(default_factory=list)  # shard dirs or explicit URL lists/patterns
    weights: list[float] | None = None  # per shard set; None = temperature over sizes
    temperature: float = 1.0
    split: str = "train"
    img_size: int = 128
    batch_size: int = 32
    num_workers: int = 2
    shuffle_buffer: int = 1000
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class ModelConfig:
    """The encoder: a timm ConvNeXt (V1 or V2), 1-channel by default."""

    name: str = "convnextv2_atto"
    in_chans: int = 1
    drop_path_rate: float = 0.0


@dataclass
class MaskingConfig:
    """Masked image modelling: random mask on the patch grid, inside the acoustic field only."""

    ratio: float = 0.6
    patch_size: int = 32


@dataclass
class DecoderConfig:
    kind: str = "fcmae"  # "fcmae" | "spark"
    dim: int = 256
    depth: int = 1


@dataclass
class TargetConfig:
    kind: str = "norm_pix"  # "norm_pix" | "lowpass" | "pix"
    lowpass_sigma: float = 1.5


@dataclass
class HierarchyConfig:
    """Hierarchical classifier over the taxonomy; weight 0 gives plain FCMAE."""

    weight: float = 0.1
    levels: list[str] = field(default_factory=lambda: ["region", "organ", "source", "leaf"])
    # The tree comes from the shards' indexes (each stores its source's entry); a taxonomy file
    # given here extends the built-in one for shards built before indexes stored their entry.
    taxonomy: str | None = None


@dataclass
class OptimConfig:
    base_lr: float = 1.5e-4  # lr = base_lr * global_batch / 256
    lr: float | None = None  # absolute lr; overrides base_lr when set
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    warmup_steps: int = 100
    clip_grad: float | None = 3.0
    accum_steps: int = 1


@dataclass
class LoggingConfig:
    log_every: int = 10
    sample_every: int = 200  # reconstruction grid PNG every N steps
    wandb: bool = False
    wandb_project: str = "sonofm"
    wandb_mode: str = "offline"
    tensorboard: bool = False
    progress: bool = True
    log_keys: bool = False  # audit the data order: sample keys per step in keys/rank<r>.txt


@dataclass
class CheckpointConfig:
    every: int = 500
    keep_last: int = 3


@dataclass
class PretrainConfig:
    """A pretraining recipe (``sonofm pretrain --config ...``)."""

    run_dir: str = "runs/pretrain"
    seed: int = 0
    steps: int = 1000
    precision: str = "no"  # accelerate mixed_precision: "no" | "bf16" | "fp16"
    ema: float = 0.0  # EMA decay; 0 disables
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    hierarchy: HierarchyConfig = field(default_factory=HierarchyConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


@dataclass
class ProbeConfig:
    """Frozen-feature evaluation (``sonofm probe``)."""

    out_dir: str = "runs/probe"
    encoder: str = "random:convnextv2_atto"  # random:<timm name> | run dir | exported timm dir
    in_chans: int = 1
    data: DataConfig = field(default_factory=DataConfig)
    label_key: str = "label"
    group_key: str = "group"
    folds: int = 5
    concat_prev_stage: bool = False
    methods: list[str] = field(default_factory=lambda: ["linear", "knn"])
    knn_k: int = 20
    knn_temperature: float = 0.07
    seed: int = 0


@dataclass
class SegConfig:
    num_classes: int = 2
    ce_weight: float = 1.0
    dice_weight: float = 1.0
    dice_per_image: bool = True  # soft Dice per image (the metrics are per image); false: one Dice per batch
    decoder_channels: int = 128


@dataclass
class PromptConfig:
    enabled: bool = True


@dataclass
class FinetuneConfig:
    """Supervised finetuning: UPerNet segmentation, prompt classifier, universal training."""

    task: str = "seg"  # "seg" | "universal"
    out_dir: str = "runs/finetune"
    encoder: str = "random:convnextv2_atto"
    in_chans: int = 1
    seed: int = 0
    steps: int = 500
    eval_every: int = 100
    precision: str = "no"
    ema: float = 0.0
    layer_decay: float = 0.8
    label_fraction: float = 1.0
    datasets: list[str] = field(default_factory=list)  # shard dirs, one per dataset (universal)
    dataset_weights: list[float] | None = None
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(base_lr=1e-3, warmup_steps=50, betas=[0.9, 0.999]))
    seg: SegConfig = field(default_factory=SegConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)


@dataclass
class ShardsConfig:
    """A shard build (``sonofm shards build --config ...``)."""

    sources: list[str] = field(default_factory=list)  # "adapter:PATH" entries
    out: str = "shards"
    max_side: int = 512
    samples_per_shard: int = 1000
    train: float = 0.8
    val: float = 0.1
    test: float = 0.1
    workers: int = 1
    dedup: bool = True
    taxonomy: str | None = None  # a user taxonomy file extending the built-in tree (new organs, sources)
    colour_limit: float | None = None  # drop images whose colour covers more of the field than this share


SCHEMAS: dict[str, type] = {
    "pretrain": PretrainConfig,
    "probe": ProbeConfig,
    "finetune": FinetuneConfig,
    "shards": ShardsConfig,
}

#: Allowed values of string keys (checked after merging, whatever the schema).
CHOICES: dict[str, tuple[str, ...]] = {
    "precision": ("no", "bf16", "fp16"),
    "decoder.kind": ("fcmae", "spark"),
    "target.kind": ("norm_pix", "lowpass", "pix"),
    "hierarchy.levels": ("region", "organ", "source", "leaf"),
    "data.split": ("train", "val", "test"),
    "task": ("seg", "universal"),
}
