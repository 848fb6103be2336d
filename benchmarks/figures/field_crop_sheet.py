"""Regenerate docs/field_crop_before_after.png: field detection and crop on real and synthetic screens.

Usage: python benchmarks/figures/field_crop_sheet.py [--out docs/field_crop_before_after.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import av
import matplotlib
import numpy as np
from PIL import Image, ImageDraw

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sonofm.datasets.preprocess.field import detect_field  # noqa: E402
from sonofm.datasets.preprocess.pipeline import preprocess, to_grayscale  # noqa: E402
from sonofm.datasets.sources.records import Record  # noqa: E402
from sonofm.paths import shared_data_dir  # noqa: E402


def video_frame(path: Path, index: int = 5) -> np.ndarray:
    with av.open(str(path)) as container:
        for k, frame in enumerate(container.decode(video=0)):
            if k == index:
                return frame.to_ndarray(format="rgb24")
    raise ValueError(f"{path}: fewer than {index + 1} frames")


def synthetic_screen() -> np.ndarray:
    """A speckle fan on black with burnt-in text outside it."""
    rng = np.random.default_rng(0)
    h, w = 300, 400
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot(xx - 200, yy + 60)
    ang = np.degrees(np.arctan2(xx - 200, yy + 60))
    field = (r >= 90) & (r <= 340) & (np.abs(ang) <= 30)
    img = np.where(field, np.clip(rng.rayleigh(72, (h, w)), 0, 255), 0).astype(np.uint8)
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    draw.text((5, 5), "PATIENT DOE JOHN", fill=255)
    draw.text((5, 18), "2024-05-01 10:42", fill=255)
    draw.text((330, 280), "MI 1.1", fill=255)
    return np.asarray(pil)


def items(root: Path) -> list[tuple[str, np.ndarray]]:
    busi = root / "busi/Dataset_BUSI_with_GT"
    pocus = root / "pocus/pocus_videos"

    def gray(p: Path) -> np.ndarray:
        return np.asarray(Image.open(p).convert("L"))

    return [
        ("BUSI benign (326): black panel + grey bars", gray(busi / "benign/benign (326).png")),
        ("BUSI malignant (163): LOGIQ label in corner", gray(busi / "malignant/malignant (163).png")),
        ("BUSI benign (188): black cyst kept (full)", gray(busi / "benign/benign (188).png")),
        ("POCUS Reg_Image_181206_crop.mp4 (linear)", video_frame(pocus / "linear/Reg_Image_181206_crop.mp4")),
        ("POCUS Pneu_Avi_Video_006.mp4 (convex)", video_frame(pocus / "convex/Pneu_Avi_Video_006.mp4")),
        ("POCUS Reg_northumbria_0409_set5_vid1.avi",
         video_frame(pocus / "convex/Reg_northumbria_0409_set5_vid1.avi")),
        ("synthetic screen with burnt-in text", synthetic_screen()),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="docs/field_crop_before_after.png")
    args = parser.parse_args()
    rows = items(shared_data_dir())
    fig, axes = plt.subplots(len(rows), 2, figsize=(6.4, 2.55 * len(rows)))
    for (title, img), (a0, a1) in zip(rows, axes):
        out = preprocess(Record(img, None, {"path": title}), max_side=256)
        g, _ = to_grayscale(img)
        f = detect_field(g)
        a0.imshow(g, cmap="gray", vmin=0, vmax=255)
        a0.contour(f.mask, levels=[0.5], colors="lime", linewidths=0.8)
        t, left, b, r = f.bbox
        a0.add_patch(plt.Rectangle((left - 0.5, t - 0.5), r - left, b - t, fill=False, ec="yellow", lw=0.8, ls="--"))
        for bt, bl, bb, br in f.text_boxes:
            a0.add_patch(plt.Rectangle((bl - 0.5, bt - 0.5), br - bl, bb - bt, fill=False, ec="red", lw=0.7))
        a0.set_title(f"{title}\n{f.kind}, text outside: {f.text_outside}", fontsize=6.5)
        a1.imshow(out.image, cmap="gray", vmin=0, vmax=255)
        a1.set_title(f"preprocessed {out.image.shape[1]}x{out.image.shape[0]} (crop {out.meta['crop']})", fontsize=6.5)
        for a in (a0, a1):
            a.axis("off")
    fig.suptitle("field (green), crop bbox (yellow), marks outside the field (red) | result", fontsize=7.5)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
