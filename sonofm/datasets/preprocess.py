"""Shard-time preprocessing: one record in, one clean, cropped, resized grayscale sample out.

Done once when shards are built (not in the training loop) so that every epoch reads small,
uniform images: 8-bit grayscale B-mode, cropped to the acoustic field (borders, burnt-in text and
UI gone: also a privacy measure), at most ``max_side`` pixels on the longest side, with the field
mask and what was found (colour, text outside the field, field geometry) in the metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from sonofm.datasets.field import Field, detect_field
from sonofm.datasets.records import Record

#: Chroma (after removing the image's own tint) above which a pixel counts as coloured.
CHROMA_THRESHOLD = 40.0
#: Share of coloured pixels above which an image has more than a tint (marks, Doppler).
COLOUR_SHARE = 5e-4


@dataclass
class ColourInfo:
    """What the grayscale conversion found: how much real colour the image held."""

    colour_fraction: float
    is_colour: bool
    conversion: str = "luminance"

    def to_meta(self) -> dict[str, Any]:
        return {
            "colour_fraction": round(self.colour_fraction, 6),
            "is_colour": self.is_colour,
            "conversion": self.conversion,
        }


@dataclass
class Processed:
    """A preprocessed sample: image, optional class-id mask and field mask at the stored size."""

    image: np.ndarray
    mask: np.ndarray | None
    field_mask: np.ndarray
    meta: dict[str, Any]


def _residual_chroma(rgb: np.ndarray, luma: np.ndarray) -> np.ndarray:
    """Chroma of each pixel minus the image's tint at its brightness.

    Many scanners and exports tint the whole B-mode image (sepia, blue, purple maps): the hue is
    then a function of brightness. Subtracting the median (Cb, Cr) per brightness bin leaves only
    colour that does not follow the map: Doppler, coloured calipers, annotations.
    """
    f = rgb.astype(np.float32)
    cb = f[..., 2] - luma
    cr = f[..., 0] - luma
    bins = np.clip(luma.astype(np.int32) // 16, 0, 15)
    med_cb = np.zeros(16, np.float32)
    med_cr = np.zeros(16, np.float32)
    for i in np.unique(bins):
        sel = bins == i
        med_cb[i] = np.median(cb[sel])
        med_cr[i] = np.median(cr[sel])
    return np.hypot(cb - med_cb[bins], cr - med_cr[bins])


def to_grayscale(image: np.ndarray) -> tuple[np.ndarray, ColourInfo]:
    """8-bit luminance (ITU-R BT.601) of an (H, W) or (H, W, 3) uint8 image, and its colour report.

    Coloured overlays are not inpainted: their luminance stays, and the report says they were there
    so the build report can count (or a user can drop) such images.
    """
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"to_grayscale needs uint8 (H, W) or (H, W, 3), got {image.dtype} {image.shape}")
    if image.ndim == 2:
        return image, ColourInfo(0.0, False)
    f = image.astype(np.float32)
    luma = 0.299 * f[..., 0] + 0.587 * f[..., 1] + 0.114 * f[..., 2]
    gray = np.clip(np.rint(luma), 0, 255).astype(np.uint8)
    if np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2]):
        return gray, ColourInfo(0.0, False)
    frac = float((_residual_chroma(image, luma) > CHROMA_THRESHOLD).mean())
    return gray, ColourInfo(frac, frac > COLOUR_SHARE)


def _resize(arr: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    h, w = size
    if arr.shape[:2] == (h, w):
        return arr
    return np.asarray(Image.fromarray(arr).resize((w, h), resample))


def _mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def preprocess(
    record: Record, max_side: int = 512, blank_outside: bool = True, field: Field | None = None
) -> Processed:
    """Grayscale, crop to the acoustic field, blank what lies outside it, and downsize.

    ``field`` may be given (e.g. from DICOM ultrasound regions, or shared by the frames of one
    clip); otherwise it is detected. A segmentation mask is never cut: the crop and the field grow
    to contain it. Downsampling averages areas (no aliasing of speckle); images are never upsampled.
    """
    where = record.meta.get("path", "<unknown file>")
    if max_side < 8:
        raise ValueError(f"{where}: max_side must be at least 8, got {max_side}")
    gray, colour = to_grayscale(record.image)
    h, w = gray.shape
    fld = field if field is not None else detect_field(gray)
    if fld.mask.shape != (h, w):
        raise ValueError(f"{where}: field mask {fld.mask.shape} does not match image {(h, w)}")
    field_mask = fld.mask.copy()
    t, left, b, r = fld.bbox
    grown_for_mask = False
    if record.mask is not None:
        box = _mask_box(record.mask > 0)
        if box is not None:
            nt, nl, nb, nr = min(t, box[0]), min(left, box[1]), max(b, box[2]), max(r, box[3])
            grown_for_mask = (nt, nl, nb, nr) != (t, left, b, r) or bool((record.mask > 0)[~field_mask].any())
            t, left, b, r = nt, nl, nb, nr
            field_mask |= record.mask > 0

    img = gray[t:b, left:r].copy()
    fm = field_mask[t:b, left:r]
    if blank_outside:
        img[~fm] = 0  # text and UI in the black corners of a fan go too
    mask = record.mask[t:b, left:r] if record.mask is not None else None

    ch, cw = img.shape
    scale = min(1.0, max_side / max(ch, cw))
    nh, nw = max(1, round(ch * scale)), max(1, round(cw * scale))
    img = _resize(img, (nh, nw), Image.Resampling.BOX)
    fm = _resize(fm.astype(np.uint8) * 255, (nh, nw), Image.Resampling.NEAREST) > 127
    if mask is not None:
        mask = _resize(np.ascontiguousarray(mask), (nh, nw), Image.Resampling.NEAREST)

    meta = dict(record.meta)
    spacing = meta.get("pixel_spacing_mm")
    if spacing is not None:
        sr, sc = (spacing, spacing) if np.isscalar(spacing) else spacing
        meta["pixel_spacing_mm"] = [float(sr) * ch / nh, float(sc) * cw / nw]
    field_meta = fld.to_meta()
    field_meta["grown_for_mask"] = grown_for_mask
    meta.update(
        {
            "field": field_meta,
            "orig_size": [h, w],
            "crop": [t, left, b, r],
            "size": [nh, nw],
            "colour": colour.to_meta(),
            "text_outside_field": fld.text_outside,
        }
    )
    return Processed(image=np.ascontiguousarray(img), mask=mask, field_mask=fm, meta=meta)
