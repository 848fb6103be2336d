"""Burnt-in annotations outside the acoustic field: scanner text, caliper marks, depth ruler.

Real scanner screens carry text (probe, frequency, gain, patient id, date), a depth scale and
caliper readouts around the image. They are drawn here, always outside a dilated copy of the
field, so that field detection has something realistic to crop away and the build report has
text to count; nothing is ever drawn over the tissue.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .geometry import Geometry
from .sources import SyntheticSource


@lru_cache(maxsize=8)
def _glyphs(px: int) -> tuple[dict[str, np.ndarray], int]:
    """Bitmaps of the printable ASCII characters in PIL's default font at ``px``, one line high.

    Strings are composed from these cached glyphs (no kerning), which is ~10x faster than
    asking the font to lay out every string and gives the same pixels on every call.
    """
    font = ImageFont.load_default(size=px)
    ascent, descent = font.getmetrics()
    h = ascent + descent
    out = {}
    for code in range(32, 127):
        ch = chr(code)
        w = max(1, int(round(font.getlength(ch))))
        im = Image.new("L", (w, h), 0)
        ImageDraw.Draw(im).text((0, 0), ch, fill=255, font=font)
        out[ch] = np.asarray(im, dtype=np.uint8)
    return out, h


def _text_bitmap(text: str, px: int) -> np.ndarray:
    glyphs, h = _glyphs(px)
    bm = np.concatenate([glyphs.get(c, glyphs["?"]) for c in text], axis=1)
    rows = np.flatnonzero(bm.max(1))  # trim empty lines above and below the ink
    cols = np.flatnonzero(bm.max(0))
    if rows.size == 0:
        return np.zeros((1, 1), dtype=np.uint8)
    return bm[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _free(occupied: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> bool:
    h, w = occupied.shape
    if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
        return False
    return not occupied[y0:y1, x0:x1].any()


def _stamp(layer: np.ndarray, occupied: np.ndarray, bm: np.ndarray, x: int, y: int, shade: int) -> None:
    th, tw = bm.shape
    region = layer[y : y + th, x : x + tw]
    np.maximum(region, (bm.astype(np.uint16) * shade // 255).astype(np.uint8), out=region)
    occupied[max(0, y - 1) : y + th + 1, max(0, x - 1) : x + tw + 1] = True


def _place_text(
    layer: np.ndarray, occupied: np.ndarray, text: str, px: int, anchors: list[tuple[int, int]], shade: int
) -> bool:
    """Write ``text`` at the first anchor, moved down to the first free rows; False if nowhere fits."""
    bm = _text_bitmap(text, px)
    th, tw = bm.shape
    size = occupied.shape[0]
    for ax, ay in anchors:
        x = ax if ax >= 0 else size + ax - tw  # negative anchor: right-aligned
        if x < 0 or x + tw > size or ay >= size:
            continue
        busy = occupied[ay:, x : x + tw].any(1)
        # first row y >= ay with th + 2 free rows from it: a run of zeros in busy
        run = np.convolve(busy, np.ones(th + 2, dtype=np.int64), mode="valid")
        free = np.flatnonzero(run == 0)
        if free.size:
            _stamp(layer, occupied, bm, x, ay + int(free[0]) + 1, shade)
            return True
    return False


def draw_marks(
    spec: SyntheticSource, g: Geometry, rng: np.random.Generator, patient: int, lesion_cm: float | None,
    drawn: list[str] | None = None,
) -> np.ndarray:
    """(size, size) uint8 layer of annotations, zero on and around the acoustic field.

    The patient ID, date and time lines sit where scanners print them, in the corner beside the
    image, down to ``keepout`` (2-3 px) from it: what a field crop must not take in and what the
    shard audit must find in raw screens. Every text line placed is appended to ``drawn``.
    """
    size = g.size
    layer = np.zeros((size, size), dtype=np.uint8)
    occupied = g.keepout.copy()
    px = max(7, round(size / 26))
    shade = int(rng.integers(190, 256))
    r0, _ = g.origin_px
    s = g.spacing_mm

    # depth ruler: a tick every cm just right of the field, a number every 1 (linear) or 5 cm (convex)
    cols = np.flatnonzero(g.field.any(0))
    x_r = int(cols.max()) + max(3, size // 64)
    tick = max(2, size // 80)
    every = 1 if spec.depth_mm <= 60 else 5
    if x_r + 2 * tick < size:
        for cm in range(int(spec.depth_mm // 10) + 1):
            y = int(round(r0 + cm * 10.0 / s))
            long = cm % every == 0
            length = tick * 2 if long else tick
            if y >= size or not _free(occupied, x_r, y, x_r + length + 1, y + 1):
                continue
            layer[y, x_r : x_r + length + 1] = shade
            if long and cm:
                bm = _text_bitmap(str(cm), px)
                tx, ty = x_r + 2 * tick + 2, y - bm.shape[0] // 2
                if _free(occupied, tx, ty, tx + bm.shape[1], ty + bm.shape[0]):
                    _stamp(layer, occupied, bm, tx, ty, shade)
        occupied[:, x_r : min(size, x_r + 2 * tick + 4)] = True

    year, month, day = 2015 + int(rng.integers(10)), 1 + int(rng.integers(12)), 1 + int(rng.integers(28))
    hour, minute = int(rng.integers(7, 19)), int(rng.integers(60))
    left = [f"SYN {spec.model}", f"ID {patient:06d}", f"{year}/{month:02d}/{day:02d}", f"{hour:02d}:{minute:02d}"]
    right = [f"{spec.freq_mhz:.1f}MHz", f"G{50 + int(rng.integers(-8, 9))}", f"DR{int(spec.dynamic_range_db)}",
             f"D{spec.depth_mm / 10:.1f}cm"]
    organ = spec.organ.removeprefix("synth_").upper()
    left.append(f"{['RT', 'LT'][int(rng.integers(2))]} {organ}")
    n_left, n_right = int(rng.integers(2, len(left) + 1)), int(rng.integers(1, len(right) + 1))
    for t in left[:n_left]:
        if _place_text(layer, occupied, t, px, [(1, 0)], shade) and drawn is not None:
            drawn.append(t)
    for t in right[:n_right]:
        if _place_text(layer, occupied, t, px, [(-2, 0)], shade) and drawn is not None:
            drawn.append(t)
    if lesion_cm is not None:  # caliper readout: '+' glyphs and a distance, as after a measurement
        readout = f"+ D1 {lesion_cm:.2f}cm"
        if _place_text(layer, occupied, readout, px, [(1, size // 3), (1, 0)], shade) and drawn is not None:
            drawn.append(readout)
        for _ in range(2):
            anchor = (int(rng.integers(1, max(2, size // 10))), int(rng.integers(size // 2, size - px - 2)))
            _place_text(layer, occupied, "+", px, [anchor], shade)
    layer[g.keepout] = 0  # belt and braces: nothing burnt into the field
    return layer
