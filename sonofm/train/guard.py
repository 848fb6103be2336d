"""The non-finite guard: a NaN or infinite loss stops training before it reaches the weights.

Per micro-batch the guard adds ``~isfinite(loss)`` to a counter that stays on the device (no host
sync); :meth:`NonFiniteGuard.check` runs once per optimiser step, before ``optimizer.step()``, sums
the counter over every process (so all ranks stop together, none hangs in the next collective)
and reads it: the one host sync per step that the training loops make.
"""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import Accelerator

from sonofm.errors import UserError

__all__ = ["NonFiniteLossError", "NonFiniteGuard"]


class NonFiniteLossError(UserError, FloatingPointError):
    """The loss became NaN or infinite: training stops instead of corrupting the weights."""


class NonFiniteGuard:
    """Counts non-finite micro-batch losses of one optimiser step on the device; see the module doc."""

    def __init__(self, accelerator: Accelerator) -> None:
        self.accelerator = accelerator
        self.count = torch.zeros((), device=accelerator.device)

    def add(self, loss: torch.Tensor) -> None:
        """Record one micro-batch's loss (no device sync)."""
        self.count += (~torch.isfinite(loss.detach())).float()

    def check(self, step: int, checkpoints: str | Path) -> None:
        """Raise :class:`NonFiniteLossError` when any rank had a non-finite loss at 0-based ``step``,
        then reset the counter; ``checkpoints`` is where the message points to resume from."""
        count = self.count
        if self.accelerator.num_processes > 1:
            count = self.accelerator.reduce(count, reduction="sum")
        bad = float(count)  # the one host sync of the step
        self.count.zero_()
        if bad > 0:
            raise NonFiniteLossError(
                f"non-finite loss in {int(bad)} micro-batch(es) at step {step + 1}: stopping before the weights are "
                f"corrupted. Lower the learning rate, check the data, or resume from the last checkpoint in "
                f"{checkpoints} with --resume auto."
            )
