"""Exponential moving average of model weights (optional in pretraining and finetuning).

The averaging itself is timm's :class:`timm.utils.ModelEmaV3` (one fused ``lerp`` over all floating
tensors per step, integer buffers copied, bf16 EMA tensors stochastically rounded); this class
only fixes what sonofm needs around it:

- a decay outside (0, 1) is an error, not a silently frozen or copied average;
- the copy's parameters are frozen (it is never trained, so it never needs gradients);
- :meth:`state_dict` / :meth:`load_state_dict` use the *model's own* key names, so
  ``ema.safetensors`` loads into the model (and its encoder into timm) like ``model.safetensors``
  does, and EMA checkpoints written by the earlier hand-written average still load
  (``ModelEmaV3.state_dict()`` would prefix every key with ``module.``).

The decay is constant (``update(model)`` without a step: no warm-up), as before.
"""

from __future__ import annotations

import torch
from timm.utils import ModelEmaV3
from torch import nn

__all__ = ["ModelEMA"]


class ModelEMA:
    """``decay``-averaged copy of a model's parameters and buffers, on the model's device."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self._ema = ModelEmaV3(model, decay=decay)
        for p in self._ema.module.parameters():
            p.requires_grad_(False)

    @property
    def decay(self) -> float:
        return self._ema.decay

    @property
    def module(self) -> nn.Module:
        """The averaged model (in eval mode); evaluate or export it like the model itself."""
        return self._ema.module

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """``ema = decay * ema + (1 - decay) * model`` (floating tensors), a copy for integer buffers.

        ``model`` must be the same architecture, unwrapped (not DDP / compiled wrappers: timm pairs
        the two state dicts by position)."""
        self._ema.update(model)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state, strict=True)
