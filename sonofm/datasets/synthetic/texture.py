"""Smooth random fields for tissue structure (fibrous streaks, fat lobules, parenchyma).

Tissue echogenicity is not uniform: connective-tissue strands, lobules and fascia give the
streaky, lobulated look of real B-mode images on top of speckle. A smooth Gaussian field with
separate correlation lengths along and across the beam models that: a coarse grid of random
values is interpolated onto the beam grid with Gaussian kernels, written as two small matrix
products (the grid coordinates are separable), so a field costs a fraction of a millisecond.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from .geometry import geometry


def _interp_matrix(coords: np.ndarray, cell: float) -> np.ndarray:
    """(len(coords), n_nodes) Gaussian interpolation weights, rows of unit L2 norm."""
    lo, hi = float(coords.min()) - 2.5 * cell, float(coords.max()) + 2.5 * cell
    nodes = np.arange(lo, hi + cell, cell)
    w = np.exp(-0.5 * ((coords[:, None] - nodes[None, :]) / (0.75 * cell)) ** 2)
    w /= np.sqrt((w**2).sum(1, keepdims=True))
    return w.astype(np.float32)


@lru_cache(maxsize=256)
def _matrices(source: str, size: int, cell_depth: float, cell_lat: float) -> tuple[np.ndarray, np.ndarray]:
    g = geometry(source, size)
    return _interp_matrix(g.depth[:, 0], cell_depth), _interp_matrix(g.lat[0], cell_lat).T.copy()


def smooth_noise(
    source: str, size: int, rng: np.random.Generator, cell_depth_mm: float, cell_lat_mm: float
) -> np.ndarray:
    """Unit-variance smooth Gaussian field on the padded beam grid of ``source`` at ``size``."""
    a, b = _matrices(source, size, round(cell_depth_mm, 3), round(cell_lat_mm, 3))
    coarse = rng.standard_normal((a.shape[1], b.shape[0]), dtype=np.float32)
    return (a @ coarse) @ b


def ridges(field: np.ndarray, width: float) -> np.ndarray:
    """Thin curved lines along the zero crossings of a smooth field (septa between lobules)."""
    return np.exp(-np.square(field * np.float32(1.0 / width)))


def wavy(lat: np.ndarray, base: float, waves: np.ndarray, shift: float = 0.0) -> np.ndarray:
    """An interface depth along the probe face: ``base`` plus sinusoids ``(amp, wavelength, phase)``."""
    out = np.full(lat.shape, base, dtype=np.float32)
    for amp, wl, ph in waves:
        out += np.float32(amp) * np.sin((lat + np.float32(shift)) * np.float32(2 * math.pi / wl) + np.float32(ph))
    return out


def draw_waves(rng: np.random.Generator, k: int, amp: tuple[float, float], wl: tuple[float, float]) -> np.ndarray:
    """Parameters of ``k`` sinusoids for :func:`wavy`."""
    return np.stack(
        [rng.uniform(*amp, size=k), rng.uniform(*wl, size=k), rng.uniform(0, 2 * math.pi, size=k)], 1
    )
