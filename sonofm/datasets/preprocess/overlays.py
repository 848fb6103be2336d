"""Overlays drawn into the ultrasound image: colour (flow, power Doppler, coloured marks) and text.

Colour. Many scanners and exports tint the whole B-mode image (sepia, blue, purple maps): the hue is
then a function of brightness, and it is not colour. What does not follow that function is an
overlay: colour or power Doppler flow, coloured calipers, boxes, annotations, colour bars. Its
luminance is not tissue (a flow blob becomes a bright grey blob the masked-image model would learn
to draw), so such pixels are found (:func:`colour_overlay`), grown by a pixel or two for the
anti-aliased and JPEG-smeared rim, blanked to 0 and taken out of the field mask by preprocessing.

Text. Burnt-in labels inside the field ("LT AXILLA", "TRANS"), caliper crosses and their numbers
are white or a flat bright grey, in thin strokes with sharp edges over darker tissue; speckle is
made of grains whose brightness varies and whose surroundings are about as bright. They are
detected (:func:`text_in_field`) and, by default, blanked with the burnt-in marks the field's edge
covers (:func:`text_area`): a label inside the image can name the patient or the hospital as well
as one beside it, and stored pixels leave the hospital. ``text=keep`` keeps them (reported).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

#: Residual chroma (chroma minus the image's own tint) above which a pixel certainly is colour.
CHROMA_THRESHOLD = 40.0
#: Residual chroma above which a pixel touching certain colour belongs to it (anti-aliased and
#: JPEG-smeared rims, dark flow pixels): hysteresis from the certain pixels.
CHROMA_WEAK = 16.0
#: Pixels the coloured area is grown by before blanking, so that no grey rim of mixed pixels stays.
COLOUR_GROW = 2
#: A brightness bin's median chroma above ``TINT_MAX_SLOPE * luma + TINT_MAX_OFFSET`` is no tint (a
#: bin taken over by flow or a colour bar); such bins take the tint of their trusted neighbours.
TINT_MAX_SLOPE = 0.5
TINT_MAX_OFFSET = 8.0
#: Fewest pixels a brightness bin needs for its median chroma to be trusted as the tint.
TINT_MIN_PIXELS = 32

_BINS = 16


def luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of an (H, W, 3) image as float32 (0-255)."""
    f = rgb.astype(np.float32)
    return 0.299 * f[..., 0] + 0.587 * f[..., 1] + 0.114 * f[..., 2]


