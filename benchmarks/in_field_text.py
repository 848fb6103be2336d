"""In-field text detector (``overlays.text_in_field``): flag rate on real images, hit rate on drawn text.

Real images: every BUSI, CCA and POCUS still image of the shared data is converted as preprocessing
does (grayscale with colour blanked, field detected) and the images the detector flags are counted.
CCA and POCUS carry no marks inside the field, so their flags are false positives; BUSI often does
(calipers, "LT AXILLA"), so its flag rate is no error rate: ``--sheet DIR`` saves contact sheets of
flagged and unflagged images, with the boxes, to audit by eye.

Synthetic: text (words of scanner labels in three fonts, 9-16 px, white or flat grey 200-240) and
caliper crosses are drawn with PIL ImageDraw at random places inside the field of unflagged real
images (CCA and BUSI); a hit is a returned box that overlaps the drawn mark's box.

    python benchmarks/in_field_text.py [--data DIR] [--n 400] [--seed 0] [--sheet DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage as ndi

from sonofm.datasets.preprocess import overlays
from sonofm.datasets.preprocess.field import detect_field
from sonofm.datasets.preprocess.pipeline import to_grayscale
from sonofm.paths import shared_data_dir

WORDS = ["LT BREAST", "RT BREAST", "TRANS", "SAG", "LEFT", "RT UIQ", "LT AXILLA", "LONG", "12 O'CLOCK",
         "2CM FN", "CCA", "R LOBE", "Dist 1.2cm", "BLADDER", "LIVER"]
FONTS = ["DejaVuSans.ttf", "DejaVuSansMono.ttf", "DejaVuSans-Bold.ttf"]


def _images(root: Path) -> dict[str, list[Path]]:
    return {
        "busi": sorted(p for p in (root / "busi").rglob("*.png") if "_mask" not in p.name),
        "cca": sorted((root / "cca").glob("*/US images/*.png")),
        "pocus": sorted(p for p in (root / "pocus" / "pocus_images").rglob("*") if p.is_file()),
    }


def _analyse(path: Path) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, int, int]]]:
    """Gray (colour blanked), usable field, and detected in-field boxes, as preprocessing sees them."""
    gray, colour = to_grayscale(np.asarray(Image.open(path).convert("RGB")))
    field = detect_field(gray).mask
    if colour.blanked and colour.area is not None:
        field = field & ~colour.area
    return gray, field, overlays.text_in_field(gray, field)


def _font(name: str, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.truetype(name, size)
    except OSError:
        return ImageFont.load_default(size=size)


def _draw_mark(gray: np.ndarray, field: np.ndarray, rng: np.random.Generator,
               kind: str) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
    """``gray`` with one word or cross drawn inside the field, and the mark's (t, l, b, r) box."""
    pil = Image.fromarray(gray.copy())
    draw = ImageDraw.Draw(pil)
    fill = 255 if rng.random() < 0.6 else int(rng.integers(200, 241))
    if kind == "text":
        font = _font(FONTS[rng.integers(len(FONTS))], int(rng.integers(9, 17)))
        word = WORDS[rng.integers(len(WORDS))]
        x0, y0, x1, y1 = draw.textbbox((0, 0), word, font=font)
        bw, bh = x1 - x0, y1 - y0
    else:
        arm = int(rng.integers(3, 6))
        bw = bh = 2 * arm + 1
    inner = ndi.binary_erosion(field, iterations=4)
    ys, xs = np.nonzero(inner)
    ok = (ys + bh < gray.shape[0]) & (xs + bw < gray.shape[1])
    ok &= inner[np.minimum(ys + bh, gray.shape[0] - 1), np.minimum(xs + bw, gray.shape[1] - 1)]
    if not ok.any():
        return None
    i = rng.choice(np.flatnonzero(ok))
    y, x = int(ys[i]), int(xs[i])
    if kind == "text":
        draw.text((x - x0, y - y0), word, fill=fill, font=font)
    else:
        draw.line((x, y + arm, x + 2 * arm, y + arm), fill=fill)
        draw.line((x + arm, y, x + arm, y + 2 * arm), fill=fill)
    return np.asarray(pil), (y, x, y + bh, x + bw)


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _sheet(items: list[tuple[Path, list]], out: Path, n: int, rng: np.random.Generator) -> None:
    if not items:
        return
    pick = [items[i] for i in rng.choice(len(items), size=min(n, len(items)), replace=False)]
    side, cols = 300, 4
    sheet = Image.new("RGB", (side * cols, side * ((len(pick) + cols - 1) // cols)))
    for k, (path, boxes) in enumerate(pick):
        im = Image.open(path).convert("RGB")
        d = ImageDraw.Draw(im)
        for t, left, b, r in boxes:
            d.rectangle((left - 2, t - 2, r + 1, b + 1), outline=(255, 0, 0))
        im.thumbnail((side, side))
        sheet.paste(im, ((k % cols) * side, (k // cols) * side))
    sheet.save(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=shared_data_dir())
    ap.add_argument("--n", type=int, default=400, help="synthetic marks of each kind")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sheet", type=Path, default=None, help="folder for audit contact sheets")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    clean: list[tuple[np.ndarray, np.ndarray]] = []
    print("| data | images | flagged | share | s/image |\n|---|---|---|---|---|")
    for name, paths in _images(args.data).items():
        t0 = time.perf_counter()
        flagged, unflagged = [], []
        for p in paths:
            gray, field, boxes = _analyse(p)
            (flagged if boxes else unflagged).append((p, boxes))
            if not boxes and name in ("busi", "cca"):
                clean.append((gray, field))
        dt = (time.perf_counter() - t0) / max(1, len(paths))
        print(f"| {name} | {len(paths)} | {len(flagged)} | {len(flagged) / max(1, len(paths)):.1%} | {dt:.3f} |")
        if args.sheet is not None:
            args.sheet.mkdir(parents=True, exist_ok=True)
            _sheet(flagged, args.sheet / f"{name}_flagged.png", 16, rng)
            _sheet(unflagged, args.sheet / f"{name}_unflagged.png", 16, rng)
    print("\n| synthetic mark | drawn | detected | hit rate |\n|---|---|---|---|")
    for kind in ("text", "cross"):
        hits = drawn = 0
        while drawn < args.n and clean:
            gray, field = clean[rng.integers(len(clean))]
            res = _draw_mark(gray, field, rng, kind)
            if res is None:
                continue
            img, box = res
            drawn += 1
            hits += any(_overlaps(box, b) for b in overlays.text_in_field(img, field))
        print(f"| {kind} | {drawn} | {hits} | {hits / max(1, drawn):.1%} |")


if __name__ == "__main__":
    main()
