"""Per-sample transforms of the stream: random crop inside the acoustic field, flip, gamma, gain.

Ultrasound frames are mostly black outside the fan: a plain RandomResizedCrop often returns a crop
of padding, which teaches the encoder nothing. The crop box here is drawn around the field's
bounding box and accepted only when at least ``min_field_fraction`` of it lies in the field.
Image, field and mask go through the *same* box and flip (bilinear for the image, nearest for the
label maps), so masks stay aligned pixel for pixel. Evaluation uses deterministic letterbox or
centre crop instead.

Everything works on numpy/PIL and returns torch tensors, so it runs inside DataLoader workers.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from PIL import Image

from sonofm.config.schema import AugmentConfig  # the one definition; re-exported for the stream
from sonofm.datasets.preprocess.geometry import Affine

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) in pixels of the source image


def _bbox(field: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box (x0, y0, x1, y1), exclusive end, of the nonzero pixels; the whole image if none."""
    rows = np.flatnonzero(field.any(axis=1))
    cols = np.flatnonzero(field.any(axis=0))
    if rows.size == 0:
        return 0, 0, field.shape[1], field.shape[0]
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def field_fraction(field: np.ndarray, box: Box) -> float:
    """Share of the (integer-rounded) box that lies inside the field."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    window = field[max(y0, 0) : y1, max(x0, 0) : x1]
    area = max((x1 - x0) * (y1 - y0), 1)
    return float(np.count_nonzero(window)) / area


def _axis_start(rng: np.random.Generator, size: int, lo: int, hi: int, limit: int) -> int:
    """Start of a segment of length ``size`` on [0, limit) that stays on [lo, hi) or covers it."""
    if size <= hi - lo:
        a, b = lo, hi - size
    else:  # longer than the field extent: cover it, stay inside the image
        a, b = max(0, hi - size), min(lo, limit - size)
    return int(rng.integers(a, b + 1)) if b >= a else max(0, min(lo, limit - size))


def random_field_crop(field: np.ndarray | None, shape: tuple[int, int], rng: np.random.Generator,
                      cfg: AugmentConfig) -> Box:
    """Draw a crop box mostly inside the field (see module docstring); falls back to the best box tried.

    ``field`` is a (H, W) bool array or None (then the whole image is the field).
    """
    h, w = shape
    if field is None or field.all():  # no constraint: skip the integral image (a third of the cost)
        bx0, by0, bx1, by1 = 0, 0, w, h

        def inside(x0: int, y0: int, x1: int, y1: int) -> int:
            return (x1 - x0) * (y1 - y0)
    else:
        bx0, by0, bx1, by1 = _bbox(field)
        # Integral image: the field share of every candidate box in O(1).
        integral = np.zeros((h + 1, w + 1), dtype=np.int32)
        integral[1:, 1:] = np.cumsum(np.cumsum(field, axis=0, dtype=np.int32), axis=1)

        def inside(x0: int, y0: int, x1: int, y1: int) -> int:
            return int(integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0])

    bw, bh = bx1 - bx0, by1 - by0
    log_ratio = (math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]))
    best: tuple[float, Box] = (inside(bx0, by0, bx1, by1) / max(bw * bh, 1),
                               (float(bx0), float(by0), float(bx1), float(by1)))
    for _ in range(cfg.max_tries):
        area = bw * bh * rng.uniform(*cfg.crop_scale)
        ratio = math.exp(rng.uniform(*log_ratio))
        cw = min(w, max(1, int(round(math.sqrt(area * ratio)))))
        ch = min(h, max(1, int(round(math.sqrt(area / ratio)))))
        x0 = _axis_start(rng, cw, bx0, bx1, w)
        y0 = _axis_start(rng, ch, by0, by1, h)
        frac = inside(x0, y0, x0 + cw, y0 + ch) / (cw * ch)
        box = (float(x0), float(y0), float(x0 + cw), float(y0 + ch))
        if frac >= cfg.min_field_fraction:
            return box
        if frac > best[0]:
            best = (frac, box)
    return best[1]


def _resize(arr: np.ndarray, box: Box, size: int, resample: Image.Resampling) -> np.ndarray:
    return np.asarray(Image.fromarray(arr).resize((size, size), resample=resample, box=box))


def _intensity_lut(gamma: float, gain: float) -> np.ndarray:
    """uint8 -> float32 lookup table for ``clip(gain * (x/255) ** gamma, 0, 1)``; one gather per image."""
    x = np.arange(256, dtype=np.float64) / 255.0
    return np.clip(gain * np.power(x, gamma), 0.0, 1.0).astype(np.float32)


_IDENTITY_LUT = _intensity_lut(1.0, 1.0)


def _pack(image: np.ndarray, field: np.ndarray, mask: np.ndarray | None, lut: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = {
        "image": torch.from_numpy(lut[image]).unsqueeze(0),
        "field": torch.from_numpy((field > 0).astype(np.float32)).unsqueeze(0),
    }
    if mask is not None:
        out["mask"] = torch.from_numpy(mask.astype(np.int64))
    return out


def augment_sample(image: np.ndarray, field: np.ndarray | None, mask: np.ndarray | None, size: int,
                   rng: np.random.Generator, cfg: AugmentConfig) -> dict[str, Any]:
    """Training transform: field-aware random resized crop, flip, gamma and gain.

    ``image`` (H, W) uint8; ``field`` (H, W) bool or None; ``mask`` (H, W) uint8 or None. Returns
    ``image`` float [1,S,S] in [0,1], ``field`` float [1,S,S] of 0/1, ``mask`` long [S,S] if given,
    ``box``/``flip`` (the geometry used, for checks and debugging) and ``view``: the
    :class:`~sonofm.datasets.preprocess.geometry.Affine` from the stored sample's pixels to the
    output's, as ``[sx, sy, tx, ty]``, so boxes and points can follow the crop and the flip.
    """
    h, w = image.shape
    box = random_field_crop(field, (h, w), rng, cfg)
    flip = bool(rng.random() < cfg.hflip)
    gamma = math.exp(rng.uniform(math.log(cfg.gamma[0]), math.log(cfg.gamma[1])))
    gain = float(rng.uniform(*cfg.gain))
    img = _resize(image, box, size, Image.Resampling.BILINEAR)
    fld = (_resize(field.astype(np.uint8), box, size, Image.Resampling.NEAREST) if field is not None
           else np.ones((size, size), dtype=np.uint8))
    msk = _resize(mask, box, size, Image.Resampling.NEAREST) if mask is not None else None
    if flip:
        img, fld = img[:, ::-1], fld[:, ::-1]
        msk = msk[:, ::-1] if msk is not None else None
    out = _pack(np.ascontiguousarray(img), np.ascontiguousarray(fld),
                None if msk is None else np.ascontiguousarray(msk), _intensity_lut(gamma, gain))
    view = Affine.crop_resize((box[1], box[0], box[3], box[2]), (size, size))
    out["box"], out["flip"] = box, flip
    out["view"] = (view.then(Affine.hflip(size)) if flip else view).to_list()
    return out


def letterbox_window(h: int, w: int, size: int) -> tuple[int, int, int, int]:
    """``(oy, ox, nh, nw)``: where an (h, w) image lands in the ``size`` square of the letterbox
    transform (longest side scaled to ``size``, centred); used to undo it on predictions."""
    scale = size / max(h, w)
    nw, nh = max(1, min(size, round(w * scale))), max(1, min(size, round(h * scale)))
    return (size - nh) // 2, (size - nw) // 2, nh, nw


def eval_sample(image: np.ndarray, field: np.ndarray | None, mask: np.ndarray | None, size: int,
                mode: str = "letterbox") -> dict[str, Any]:
    """Deterministic transform for evaluation.

    ``letterbox`` scales the longest side to ``size`` and pads with zeros (nothing is lost: the padding
    has field 0 and mask 0); ``center_crop`` scales the shortest side to ``size`` and crops the centre.
    ``view``: the map from the stored sample's pixels to the output's, as in :func:`augment_sample`.
    """
    h, w = image.shape
    if mode == "letterbox":
        oy, ox, nh, nw = letterbox_window(h, w, size)

        def place(arr: np.ndarray, resample: Image.Resampling) -> np.ndarray:
            canvas = np.zeros((size, size), dtype=arr.dtype)
            canvas[oy : oy + nh, ox : ox + nw] = np.asarray(Image.fromarray(arr).resize((nw, nh), resample=resample))
            return canvas

        img = place(image, Image.Resampling.BILINEAR)
        fld = place(field.astype(np.uint8) if field is not None else np.ones((h, w), np.uint8),
                    Image.Resampling.NEAREST)
        msk = place(mask, Image.Resampling.NEAREST) if mask is not None else None
        view = Affine(nw / w, nh / h, float(ox), float(oy))
    elif mode == "center_crop":
        side = min(h, w)
        x0, y0 = (w - side) / 2, (h - side) / 2
        box = (x0, y0, x0 + side, y0 + side)
        img = _resize(image, box, size, Image.Resampling.BILINEAR)
        fld = (_resize(field.astype(np.uint8), box, size, Image.Resampling.NEAREST) if field is not None
               else np.ones((size, size), dtype=np.uint8))
        msk = _resize(mask, box, size, Image.Resampling.NEAREST) if mask is not None else None
        view = Affine.crop_resize((y0, x0, y0 + side, x0 + side), (size, size))
    else:
        raise ValueError(f"eval transform must be 'letterbox' or 'center_crop', got {mode!r}")
    out = _pack(img, fld, msk, _IDENTITY_LUT)
    out["view"] = view.to_list()
    return out