def residual_chroma(rgb: np.ndarray, luma: np.ndarray | None = None) -> np.ndarray:
    """Chroma of each pixel minus the image's tint at its brightness, float32 (H, W).

    The tint is the median (Cb, Cr) per brightness bin (16 levels wide): a sepia or blue map moves
    the whole bin, an overlay only a minority of it. A bin whose median is more saturated than any
    tint (``TINT_MAX_SLOPE``), or that holds too few pixels, is not trusted and takes the tint
    interpolated from the trusted bins, so bright flow that outnumbers the tissue of its brightness
    (a large power-Doppler blob in a dark image) still counts as colour.
    """
    if luma is None:
        luma = luminance(rgb)
    f = rgb.astype(np.float32)
    cb = f[..., 2] - luma
    cr = f[..., 0] - luma
    bins = np.clip(luma.astype(np.int32) // (256 // _BINS), 0, _BINS - 1)
    flat = bins.ravel()
    counts = np.bincount(flat, minlength=_BINS)
    med_cb = np.zeros(_BINS, np.float32)
    med_cr = np.zeros(_BINS, np.float32)
    order = np.argsort(flat, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)])
    cbf, crf = cb.ravel()[order], cr.ravel()[order]
    for i in np.flatnonzero(counts):
        med_cb[i] = np.median(cbf[starts[i] : starts[i + 1]])
        med_cr[i] = np.median(crf[starts[i] : starts[i + 1]])
    centre = (np.arange(_BINS, dtype=np.float32) + 0.5) * (256 // _BINS)
    trusted = (counts >= TINT_MIN_PIXELS) & (np.hypot(med_cb, med_cr) <= TINT_MAX_SLOPE * centre + TINT_MAX_OFFSET)
    if trusted.any():
        med_cb = np.interp(centre, centre[trusted], med_cb[trusted]).astype(np.float32)
        med_cr = np.interp(centre, centre[trusted], med_cr[trusted]).astype(np.float32)
    else:
        med_cb[:] = 0.0
        med_cr[:] = 0.0
    return np.hypot(cb - med_cb[bins], cr - med_cr[bins])


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return xx * xx + yy * yy <= radius * radius


def colour_overlay(rgb: np.ndarray, luma: np.ndarray | None = None,
                   grow: int = COLOUR_GROW) -> tuple[np.ndarray, np.ndarray]:
    """Coloured pixels of an (H, W, 3) uint8 image: ``(core, grown)`` boolean (H, W) masks.

    ``core`` holds the pixels of certain colour (residual chroma above ``CHROMA_THRESHOLD``) and
    the weaker-coloured pixels connected to them (above ``CHROMA_WEAK``); ``grown`` is ``core``
    dilated by ``grow`` pixels, the area to blank. A tint never seeds, so a tinted image is empty.
    """
    rc = residual_chroma(rgb, luma)
    seed = rc > CHROMA_THRESHOLD
    if not seed.any():
        empty = np.zeros(rc.shape, bool)
        return empty, empty.copy()
    weak = rc > CHROMA_WEAK
    lab, _ = ndi.label(weak, structure=np.ones((3, 3), bool))
    ids = np.unique(lab[seed])
    core = np.isin(lab, ids[ids > 0]) | seed
    grown = ndi.binary_dilation(core, structure=_disk(grow)) if grow > 0 else core.copy()
    return core, grown


#: Brightness (0-255) a burnt-in stroke reaches somewhere: white or a flat bright grey.
TEXT_MIN_LEVEL = 180.0
#: How much brighter than its local background (grey opening) a stroke's brightest pixels are.
TEXT_MIN_CONTRAST = 70.0
#: Anti-aliased stroke pixels connected to those (hysteresis): level and contrast.
TEXT_WEAK_LEVEL = 120.0
TEXT_WEAK_CONTRAST = 40.0
#: Largest distance (pixels, at a long side of 600 px or less) from a stroke pixel to the stroke's
#: edge: glyphs are one or two pixels wide (three with anti-aliasing), bright reflectors wider.
STROKE_HALF_WIDTH = 2.0
#: Widest stroke (pixels) at a long image side of 600 px; scaled with the image.
TEXT_MAX_STROKE = 3


def _stroke_pixels(gray: np.ndarray, inside: np.ndarray, k: int) -> np.ndarray:
    """Bright pixels in thin structures (narrower than ``k``) well above their surroundings."""
    g = gray.astype(np.float32)
    contrast = g - ndi.grey_opening(g, size=(k, k))
    strong = inside & (g >= TEXT_MIN_LEVEL) & (contrast >= TEXT_MIN_CONTRAST)
    weak = inside & (g >= TEXT_WEAK_LEVEL) & (contrast >= TEXT_WEAK_CONTRAST)
    lab, _ = ndi.label(weak, structure=np.ones((3, 3), bool))
    ids = np.unique(lab[strong])
    return np.isin(lab, ids[ids > 0])


def text_in_field(gray: np.ndarray, field_mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Boxes ``(top, left, bottom, right)`` of burnt-in text and marks inside the field.

    Strokes are bright (``TEXT_MIN_LEVEL``), thin and far above their local background; speckle
    grains in bright tissue have bright surroundings and fail the contrast, isolated bright specks
    are too small, and long bright interfaces (fascia, pleura, vessel walls) are too long and too
    wide for a glyph. Strokes are grouped into glyphs; a group counts as text when it holds glyphs
    of similar height side by side (a word), or one compact glyph made of thin strokes that fill
    a good part but not all of its box and stand out from a dark background (a caliper cross, a
    digit).
    """
    h, w = gray.shape
    scale = max(h, w) / 600.0
    max_stroke = max(2, round(TEXT_MAX_STROKE * scale))
    k = 2 * max_stroke + 1
    inside = ndi.binary_erosion(field_mask, structure=np.ones((3, 3), bool), iterations=2)
    stroke = _stroke_pixels(gray, inside, k)
    return _group_text(gray, stroke, scale)


def _is_cross(comp: np.ndarray) -> bool:
    """A caliper "+": one thin horizontal and one thin vertical bar crossing near the middle."""
    hb, wb = comp.shape
    if hb < 5 or wb < 5 or not 0.6 <= hb / wb <= 1.67:
        return False
    rows, cols = comp.sum(axis=1), comp.sum(axis=0)
    r, c = int(np.argmax(rows)), int(np.argmax(cols))
    central = abs(r - (hb - 1) / 2) <= 0.3 * hb and abs(c - (wb - 1) / 2) <= 0.3 * wb
    return central and rows[r] >= 0.7 * wb and cols[c] >= 0.7 * hb and comp.mean() <= 0.5


def _group_text(gray: np.ndarray, stroke: np.ndarray, scale: float) -> list[tuple[int, int, int, int]]:
    """Glyph-like stroke components grouped into words and caliper crosses (see :func:`text_in_field`)."""
    lab, n = ndi.label(stroke, structure=np.ones((3, 3), bool))
    if n == 0:
        return []
    min_h = max(5, round(6 * scale))
    max_h = round(40 * scale) + 10
    glyphs: list[tuple[int, int, int, int]] = []
    boxes: list[tuple[int, int, int, int]] = []
    for i, sl in enumerate(ndi.find_objects(lab), start=1):
        if sl is None:
            continue
        comp = lab[sl] == i
        hb, wb = comp.shape
        if not min_h <= hb <= max_h or wb > 1.6 * hb or comp.sum() < hb + 2:
            continue  # specks, long interfaces (wide or flat), fragments of nothing
        if ndi.distance_transform_edt(np.pad(comp, 1)).max() > STROKE_HALF_WIDTH * max(1.0, scale):
            continue  # a blob (a bright reflector), not a thin stroke
        box = (sl[0].start, sl[1].start, sl[0].stop, sl[1].stop)
        if _is_cross(comp):
            boxes.append(box)
        elif 0.15 <= comp.mean() <= 0.7:
            glyphs.append(box)
    # Words: glyphs of similar height on one line, with gaps under about one glyph height.
    glyphs.sort(key=lambda b: b[1])
    used = [False] * len(glyphs)
    for a, ga in enumerate(glyphs):
        if used[a]:
            continue
        line = [ga]
        t, left, b, r = ga
        for c in range(a + 1, len(glyphs)):
            gc = glyphs[c]
            hc, hl = gc[2] - gc[0], b - t
            same_row = abs((gc[0] + gc[2]) / 2 - (t + b) / 2) <= 0.35 * max(hc, hl)
            if not used[c] and same_row and 0.6 <= hc / hl <= 1.67 and gc[1] - r <= 1.2 * max(hc, hl):
                line.append(gc)
                used[c] = True
                t, left, b, r = min(t, gc[0]), min(left, gc[1]), max(b, gc[2]), max(r, gc[3])
        if len(line) >= 2:
            boxes.append((t, left, b, r))
    return sorted(boxes)


#: Pixels a text box or mark is grown by before it is blanked (anti-aliased rim, JPEG smear).
TEXT_GROW = 1


def text_area(shape: tuple[int, int], boxes: list[tuple[int, int, int, int]], marks: np.ndarray | None = None,
              grow: int = TEXT_GROW) -> np.ndarray:
    """The (H, W) pixels to blank for text that touches the kept image.

    ``boxes`` are the text found inside the field (:func:`text_in_field`), whole: the gaps between
    the strokes of a word carry no tissue worth keeping, and a stroke missed by the stroke test is
    still inside its word's box. ``marks`` are burnt-in marks found beside the tissue
    (:attr:`~sonofm.datasets.preprocess.field.Field.ui_marks`); the caller keeps the part of the
    area that lies in the kept field. Both are grown by ``grow`` pixels for the anti-aliased rim.
    """
    area = np.zeros(shape, bool)
    for t, left, b, r in boxes:
        area[t:b, left:r] = True
    if marks is not None:
        if marks.shape != area.shape:
            raise ValueError(f"text_area: marks {marks.shape} do not match the image {area.shape}")
        area |= marks
    if grow > 0 and area.any():
        area = ndi.binary_dilation(area, structure=np.ones((3, 3), bool), iterations=grow)
    return area
