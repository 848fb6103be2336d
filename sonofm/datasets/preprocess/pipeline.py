"""Shard-time preprocessing: one record in, one clean, cropped, resized grayscale sample out.

Done once when shards are built (not in the training loop) so that every epoch reads small,
uniform images: 8-bit grayscale B-mode, cropped to the acoustic field (borders, burnt-in text and
UI gone: also a privacy measure; text that touches the kept image blanked unless ``text="keep"``),
at most ``max_side`` pixels on the longest side, with the field mask and what was found (colour,
text outside and touching the field, field geometry) in the metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from sonofm.datasets.preprocess import overlays
from sonofm.datasets.preprocess.field import Field, detect_field
from sonofm.datasets.preprocess.geometry import stored_from_original
from sonofm.datasets.sources.records import Record
from sonofm.datasets.sources.specs import TEXT_MODES  # what becomes of text touching the kept image

#: Share of coloured pixels above which an image has more than a tint (marks, Doppler).
COLOUR_SHARE = 5e-4


class ColourLimitExceeded(ValueError):
    """An image whose coloured share of the field is above the caller's ``colour_limit``.

    Raised by :func:`preprocess` per record (after colour analysis and field detection, before the
    costly rest), so that a build can drop the image, count it, and go on with the next record
    (e.g. the other frames of the same clip). ``path``, ``share`` and ``limit`` are attributes.
    """

    def __init__(self, path: str, share: float, limit: float):
        super().__init__(f"{path}: colour covers {share:.2%} of the field, above colour_limit {limit:.2%}")
        self.path, self.share, self.limit = path, share, limit


@dataclass
class ColourInfo:
    """What the grayscale conversion found: how much real colour the image held, and where.

    ``area`` is the (H, W) coloured area grown by :data:`~sonofm.datasets.preprocess.overlays.COLOUR_GROW`
    (``None`` when there is none) and ``blanked`` whether it was set to 0. ``field_fraction`` (the
    share of the field that ``area`` covers) is filled in by :func:`preprocess` once the field is known.
    """

    colour_fraction: float
    is_colour: bool
    conversion: str = "luminance"
    area: np.ndarray | None = None
    blanked: bool = False
    field_fraction: float = 0.0

    @property
    def blanked_pixels(self) -> int:
        """Pixels set to 0 as colour, at the original resolution."""
        return int(self.area.sum()) if self.blanked and self.area is not None else 0

    def to_meta(self) -> dict[str, Any]:
        return {
            "colour_fraction": round(self.colour_fraction, 6),
            "field_colour_fraction": round(self.field_fraction, 6),
            "blanked_pixels": self.blanked_pixels,
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


def to_grayscale(image: np.ndarray, blank_colour: bool = True) -> tuple[np.ndarray, ColourInfo]:
    """8-bit luminance (ITU-R BT.601) of an (H, W) or (H, W, 3) uint8 image, and its colour report.

    Colour that does not follow the image's own tint (flow, power Doppler, coloured marks and bars)
    is not tissue: with ``blank_colour`` it is set to 0 (grown by a pixel or two so no mixed rim
    stays) and the report carries the blanked area for the field mask. A tinted image (sepia,
    blue) is converted whole. Without ``blank_colour`` the luminance stays and colour is only
    reported.
    """
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"to_grayscale needs uint8 (H, W) or (H, W, 3), got {image.dtype} {image.shape}")
    if image.ndim == 2:
        return image, ColourInfo(0.0, False)
    luma = overlays.luminance(image)
    gray = np.clip(np.rint(luma), 0, 255).astype(np.uint8)
    if np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2]):
        return gray, ColourInfo(0.0, False)
    core, grown = overlays.colour_overlay(image, luma)
    frac = float(core.mean())
    info = ColourInfo(frac, frac > COLOUR_SHARE, area=grown if grown.any() else None)
    return (blank_colour_pixels(gray, info) if blank_colour else gray), info


def blank_colour_pixels(gray: np.ndarray, info: ColourInfo) -> np.ndarray:
    """A copy of ``gray`` with the colour ``info`` found set to 0 (marked blanked in ``info``)."""
    if info.area is None:
        return gray
    out = gray.copy()
    out[info.area] = 0
    info.blanked = True
    info.conversion = "luminance+colour_blanked"
    return out


def region_field(detected: Field, shape: tuple[int, int], probe: str | None = None) -> Field:
    """The field of an image already cropped to a DICOM ultrasound region's box.

    The scanner says the box bounds the image data. A sector (convex or phased probe) inside it has
    black corners, which detection finds; a linear probe's rectangle fills the box, so there the box
    is the field: detection could only lose a dark edge (deep tissue with no echo, a probe half off
    the skin) and take it for a fan, never find a better field.
    """
    if detected.kind == "fan" and probe != "linear":
        return detected
    h, w = shape
    return Field("full", (0, 0, h, w), np.ones((h, w), bool), text_boxes=detected.text_boxes)


def detection_gray(image: np.ndarray) -> np.ndarray:
    """The 8-bit luminance field detection looks at (colour not blanked; see :func:`preprocess`)."""
    if image.ndim == 2:
        return image
    return np.clip(np.rint(overlays.luminance(image)), 0, 255).astype(np.uint8)


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


def _target_area(meta: dict[str, Any], h: int, w: int) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    """The pixel box ``(top, left, bottom, right)`` holding every box and point of ``meta`` (original
    pixels, continuous coordinates) and the pixels they cover (boxes' rectangles, points' pixels);
    ``None`` without targets."""
    boxes = np.asarray(meta.get("boxes") or [], dtype=np.float64).reshape(-1, 4)
    points = np.asarray(meta.get("points") or [], dtype=np.float64).reshape(-1, 2)
    points = points[np.isfinite(points).all(axis=1)]
    if not len(boxes) and not len(points):
        return None
    area = np.zeros((h, w), bool)
    cells = []
    for x0, y0, x1, y1 in boxes:
        c = (int(np.clip(np.floor(y0), 0, h - 1)), int(np.clip(np.floor(x0), 0, w - 1)),
             int(np.clip(np.ceil(y1), 1, h)), int(np.clip(np.ceil(x1), 1, w)))
        cells.append((c[0], c[1], max(c[2], c[0] + 1), max(c[3], c[1] + 1)))
    for x, y in points:
        row, col = int(np.clip(np.floor(y), 0, h - 1)), int(np.clip(np.floor(x), 0, w - 1))
        cells.append((row, col, row + 1, col + 1))
    for ct, cl, cb, cr in cells:
        area[ct:cb, cl:cr] = True
    box = (min(c[0] for c in cells), min(c[1] for c in cells), max(c[2] for c in cells), max(c[3] for c in cells))
    return box, area


def _resize_valid(img: np.ndarray, valid: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Area-average ``img`` over its ``valid`` pixels only; also the stored pixels that are mostly valid.

    Blanked colour must neither darken the tissue next to it (a grey rim at the stored size) nor
    survive as a half-blanked pixel: a stored pixel is the mean of the tissue it covers, and 0 (and
    outside the field) when more than half of it was blanked.
    """
    h, w = size
    num = np.asarray(Image.fromarray(img.astype(np.float32) * valid).resize((w, h), Image.Resampling.BOX))
    den = np.asarray(Image.fromarray(valid.astype(np.float32)).resize((w, h), Image.Resampling.BOX))
    keep = den >= 0.5
    out = np.where(keep, np.rint(num / np.maximum(den, 1e-6)), 0.0)
    return np.clip(out, 0, 255).astype(np.uint8), keep


