"""A contact sheet of a corpus: images with their mask contours and labels, to eyeball realism."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from PIL import Image

from sonofm.atomic_io import atomic_file


def make_contact_sheet(manifest: Path, out_png: Path, n: int = 24, cols: int = 6) -> Path:
    """Save a grid of the first ``n`` images of a manifest, spread over sources and labels.

    Picks round-robin over (source, label) so a small sheet still shows every kind of image.
    The PNG is palette-quantised to stay small enough to live in ``docs/``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend and figures alone

    manifest = Path(manifest)
    root = manifest.parent
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{manifest}: manifest has no rows")
    buckets: dict[tuple[str, str], list[dict[str, str]]] = {}
    for r in rows:
        buckets.setdefault((r["source"], r["label"]), []).append(r)
    keys = sorted(buckets)
    picked: list[dict[str, str]] = []
    while len(picked) < min(n, len(rows)):
        for k in keys:
            if buckets[k] and len(picked) < n:
                picked.append(buckets[k].pop(0))
    picked.sort(key=lambda r: (r["source"], r["label"]))
    nrows = (len(picked) + cols - 1) // cols
    fig = Figure(figsize=(2.6 * cols, 2.8 * nrows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, r in zip(axes.flat, picked):
        img = np.asarray(Image.open(root / r["path"]).convert("L"))
        ax.imshow(img, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        if r.get("mask"):
            m = np.asarray(Image.open(root / r["mask"]).convert("L")) > 127
            if m.any():
                ax.contour(m.astype(np.float32), levels=[0.5], colors=["#ff3030"], linewidths=0.6)
        src = r["source"].removeprefix("synth_")
        ax.set_title(f"{r['label']} | {src}", fontsize=8, pad=2)
    fig.subplots_adjust(left=0.005, right=0.995, top=0.95, bottom=0.005, wspace=0.03, hspace=0.12)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, facecolor="white")
    buf.seek(0)
    # fixed palette: 60 greys for the images and text, a few reds for the contours
    colours = [(v, v, v) for v in np.linspace(0, 255, 60).round().astype(int)]
    colours += [(255, 48, 48), (230, 90, 90), (200, 120, 120), (170, 100, 100)]
    pal = Image.new("P", (1, 1))
    pal.putpalette([c for rgb in colours for c in rgb] + [0] * 3 * (256 - len(colours)))
    sheet = Image.open(buf).convert("RGB").quantize(palette=pal, dither=Image.Dither.NONE)
    out_png = Path(out_png)
    with atomic_file(out_png) as tmp:
        sheet.save(tmp, format="PNG", optimize=True)
    return out_png
