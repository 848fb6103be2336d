"""Closed shapes in physical coordinates: lesions, vessels, organs.

A shape is an ellipse whose radius is modulated by the polar angle: a few low harmonics give a
smooth, gently lobulated border (cysts, benign masses, organs); narrow triangular spikes and
higher harmonics give the spiculated, angular border of malignant masses. The lesion masks are
the same ``inside`` test evaluated on the beam grid and scan-converted like the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from .geometry import Geometry


@dataclass(frozen=True)
class Shape:
    """Ellipse ``(xc, yc, a, b, rot)`` (mm, rad) with border harmonics and spikes."""

    xc: float
    yc: float
    a: float  # semi-axis along the rotated x
    b: float  # semi-axis along the rotated y
    rot: float = 0.0
    harmonics: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # (order, amp, phase)
    spikes: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # (angle, amp, half-width)

    def extent(self) -> float:
        """Radius (mm) of a disc around the centre that contains the whole shape."""
        grow = 1.0 + float(np.abs(self.harmonics[:, 1]).sum()) + float(self.spikes[:, 1].max(initial=0.0))
        return max(self.a, self.b) * grow

    def moved(self, **changes) -> Shape:
        return replace(self, **changes)

    def q(self, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
        """Normalised radius: < 1 inside, 1 on the border, growing outwards."""
        c, s = math.cos(self.rot), math.sin(self.rot)
        dx = X - np.float32(self.xc)
        dy = Y - np.float32(self.yc)
        u = (dx * np.float32(c) + dy * np.float32(s)) * np.float32(1.0 / self.a)
        v = (dy * np.float32(c) - dx * np.float32(s)) * np.float32(1.0 / self.b)
        rho = np.sqrt(u * u + v * v)
        if len(self.harmonics) == 0 and len(self.spikes) == 0:
            return rho
        t = np.arctan2(v, u)
        border = np.ones_like(rho)
        for order, amp, ph in self.harmonics:
            border += np.float32(amp) * np.cos(t * np.float32(order) + np.float32(ph))
        for ang, amp, hw in self.spikes:
            d = np.abs(np.remainder(t - np.float32(ang - math.pi), np.float32(2 * math.pi)) - np.float32(math.pi))
            border += np.float32(amp) * np.square(np.clip(1.0 - d * np.float32(1.0 / hw), 0.0, None))
        return rho / np.maximum(border, np.float32(0.2))

    def q_window(self, g: Geometry, margin: float = 1.0) -> tuple[tuple[slice, slice], np.ndarray]:
        """``q`` on the part of the padded beam grid near the shape (cheap for small shapes)."""
        win = g.window(self.xc, self.yc, self.extent() * margin + 2.0 * g.spacing_mm)
        return win, self.q(g.X[win], g.Y[win])


def draw_harmonics(rng: np.random.Generator, orders: tuple[int, int], amp: tuple[float, float]) -> np.ndarray:
    """Border harmonics of the given orders with random amplitudes and phases."""
    ks = np.arange(orders[0], orders[1] + 1, dtype=np.float64)
    amps = rng.uniform(*amp, size=ks.size) / np.sqrt(ks / ks[0])
    return np.stack([ks, amps, rng.uniform(0, 2 * math.pi, size=ks.size)], 1)


def draw_spikes(rng: np.random.Generator, k: int, amp: tuple[float, float], width: tuple[float, float]) -> np.ndarray:
    """``k`` spicules spread around the border, with jittered angles."""
    base = np.linspace(0, 2 * math.pi, k, endpoint=False) + rng.uniform(0, 2 * math.pi)
    ang = base + rng.uniform(-0.35, 0.35, size=k) * (2 * math.pi / k)
    return np.stack([ang, rng.uniform(*amp, size=k), rng.uniform(*width, size=k)], 1)


def lesion_shape(rng: np.random.Generator, label: str, size_mm: tuple[float, float]) -> Shape:
    """A lesion of class ``label`` centred at the origin (the caller places it)."""
    a = float(rng.uniform(*size_mm))
    if label == "cyst":
        return Shape(0.0, 0.0, a, a * rng.uniform(0.6, 0.95), rng.normal(0, 0.2),
                     draw_harmonics(rng, (2, 3), (0.0, 0.03)))
    if label == "benign":
        return Shape(0.0, 0.0, a, a * rng.uniform(0.5, 0.85), rng.normal(0, 0.25),
                     draw_harmonics(rng, (2, 4), (0.0, 0.07)))
    if label == "malignant":
        return Shape(0.0, 0.0, a * 0.8, a * 0.8 * rng.uniform(0.75, 1.3), rng.uniform(0, math.pi),
                     draw_harmonics(rng, (2, 9), (0.02, 0.1)),
                     draw_spikes(rng, int(rng.integers(7, 15)), (0.3, 0.85), (0.07, 0.16)))
    raise ValueError(f"no lesion shape for label {label!r}")


def view_of(shape: Shape, rng: np.random.Generator, xc: float, yc: float) -> Shape:
    """The same lesion seen in another image of the patient: placed anew, slightly turned and scaled."""
    scale = float(rng.uniform(0.85, 1.15))
    spikes = shape.spikes.copy()
    if len(spikes):
        spikes[:, 0] += rng.normal(0, 0.08, size=len(spikes))
    return shape.moved(xc=xc, yc=yc, a=shape.a * scale, b=shape.b * scale * rng.uniform(0.92, 1.08),
                       rot=shape.rot + rng.normal(0, 0.15), spikes=spikes)
