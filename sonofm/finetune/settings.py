"""A :class:`~sonofm.config.schema.FinetuneConfig` from keyword settings (the Python entry points).

Every finetuning setting is declared once, in the schema; the training functions take the typed
config. Python callers that finetune in-memory samples (the quickstart, benchmarks, experiments)
keep their keyword calls (``run_seg_finetune(spec, train, val, out, steps=200, lr=1e-3)``): this
table maps each keyword to its config key, and the result is range-checked like a recipe.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import Any

from sonofm.config import FinetuneConfig, check_config

__all__ = ["KEYWORDS", "finetune_config"]

#: keyword -> config key (dotted)
KEYWORDS: dict[str, str] = {
    "img_size": "data.img_size",
    "batch_size": "data.batch_size",
    "num_workers": "data.num_workers",
    "aug": "data.augment",
    "temperature": "data.temperature",
    "steps": "steps",
    "lr": "optim.lr",
    "base_lr": "optim.base_lr",
    "weight_decay": "optim.weight_decay",
    "warmup_steps": "optim.warmup_steps",
    "min_lr": "optim.min_lr",
    "clip_grad": "optim.clip_grad",
    "betas": "optim.betas",
    "accum_steps": "optim.accum_steps",
    "layer_decay": "layer_decay",
    "ema": "ema",
    "eval_every": "eval_every",
    "label_fraction": "label_fraction",
    "in_chans": "in_chans",
    "seed": "seed",
    "precision": "precision",
    "num_classes": "seg.num_classes",
    "ce_weight": "seg.ce_weight",
    "dice_weight": "seg.dice_weight",
    "dice_per_image": "seg.dice_per_image",
    "decoder_channels": "seg.decoder_channels",
    "use_prompts": "prompt.enabled",
    "gate": "prompt.gate",
    "p_whole": "prompt.p_whole",
    "checkpoint_every": "checkpoint.every",  # with checkpoints=True
    "keep_last": "checkpoint.keep_last",
    "encoder": "encoder",
    "out_dir": "out_dir",
}

#: What the keyword entry points did before they took a config: an absolute rate of 1e-3, batches
#: of 16 and a floor of 1e-6 (they write resumable checkpoints only when asked: ``checkpoints=True``).
KEYWORD_DEFAULTS: dict[str, Any] = {"lr": 1e-3, "batch_size": 16, "min_lr": 1e-6}


def _value(key: str, value: Any) -> Any:
    from sonofm.config.schema import AugmentConfig

    if key == "data.augment":
        if value is None:
            return AugmentConfig()
        if dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)
        return AugmentConfig(**{k: list(v) if isinstance(v, tuple) else v for k, v in dict(value).items()})
    if key in ("out_dir", "encoder"):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def finetune_config(base: FinetuneConfig | None = None, defaults: Mapping[str, Any] | None = None,
                    **settings: Any) -> FinetuneConfig:
    """``base`` (default: the schema's defaults with :data:`KEYWORD_DEFAULTS`) with ``settings``
    (keywords of :data:`KEYWORDS`) applied, checked as a recipe would be; an unknown keyword is an error."""
    from sonofm.config.loader import _check_choices

    unknown = sorted(set(settings) - set(KEYWORDS))
    if unknown:
        raise TypeError(f"unknown finetuning setting(s) {unknown}; valid: {sorted(KEYWORDS)}")
    cfg = copy.deepcopy(base) if base is not None else FinetuneConfig()
    merged = {**(KEYWORD_DEFAULTS if base is None else {}), **dict(defaults or {}), **settings}
    for name, value in merged.items():
        key = KEYWORDS[name]
        node = cfg
        *parents, leaf = key.split(".")
        for part in parents:
            node = getattr(node, part)
        setattr(node, leaf, _value(key, value))
    check_config(cfg)  # a ConfigError (a ValueError) names the key
    _check_choices(cfg)
    return cfg
