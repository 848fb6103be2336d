"""The training fast path both loops share: memory layout, host-to-device copies, compilation.

:func:`plan_fast_path` turns the recipe's :class:`~sonofm.config.schema.FastPathConfig` into what
is actually applied on this device (a :class:`FastPath`), each switch only where it is safe:

- ``channels_last``: convolution weights (:func:`conv_weights_channels_last`) and image batches
  (:func:`to_device`) in NHWC memory order, on every device. timm's ConvNeXt already computes its
  activations in NHWC (its ``LayerNorm2d`` and block permute back from NHWC), so their weight
  gradients come back NHWC; storing the weights NCHW is what made DDP print "Grad strides do not
  match bucket view strides" on every rank (the depthwise kernels ``[C, 1, 7, 7]`` differ in the
  stride of their size-1 dimension, which the gradient layout contract ignores and DDP's bucket
  check does not). Other 4-D parameters (mask tokens ``[1, C, 1, 1]``) keep the standard layout:
  their gradients are reduced broadcasts, standard-strided. With ``channels_last`` off the loops
  still give the kernels whose two layouts are the same bytes their NHWC strides (nothing moves),
  so DDP stays quiet either way.
- ``fused_adamw``: AdamW's fused kernel, on CUDA only (:func:`sonofm.train.optim.adamw`).
- ``pin_memory``: pinned loader batches and non-blocking copies, on CUDA only (pinning buys
  nothing without a device to copy to).
- ``compile``: ``torch.compile`` of the model in place (:meth:`torch.nn.Module.compile`: parameter
  names and the state dict stay the model's own); refused with the reason when this machine
  cannot compile (:func:`compile_unavailable`).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sonofm.config.schema import FastPathConfig
from sonofm.errors import UserError

__all__ = ["FastPath", "plan_fast_path", "conv_weights_channels_last", "compile_model", "compile_unavailable",
           "to_device"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


@dataclass(frozen=True)
class FastPath:
    """What the fast path applies on this device (from the recipe's switches and the device)."""

    channels_last: bool
    fused_adamw: bool
    pin_memory: bool
    compile: bool
    compile_mode: str = "default"

    def describe(self) -> str:
        """One line for the run's start-up message, e.g. ``channels_last, fused AdamW, pinned copies``."""
        parts = [name for name, on in (("channels_last", self.channels_last), ("fused AdamW", self.fused_adamw),
                                       ("pinned copies", self.pin_memory),
                                       (f"torch.compile ({self.compile_mode})", self.compile)) if on]
        return ", ".join(parts) or "off"


def plan_fast_path(cfg: FastPathConfig, device: torch.device, fsdp: bool = False) -> FastPath:
    """The switches of ``cfg`` that apply on ``device``; ``compile`` on a machine that cannot compile
    is a :class:`~sonofm.errors.UserError` naming the reason (not a silent eager run).

    Under FSDP (``fsdp``) channels_last stays off: FSDP2 refuses non-contiguous parameters
    ("FSDP does not support non-contiguous parameters yet", torch 2.9)."""
    cuda = device.type == "cuda"
    if cfg.compile:
        reason = compile_unavailable(device)
        if reason:
            raise UserError(f"fast.compile=true: {reason}; set fast.compile=false")
    return FastPath(channels_last=cfg.channels_last and not fsdp, fused_adamw=cfg.fused_adamw and cuda,
                    pin_memory=cfg.pin_memory and cuda, compile=cfg.compile, compile_mode=cfg.compile_mode)


def conv_weights_channels_last(model: nn.Module, same_bytes_only: bool = False) -> nn.Module:
    """Store every 4-D convolution weight of ``model`` in channels_last order (in place; see the
    module doc for why only convolution weights). Returns ``model``.

    ``same_bytes_only`` (``fast.channels_last=false``): only the kernels whose NCHW and NHWC layouts
    are the same bytes (a size-1 dimension, e.g. depthwise ``[C, 1, k, k]``) get the NHWC strides,
    so nothing moves in memory and DDP still sees the strides their gradients arrive with."""
    for module in model.modules():
        if isinstance(module, _CONVS) and module.weight.ndim == 4:
            if same_bytes_only and not module.weight.is_contiguous(memory_format=torch.channels_last):
                continue
            # clone, not .contiguous(): a [C, 1, k, k] kernel already counts as channels_last-contiguous
            # (size-1 dimensions are ignored), but keeps the NCHW stride DDP's bucket compares
            module.weight.data = module.weight.data.clone(memory_format=torch.channels_last)
    return model


def compile_unavailable(device: torch.device | str) -> str | None:
    """Why ``torch.compile`` (inductor) cannot run here, or ``None`` when it can.

    Inductor compiles C++ on CPU (it needs a C++ compiler: ``$CXX`` or ``g++``/``clang++``) and
    Triton kernels on CUDA."""
    device = torch.device(device)
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    if device.type == "cpu":
        cxx = os.environ.get("CXX") or "g++"
        if not (shutil.which(cxx) or shutil.which("clang++")):
            return f"torch.compile on CPU needs a C++ compiler and none was found ({cxx}, clang++)"
    elif device.type == "cuda" and importlib.util.find_spec("triton") is None:  # torch's CUDA wheels bring it
        return "torch.compile on CUDA needs triton, which is not installed"
    return None


def compile_model(model: nn.Module, mode: str = "default") -> nn.Module:
    """Compile ``model``'s forward in place (keeps its class, parameter names and state dict, so
    checkpoints, EMA and DDP see the plain module). Returns ``model``."""
    model.compile(mode=mode)
    return model


def to_device(batch: dict[str, Any], device: torch.device, channels_last: bool = False) -> dict[str, Any]:
    """Move a loader batch to ``device`` with non-blocking copies (asynchronous from pinned memory);
    nested dicts of tensors (per-level targets) too. With ``channels_last``, 4-D floating tensors
    (images, field masks) arrive in channels_last order."""
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            out[key] = _move(value, device, channels_last)
        elif isinstance(value, dict):
            out[key] = {k: _move(v, device, channels_last) if isinstance(v, torch.Tensor) else v
                        for k, v in value.items()}
        else:
            out[key] = value
    return out


def _move(t: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    if channels_last and t.ndim == 4 and t.is_floating_point():
        return t.to(device, non_blocking=True, memory_format=torch.channels_last)
    return t.to(device, non_blocking=True)
