"""HC18 (van den Heuvel et al. 2018): fetal head circumference challenge.

Layout: ``training_set/NNN_HC.png`` with ``NNN_HC_Annotation.png`` (a thin ellipse outline around
the skull), ``training_set_pixel_size_and_HC.csv`` (``filename,pixel size(mm),head circumference
(mm)``), ``test_set/NNN_HC.png`` and ``test_set_pixel_size.csv`` (no annotations). Several images
of one subject share the number (``010_HC.png``, ``010_2HC.png``): the number is the group. The
test set numbers its subjects separately, so its groups are ``test/NNN``.

The outline is filled into a head mask (class 1): small gaps are closed, then holes filled; an
outline left open (the head leaves the image) falls back to a least-squares ellipse fit.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
from scipy import ndimage

from sonofm.datasets.sources.adapters.base import Adapter, Item, relpath
from sonofm.datasets.sources.imageio import AdapterError, read_mask

SUBSETS = {
    "training": ("training_set", "training_set_pixel_size_and_HC.csv"),
    "test": ("test_set", "test_set_pixel_size.csv"),
}
_NAME = re.compile(r"^(?P<subject>\d+)_(?P<repeat>\d*)HC$")


def _norm(header: str) -> str:
    return re.sub(r"[^a-z]", "", header.lower())


def read_pixel_csv(path: Path) -> dict[str, tuple[float, float | None]]:
    """``filename -> (pixel size mm, head circumference mm or None)`` from an HC18 CSV."""
    out: dict[str, tuple[float, float | None]] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise AdapterError(f"{path}: empty CSV")
        cols = [_norm(h) for h in header]
        try:
            i_name = cols.index("filename")
            i_px = next(i for i, c in enumerate(cols) if c.startswith("pixelsize"))
        except (ValueError, StopIteration):
            raise AdapterError(
                f"{path}: expected columns 'filename' and 'pixel size(mm)', got {header}"
            ) from None
        i_hc = next((i for i, c in enumerate(cols) if c.startswith("headcircumference")), None)
        for n, row in enumerate(reader, start=2):
            if not row or not any(c.strip() for c in row):
                continue
            try:
                px = float(row[i_px])
                hc = float(row[i_hc]) if i_hc is not None and row[i_hc].strip() else None
            except (ValueError, IndexError) as e:
                raise AdapterError(
                    f"{path}, row {n}: cannot read pixel size / head circumference ({e})"
                ) from e
            out[row[i_name].strip()] = (px, hc)
    return out


def fill_outline(outline: np.ndarray, where: str = "annotation", gap: int = 2) -> np.ndarray:
    """Head mask (0/1) from a thin ellipse outline: close gaps of up to ``gap`` px, fill the inside.

    Falls back to :func:`ellipse_mask` when the closed outline still encloses nothing (open at the
    image border or broken by a large gap).
    """
    edge = outline > 0
    if edge.sum() < 5:
        raise AdapterError(f"{where}: annotation holds no outline")
    pad = gap + 1
    padded = np.pad(edge, pad)
    closed = ndimage.binary_closing(padded, structure=np.ones((3, 3), bool), iterations=gap)[
        pad:-pad, pad:-pad
    ]
    closed |= edge
    filled = ndimage.binary_fill_holes(closed)
    if (filled & ~closed).sum() > edge.sum():
        return filled.astype(np.uint8)
    return ellipse_mask(edge, where)


def fit_ellipse(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Conic coefficients ``(a, b, c, d, e, f)`` of the least-squares ellipse through the points.

    Direct ellipse fit (Fitzgibbon et al. 1999, in Halir & Flusser's stable form) on coordinates
    centred and scaled for conditioning; returned coefficients are in those normalised units,
    together with the centring (see :func:`ellipse_mask`).
    """
    x, y = xs.astype(np.float64), ys.astype(np.float64)
    d1 = np.stack([x * x, x * y, y * y], axis=1)
    d2 = np.stack([x, y, np.ones_like(x)], axis=1)
    s1, s2, s3 = d1.T @ d1, d1.T @ d2, d2.T @ d2
    t = -np.linalg.solve(s3, s2.T)
    m = s1 + s2 @ t
    m = np.stack([m[2] / 2, -m[1], m[0] / 2])
    _, vecs = np.linalg.eig(m)
    vecs = np.real(vecs)
    cond = 4 * vecs[0] * vecs[2] - vecs[1] ** 2
    ok = np.flatnonzero(cond > 0)
    if ok.size == 0:
        raise np.linalg.LinAlgError("no ellipse solution")
    a1 = vecs[:, ok[0]]
    return np.concatenate([a1, t @ a1])


