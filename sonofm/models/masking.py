"""Random patch masks on the 32-pixel grid, drawn only inside the acoustic field.

Ultrasound images are mostly black outside the fan or rectangle that holds the echo; masking those
patches would ask the decoder to predict black. So a patch counts as *in the field* when at least
``min_fraction`` (default 0.5) of its pixels are field; masked patches are drawn only among those.
Patches outside the field stay **visible** (the encoder sees their black pixels, i.e. the field's
shape) but carry no reconstruction loss. At least one in-field patch always stays visible, and
when a sample has two or more in-field patches and ``ratio > 0`` at least one is masked.

Mask convention: ``1 = visible``, ``0 = masked``; shape ``[B, H/32, W/32]``, float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sonofm.models.encoder import PATCH


def _size(img_size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if h % PATCH or w % PATCH or h <= 0 or w <= 0:
        raise ValueError(f"image size {(h, w)} must be positive multiples of {PATCH}")
    return h, w


def patch_field_fraction(field: Tensor, patch: int = PATCH) -> Tensor:
    """Share of field pixels in each patch: ``[B, 1, H, W]`` (any dtype; > 0.5 is field) -> ``[B, H/p, W/p]``."""
    if field.ndim != 4 or field.shape[1] != 1:
        raise ValueError(f"field must be [B, 1, H, W], got {tuple(field.shape)}")
    return F.avg_pool2d((field > 0.5).float(), patch)[:, 0]


def patches_in_field(field: Tensor, patch: int = PATCH, min_fraction: float = 0.5) -> Tensor:
    """Float ``[B, H/p, W/p]``: 1 for patches with at least ``min_fraction`` field pixels.

    A sample with no such patch (a tiny or empty field) falls back to the patches that touch the
    field, and failing that to every patch, so that every sample has somewhere to mask and to pool.
    """
    frac = patch_field_fraction(field, patch)
    inside = frac >= min_fraction
    b = inside.shape[0]
    none = ~inside.reshape(b, -1).any(1)
    inside = torch.where(none[:, None, None], frac > 0, inside)
    none = ~inside.reshape(b, -1).any(1)
    inside = inside | none[:, None, None]
    return inside.float()


def random_patch_mask(
    field: Tensor | None,
    img_size: int | tuple[int, int],
    patch: int = PATCH,
    ratio: float = 0.6,
    generator: torch.Generator | None = None,
    *,
    batch_size: int | None = None,
    min_fraction: float = 0.5,
    device: torch.device | str | None = None,
) -> Tensor:
    """Draw a mask ``[B, H/patch, W/patch]`` (1 visible, 0 masked) masking ``round(ratio * n)`` of each
    sample's ``n`` in-field patches (see module doc). ``field`` ``None`` means the whole image is field;
    then ``batch_size`` is required. Deterministic for a given ``generator`` (its device draws the noise).
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    h, w = _size(img_size)
    gh, gw = h // patch, w // patch
    if field is not None:
        if field.shape[-2:] != (h, w):
            raise ValueError(f"field size {tuple(field.shape[-2:])} differs from image size {(h, w)}")
        inside = patches_in_field(field, patch, min_fraction).bool()
        b, device = field.shape[0], field.device
    else:
        if batch_size is None:
            raise ValueError("random_patch_mask: batch_size is required when field is None")
        b = batch_size
        device = torch.device(device) if device is not None else torch.device("cpu")
        inside = torch.ones(b, gh, gw, dtype=torch.bool, device=device)
    inside = inside.reshape(b, -1)
    noise_device = generator.device if generator is not None else device
    # drawn where the generator lives (a CPU generator keeps masks identical across devices); the copy
    # is non-blocking, so a CUDA step does not wait for the host here
    noise = torch.rand(b, gh * gw, generator=generator, device=noise_device).to(device, non_blocking=True)
    noise = torch.where(inside, noise, torch.full_like(noise, 2.0))  # outside-field patches sort last
    rank = noise.argsort(1).argsort(1)
    n_in = inside.sum(1)
    n_mask = torch.round(n_in.float() * ratio).long()
    if ratio > 0:
        n_mask = torch.maximum(n_mask, torch.ones_like(n_mask))
    n_mask = torch.minimum(n_mask, (n_in - 1).clamp(min=0))
    masked = rank < n_mask[:, None]
    return (~masked).float().reshape(b, gh, gw)
