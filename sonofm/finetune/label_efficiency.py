"""Label efficiency: train on 1 %, 10 %, 100 % of the training *groups* and plot metric vs fraction.

Fractions are taken over whole groups (patient, recording, video), never over images: frames of one
recording are near-duplicates, so 10 % of the frames would still show almost every recording. The
groups are put in one seeded random order and each fraction takes a prefix of it, so the subsets
are nested (1 % inside 10 % inside 100 %) and a curve compares like with like.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sonofm.atomic_io import write_json
from sonofm.evaluation.plots import plot_label_efficiency

__all__ = ["select_groups", "run_label_efficiency"]

DEFAULT_FRACTIONS: tuple[float, ...] = (0.01, 0.1, 1.0)


def select_groups(groups: Sequence[Any], fraction: float, seed: int = 0) -> list[int]:
    """Indices of the samples whose group is among the first ``ceil(fraction * n_groups)`` groups
    of a seeded permutation (at least one group)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    keys = [str(g) for g in groups]
    unique = sorted(set(keys))
    if not unique:
        raise ValueError("select_groups: no samples")
    order = np.random.default_rng(seed).permutation(len(unique))
    n = max(1, math.ceil(fraction * len(unique) - 1e-9))
    chosen = {unique[i] for i in order[:n]}
    return [i for i, g in enumerate(keys) if g in chosen]


def run_label_efficiency(
    encoders: Mapping[str, str],
    train_fn: Callable[[str, float, Path], float],
    out_dir: str | os.PathLike,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    metric: str = "dice",
    title: str = "",
) -> dict[str, dict[float, float]]:
    """Call ``train_fn(encoder_spec, fraction, run_dir) -> metric`` for every encoder and fraction,
    write ``results.json`` and ``label_efficiency.png`` (one line per encoder) in ``out_dir``.

    ``encoders`` maps a display name to a :func:`load_encoder` spec. ``train_fn`` is typically a
    closure over :func:`sonofm.finetune.seg_train.run_seg_finetune` (or a probe) returning the
    validation metric.
    """
    out = Path(out_dir)
    results: dict[str, dict[float, float]] = {}
    for name, spec in encoders.items():
        results[name] = {}
        for frac in fractions:
            run_dir = out / _safe(name) / f"frac-{frac:g}"
            results[name][float(frac)] = float(train_fn(spec, float(frac), run_dir))
            write_json(out / "results.json", {"metric": metric, "results": results})
    plot_label_efficiency(results, out / "label_efficiency.png", metric=metric, title=title)
    return results


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
