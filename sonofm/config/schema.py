"""Typed configuration schemas: every recipe in ``configs/`` is validated against these.

Dataclasses (OmegaConf structured configs) give one place where each knob is named, typed and
defaulted, so a misspelt key or a wrong type fails before any work starts. Each key's valid range
sits next to its type (:func:`checked`, a :class:`Check` in the field's metadata) and each section's
cross-key rules in its ``cross_checks`` method, so :func:`~sonofm.config.loader.load_config` refuses
``masking.ratio=1.5`` or ``data.img_size=100`` in milliseconds instead of after the model is built.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

#: Field-metadata key holding a key's :class:`Check`.
CHECK = "check"

#: The total stride of a ConvNeXt, the side of its last feature cell and of the smallest mask patch
#: (``sonofm.models.encoder.PATCH``; repeated here so that checking a config never imports torch; a
#: test keeps the two equal).
PATCH = 32

#: A cross-key problem: the keys involved (full dotted names) and what they must satisfy.
Problem = tuple[tuple[str, ...], str]


def _num(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


@dataclass(frozen=True)
class Check:
    """The valid values of one config key (of each item, for a list key); ``None`` means "not set".

    Numbers must also be finite whenever a check is declared. ``why`` says where a bound comes from.
    """

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    multiple_of: int | None = None
    one_of: tuple[Any, ...] = ()
    length: int | None = None  # lists: exact number of items
    min_length: int | None = None  # lists: at least this many items
    increasing: bool = False  # lists: each item >= the one before (a (low, high) range)
    distinct: bool = False  # lists: no item twice
    nonempty: bool = False  # strings: not ""
    prefix: tuple[str, ...] = ()  # strings: must start with one of these
    why: str = ""

    def describe(self, kind: str = "number") -> str:
        """The valid range in words, e.g. ``a number > 0 and < 1`` or ``a list of 2 increasing numbers``;
        ``kind`` names one value: ``number``, ``integer`` or ``name``."""
        if self.one_of:
            cond = f"one of {', '.join(map(_num, self.one_of))}"
        else:
            cond = " and ".join(f"{op} {_num(v)}" for op, v in
                                ((">", self.gt), (">=", self.ge), ("<", self.lt), ("<=", self.le)) if v is not None)
        if self.multiple_of:
            cond += (" and " if cond else "") + f"a multiple of {self.multiple_of}"
        if self.prefix:
            item = f"a name starting with {' or '.join(repr(p) for p in self.prefix)}"
        elif self.nonempty:
            item = "a non-empty string"
        else:
            item = f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}" + (f" {cond}" if cond else " (finite)")
        if self.length is not None or self.min_length is not None or self.increasing or self.distinct:
            count = (f"{self.length} " if self.length is not None
                     else f"at least {self.min_length} " if self.min_length else "")
            order = "increasing (low <= high) " if self.increasing else ""
            what = f"{kind}s" if cond or self.increasing else "values"
            item = f"a list of {count}{order}{'distinct ' if self.distinct else ''}{what}"
            item += f", each {cond}" if cond else ""
        return item + (f" ({self.why})" if self.why else "")

    def _item_ok(self, v: Any) -> bool:
        if self.one_of and v not in self.one_of:
            return False
        if isinstance(v, bool):
            return not (self.gt is not None or self.ge is not None or self.lt is not None or self.le is not None)
        if isinstance(v, (int, float)):
            if isinstance(v, float) and not math.isfinite(v):
                return False
            if (self.gt is not None and not v > self.gt) or (self.ge is not None and not v >= self.ge):
                return False
            if (self.lt is not None and not v < self.lt) or (self.le is not None and not v <= self.le):
                return False
            return not (self.multiple_of and v % self.multiple_of)
        if isinstance(v, str):
            if self.nonempty and not v.strip():
                return False
            return not (self.prefix and not v.startswith(self.prefix))
        return True

    def ok(self, value: Any) -> bool:
        """Whether ``value`` satisfies the check (``None``, an unset optional key, always does)."""
        if value is None:
            return True
        if isinstance(value, (list, tuple)):
            if self.length is not None and len(value) != self.length:
                return False
            if self.min_length is not None and len(value) < self.min_length:
                return False
            if self.distinct and len(set(map(str, value))) != len(value):
                return False
            if not all(self._item_ok(v) for v in value):
                return False
            return not (self.increasing and any(b < a for a, b in zip(value, value[1:])))
        return self._item_ok(value)


def checked(default: Any = MISSING, *, factory: Callable[[], Any] | None = None, **rules: Any) -> Any:
    """A dataclass field whose valid values are declared next to its type (see :class:`Check`)."""
    meta = {CHECK: Check(**rules)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _pair(low: float, high: float) -> Callable[[], list[float]]:
    return lambda: [low, high]


PROBABILITY = {"ge": 0.0, "le": 1.0}
COUNT = {"ge": 1}
IMG_SIZE = {"ge": PATCH, "multiple_of": PATCH,
            "why": f"the ConvNeXt's total stride: the encoder and the mask grid need whole {PATCH}-pixel patches"}
LR = {"gt": 0.0, "why": "a learning rate"}
SEED = {"ge": 0, "lt": 2**31, "why": "NumPy seeds are 32-bit; one per process is derived from it"}
DECAY = {"ge": 0.0, "lt": 1.0, "why": "0 disables it"}


@dataclass
class AugmentConfig:
    """Augmentation applied in the loader workers (pretraining and finetuning); the one definition,
    used by :mod:`sonofm.datasets.stream.augment`. Set a range to [1, 1] or a probability to 0 to disable a part."""

    crop_scale: list[float] = checked(factory=_pair(0.35, 1.0), length=2, increasing=True, gt=0.0, le=1.0,
                                      why="crop area / the field's bounding box")
    crop_ratio: list[float] = checked(factory=_pair(3 / 4, 4 / 3), length=2, increasing=True, gt=0.0,
                                      why="crop width / height, drawn log-uniformly")
    min_field_fraction: float = checked(0.5, **PROBABILITY, why="share of the crop box inside the field")
    hflip: float = checked(0.5, **PROBABILITY, why="a probability; never vertical: depth has a direction")
    gamma: list[float] = checked(factory=_pair(0.8, 1.25), length=2, increasing=True, gt=0.0,
                                 why="intensity exponent, drawn log-uniformly")
    gain: list[float] = checked(factory=_pair(0.85, 1.15), length=2, increasing=True, gt=0.0,
                                why="intensity multiplier")
    max_tries: int = checked(10, **COUNT, why="crop boxes tried before the best one seen is taken")

    @classmethod
    def from_any(cls, aug: AugmentConfig | dict[str, Any] | None) -> AugmentConfig:
        """A checked config from a config, a plain dict (e.g. from YAML; unknown keys are an error) or
        None (defaults): code that builds one by hand gets the same ranges as a recipe."""
        if aug is None:
            aug = cls()
        elif isinstance(aug, dict):
            valid = {f.name for f in fields(cls)}
            unknown = sorted(set(aug) - valid)
            if unknown:
                raise ValueError(f"unknown augmentation keys {unknown}; valid keys: {sorted(valid)}")
            aug = cls(**{k: list(v) if isinstance(v, tuple) else v for k, v in aug.items()})
        elif not isinstance(aug, cls):
            raise TypeError(f"aug must be AugmentConfig, dict or None, got {type(aug).__name__}")
        for f in fields(cls):
            check = f.metadata.get(CHECK)
            if check is not None and not check.ok(getattr(aug, f.name)):
                raise ValueError(f"AugmentConfig.{f.name} = {getattr(aug, f.name)!r}: must be {check.describe()}")
        return aug


@dataclass
class DataConfig:
    """Which shards to stream and how to batch them."""

    shards: list[str] = field(default_factory=list)  # shard dirs or explicit URL lists/patterns
    # per shard set; None = temperature over sizes
    weights: list[float] | None = checked(None, ge=0.0, min_length=1)
    temperature: float = checked(1.0, gt=0.0)
    split: str = "train"
    img_size: int = checked(128, **IMG_SIZE)
    batch_size: int = checked(32, **COUNT, why="images per process and step")
    num_workers: int = checked(2, ge=0, why="0 decodes in the training process")
    shuffle_buffer: int = checked(1000, ge=0)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def cross_checks(self, at: str) -> Iterator[Problem]:
        if self.weights is not None:
            if self.shards and len(self.weights) != len(self.shards):
                yield ((f"{at}weights", f"{at}shards"),
                       f"give one weight per shard set ({len(self.shards)}), or leave {at}weights unset")
            if not sum(self.weights) > 0:
                yield (f"{at}weights",), "the weights must not all be 0"


@dataclass
class ModelConfig:
    """The encoder: a timm ConvNeXt (V1 or V2), 1-channel by default."""

    name: str = checked("convnextv2_atto", prefix=("convnext",), why="a timm ConvNeXt V1 or V2, e.g. convnextv2_tiny")
    in_chans: int = checked(1, **COUNT)
    drop_path_rate: float = checked(0.0, ge=0.0, lt=1.0)
    # continued pretraining: the encoder starts from these weights (any encoder spec of the same
    # architecture, e.g. timm:convnextv2_atto.fcmae); the decoder and heads start new. null: random init
    init: str | None = None


@dataclass
class MaskingConfig:
    """Masked image modelling: random mask on the patch grid, inside the acoustic field only."""

    ratio: float = checked(0.6, gt=0.0, lt=1.0,
                           why="share of the in-field patches masked: 0 leaves nothing to reconstruct, 1 nothing to see")
    patch_size: int = checked(PATCH, ge=PATCH, multiple_of=PATCH,
                              why=f"side of a masked square in pixels: whole {PATCH}-pixel cells of the ConvNeXt's "
                                  "total stride (64 masks 2x2 cells together)")


@dataclass
class DecoderConfig:
    kind: str = "fcmae"  # "fcmae" | "spark"
    dim: int = checked(256, **COUNT)
    depth: int = checked(1, ge=0, why="FCMAE decoder blocks")


@dataclass
class TargetConfig:
    kind: str = "norm_pix"  # "norm_pix" | "lowpass" | "pix"
    lowpass_sigma: float = checked(1.5, gt=0.0, why="Gaussian sigma in pixels")
    # true: the target's per-patch mean/std and the loss use field pixels only, so blanked colour
    # flow and fan corners are never reconstructed. Off by default: on the quickstart (one seed each)
    # it lowered every score (probe bal. acc 0.335 -> 0.252, Dice 0.450 -> 0.428); see the README.
    field_pixels: bool = False


@dataclass
class HierarchyConfig:
    """Hierarchical classifier over the taxonomy; weight 0 gives plain FCMAE."""

    weight: float = checked(0.1, ge=0.0, why="0 disables the classifier")
    levels: list[str] = checked(factory=lambda: ["region", "organ", "source", "leaf"], distinct=True)
    # The tree comes from the shards' indexes (each stores its source's entry); a taxonomy file
    # given here extends the built-in one for shards built before indexes stored their entry.
    taxonomy: str | None = None

    def cross_checks(self, at: str) -> Iterator[Problem]:
        if self.weight > 0 and not self.levels:
            yield (f"{at}levels", f"{at}weight"), f"name at least one level, or set {at}weight=0"


@dataclass
class OptimConfig:
    base_lr: float = checked(1.5e-4, **LR)  # lr = base_lr * global_batch / 256
    lr: float | None = checked(None, **LR)  # absolute lr; overrides base_lr when set
    min_lr: float = checked(0.0, ge=0.0, why="the end of the cosine schedule")
    weight_decay: float = checked(0.05, ge=0.0)
    betas: list[float] = checked(factory=_pair(0.9, 0.95), length=2, ge=0.0, lt=1.0, why="AdamW's (beta1, beta2)")
    warmup_steps: int = checked(100, ge=0)
    clip_grad: float | None = checked(3.0, ge=0.0, why="0 or null disables clipping")
    accum_steps: int = checked(1, **COUNT, why="micro-batches per optimiser step")

    def cross_checks(self, at: str) -> Iterator[Problem]:
        if self.lr is not None and self.min_lr > self.lr:
            yield (f"{at}min_lr", f"{at}lr"), f"{at}min_lr is where the schedule ends: it must be <= {at}lr"


@dataclass
class LoggingConfig:
    log_every: int = checked(10, **COUNT)
    sample_every: int = checked(200, ge=0, why="reconstruction grid PNG every N steps; 0 disables")
    wandb: bool = False
    wandb_project: str = checked("sonofm", nonempty=True)
    wandb_mode: str = "offline"
    tensorboard: bool = False
    progress: bool = True
    log_keys: bool = False  # audit the data order: sample keys per step in keys/rank<r>.txt


@dataclass
class CheckpointConfig:
    every: int = checked(500, **COUNT, why="steps between checkpoints")
    keep_last: int = checked(3, **COUNT)


@dataclass
class FastPathConfig:
    """The training fast path (:mod:`sonofm.train.fast`); each switch applies only where it is safe."""

    channels_last: bool = True  # convolution weights and image batches in NHWC order (every device)
    fused_adamw: bool = True  # AdamW's fused kernel; CUDA only (ignored elsewhere)
    pin_memory: bool = True  # pinned loader batches + non-blocking copies; CUDA only (ignored elsewhere)
    compile: bool = False  # torch.compile the model in place (the first steps are slow while it compiles)
    compile_mode: str = checked("default", one_of=("default", "max-autotune-no-cudagraphs"),
                                why="torch.compile modes without CUDA graphs")


@dataclass
class PretrainConfig:
    """A pretraining recipe (``sonofm pretrain --config ...``)."""

    run_dir: str = checked("runs/pretrain", nonempty=True)
    seed: int = checked(0, **SEED)
    steps: int = checked(1000, **COUNT, why="optimiser steps of the whole run")
    precision: str = "no"  # accelerate mixed_precision: "no" | "bf16" | "fp16"
    ema: float = checked(0.0, **DECAY)  # EMA decay; 0 disables
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    hierarchy: HierarchyConfig = field(default_factory=HierarchyConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    fast: FastPathConfig = field(default_factory=FastPathConfig)

    def cross_checks(self, at: str) -> Iterator[Problem]:
        if self.data.img_size % self.masking.patch_size:
            yield ((f"{at}data.img_size", f"{at}masking.patch_size"),
                   f"the image must hold whole mask squares: {at}data.img_size must be a multiple of "
                   f"{at}masking.patch_size")


@dataclass
class ProbeConfig:
    """Frozen-feature evaluation (``sonofm probe``)."""

    out_dir: str = checked("runs/probe", nonempty=True)
    # any encoder spec: random:<name>, timm:<name>.<tag>, hf-hub:<org>/<repo>, a folder, <arch>@<file>.safetensors, a run
    encoder: str = checked("random:convnextv2_atto", nonempty=True)
    # encoders probed the same way beside it, one row each (``random`` = random:<the encoder's architecture>)
    baselines: list[str] = checked(factory=list, distinct=True)
    in_chans: int = checked(1, **COUNT)
    data: DataConfig = field(default_factory=DataConfig)
    label_key: str = checked("label", nonempty=True)
    group_key: str = checked("group", nonempty=True)
    folds: int = checked(5, ge=2, why="group-aware k-fold cross-validation")
    concat_prev_stage: bool = False
    methods: list[str] = checked(factory=lambda: ["linear", "knn"], min_length=1, distinct=True,
                                 one_of=("linear", "knn"))
    knn_k: int = checked(20, **COUNT)
    knn_temperature: float = checked(0.07, gt=0.0)
    seed: int = checked(0, **SEED)


@dataclass
class SegConfig:
    num_classes: int = checked(2, ge=2, why="background included")
    ce_weight: float = checked(1.0, ge=0.0)
    dice_weight: float = checked(1.0, ge=0.0)
    dice_per_image: bool = True  # soft Dice per image (the metrics are per image); false: one Dice per batch
    decoder_channels: int = checked(128, **COUNT)

    def cross_checks(self, at: str) -> Iterator[Problem]:
        if not self.ce_weight + self.dice_weight > 0:
            yield (f"{at}ce_weight", f"{at}dice_weight"), "at least one loss weight must be > 0"


@dataclass
class PromptConfig:
    enabled: bool = True
    gate: str = "scalar"  # "scalar" | "channel": one gate per injection point, or one per channel
    p_whole: float = checked(0.5, **PROBABILITY, why="share of training samples shown whole (else local / location)")


@dataclass
class FinetuneConfig:
    """Supervised finetuning: UPerNet segmentation, prompt classifier, universal training.

    Streams ``data.shards`` (seg) or ``datasets`` (universal, one shard set each) like pretraining,
    under Accelerate (processes, ``precision``, ``optim.accum_steps``); ``data.batch_size`` is per
    process and micro-batch, the learning rate follows the global batch unless ``optim.lr`` is set.
    """

    task: str = "seg"  # "seg" | "universal"
    out_dir: str = checked("runs/finetune", nonempty=True)
    encoder: str = checked("random:convnextv2_atto", nonempty=True)  # any encoder spec (see ProbeConfig)
    # encoders finetuned the same way beside it, each in out_dir/baselines/<name>, one row each
    baselines: list[str] = checked(factory=list, distinct=True)
    in_chans: int = checked(1, **COUNT)
    seed: int = checked(0, **SEED)
    steps: int = checked(500, **COUNT)
    eval_every: int = checked(100, ge=0, why="0 evaluates only at the end")
    precision: str = "no"
    ema: float = checked(0.0, **DECAY)
    layer_decay: float = checked(0.8, gt=0.0, le=1.0, why="1 gives every layer the same rate")
    label_fraction: float = checked(1.0, gt=0.0, le=1.0, why="share of the training groups used")
    datasets: list[str] = field(default_factory=list)  # shard dirs, one per dataset (universal)
    dataset_weights: list[float] | None = checked(None, ge=0.0, min_length=1)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(base_lr=1e-3, warmup_steps=50, betas=[0.9, 0.999]))
    seg: SegConfig = field(default_factory=SegConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    # resumable checkpoints out_dir/checkpoints/step-N/ every N steps and at the end (--resume auto)
    checkpoint: CheckpointConfig = field(default_factory=lambda: CheckpointConfig(every=100, keep_last=2))
    log_keys: bool = False  # audit the data order: sample keys per step in out_dir/keys/rank<r>.txt
    # head of the keypoint datasets (universal): direct regression from the pooled feature, or soft-argmax
    # heatmaps on the decoder; regression measured better and cheaper at CPU scale (benchmarks/RESULTS_fmuia.md §2)
    keypoint_head: str = "regression"

    def cross_checks(self, at: str) -> Iterator[Problem]:
        if self.dataset_weights is not None:
            if self.datasets and len(self.dataset_weights) != len(self.datasets):
                yield ((f"{at}dataset_weights", f"{at}datasets"),
                       f"give one weight per dataset ({len(self.datasets)}), or leave {at}dataset_weights unset")
            if not sum(self.dataset_weights) > 0:
                yield (f"{at}dataset_weights",), "the weights must not all be 0"


@dataclass
class ShardsConfig:
    """A shard build (``sonofm shards build --config ...``)."""

    sources: list[str] = field(default_factory=list)  # "adapter:PATH" entries
    out: str = checked("shards", nonempty=True)
    max_side: int = checked(512, ge=8, why="longest image side in pixels after resizing")
    samples_per_shard: int = checked(1000, **COUNT)
    train: float = checked(0.8, ge=0.0, why="a share of the groups; train + val + test is scaled to 1")
    val: float = checked(0.1, ge=0.0, why="a share of the groups; train + val + test is scaled to 1")
    test: float = checked(0.1, ge=0.0, why="a share of the groups; train + val + test is scaled to 1")
    workers: int = checked(1, **COUNT, why="processes")
    dedup: bool = True
    taxonomy: str | None = None  # a user taxonomy file extending the built-in tree (new organs, sources)
    # drop images whose colour covers more of the field than this share
    colour_limit: float | None = checked(None, **PROBABILITY, why="a share of the field; null keeps every image")
    # text touching the kept image (labels inside it, ID/date lines its edge covers): blank (set to 0) or keep
    text: str = "blank"

    def cross_checks(self, at: str) -> Iterator[Problem]:
        if not self.train + self.val + self.test > 0:
            yield (f"{at}train", f"{at}val", f"{at}test"), "the split fractions must have a positive sum"


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
    "prompt.gate": ("scalar", "channel"),
    "keypoint_head": ("heatmap", "regression"),
    "logging.wandb_mode": ("offline", "online", "disabled"),
    "text": ("blank", "keep"),
}