def preprocess(
    record: Record,
    max_side: int = 512,
    blank_outside: bool = True,
    field: Field | None = None,
    blank_colour: bool = True,
    colour_limit: float | None = None,
    detect_text: bool = True,
    text: str = "blank",
) -> Processed:
    """Grayscale, blank colour, crop to the acoustic field, blank what lies outside it, and downsize.

    ``field`` may be given (e.g. from DICOM ultrasound regions, or shared by the frames of one
    clip); otherwise it is detected. Coloured overlays (flow, power Doppler, coloured marks) are
    blanked and taken out of the stored field mask, so masked pretraining never draws or scores
    them (``blank_colour=False`` keeps their luminance). With ``colour_limit`` (a share of the
    field, 0-1) an image whose coloured share of the field is above it raises
    :class:`ColourLimitExceeded`. Text and marks drawn inside the field, and burnt-in marks beside
    it that the field's edge covers, are detected (``text_inside_field``, ``text_inside_boxes``) and
    with ``text="blank"`` (the default) set to 0 and taken out of the field mask
    (``text_blanked_pixels``); ``text="keep"`` keeps them for users who want the annotations, and
    ``detect_text=False`` skips the in-field detector. A segmentation mask is never cut:
    the crop and the field grow to contain it, and so for the boxes and points of
    ``record.meta["boxes"]`` / ``["points"]`` (original pixels), which the sample's meta then holds
    in its stored pixels (:func:`~sonofm.datasets.preprocess.geometry.original_from_stored` maps
    them back). Downsampling averages areas (no aliasing of
    speckle); images are never upsampled.
    """
    where = record.meta.get("path", "<unknown file>")
    if record.meta.get("frame") is not None:
        where = f"{where}#{record.meta['frame']}"
    if max_side < 8:
        raise ValueError(f"{where}: max_side must be at least 8, got {max_side}")
    if colour_limit is not None and not 0.0 <= colour_limit <= 1.0:
        raise ValueError(f"{where}: colour_limit must be a share in [0, 1], got {colour_limit}")
    if text not in TEXT_MODES:
        raise ValueError(f"{where}: text must be one of {', '.join(TEXT_MODES)}, got {text!r}")
    luma, colour = to_grayscale(record.image, blank_colour=False)
    gray = blank_colour_pixels(luma, colour) if blank_colour else luma
    h, w = gray.shape
    # Detection runs on the plain luminance, before blanking: blanking leaves a dim rim around
    # coloured labels and markers that the detector would glue to the field, while the detector's
    # UI-mark pass already cuts colour bars and labels beside the field in luminance. Measured on
    # the vendor screens (benchmarks/vendor_screens.py --n 8 --formats png): mean IoU 0.894 -> 0.916,
    # power Doppler 0.667 -> 0.802, screens keeping UI 3 -> 2. Coloured pixels then leave the mask.
    fld = field if field is not None else detect_field(luma)
    if field is None and record.meta.get("us_region") is not None:
        fld = region_field(fld, (h, w), record.meta.get("probe"))
    if fld.mask.shape != (h, w):
        raise ValueError(f"{where}: field mask {fld.mask.shape} does not match image {(h, w)}")
    field_mask = fld.mask.copy()
    if colour.area is not None and field_mask.any():
        colour.field_fraction = float(colour.area[field_mask].mean())
    if colour_limit is not None and colour.field_fraction > colour_limit:
        raise ColourLimitExceeded(str(where), colour.field_fraction, colour_limit)
    t, left, b, r = fld.bbox
    grown_for_mask = False
    if record.mask is not None:
        box = _mask_box(record.mask > 0)
        if box is not None:
            nt, nl, nb, nr = min(t, box[0]), min(left, box[1]), max(b, box[2]), max(r, box[3])
            grown_for_mask = (nt, nl, nb, nr) != (t, left, b, r) or bool((record.mask > 0)[~field_mask].any())
            t, left, b, r = nt, nl, nb, nr
            field_mask |= record.mask > 0
    targets = _target_area(record.meta, h, w)  # boxes and points: never cut either
    grown_for_targets = False
    if targets is not None:
        box, area = targets
        nt, nl, nb, nr = min(t, box[0]), min(left, box[1]), max(b, box[2]), max(r, box[3])
        grown_for_targets = (nt, nl, nb, nr) != (t, left, b, r)
        t, left, b, r = nt, nl, nb, nr
        field_mask |= area
    blanked = colour.area if colour.blanked else None
    if blanked is not None:
        field_mask &= ~blanked
    text_boxes = overlays.text_in_field(gray, field_mask) if detect_text else []
    # Burnt-in marks the field's edge covers (ID and date lines printed 1-3 px from the image) and
    # text found inside: both touch the kept image, both go unless the user keeps the annotations.
    touching = overlays.text_area((h, w), text_boxes, fld.ui_marks) & field_mask
    text_blanked = 0
    if text == "blank" and touching.any():
        field_mask &= ~touching
        gray = np.where(touching, np.uint8(0), gray)
        blanked = touching if blanked is None else blanked | touching
        text_blanked = int(touching.sum())

    img = gray[t:b, left:r].copy()
    fm = field_mask[t:b, left:r]
    if blank_outside:
        img[~fm] = 0  # text and UI in the black corners of a fan go too
    mask = record.mask[t:b, left:r] if record.mask is not None else None

    ch, cw = img.shape
    scale = min(1.0, max_side / max(ch, cw))
    nh, nw = max(1, round(ch * scale)), max(1, round(cw * scale))
    if blanked is not None and (nh, nw) != (ch, cw):
        img, kept = _resize_valid(img, ~blanked[t:b, left:r], (nh, nw))
    else:
        img, kept = _resize(img, (nh, nw), Image.Resampling.BOX), None
    fm = _resize(fm.astype(np.uint8) * 255, (nh, nw), Image.Resampling.NEAREST) > 127
    if kept is not None:
        fm &= kept
    if mask is not None:
        mask = _resize(np.ascontiguousarray(mask), (nh, nw), Image.Resampling.NEAREST)

    meta = dict(record.meta)
    spacing = meta.get("pixel_spacing_mm")
    if spacing is not None:
        sr, sc = (spacing, spacing) if np.isscalar(spacing) else spacing
        meta["pixel_spacing_mm"] = [float(sr) * ch / nh, float(sc) * cw / nw]
    field_meta = fld.to_meta()
    field_meta["grown_for_mask"] = grown_for_mask
    field_meta["grown_for_targets"] = grown_for_targets
    meta.update(
        {
            "field": field_meta,
            "orig_size": [h, w],
            "crop": [t, left, b, r],
            "size": [nh, nw],
            "colour": colour.to_meta(),
            "text_outside_field": fld.text_outside,
            "text_inside_field": bool(touching.any()),
            "text_inside_boxes": [[int(v) for v in bx] for bx in text_boxes],
            "text_mode": text,
            "text_blanked_pixels": text_blanked,
        }
    )
    to_stored = stored_from_original(meta)  # boxes and points move with the pixels, exactly
    if meta.get("boxes") is not None:
        meta["boxes"] = to_stored.boxes(meta["boxes"]).tolist()
    if meta.get("points") is not None:
        meta["points"] = to_stored.points(meta["points"]).tolist()
    return Processed(image=np.ascontiguousarray(img), mask=mask, field_mask=fm, meta=meta)
