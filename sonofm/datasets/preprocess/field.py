"""Acoustic-field detection: find the fan or rectangle that holds the ultrasound image.

Scanner screens and exported frames carry black borders, burnt-in text (patient name, date,
hospital), rulers, logos and colour bars around the image. Training on them teaches a model to
read the UI, and keeping them leaks identities, so every image is cropped to its acoustic field
at shard time, and the field itself is kept as a mask (masked pretraining and augmentation stay
inside it).

The detector works on intensity alone, at low resolution (``DETECT_SIDE`` pixels) for speed:

1. signal = smoothed image above the background level (screens are black outside the field);
2. an opening cuts thin text strokes and the bridges that glue labels to the field, a closing
   and hole filling make the field solid (dark cysts, vessels and the bladder inside it are
   enclosed by tissue and so are kept);
3. the large components are kept and their convex hull is the field; the hull is rasterised at
   the original resolution from its half-planes, so the mask is exact at any size;
4. a dark band below the field whose edge fades gradually is deep tissue with no echo, not a
   screen border: the field is extended to the image bottom there instead of cutting it;
5. bright components outside the (slightly grown) field are reported as text/UI.

The field is a ``"rect"`` when its hull fills its bounding box, a ``"fan"`` otherwise (sector,
curvilinear and trapezoid fields), and ``"full"`` when it covers the whole image (images a
publisher already cropped): then nothing is cropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, QhullError

#: Longest side of the working copy the detector analyses.
DETECT_SIDE = 256
#: Hull fill of its bounding box above which a field is a rectangle.
RECT_FILL = 0.97
#: A field whose bbox leaves less than this share of the image on every side is the full image.
FULL_MARGIN = 0.02
#: Share of signal pixels outside the field core above which that area is tissue, not background.
TISSUE_OUTSIDE = 0.15
#: Fields smaller than this share of the image are not trusted (blank or odd images): full frame.
MIN_FIELD_SHARE = 0.08
#: Longest side of the fine copy in which burnt-in UI marks are told apart from the field.
FINE_SIDE = 1024
#: A bright fine-resolution component smaller than this share of the image is a UI mark ...
UI_MAX_AREA = 0.005
#: ... and so is one thinner than this share of the image height or width (rulers, scale bars).
UI_MAX_THIN = 0.03
#: A bright component no taller than this share of the image height (or ``UI_LINE_PX`` pixels,
#: whichever is more) and narrower than ``UI_LINE_WIDE`` of its width has the shape of a line of
#: text, whatever its area (on a small screen one line of patient ID or date is more than
#: ``UI_MAX_AREA``); like a small mark it is UI when flat, or when it lies beside the tissue.
UI_LINE_H = 0.06
UI_LINE_PX = 12
UI_LINE_WIDE = 0.5
#: Brightness above the background that a UI mark's brightest pixel reaches (text, ticks, bars).
UI_BRIGHT = 100.0
#: A small mark is flat: at least ``UI_FLAT_SHARE`` of its pixels within ``UI_FLAT`` of its peak
#: (as a share of the peak's height above the background).
UI_FLAT = 0.15
UI_FLAT_SHARE = 0.3
#: Pixels that change less than this (0..255, across a clip's frames, at working size) are static.
STATIC_RANGE = 4.0


@dataclass
class Field:
    """The acoustic field of one image, in the coordinates of the original image.

    ``bbox`` is ``(top, left, bottom, right)`` with exclusive ``bottom``/``right`` (array slice
    bounds), ``mask`` the (H, W) boolean field. Fans carry their estimated geometry when the two
    side edges could be fitted: ``apex`` (x, y), ``radii`` (inner, outer) from the apex and
    ``angles`` (left, right) of the side edges in degrees from the vertical.
    """

    kind: str
    bbox: tuple[int, int, int, int]
    mask: np.ndarray
    apex: tuple[float, float] | None = None
    radii: tuple[float, float] | None = None
    angles: tuple[float, float] | None = None
    text_boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    extended_bottom: bool = False
    fallback: bool = False
    #: Bounding boxes of the views of a dual-view screen (empty for one view); ``mask`` is their union.
    views: list[tuple[int, int, int, int]] = field(default_factory=list)
    #: (H, W) map of the burnt-in marks found beside the tissue (text lines, ticks, rulers), or None.
    #: The field's edge is drawn at working resolution and may cover a few of their pixels when they
    #: are printed 1-3 px from the image: preprocessing blanks those (text that touches the image).
    ui_marks: np.ndarray | None = None

    @property
    def text_outside(self) -> bool:
        """Whether bright marks (text, rulers, logos, colour bars) lie outside the field."""
        return bool(self.text_boxes)

    def to_meta(self) -> dict[str, Any]:
        """JSON-serialisable summary (no arrays) for the sample metadata."""
        h, w = self.mask.shape
        meta: dict[str, Any] = {
            "kind": self.kind,
            "bbox": [int(v) for v in self.bbox],
            "area_fraction": round(float(self.mask.mean()), 4) if h * w else 0.0,
            "text_boxes": [[int(v) for v in b] for b in self.text_boxes],
            "extended_bottom": self.extended_bottom,
            "fallback": self.fallback,
        }
        if self.apex is not None:
            meta["apex"] = [round(float(v), 1) for v in self.apex]
        if self.radii is not None:
            meta["radii"] = [round(float(v), 1) for v in self.radii]
        if self.angles is not None:
            meta["angles"] = [round(float(v), 2) for v in self.angles]
        if self.views:
            meta["views"] = [[int(v) for v in b] for b in self.views]
        return meta


def _downscale(gray: np.ndarray, side: int) -> tuple[np.ndarray, float, float]:
    """Area-averaged copy with longest side ``side`` (never upsampled) and its (sy, sx) factors."""
    h, w = gray.shape
    scale = min(1.0, side / max(h, w))
    hs, ws = max(1, round(h * scale)), max(1, round(w * scale))
    if (hs, ws) == (h, w):
        return gray.astype(np.float32), 1.0, 1.0
    small = np.asarray(Image.fromarray(gray).resize((ws, hs), Image.Resampling.BOX), dtype=np.float32)
    return small, hs / h, ws / w


def _hull_equations(points: np.ndarray) -> np.ndarray | None:
    """Half-planes ``a*x + b*y + c <= 0`` of the convex hull of (x, y) points (None if degenerate)."""
    try:
        return ConvexHull(points).equations
    except (QhullError, ValueError):
        return None


def _rasterise(eq: np.ndarray, h: int, w: int, grow: float) -> np.ndarray:
    """Boolean (h, w) mask of pixel centres inside the hull grown by ``grow`` pixels.

    Row by row, each half-plane bounds x to an interval, so the cost is O(h * facets) plus one
    comparison per pixel rather than one per pixel and facet.
    """
    ys = np.arange(h, dtype=np.float64) + 0.5
    lo = np.full(h, -np.inf)
    hi = np.full(h, np.inf)
    for a, b, c in eq:
        rhs = -(c - grow) - b * ys  # a*x <= rhs (Qhull normals are unit length)
        if abs(a) < 1e-9:
            bad = rhs < 0
            lo[bad], hi[bad] = np.inf, -np.inf
        elif a > 0:
            hi = np.minimum(hi, rhs / a)
        else:
            lo = np.maximum(lo, rhs / a)
    xs = np.arange(w, dtype=np.float64) + 0.5
    return (xs[None, :] >= lo[:, None]) & (xs[None, :] <= hi[:, None])


def _signal_level(small: np.ndarray) -> tuple[float, float]:
    """Background level and signal threshold of a frame (robust to video black at 16)."""
    bg = float(np.percentile(small, 1.0))
    top = float(np.percentile(small, 99.0))
    return bg, bg + max(6.0, 0.08 * (top - bg))


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return xx * xx + yy * yy <= radius * radius


def _ui_marks(gray: np.ndarray, bg: float, thr: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full-resolution maps of burnt-in UI marks, of those among them that are text, and of the marks
    that lie beside the tissue (outside the hull of its speckle component: certainly no tissue).

    At working size a label or grey bar a few pixels from the field blurs into it and the closing
    glues it on, so its pixels end up in the hull (the crop keeps them, a fan-shaped hull is the
    result, the soft-bottom extension runs down from them). At full resolution the gap a screen
    leaves around its image is still there: each mark is its own bright component, small (text,
    ticks, markers) or narrow (rulers, scale bars), while the tissue is one large speckle
    component. Dim components are left alone: isolated speckle in dark tissue is dim, marks are
    drawn bright. Horizontal thinness is no cue (A-lines, the pleura and vessel walls are thin
    horizontal tissue). Text marks are the marks with a small bounding box (not a ruler, a bar
    or the outline of a Doppler box).
    """
    fine, fy, fx = _downscale(gray, FINE_SIDE)
    sig = fine > thr
    lab, n = ndi.label(sig, structure=np.ones((3, 3), bool))
    empty = np.zeros(gray.shape, bool)
    if n < 2:
        return empty, empty, empty
    area = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    bright = np.zeros(n + 1, bool)
    bright[np.unique(lab[fine >= bg + UI_BRIGHT])] = True
    objs = ndi.find_objects(lab)
    hh = np.array([o[0].stop - o[0].start for o in objs])
    ww = np.array([o[1].stop - o[1].start for o in objs])
    hf, wf = fine.shape
    # Rulers and scale bars stand apart from the image border; a narrow bright strip on the border
    # is tissue at the edge of an image cropped to its field.
    x0 = np.array([o[1].start for o in objs])
    x1 = np.array([o[1].stop for o in objs])
    narrow = (ww < UI_MAX_THIN * wf) & (x0 > 0) & (x1 < wf)
    line = (hh <= max(UI_LINE_PX, UI_LINE_H * hf)) & (ww < UI_LINE_WIDE * wf)
    small = ((area < UI_MAX_AREA * fine.size) | line) & ~narrow & bright[1:]
    main = int(np.argmax(area))  # the tissue: one large speckle component
    small[main] = False
    outside = _outside_hull(lab, main + 1, objs, n)
    beside = small & outside
    if small.any():
        # Small bright tissue (a vessel wall, a calcification in dark tissue) is as small as a
        # word; marks are drawn in one shade, so many of their pixels sit at the mark's peak.
        # Beside the tissue (outside its hull) there is no tissue: there small anti-aliased text
        # (a 7 px patient ID on a small screen, no pixel at its peak) is a mark too.
        pix = np.concatenate([[False], small])[lab]
        ids, vals = lab[pix], fine[pix]
        peak = np.zeros(n + 1, np.float32)
        np.maximum.at(peak, ids, vals)
        near = np.bincount(ids, weights=vals >= peak[ids] - UI_FLAT * (peak[ids] - bg), minlength=n + 1)[1:]
        small &= (near >= UI_FLAT_SHARE * area) | beside
    ui = (bright[1:] & narrow) | small
    ui[main] = False  # the tissue itself
    if not ui.any():
        return empty, empty, empty
    text = ui & (hh < 0.08 * hf) & (ww < 0.3 * wf)
    maps = [np.concatenate([[False], sel])[lab] for sel in (ui, text, ui & outside)]
    if (fy, fx) != (1.0, 1.0):  # back to the original grid (nearest)
        h, w = gray.shape
        rows = np.minimum((np.arange(h) * fy).astype(int), hf - 1)
        cols = np.minimum((np.arange(w) * fx).astype(int), wf - 1)
        maps = [m[rows[:, None], cols[None, :]] for m in maps]
    return maps[0], maps[1], maps[2]


