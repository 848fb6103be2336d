"""Per-step learning-rate schedule (linear warm-up, then cosine), as in MAE/FCMAE.

The rate is a pure function of the optimiser step, so a resumed run gets exactly the rate the
uninterrupted run would have had, with nothing to save but the step.
"""

from __future__ import annotations

import math

import torch


def scaled_lr(base_lr: float, global_batch: int, lr: float | None = None) -> float:
    """``lr`` if given, else the linear scaling rule ``base_lr * global_batch / 256``."""
    return float(lr) if lr is not None else base_lr * global_batch / 256


def lr_at(step: int, total_steps: int, peak_lr: float, warmup_steps: int, min_lr: float = 0.0) -> float:
    """Learning rate at optimiser step ``step`` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def apply_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the rate of every parameter group (groups may carry an ``lr_scale``, e.g. layer decay)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
