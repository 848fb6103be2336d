"""Segmentation loss: cross-entropy + soft Dice, weights configurable.

Cross-entropy gives dense, well-scaled gradients early; soft Dice counters the heavy background
imbalance of small lesions and thin vessels. Dice is averaged over foreground classes only, with a
smoothing term so that an image without a foreground class contributes ~0 loss when none is predicted.

Dice is computed per image, then averaged (``per_image=True``, the default), because the reported
metrics are per-image means: with one Dice over the whole batch, missing a faint lesion entirely
costs little when another image in the batch has a large one, and models learn to predict nothing
on hard images (each such miss then costs the image diagonal in HD95). ``per_image=False`` gives
the batch Dice. Measured effect on the quickstart's synthetic lesions: benchmarks/RESULTS_downstream.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["soft_dice_loss", "seg_loss"]


def soft_dice_loss(logits: Tensor, target: Tensor, valid: Tensor | None = None, smooth: float = 1.0,
                   per_image: bool = True) -> Tensor:
    """1 - soft Dice over foreground classes; ``logits`` [B,C,H,W], ``target`` [B,H,W] class ids.

    ``valid`` [B,H,W] (bool) restricts the sums to the pixels that count. ``per_image``: one Dice per
    image and class, averaged (default); else one Dice per class over the whole batch.
    """
    num_classes = logits.shape[1]
    prob = logits.float().softmax(1)
    onehot = F.one_hot(target.long(), num_classes).permute(0, 3, 1, 2).to(prob.dtype)
    if valid is not None:
        w = valid[:, None].to(prob.dtype)
        prob, onehot = prob * w, onehot * w
    dims = (2, 3) if per_image else (0, 2, 3)
    inter = (prob * onehot).sum(dims)
    denom = prob.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + smooth) / (denom + smooth)  # [B, C] per image, [C] per batch
    return 1.0 - dice[..., 1:].mean()


def seg_loss(
    logits: Tensor, target: Tensor, ce_weight: float = 1.0, dice_weight: float = 1.0, ignore_index: int = 255,
    per_image_dice: bool = True,
) -> Tensor:
    """``ce_weight * CE + dice_weight * (1 - soft Dice)``; pixels equal to ``ignore_index`` are left out."""
    if logits.shape[-2:] != target.shape[-2:]:
        raise ValueError(f"logits size {tuple(logits.shape[-2:])} differs from mask size {tuple(target.shape[-2:])}")
    target = target.long()
    loss = logits.new_zeros(())
    if ce_weight:
        loss = loss + ce_weight * F.cross_entropy(logits.float(), target, ignore_index=ignore_index)
    if dice_weight:
        valid = target != ignore_index
        t = torch.where(valid, target, torch.zeros_like(target))
        loss = loss + dice_weight * soft_dice_loss(logits, t, valid, per_image=per_image_dice)
    return loss