def _outside_hull(lab: np.ndarray, main: int, objs: list, n: int) -> np.ndarray:
    """Per component 1..n: whether most of its pixels lie outside the convex hull of component ``main``."""
    sl = objs[main - 1]
    comp = lab[sl] == main
    edge = comp & ~ndi.binary_erosion(comp)
    yy, xx = np.nonzero(edge)
    pts = np.stack([xx + sl[1].start + 0.5, yy + sl[0].start + 0.5], axis=1).astype(np.float64)  # centres
    eq = _hull_equations(pts)
    out = np.ones(n, bool)
    if eq is None:
        return out
    hull = _rasterise(eq, *lab.shape, grow=1.0)
    inside = np.bincount(lab[hull], minlength=n + 1)[1:]
    total = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    return inside < 0.5 * total


def _pool_any(mask: np.ndarray, shape: tuple[int, int], sy: float, sx: float) -> np.ndarray:
    """Low-res map: True where any full-resolution pixel of ``mask`` falls."""
    out = np.zeros(shape, bool)
    ys, xs = np.nonzero(mask)
    out[np.minimum((ys * sy).astype(int), shape[0] - 1), np.minimum((xs * sx).astype(int), shape[1] - 1)] = True
    return out

def _field_components(sig: np.ndarray) -> np.ndarray:
    """Solid field region from a thresholded signal map: cut text, fill tissue, keep big parts."""
    n_pix = sig.size
    opened = ndi.binary_opening(sig, structure=np.ones((3, 3), bool), iterations=1)
    closed = ndi.binary_closing(opened, structure=np.ones((3, 3), bool), iterations=2, border_value=0)
    closed |= opened
    filled = ndi.binary_fill_holes(closed)
    # An opening by a disk about 8 % of the working size wide removes labels, rulers and UI blocks
    # that touch the field (their hull would otherwise swallow the black border), at the price
    # of rounding acute corners by a few pixels.
    radius = max(2, round(0.04 * max(sig.shape)))
    # The hull is built from this core alone: giving back the corner tips the disk rounded off
    # would also give back labels that straddle the field edge (e.g. a model name on a trapezoid's
    # corner), and their pixels tilt the hull's edges outwards. A tip lost at an acute corner is
    # a few pixels of near field.
    solid = ndi.binary_opening(filled, structure=_disk(radius))
    lab, n = ndi.label(solid)
    if n == 0:
        return solid
    sizes = ndi.sum(solid, lab, index=np.arange(1, n + 1))
    keep_ids = np.flatnonzero(sizes >= max(0.02 * n_pix, 0.05 * sizes.max())) + 1
    return np.isin(lab, keep_ids)


