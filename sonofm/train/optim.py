"""AdamW parameter groups for both loops: one rule for what gets weight decay, optional layer decay.

Weight matrices and kernels decay; norms, biases, GRN and layer-scale gains (all 1-D) and mask
tokens do not (MAE / ConvNeXt recipe). Finetuning adds a per-layer ``lr_scale`` (layer-wise LR
decay, :mod:`sonofm.finetune.lr_decay`); :func:`sonofm.train.schedule.apply_lr` multiplies each
group's rate by it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["decays", "param_groups", "adamw"]


def decays(name: str, param: nn.Parameter) -> bool:
    """Whether AdamW should decay this parameter."""
    return not (param.ndim <= 1 or name.endswith(".bias") or "mask_token" in name)


def param_groups(
    model: nn.Module,
    weight_decay: float,
    layer_of: Callable[[str], int] | None = None,
    lr_scale_of: Callable[[int], float] | None = None,
) -> list[dict[str, Any]]:
    """Groups of trainable parameters by (layer id, decays), in that order; frozen ones are left out.

    Without ``layer_of`` every parameter is layer 0 (scale 1), giving the decay group then the
    no-decay group. Each group carries ``names``, ``layer_id``, ``lr_scale`` and ``weight_decay``.
    """
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer = layer_of(name) if layer_of is not None else 0
        no_decay = not decays(name, p)
        group = groups.setdefault((layer, no_decay), {
            "params": [], "names": [], "layer_id": layer,
            "lr_scale": lr_scale_of(layer) if lr_scale_of is not None else 1.0,
            "weight_decay": 0.0 if no_decay else weight_decay,
        })
        group["params"].append(p)
        group["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def adamw(groups: list[dict[str, Any]], lr: float, betas: Sequence[float], fused: bool = False) -> torch.optim.AdamW:
    """AdamW over ``groups`` (from :func:`param_groups`); ``fused`` selects the fused kernel, which the
    fast path asks for on CUDA only (:class:`sonofm.train.fast.FastPath`). The parameters may still
    be on the CPU here: the fused kernel checks their device at the first step."""
    return torch.optim.AdamW(groups, lr=lr, betas=(float(betas[0]), float(betas[1])), fused=True if fused else None)
