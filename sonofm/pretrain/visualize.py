"""Pictures of pretraining: reconstruction grids and loss curves, saved as PNG."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from sonofm.atomic_io import save_figure
from sonofm.train.loggers import read_metrics


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    x = x.detach().float().cpu()
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def save_reconstruction_grid(
    columns: dict[str, torch.Tensor], path: str | os.PathLike, max_rows: int = 8
) -> Path:
    """One row per image, one column per named tensor (each ``[B, 1, H, W]`` in [0, 1])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(columns)
    rows = min(max_rows, next(iter(columns.values())).shape[0])
    fig, axes = plt.subplots(rows, len(names), figsize=(1.8 * len(names), 1.8 * rows), squeeze=False)
    for r in range(rows):
        for c, name in enumerate(names):
            ax = axes[r][c]
            ax.imshow(_to_uint8(columns[name][r, 0]), cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
    fig.tight_layout(pad=0.2)
    return save_figure(fig, path, dpi=80)


def plot_loss_curve(metrics_path: str | os.PathLike, out_png: str | os.PathLike) -> Path:
    """Loss terms and learning rate against step, from ``metrics.jsonl``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_metrics(metrics_path) if "loss" in r]
    if not rows:
        raise ValueError(f"{metrics_path}: no loss rows to plot")
    steps = [r["step"] for r in rows]
    fig, (ax, ax_lr) = plt.subplots(1, 2, figsize=(9, 3.2))
    for key in ("loss", "loss_rec", "loss_hier"):
        values = [r.get(key) for r in rows]
        if all(isinstance(v, (int, float)) for v in values):
            ax.plot(steps, values, label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    ax_lr.plot(steps, [r.get("lr", float("nan")) for r in rows], color="tab:gray")
    ax_lr.set_xlabel("step")
    ax_lr.set_ylabel("learning rate")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, out_png, dpi=90)