def _band_below(region: np.ndarray, text: np.ndarray) -> int:
    """First low-res row (less a margin) of the text marks below the field, under its columns.

    A text band below the field (TIS/MI, labels) belongs to the screen: nothing below its first
    row is field, in any column under the field, not only in the columns its letters cover.
    """
    hs = region.shape[0]
    cols = np.flatnonzero(region.any(axis=0))
    if cols.size == 0:
        return hs
    # Columns near the field's sides are left out: rulers, ticks and focus markers sit beside the
    # field there, within its rows, and say nothing about where it ends.
    margin = max(2, round(0.05 * (cols[-1] - cols[0] + 1)))
    inner = cols[(cols >= cols[0] + margin) & (cols <= cols[-1] - margin)]
    if inner.size == 0:
        return hs
    last = hs - 1 - np.argmax(region[::-1, :], axis=0)
    below = text[:, inner] & (np.arange(hs)[:, None] > last[inner][None, :])
    under = below.any(axis=1)
    return int(np.argmax(under)) - 2 if under.any() else hs


def _extend_soft_bottom(smooth: np.ndarray, region: np.ndarray, text: np.ndarray, band: bool = True) -> np.ndarray:
    """Columns (low res) whose field ends in a gradual fade, extended down to the image bottom.

    Screens end the field with a sharp edge; depth attenuation fades out instead. Below a faded
    edge the black is deep tissue without echo, so the field continues there (down to the first
    text mark, if any) rather than being cut.
    """
    hs, ws = region.shape
    ext = np.zeros_like(region)
    cols = np.flatnonzero(region.any(axis=0))
    if cols.size == 0:
        return ext
    body = float(np.median(smooth[region]))
    k = max(3, hs // 25)
    last = hs - 1 - np.argmax(region[::-1, :], axis=0)  # lowest field row per column
    soft = np.zeros(ws, bool)
    for c in cols:
        r = last[c]
        if r >= hs - 2:
            continue
        seg = smooth[max(0, r - k + 1) : r + 1, c][region[max(0, r - k + 1) : r + 1, c]]
        soft[c] = seg.size > 0 and float(seg.mean()) < 0.5 * body
    soft = ndi.median_filter(soft.astype(np.uint8), size=9, mode="nearest").astype(bool)
    soft &= region.any(axis=0)
    limit = _band_below(region, text) if band else hs
    for c in np.flatnonzero(soft):
        r = last[c]
        below = np.flatnonzero(text[r + 1 :, c])
        stop = min(limit, r + 1 + (below[0] - 2 if below.size else hs - r - 1))
        ext[r + 1 : max(r + 1, stop), c] = True
    return ext


def _side_lines(region: np.ndarray, rows: np.ndarray) -> tuple[float, float, float, float] | None:
    """Lines ``x = k*y + b`` fitted to the left and right edges of ``region`` over ``rows``."""
    ws = region.shape[1]
    rows = rows[region[rows].any(axis=1)]
    if rows.size < 5:
        return None
    left = np.argmax(region[rows], axis=1).astype(float)
    right = (ws - 1 - np.argmax(region[rows, ::-1], axis=1)).astype(float)
    ok_l, ok_r = left > 1, right < ws - 2  # edges on the image border say nothing about the field
    if ok_l.sum() < 5 or ok_r.sum() < 5:
        return None
    kl, bl = np.polyfit(rows[ok_l].astype(float), left[ok_l], 1)
    kr, br = np.polyfit(rows[ok_r].astype(float), right[ok_r], 1)
    return float(kl), float(bl), float(kr), float(br)


def _follow_fan_sides(region: np.ndarray, ext: np.ndarray, text: np.ndarray, band: bool = True) -> np.ndarray:
    """Below a faded fan, the field keeps widening along the fan's sides, not straight down.

    The side lines are fitted where the fan is still bright (above the fade); between them, from
    the faded edge to the bottom (or the first text mark), the field is extended.
    """
    out = np.zeros_like(region)
    hs, ws = region.shape
    ext_rows = np.flatnonzero(ext.any(axis=1))
    rows = np.flatnonzero(region.any(axis=1))
    if ext_rows.size == 0 or rows.size < 10:
        return out
    start = int(ext_rows[0])
    fit_rows = np.arange(rows[0] + max(2, (start - rows[0]) // 5), start)
    lines = _side_lines(region, fit_rows)
    if lines is None:
        return out
    kl, bl, kr, br = lines
    if kr - kl < 0.05:  # parallel sides: the straight extension is right
        return out
    ys = np.arange(start, hs)
    xs = np.arange(ws)
    inside = (xs[None, :] >= (kl * ys + bl)[:, None]) & (xs[None, :] <= (kr * ys + br)[:, None])
    blocked = np.maximum.accumulate(text[start:], axis=0)  # stop at the first mark below
    out[start:] = inside & ~blocked
    if band:
        out[max(start, _band_below(region, text)) :] = False
    return out


def _fan_geometry(
    mask: np.ndarray,
) -> tuple[tuple[float, float], tuple[float, float], tuple[float, float]] | None:
    """Apex, radii and side angles of a fan from the left/right edges of its mask (None if unfit)."""
    h, w = mask.shape
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size < 10:
        return None
    r0, r1 = rows[0], rows[-1]
    sel = rows[(rows > r0 + 0.2 * (r1 - r0)) & (rows < r1 - 0.2 * (r1 - r0))]
    if sel.size < 5:
        return None
    left = np.argmax(mask[sel], axis=1).astype(float)
    right = (w - 1 - np.argmax(mask[sel, ::-1], axis=1)).astype(float)
    inner = (left > 1) & (right < w - 2)  # edges on the image border say nothing about the fan
    if inner.sum() < 5:
        return None
    y = sel[inner].astype(float)
    kl, bl = np.polyfit(y, left[inner], 1)  # x = k*y + b
    kr, br = np.polyfit(y, right[inner], 1)
    if kr - kl < 0.05:  # sides (nearly) parallel: no apex
        return None
    ya = (bl - br) / (kr - kl)
    xa = kl * ya + bl
    yy, xx = np.nonzero(mask)
    d = np.hypot(xx + 0.5 - xa, yy + 0.5 - ya)
    return (
        (float(xa), float(ya)),
        (float(d.min()), float(d.max())),
        (float(np.degrees(np.arctan(kl))), float(np.degrees(np.arctan(kr)))),
    )


def _text_boxes(
    small: np.ndarray, region_small: np.ndarray, bg: float, sy: float, sx: float, shape: tuple[int, int]
) -> tuple[list[tuple[int, int, int, int]], np.ndarray]:
    """Bright marks outside the grown field, as boxes in original coordinates (and their map)."""
    # Tissue at the corner tips the core rounds off is no text: keep a band of half the disk radius.
    band = max(3, round(0.02 * max(region_small.shape)))
    grown = ndi.binary_dilation(region_small, structure=_disk(band))
    bright = (small > bg + 40.0) & ~grown
    lab, n = ndi.label(bright, structure=np.ones((3, 3), bool))
    boxes: list[tuple[int, int, int, int]] = []
    keep = np.zeros_like(bright)
    h, w = shape
    for i, sl in enumerate(ndi.find_objects(lab), start=1):
        if sl is None:
            continue
        comp = lab[sl] == i
        if comp.sum() < 6:  # compression noise, single bright speckles
            continue
        keep[sl] |= comp
        t, b = int(sl[0].start / sy), min(h, int(np.ceil(sl[0].stop / sy)))
        left, r = int(sl[1].start / sx), min(w, int(np.ceil(sl[1].stop / sx)))
        boxes.append((t, left, b, r))
    return boxes, keep


def _rect_edges(
    region: np.ndarray, sy: float, sx: float, bbox: tuple[int, int, int, int]
) -> tuple[int, int, int, int]:
    """Edges of a rectangular field as the median row/column extents of its low-res region.

    A UI block glued to one edge (a ruler or grey bar beside the image) survives the opening
    where it joins the field and pushes the extreme extent outwards; the median over all rows and
    columns is the edge the field really has. Clipped to the hull's ``bbox``.
    """
    rows, cols = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
    first_c = np.argmax(region[rows], axis=1)
    last_c = region.shape[1] - np.argmax(region[rows, ::-1], axis=1)
    first_r = np.argmax(region[:, cols], axis=0)
    last_r = region.shape[0] - np.argmax(region[::-1, cols], axis=0)
    t, left, b, r = bbox
    hs, ws = region.shape
    mt, ml = float(np.median(first_r)), float(np.median(first_c))
    mb, mr = float(np.median(last_r)), float(np.median(last_c))
    # Within a low-res pixel of the image border means on it.
    return (
        t if mt <= 1 else max(t, int(np.floor(mt / sy)) - 1),
        left if ml <= 1 else max(left, int(np.floor(ml / sx)) - 1),
        b if mb >= hs - 1 else min(b, int(np.ceil(mb / sy)) + 1),
        r if mr >= ws - 1 else min(r, int(np.ceil(mr / sx)) + 1),
    )


def _split_views(pts: np.ndarray, signal: np.ndarray) -> list[np.ndarray]:
    """Side-by-side views of a dual-view screen as separate low-res masks (else ``[pts]``).

    Two parts of similar size whose column ranges do not overlap, each nearly as tall as both,
    with background (almost no ``signal``) between them from top to bottom, are two images: one
    hull over both would keep the black gap and the labels between them. A single field split
    by a dark band (a vessel, a shadow) has parts stacked or overlapping in columns, or signal in
    the gap, and stays whole.
    """
    lab, n = ndi.label(pts, structure=np.ones((3, 3), bool))
    if n < 2:
        return [pts]
    total = float(pts.sum())
    spans = []
    for j, sl in enumerate(ndi.find_objects(lab), start=1):
        spans.append([sl[1].start, sl[1].stop, [j]])
    spans.sort(key=lambda v: v[0])
    groups = [spans[0]]
    for a0, a1, ids in spans[1:]:  # parts whose columns overlap belong to one view
        if a0 < groups[-1][1]:
            groups[-1][1] = max(groups[-1][1], a1)
            groups[-1][2] += ids
        else:
            groups.append([a0, a1, ids])
    if len(groups) < 2:
        return [pts]
    views = [np.isin(lab, ids) for _, _, ids in groups]
    rows = np.flatnonzero(pts.any(axis=1))
    height = rows[-1] - rows[0] + 1
    sizes = [float(v.sum()) for v in views]
    if len(views) != 2 or min(sizes) < 0.3 * total or min(sizes) < 0.4 * max(sizes):
        return [pts]  # scanners show two views of about the same size, not a beam and a sliver
    for v in views:
        r = np.flatnonzero(v.any(axis=1))
        if r[-1] - r[0] + 1 < 0.7 * height:
            return [pts]
    # Between two views lies screen background from top to bottom, not a shadow under tissue.
    gap = signal[rows[0] : rows[-1] + 1, groups[0][1] : groups[1][0]]
    if gap.size and float(gap.mean()) > 0.02:
        return [pts]
    return views

def _view_field(
    pts: np.ndarray, sy: float, sx: float, shape: tuple[int, int], boxes: list[tuple[int, int, int, int]]
) -> tuple[str, tuple[int, int, int, int], np.ndarray] | None:
    """Kind, bbox and full-resolution mask of one view from its low-res points (None if degenerate)."""
    h, w = shape
    # Hull of pixel corners, in original-image pixel-edge coordinates.
    edge = pts & ~ndi.binary_erosion(pts)
    yy, xx = np.nonzero(edge)
    corners = np.concatenate(
        [np.stack([xx + dx, yy + dy], axis=1) for dx in (0, 1) for dy in (0, 1)]
    ).astype(np.float64)
    corners[:, 0] /= sx
    corners[:, 1] /= sy
    eq = _hull_equations(corners)
    if eq is None:
        return None
    mask = _rasterise(eq, h, w, grow=1.0)
    if not mask.any():
        return None
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    bbox = (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)
    t, left, b, r = bbox
    fill = float(mask[t:b, left:r].mean())
    # Marks inside the bbox but outside the hull (a label in the black corner of a trapezoid) keep
    # the exact hull as the field: a rectangle would take them back in.
    corner_marks = any(
        t <= (bx[0] + bx[2]) // 2 < b and left <= (bx[1] + bx[3]) // 2 < r and not mask[(bx[0] + bx[2]) // 2, (bx[1] + bx[3]) // 2]
        for bx in boxes
    )
    if fill >= RECT_FILL and not corner_marks:
        return "rect", bbox, mask
    return "fan", bbox, mask


def detect_field(gray: np.ndarray) -> Field:
    """Find the acoustic field of an 8-bit grayscale image.

    Never raises on odd content: an image without a trustworthy field (blank, or a field under
    ``MIN_FIELD_SHARE`` of the image) is returned as ``"full"`` with ``fallback=True``.
    """
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"detect_field needs a uint8 (H, W) image, got {gray.dtype} {gray.shape}")
    return _detect(gray, None)


def _detect(gray: np.ndarray, static: np.ndarray | None) -> Field:
    """The detector; ``static`` (clips) marks full-resolution pixels known to be UI."""
    h, w = gray.shape
    full = Field("full", (0, 0, h, w), np.ones((h, w), bool))
    if min(h, w) < 16:
        return full
    small, sy, sx = _downscale(gray, DETECT_SIDE)
    hs, ws = small.shape
    bg, thr = _signal_level(small)
    smooth = ndi.uniform_filter(small, 3)
    region = _field_components(smooth > thr)
    # A field that spans the image from side to side is an image already cropped to its field
    # (BUSI, CCA): whatever is burnt in lies on the tissue and is left to the rules below. On a
    # screen, UI marks are taken out of the image the field is found in (they stay in ``small``,
    # where the text boxes are looked for, so the build report still counts them).
    cols0 = np.flatnonzero(region.any(axis=0))
    screen = static is not None or cols0.size == 0 or cols0[0] > 1 or cols0[-1] < ws - 2
    text_marks = np.zeros((h, w), bool)
    beside: np.ndarray | None = None
    if screen:
        marks, text_marks, beside = _ui_marks(gray, bg, thr)
        if static is not None:
            marks |= static
        if marks.any():
            clean = _downscale(np.where(marks, np.uint8(min(255, round(bg))), gray), DETECT_SIDE)[0]
            smooth = ndi.uniform_filter(clean, 3)
            region = _field_components(smooth > thr)
    if region.sum() < MIN_FIELD_SHARE * region.size:
        full.fallback = True
        return full
    # Outside a screen's field lies black background (plus a few marks); outside the core of an
    # image already cropped to its field lies dark tissue, still speckled: keep the whole image.
    outside = ~ndi.binary_dilation(region, structure=_disk(max(3, round(0.02 * max(hs, ws)))))
    if outside.any() and float((smooth > thr)[outside].mean()) >= TISSUE_OUTSIDE:
        return full
    boxes, text = _text_boxes(small, region, bg, sy, sx, (h, w))
    # The extension below a faded bottom stops at text marks only: bright tissue in the dark
    # depth (a vessel wall) and a Doppler box outline are no screen border.
    stop = text & _pool_any(text_marks, (hs, ws), sy, sx) if screen else text
    ext = _extend_soft_bottom(smooth, region, stop, band=screen)
    extended = bool(ext.sum() > 0.01 * ext.size)
    pts_region = region | ext | _follow_fan_sides(region, ext, stop, band=screen) if extended else region
    split = _split_views(pts_region, smooth > thr) if screen else [pts_region]
    parts = [_view_field(v, sy, sx, (h, w), boxes) for v in split]
    if any(p is None for p in parts):
        full.fallback = True
        return full
    mask = np.logical_or.reduce([p[2] for p in parts])
    if mask.mean() < MIN_FIELD_SHARE:
        full.fallback = True
        return full
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    bbox = (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)
    t, left, b, r = bbox
    margin_y, margin_x = FULL_MARGIN * h, FULL_MARGIN * w
    covers = t <= margin_y and left <= margin_x and b >= h - margin_y and r >= w - margin_x
    boxes = [bx for bx in boxes if not mask[(bx[0] + bx[2]) // 2, (bx[1] + bx[3]) // 2]]
    if len(parts) == 1 and covers and parts[0][0] == "rect":
        return Field("full", (0, 0, h, w), np.ones((h, w), bool), extended_bottom=extended, ui_marks=beside)
    views: list[tuple[int, int, int, int]] = []
    if all(p[0] == "rect" for p in parts):
        mask = np.zeros((h, w), bool)
        for p, v in zip(parts, split):
            vt, vl, vb, vr = _rect_edges(v, sy, sx, p[1])
            mask[vt:vb, vl:vr] = True
            views.append((vt, vl, vb, vr))
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        bbox = (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)
        kind, geom = "rect", None
    else:
        views = [p[1] for p in parts]
        kind, geom = "fan", _fan_geometry(parts[0][2]) if len(parts) == 1 else None
    apex, radii, angles = geom if geom is not None else (None, None, None)
    return Field(
        kind, bbox, mask, apex, radii, angles, text_boxes=boxes, extended_bottom=extended,
        views=views if len(views) > 1 else [], ui_marks=beside,
    )


#: Frames of a clip the clip detector looks at (evenly spread): enough to see the tissue move.
CLIP_FRAMES = 8
#: Share of the field that must change across a clip before its static pixels are taken as UI.
MIN_MOVING_SHARE = 0.5


def detect_clip_field(frames: list[np.ndarray]) -> Field:
    """One acoustic field for all frames of a clip (cine loop, multi-frame DICOM).

    A still image cannot always tell a label touching the field, or a probe half off the skin,
    from tissue; a clip can: burnt-in text, rulers and bars stay put while the speckle changes
    from frame to frame. The field is detected on the per-pixel maximum over the frames (a part
    that is dark in one frame is bright in another) with the pixels that never change taken out
    as UI, provided most of the field does change (a frozen or duplicated clip gives no such cue
    and is detected as a still). Fewer than two frames: :func:`detect_field` of the first.
    """
    if not frames:
        raise ValueError("detect_clip_field needs at least one frame")
    for f in frames:
        if f.ndim != 2 or f.dtype != np.uint8:
            raise ValueError(f"detect_clip_field needs uint8 (H, W) frames, got {f.dtype} {f.shape}")
        if f.shape != frames[0].shape:
            raise ValueError(f"detect_clip_field: frame sizes differ ({f.shape} vs {frames[0].shape})")
    if len(frames) < 2:
        return detect_field(frames[0])
    pick = np.unique(np.linspace(0, len(frames) - 1, min(len(frames), CLIP_FRAMES)).round().astype(int))
    lo = frames[int(pick[0])].copy()
    hi = lo.copy()
    for i in pick[1:]:
        np.minimum(lo, frames[int(i)], out=lo)
        np.maximum(hi, frames[int(i)], out=hi)
    h, w = hi.shape
    if min(h, w) < 16:
        return detect_field(hi)
    small, _, _ = _downscale(hi, DETECT_SIDE)
    _, thr = _signal_level(small)
    # Compression flicker at the edges of static text stays within a few grey levels.
    static = (hi.astype(np.int16) - lo <= STATIC_RANGE) & (hi > thr)
    still = _detect(hi, None)
    inside = still.mask & (hi > thr)
    if still.fallback or not inside.any() or float((~static[inside]).mean()) < MIN_MOVING_SHARE:
        return still
    return _detect(hi, static)
