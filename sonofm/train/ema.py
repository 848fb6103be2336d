"""Exponential moving average of model weights (optional in pretraining and finetuning)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA:
    """Keeps ``decay``-averaged copies of a model's parameters and buffers on the same device."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """``ema = decay * ema + (1 - decay) * model`` for floating tensors (one fused ``lerp`` over all of
        them: a few kernels per step instead of two per tensor), a copy for integer buffers."""
        source = model.state_dict()
        targets, values = [], []
        for name, target in self.module.state_dict().items():
            value = source[name].detach()
            if target.dtype.is_floating_point:
                targets.append(target)
                values.append(value.to(target.dtype))
            else:
                target.copy_(value)
        if targets:
            torch._foreach_lerp_(targets, values, 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state, strict=True)
