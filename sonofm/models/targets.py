"""Reconstruction targets and the masked-patch loss.

Speckle makes raw pixels a noisy target, so besides MAE's per-patch normalised pixels there is a
low-pass target (Gaussian blur before normalisation). Targets are computed from images in [0, 1].

Near-constant patches (black corners, anechoic cysts) would blow up ``(x - mean) / std``. We divide by
``sqrt(max(var, var_floor) + eps)`` instead: patches quieter than ``var_floor`` are *not* normalised
to unit variance, only scaled by the fixed ``1/sqrt(var_floor)`` (a flat patch gives an all-zero
target), and their loss weight is ``low_var_weight`` (default 1: a flat patch is still worth
predicting as flat). ``var_floor`` = 1e-4 is a standard deviation of 0.01, about 2.5 grey levels.

Patch layout (MAE's): ``[B, L, p*p*C]`` with ``L = (H/p)(W/p)`` row-major and pixels ordered
``(row, col, channel)`` inside a patch.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

TARGET_KINDS = ("norm_pix", "lowpass", "pix")


def patchify(x: Tensor, patch: int) -> Tensor:
    """``[B, C, H, W]`` -> ``[B, L, p*p*C]``."""
    b, c, h, w = x.shape
    if h % patch or w % patch:
        raise ValueError(f"image size {(h, w)} is not a multiple of the patch size {patch}")
    x = x.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(x: Tensor, patch: int, grid: tuple[int, int], channels: int = 1) -> Tensor:
    """``[B, L, p*p*C]`` -> ``[B, C, H, W]`` for a ``grid`` of ``(H/p, W/p)`` patches."""
    b, n, d = x.shape
    gh, gw = grid
    if n != gh * gw or d != patch * patch * channels:
        raise ValueError(f"patches {tuple(x.shape)} do not fit grid {grid}, patch {patch}, {channels} channel(s)")
    x = x.reshape(b, gh, gw, patch, patch, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, channels, gh * patch, gw * patch)


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur per channel with reflect padding (a speckle-reducing low-pass)."""
    if sigma <= 0:
        return x
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(x.dtype)
    c = x.shape[1]
    pad_h = min(radius, x.shape[-2] - 1)
    pad_w = min(radius, x.shape[-1] - 1)
    kh = k[radius - pad_h : radius + pad_h + 1]
    kw = k[radius - pad_w : radius + pad_w + 1]
    x = F.pad(x, (pad_w, pad_w, 0, 0), mode="reflect")
    x = F.conv2d(x, kw.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = F.pad(x, (0, 0, pad_h, pad_h), mode="reflect")
    return F.conv2d(x, kh.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


class Target(NamedTuple):
    """Patch targets ``[B, L, D]``, the per-patch ``mean`` and ``std`` ``[B, L, 1]`` that map a
    prediction back to pixels (``pred * std + mean``), a per-patch loss ``weight`` ``[B, L]`` and,
    when the field is known, the per-pixel ``pixel_weight`` ``[B, L, D]`` (1 inside the field)."""

    target: Tensor
    mean: Tensor
    std: Tensor
    weight: Tensor
    pixel_weight: Tensor | None = None


def make_target(
    images: Tensor,
    kind: str = "norm_pix",
    patch: int = 32,
    *,
    eps: float = 1e-6,
    var_floor: float = 1e-4,
    low_var_weight: float = 1.0,
    sigma: float = 2.0,
    field: Tensor | None = None,
) -> Target:
    """Build the reconstruction target of ``images`` ``[B, C, H, W]`` in [0, 1] (see module doc).

    ``kind``: ``"norm_pix"`` per-patch normalised pixels, ``"lowpass"`` the same after a Gaussian blur
    of ``sigma`` pixels, ``"pix"`` raw pixels. ``field`` ``[B, 1, H, W]`` (> 0.5 inside): pixels
    outside it (screen background, blanked colour flow) take no part in a patch's mean and std and
    get ``pixel_weight`` 0, so the loss never asks the model to reconstruct them.
    """
    if kind not in TARGET_KINDS:
        raise ValueError(f"unknown target kind {kind!r}; choose one of {', '.join(TARGET_KINDS)}")
    images = images.float()
    if kind == "lowpass":
        images = gaussian_blur(images, sigma)
    x = patchify(images, patch)
    b, n, _ = x.shape
    pw = None
    if field is not None:
        if field.ndim != 4 or field.shape[1] != 1 or field.shape[-2:] != images.shape[-2:]:
            raise ValueError(f"field must be [B, 1, H, W] like the images {tuple(images.shape)}, got {tuple(field.shape)}")
        pw = patchify((field > 0.5).float().expand(-1, images.shape[1], -1, -1), patch)
    if kind == "pix":
        zeros = x.new_zeros(b, n, 1)
        return Target(x, zeros, zeros + 1.0, x.new_ones(b, n), pw)
    if pw is None:
        mean = x.mean(-1, keepdim=True)
        var = x.var(-1, unbiased=False, keepdim=True)
    else:
        count = pw.sum(-1, keepdim=True).clamp(min=1.0)
        mean = (x * pw).sum(-1, keepdim=True) / count
        var = ((x - mean).pow(2) * pw).sum(-1, keepdim=True) / count
    std = (var.clamp(min=var_floor) + eps).sqrt()
    weight = torch.where(var[..., 0] < var_floor, torch.full_like(var[..., 0], low_var_weight), 1.0)
    return Target((x - mean) / std, mean, std, weight, pw)


def masked_patch_loss(pred: Tensor, target: Tensor, weight: Tensor, pixel_weight: Tensor | None = None) -> Tensor:
    """Weighted mean over patches of the per-patch MSE; ``weight`` ``[B, L]`` is typically
    ``masked * in_field * target.weight``; ``pixel_weight`` ``[B, L, D]`` (e.g. the field) restricts
    each patch's MSE to its weighted pixels (a patch with none drops out). Returns 0 (still in the
    graph) when every weight is 0."""
    sq = (pred.float() - target).pow(2)
    if pixel_weight is None:
        per_patch = sq.mean(-1)
    else:
        count = pixel_weight.sum(-1)
        per_patch = (sq * pixel_weight).sum(-1) / count.clamp(min=1.0)
        weight = weight * (count > 0)
    return (per_patch * weight).sum() / weight.sum().clamp(min=1e-8)