def ellipse_mask(edge: np.ndarray, where: str = "annotation") -> np.ndarray:
    """Fill the ellipse fitted to the outline pixels of ``edge`` (0/1 mask of the image size)."""
    ys, xs = np.nonzero(edge)
    cy, cx, s = ys.mean(), xs.mean(), max(ys.std(), xs.std(), 1.0)
    try:
        a, b, c, d, e, f = fit_ellipse((ys - cy) / s, (xs - cx) / s)
    except np.linalg.LinAlgError as err:
        raise AdapterError(f"{where}: outline is not an ellipse ({err})") from err
    den = b * b - 4 * a * c
    x0, y0 = (2 * c * d - b * e) / den, (2 * a * e - b * d) / den
    gy, gx = np.mgrid[0 : edge.shape[0], 0 : edge.shape[1]]
    u, v = (gx - cx) / s, (gy - cy) / s
    val = a * u * u + b * u * v + c * v * v + d * u + e * v + f
    centre = a * x0 * x0 + b * x0 * y0 + c * y0 * y0 + d * x0 + e * y0 + f
    return ((np.sign(val) == np.sign(centre)) | edge).astype(np.uint8)


class Hc18Adapter(Adapter):
    """``root`` holds ``training_set/`` and/or ``test_set/`` with their CSVs."""

    name = "hc18"
    options = {"subsets": ("training", "test"), "gap": 2}

    def __init__(self, root, source: str | None = None, **options) -> None:
        super().__init__(root, source, **options)
        subsets = self.opts["subsets"]
        subsets = (subsets,) if isinstance(subsets, str) else tuple(subsets)
        bad = [s for s in subsets if s not in SUBSETS]
        if bad:
            raise AdapterError(f"hc18: unknown subsets {bad}; valid: {sorted(SUBSETS)}")
        self.subsets = [s for s in subsets if (self.root / SUBSETS[s][0]).is_dir()]
        if not self.subsets:
            raise AdapterError(
                f"hc18: {self.root} is not the HC18 layout: expected {' or '.join(SUBSETS[s][0] for s in subsets)}/"
            )

    def items(self) -> list[Item]:
        items: list[Item] = []
        for key in ("images_without_pixel_size", "training_images_without_annotation"):
            self.stats.pop(key, None)
        for subset in self.subsets:
            folder_name, csv_name = SUBSETS[subset]
            folder = self.root / folder_name
            csv_path = self.root / csv_name
            table = read_pixel_csv(csv_path) if csv_path.is_file() else {}
            for p in sorted(folder.glob("*.png")):
                m = _NAME.match(p.stem)
                if m is None:  # annotations and stray files
                    continue
                subject = m.group("subject")
                px, hc = table.get(p.name, (None, None))
                if px is None:
                    self.count("images_without_pixel_size")
                meta = {
                    "group": subject if subset == "training" else f"test/{subject}",
                    "pixel_spacing_mm": [px, px] if px is not None else None,
                    "hc_mm": hc,
                    "subset": subset,
                }
                ann = p.with_name(f"{p.stem}_Annotation.png")
                if subset == "training" and not ann.is_file():
                    self.count("training_images_without_annotation")
                masks = (relpath(ann, self.root),) if ann.is_file() else ()
                items.append(Item(path=relpath(p, self.root), masks=masks, meta=meta))
        return items

    def read_masks(self, item: Item) -> np.ndarray:
        path = self.root / item.masks[0]
        return fill_outline(read_mask(path), str(path), gap=int(self.opts["gap"]))
