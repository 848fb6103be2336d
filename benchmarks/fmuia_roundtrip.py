"""Ground truth of an FM_UIA challenge-layout root through the shard build and back to original pixels.

Makes a root (``sonofm.datasets.sources.fmuia_root``: BUSI, CCA, POCUS from ../shared/data and
synthetic images, a third of the synthetic detection and keypoint images being screens the field
crop shrinks), builds it with ``sonofm shards build --source fmuia:ROOT/train`` at ``--max-side``,
then maps every stored target back with the sample's geometry (``original_from_stored``,
``mask_to_original``) and compares it with the CSV: box IoU, point error in pixels, and mask Dice per
foreground class, separately for masks stored at their crop's size and masks the build downsized
(a class map cannot survive a resize exactly). Prints a markdown table and writes JSON.

    python benchmarks/fmuia_roundtrip.py --n 30 --max-side 512
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def _iou(a: Any, b: Any) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _dice(a: np.ndarray, b: np.ndarray, cls: int) -> float:
    x, y = a == cls, b == cls
    total = int(x.sum()) + int(y.sum())
    return 1.0 if total == 0 else 2.0 * int((x & y).sum()) / total


def measure(root: Path, shards: Path) -> dict[str, dict[str, Any]]:
    """Per task: the round-trip figures of every built sample."""
    from sonofm.datasets.preprocess.geometry import mask_to_original, original_from_stored
    from sonofm.datasets.shards import decode_sample, iter_tar_samples
    from sonofm.datasets.sources.fmuia import read_root

    rows = {r.image_path: r for r in read_root(root).rows}
    found: dict[str, dict[str, list[float]]] = {}
    for tar in sorted(shards.glob("*.tar")):
        for raw in iter_tar_samples(tar):
            s = decode_sample(raw)
            row = rows[s.meta["image_path"]]
            back = original_from_stored(s.meta)
            t, left, b, r = s.meta["crop"]
            h, w = s.meta["orig_size"]
            f = found.setdefault(row.task_id, {})
            f.setdefault("crop_area_share", []).append((b - t) * (r - left) / (h * w))
            if row.kind == "detection":
                f.setdefault("iou", []).append(_iou(back.boxes(s.meta["boxes"])[0], row.box))
            elif row.kind == "keypoints":
                err = np.hypot(*(back.points(s.meta["points"]) - np.asarray(row.points)).T)
                f.setdefault("point_err_px", []).extend(err.tolist())
            elif row.kind == "segmentation":
                truth = np.asarray(Image.open(root / row.mask))
                full = mask_to_original(s.mask, s.meta)
                resized = list(s.meta["size"]) != [b - t, r - left]
                dice = float(np.mean([_dice(full, truth, c) for c in range(1, row.num_classes)]))
                f.setdefault("dice_resized" if resized else "dice_unresized", []).append(dice)
    out: dict[str, dict[str, Any]] = {}
    for task, figures in sorted(found.items()):
        out[task] = {k: {"n": len(v), "min": float(np.min(v)), "mean": float(np.mean(v)), "max": float(np.max(v))}
                     for k, v in figures.items()}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--n", type=int, default=30, help="training images per task")
    ap.add_argument("--max-side", type=int, default=512, help="the build's max_side")
    ap.add_argument("--work", default=None, help="folder for the root and shards (default: a temporary one)")
    ap.add_argument("--json", default=None, help="write the figures here too")
    a = ap.parse_args(argv)
    from sonofm.datasets.sources.fmuia_root import make_fmuia_root

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.work or tmp)
        made = make_fmuia_root(work / "ROOT", n=a.n, n_val=1, progress=True)
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "sonofm", "shards", "build", "--source", f"fmuia:{made['train']}",
               "--out", str(work / "S"), f"max_side={a.max_side}"]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(f"shard build failed: {' '.join(cmd)}\n{res.stderr[-3000:]}")
        build_s = time.perf_counter() - t0
        figures = measure(made["train"], work / "S")
    print(f"| task | figure | n | min | mean | max |  (max_side {a.max_side}, build {build_s:.1f} s)")
    print("|---|---|---|---|---|---|")
    for task, fig in figures.items():
        for name, v in fig.items():
            print(f"| {task} | {name} | {v['n']} | {v['min']:.6g} | {v['mean']:.6g} | {v['max']:.6g} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"max_side": a.max_side, "n": a.n, "figures": figures}, indent=1))


if __name__ == "__main__":
    main()
