"""Coordinates through crops, resizes and flips: one axis-aligned affine map for points and boxes.

Boxes and keypoints are stored in a sample's own pixels, and predictions are written in the
original image's pixels, so every stage that moves pixels (the build's crop and resize, the
stream's random crop and flip, the evaluation letterbox) must move coordinates the same way and
be undone exactly. Coordinates are continuous: pixel ``i`` covers ``[i, i + 1)``, so a crop starting
at ``left`` and resized by ``s`` maps ``x`` to ``(x - left) * s`` and back without any half-pixel
offset, and a round trip returns the input up to floating point.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Affine:
    """``x' = sx * x + tx``, ``y' = sy * y + ty`` (``sx < 0`` is a horizontal flip)."""

    sx: float = 1.0
    sy: float = 1.0
    tx: float = 0.0
    ty: float = 0.0

    @staticmethod
    def crop_resize(box: Sequence[float], size: Sequence[int]) -> Affine:
        """From an image to its crop ``box = (top, left, bottom, right)`` resized to ``size = (h, w)``."""
        t, left, b, r = (float(v) for v in box)
        if b <= t or r <= left:
            raise ValueError(f"empty crop box {list(box)}")
        sy, sx = size[0] / (b - t), size[1] / (r - left)
        return Affine(sx, sy, -left * sx, -t * sy)

    @staticmethod
    def hflip(width: float) -> Affine:
        """Mirror an image of ``width`` pixels left to right."""
        return Affine(-1.0, 1.0, float(width), 0.0)

    def then(self, other: Affine) -> Affine:
        """This map followed by ``other``."""
        return Affine(other.sx * self.sx, other.sy * self.sy, other.sx * self.tx + other.tx,
                      other.sy * self.ty + other.ty)

    def inverse(self) -> Affine:
        return Affine(1.0 / self.sx, 1.0 / self.sy, -self.tx / self.sx, -self.ty / self.sy)

    @property
    def flips(self) -> bool:
        return self.sx < 0

    def points(self, xy: Any) -> np.ndarray:
        """Map ``(..., 2)`` points ``[x, y]``; NaN (a missing point) stays NaN."""
        p = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        return np.stack([p[:, 0] * self.sx + self.tx, p[:, 1] * self.sy + self.ty], axis=1)

    def boxes(self, boxes: Any) -> np.ndarray:
        """Map ``(N, 4)`` boxes ``[x_min, y_min, x_max, y_max]``, kept ordered under a flip."""
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        x = np.stack([b[:, 0], b[:, 2]], 1) * self.sx + self.tx
        y = np.stack([b[:, 1], b[:, 3]], 1) * self.sy + self.ty
        return np.stack([x.min(1), y.min(1), x.max(1), y.max(1)], axis=1)

    def to_list(self) -> list[float]:
        return [self.sx, self.sy, self.tx, self.ty]

    @staticmethod
    def from_list(values: Sequence[float]) -> Affine:
        sx, sy, tx, ty = (float(v) for v in values)
        return Affine(sx, sy, tx, ty)


def stored_from_original(meta: Mapping[str, Any]) -> Affine:
    """The build's map from the original image to the stored sample (its ``crop`` and ``size``)."""
    if meta.get("crop") is None or meta.get("size") is None:
        return Affine()
    return Affine.crop_resize(meta["crop"], meta["size"])


def original_from_stored(meta: Mapping[str, Any]) -> Affine:
    """The map back: stored-sample pixels to the original image's pixels."""
    return stored_from_original(meta).inverse()


def clip_boxes(boxes: np.ndarray, height: float, width: float) -> np.ndarray:
    """Boxes cut to an image of ``height`` x ``width`` (a box wholly outside has zero area)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, width)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, height)
    return b


def mask_to_original(mask: Any, meta: Mapping[str, Any]) -> np.ndarray:
    """A class-id mask at the stored sample's size, put back at the original image's size.

    The build cropped the original to ``meta["crop"]`` and resized the crop to ``meta["size"]``;
    the mask is resized back into the crop by nearest neighbour (class ids are never blended) and
    everything outside the crop is background (0). A mask stored without resizing comes back exactly.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask_to_original expects a (H, W) mask, got shape {m.shape}")
    if meta.get("crop") is None or meta.get("orig_size") is None:
        return m.copy()
    t, left, b, r = (int(v) for v in meta["crop"])
    if meta.get("size") is not None and list(m.shape) != [int(v) for v in meta["size"]]:
        raise ValueError(f"mask is {m.shape[1]}x{m.shape[0]} but the sample's stored size is "
                         f"{meta['size'][1]}x{meta['size'][0]}")
    h, w = (int(v) for v in meta["orig_size"])
    if m.dtype == bool:
        m = m.astype(np.uint8)
    if m.shape != (b - t, r - left):
        m = np.asarray(Image.fromarray(np.ascontiguousarray(m)).resize((r - left, b - t), Image.Resampling.NEAREST))
    out = np.zeros((h, w), dtype=m.dtype)
    out[t:b, left:r] = m
    return out
