"""Layer-wise learning-rate decay for timm ConvNeXt encoders (and AdamW parameter groups).

Early layers of a pretrained encoder hold generic features that finetuning should move little;
later layers and the new heads need to move most. Layer ids follow the ConvNeXt paper's recipe,
generalised to any depth: stem 0, stage 0 -> 1, stage 1 -> 2, stage 2 in groups of three blocks
-> 3, 4, ..., stage 3 -> the next id, anything after the encoder (norms of the head, decoders,
heads) -> the last id. A stage's downsample layer shares the id of its first block. The rate of
layer ``i`` is ``lr * decay ** (last - i)``; what gets weight decay is the training core's rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import nn

from sonofm.train.optim import param_groups

__all__ = ["convnext_layer_id", "layer_decay_groups", "num_layer_ids"]


def num_layer_ids(depths: Sequence[int]) -> int:
    """Number of encoder layer ids (stem included); the id after the encoder is this value."""
    return 3 + math.ceil(depths[2] / 3) + 1


def convnext_layer_id(name: str, depths: Sequence[int]) -> int:
    """Layer id of an encoder parameter named as in timm (``stem.0.weight``, ``stages.2.blocks.4...``)."""
    if len(depths) != 4:
        raise ValueError(f"layer decay expects a 4-stage ConvNeXt, got depths {list(depths)}")
    last = num_layer_ids(depths)
    if name.startswith("stem."):
        return 0
    if name.startswith("stages."):
        parts = name.split(".")
        stage = int(parts[1])
        block = int(parts[3]) if parts[2] == "blocks" else 0  # downsample: its stage's first block
        if stage in (0, 1):
            return stage + 1
        if stage == 2:
            return 3 + block // 3
        return last - 1
    return last  # norm_pre, head.norm: on top of the last stage


def _depths(encoder: nn.Module) -> list[int]:
    stages = getattr(encoder, "stages", None)
    if stages is None:
        raise TypeError(f"{type(encoder).__name__} has no timm ConvNeXt 'stages': cannot assign layer ids")
    return [len(s.blocks) for s in stages]


def layer_decay_groups(
    model: nn.Module,
    weight_decay: float = 0.05,
    layer_decay: float = 1.0,
    encoder_attr: str = "encoder",
) -> list[dict[str, Any]]:
    """AdamW parameter groups with ``lr_scale`` (layer decay) and ``weight_decay`` per group.

    Parameters of ``model.<encoder_attr>`` get the ConvNeXt layer ids; everything else (decoder,
    heads, prompt biases) gets the top id (scale 1). The decay rule is the training core's
    (:func:`sonofm.train.optim.param_groups`).
    """
    if not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    encoder = getattr(model, encoder_attr, None)
    depths = _depths(encoder) if encoder is not None else [1, 1, 1, 1]
    top = num_layer_ids(depths)
    prefix = f"{encoder_attr}."

    def layer_of(name: str) -> int:
        inside = encoder is not None and name.startswith(prefix)
        return convnext_layer_id(name[len(prefix):], depths) if inside else top

    return param_groups(model, weight_decay, layer_of, lambda layer: layer_decay ** (top - layer))
