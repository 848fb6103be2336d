"""Report figures: confusion matrix, label-efficiency curve, segmentation overlays.

Matplotlib with the non-interactive Agg backend (no display on training machines); every figure is
written to a temporary name and renamed, like every other artefact.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sonofm.atomic_io import save_figure

__all__ = ["plot_confusion", "plot_label_efficiency", "overlay_mask", "save_overlay"]

#: RGB colours of classes 1.. in overlays (class 0, background, is not drawn).
PALETTE = np.array([[255, 64, 64], [64, 200, 64], [64, 128, 255], [255, 200, 0], [200, 64, 255]], dtype=np.float32)


def _save(fig: plt.Figure, path: str | os.PathLike) -> None:
    save_figure(fig, path, dpi=120, bbox_inches="tight")


def plot_confusion(cm: np.ndarray, class_names: Sequence[str], path: str | os.PathLike, title: str = "") -> None:
    """Row-normalised confusion matrix (colour = recall share) with raw counts in each cell."""
    cm = np.asarray(cm)
    n = len(class_names)
    if cm.shape != (n, n):
        raise ValueError(f"confusion matrix {cm.shape} does not match {n} class names")
    rows = cm.sum(1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    fig, ax = plt.subplots(figsize=(1.2 * n + 2, 1.2 * n + 1.5))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{cm[i, j]}\n{share[i, j]:.0%}", ha="center", va="center",
                    color="white" if share[i, j] > 0.5 else "black", fontsize=9)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    _save(fig, path)


def plot_label_efficiency(
    results: Mapping[str, Mapping[float, Sequence[float] | float]],
    path: str | os.PathLike,
    metric: str = "metric",
    title: str = "",
) -> None:
    """One line per encoder: ``results[encoder][fraction]`` is a value or a list of values (mean ± std)."""
    fig, ax = plt.subplots(figsize=(5, 3.6))
    all_fracs: set[float] = set()
    for name, by_frac in results.items():
        all_fracs.update(float(f) for f in by_frac)
        fracs = sorted(by_frac)
        vals = [np.atleast_1d(np.asarray(by_frac[f], dtype=float)) for f in fracs]
        mean = np.array([v.mean() for v in vals])
        std = np.array([v.std() for v in vals])
        ax.errorbar([100 * f for f in fracs], mean, yerr=std, marker="o", capsize=3, label=name)
    ax.set_xscale("log")
    ticks = sorted(100 * f for f in all_fracs)
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("labelled training groups (%)")
    ax.set_ylabel(metric)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    _save(fig, path)


def overlay_mask(image: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8: grayscale ``image`` with each foreground class of ``mask`` tinted."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        img = np.clip(np.asarray(img, dtype=np.float32) * 255.0, 0, 255).astype(np.uint8)
    rgb = np.repeat(img[..., None], 3, axis=2).astype(np.float32) if img.ndim == 2 else img.astype(np.float32)
    mask = np.asarray(mask)
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"mask {mask.shape} and image {rgb.shape[:2]} differ in size")
    for c in np.unique(mask):
        if c == 0:
            continue
        sel = mask == c
        rgb[sel] = (1 - alpha) * rgb[sel] + alpha * PALETTE[(int(c) - 1) % len(PALETTE)]
    return rgb.astype(np.uint8)


def save_overlay(
    image: np.ndarray, target: np.ndarray | None, pred: np.ndarray, path: str | os.PathLike, title: str = ""
) -> None:
    """Side by side: image, ground truth overlay (if any), prediction overlay."""
    panels = [("image", np.repeat(np.asarray(image)[..., None], 3, 2) if np.asarray(image).ndim == 2 else image)]
    if target is not None:
        panels.append(("ground truth", overlay_mask(image, target)))
    panels.append(("prediction", overlay_mask(image, pred)))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4))
    for ax, (name, arr) in zip(np.atleast_1d(axes), panels):
        ax.imshow(np.asarray(arr, dtype=np.uint8))
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    _save(fig, path)


def save_geometry_overlay(
    image: np.ndarray, path: str | os.PathLike, *, true_boxes: np.ndarray | None = None,
    pred_boxes: np.ndarray | None = None, true_points: np.ndarray | None = None,
    pred_points: np.ndarray | None = None, title: str = "",
) -> None:
    """One image with boxes and points drawn over it: truth in green, prediction in red (boxes
    ``[x0, y0, x1, y1]`` and points ``[x, y]`` in the image's pixels; points numbered in order)."""
    from matplotlib.patches import Rectangle

    fig, ax = plt.subplots(figsize=(4, 4 * image.shape[0] / max(image.shape[1], 1) + 0.3))
    ax.imshow(np.asarray(image), cmap="gray", vmin=0, vmax=255)
    for boxes, colour, style in ((true_boxes, "lime", "-"), (pred_boxes, "red", "--")):
        for x0, y0, x1, y1 in np.asarray(boxes if boxes is not None else np.zeros((0, 4))).reshape(-1, 4):
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linestyle=style, lw=1.5))
    for points, colour, marker in ((true_points, "lime", "o"), (pred_points, "red", "x")):
        for k, (x, y) in enumerate(np.asarray(points if points is not None else np.zeros((0, 2))).reshape(-1, 2)):
            ax.plot([x], [y], marker=marker, color=colour, markersize=6, mew=1.5)
            ax.annotate(str(k + 1), (x, y), color=colour, fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlim(0, image.shape[1])
    ax.set_ylim(image.shape[0], 0)
    ax.axis("off")
    ax.set_title(title or "truth (green) / prediction (red)", fontsize=8)
    _save(fig, path)
