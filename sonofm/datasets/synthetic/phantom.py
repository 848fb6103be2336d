"""Anatomy: backscatter and attenuation maps of a breast, thyroid or liver view on the beam grid.

A phantom is drawn in two steps. ``patient_params`` fixes what belongs to the person -- layer
thicknesses and echogenicities, interface waviness, which organs are present, the lesion and its
class -- so every image of a synthetic patient shares them (group-wise splits then matter, as on
real data). ``draw_phantom`` then draws one view: the anatomy shifted and slightly deformed, the
lesion placed, turned and scaled anew, fresh tissue texture.

Values: ``echo`` is backscatter intensity relative to reference soft tissue (1.0; fluid ~1e-5),
``atten`` the attenuation coefficient in dB/(cm MHz). Superficial layers follow the probe face
(depth along the beam), deeper structures are placed in Cartesian millimetres.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .geometry import Geometry
from .shapes import Shape, draw_harmonics, lesion_shape, view_of
from .sources import LABELS, SyntheticSource
from .texture import draw_waves, ridges, smooth_noise, wavy

FLUID_ECHO = 3e-5
FLUID_ATTEN = 0.02


@dataclass
class Phantom:
    echo: np.ndarray  # (na_p, nl_p) float32
    atten: np.ndarray  # (na_p, nl_p) float32
    lesion: np.ndarray  # (na_p, nl_p) bool
    lesion_shape: Shape | None


class _Canvas:
    """Echo/attenuation maps being painted, with shape filling on local windows."""

    def __init__(self, g: Geometry, echo: np.ndarray, atten: np.ndarray):
        self.g = g
        self.echo = echo
        self.atten = atten
        self.lesion = np.zeros(echo.shape, dtype=bool)

    def fill(
        self, shape: Shape, echo: float | None = None, atten: float | None = None, *, tex: np.ndarray | None = None,
        tex_gain: float = 0.0, wall_echo: float = 0.0, wall_mm: float = 0.0, margin: float = 1.0,
    ) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
        win, q = shape.q_window(self.g, margin)
        inside = q < 1.0
        e = self.echo[win]
        if echo is not None:
            if tex is not None and tex_gain > 0:
                val = np.float32(echo) * np.exp(np.float32(tex_gain) * tex[win] - np.float32(0.5 * tex_gain**2))
                e[inside] = val[inside]
            else:
                e[inside] = echo
        if atten is not None:
            self.atten[win][inside] = atten
        if wall_echo > 0 and wall_mm > 0:
            w = np.float32(wall_mm / min(shape.a, shape.b))
            e += np.float32(wall_echo) * np.exp(-np.square((q - 1 - w / 2) / (w / 2)))
        return win, inside, q


def _bump(d: np.ndarray, center: np.ndarray | float, width: float) -> np.ndarray:
    return np.exp(-np.square((d - center) * np.float32(1.0 / width)))


def _layered(
    g: Geometry, bounds: list[np.ndarray], levels: list[float], streak: list[float], blob: list[float],
    t1: np.ndarray, t2: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Echo of stacked layers (bounds: interface depths along the face) with per-layer texture."""
    layer = np.zeros(g.shape_padded, dtype=np.int8)
    for b in bounds:
        layer += g.depth > b
    lv = np.asarray(levels, np.float32)[layer]
    sg = np.asarray(streak, np.float32)[layer]
    bg = np.asarray(blob, np.float32)[layer]
    echo = lv * np.exp(sg * t1 + bg * t2 - np.float32(0.5) * (sg * sg + bg * bg))
    return echo, layer


def _lesion_echo(spec: SyntheticSource, p: dict[str, Any], label: str, anatomy: str) -> dict[str, float]:
    """Echogenicity and attenuation of the patient's lesion, by class (and organ for benign)."""
    rng = np.random.default_rng([p["lesion_seed"], 1])  # a stream apart from the one drawing the shape
    a0 = spec.alpha_db * p["alpha_scale"]
    if label == "cyst":
        return {"echo": FLUID_ECHO, "atten": FLUID_ATTEN, "tex": 0.0, "wall": rng.uniform(0.3, 1.2), "halo": 0.0}
    if label == "benign":
        level = p["levels"][3] * rng.uniform(6.0, 10.0) if anatomy == "liver" else rng.uniform(0.03, 0.12)
        return {"echo": level, "atten": a0 * rng.uniform(0.6, 1.0), "tex": rng.uniform(0.15, 0.4),
                "wall": rng.uniform(0.0, 0.8), "halo": 0.0}
    host = {"breast": p["levels"][2], "thyroid": p.get("thy_echo", 1.0), "liver": p["levels"][3]}[anatomy]
    return {"echo": host * rng.uniform(0.04, 0.12), "atten": a0 * rng.uniform(1.3, 2.2), "tex": rng.uniform(0.5, 0.9),
            "wall": 0.0, "halo": rng.uniform(0.0, 1.5) if rng.random() < 0.6 else 0.0}


def _paint_lesion(c: _Canvas, shape: Shape, le: dict[str, float], tex: np.ndarray) -> None:
    win, inside, q = c.fill(shape, le["echo"], le["atten"], tex=tex, tex_gain=le["tex"], margin=1.5)
    if le["halo"] > 0:  # echogenic rim of infiltrating tumours
        c.echo[win] *= 1.0 + np.float32(le["halo"]) * np.exp(-np.square((q - 1.15) * np.float32(1 / 0.12)))
    if le["wall"] > 0:
        c.echo[win] += np.float32(le["wall"]) * np.exp(-np.square((q - 1.02) * np.float32(1 / 0.04)))
    c.lesion[win] |= inside


# ----------------------------------------------------------------------------------------- patient


def patient_params(spec: SyntheticSource, rng: np.random.Generator) -> dict[str, Any]:
    """Everything shared by all images of one synthetic patient (including the lesion class)."""
    w = np.asarray(spec.label_weights, dtype=np.float64)
    label = LABELS[int(rng.choice(len(LABELS), p=w / w.sum()))]
    p: dict[str, Any] = {
        "label": label,
        "alpha_scale": rng.uniform(0.85, 1.15),
        "gain_db": rng.normal(0.0, 1.5),
        "lesion_seed": int(rng.integers(2**31)),
    }
    if spec.anatomy == "breast":
        skin = rng.uniform(1.4, 2.4)
        fat = skin + rng.uniform(2.5, 9.0)
        gland = fat + rng.uniform(9.0, 20.0)
        retro = gland + rng.uniform(1.5, 4.0)
        muscle = retro + rng.uniform(4.0, 9.0)
        p.update(
            bounds=[skin, fat, gland, retro, muscle],
            waves=[draw_waves(rng, 2, (0.0, 0.4), (20, 60))] + [draw_waves(rng, 3, (0.3, 2.2), (8, 50)) for _ in range(4)],
            levels=[1.6, rng.uniform(0.04, 0.12), rng.uniform(0.6, 1.3), rng.uniform(0.04, 0.1),
                    rng.uniform(0.15, 0.35), rng.uniform(0.2, 0.5)],
            streak=[0.3, 0.35, rng.uniform(1.1, 1.5), 0.35, 1.0, 0.5],
            blob=[0.0, 0.8, rng.uniform(0.2, 0.5), 0.6, 0.0, 0.5],
            septa=rng.uniform(0.8, 2.5),
            fibres=rng.uniform(1.0, 3.0),
            streak_cell=(round(rng.uniform(0.35, 0.6), 2), round(rng.uniform(3.0, 7.0), 1)),  # few cached grids
            ribs=rng.random() < 0.5,
            lesion_size=(2.5, 8.0) if label == "cyst" else (3.5, 10.0),
        )
    elif spec.anatomy == "thyroid":
        skin = rng.uniform(1.2, 1.8)
        fat = skin + rng.uniform(1.5, 4.0)
        strap = fat + rng.uniform(2.0, 4.5)
        p.update(
            bounds=[skin, fat, strap],
            waves=[draw_waves(rng, 2, (0.0, 0.3), (20, 60))] + [draw_waves(rng, 2, (0.2, 1.2), (10, 50)) for _ in range(2)],
            levels=[1.6, rng.uniform(0.08, 0.2), rng.uniform(0.2, 0.4), rng.uniform(0.35, 0.7)],
            streak=[0.3, 0.3, 0.8, 0.5],
            blob=[0.0, 0.6, 0.0, 0.6],
            thy_echo=rng.uniform(1.2, 2.0),
            thy_a=rng.uniform(9.0, 13.0), thy_b=rng.uniform(6.0, 9.0),
            thy_harm=draw_harmonics(rng, (2, 3), (0.0, 0.08)),
            side=1.0 if rng.random() < 0.5 else -1.0,
            carotid_r=rng.uniform(3.0, 4.2),
            jugular=(rng.uniform(3.5, 7.0), rng.uniform(1.2, 3.5)),
            lesion_size=(2.0, 6.0),
        )
    elif spec.anatomy == "liver":
        skin = rng.uniform(1.5, 2.5)
        fat = skin + rng.uniform(5.0, 20.0)
        muscle = fat + rng.uniform(5.0, 12.0)
        p.update(
            bounds=[skin, fat, muscle],
            waves=[draw_waves(rng, 2, (0.0, 0.5), (30, 90))] + [draw_waves(rng, 2, (0.5, 3.0), (20, 90)) for _ in range(2)],
            levels=[1.8, rng.uniform(0.06, 0.15), rng.uniform(0.2, 0.45), rng.uniform(0.45, 1.0)],
            streak=[0.3, 0.3, 0.9, rng.uniform(0.1, 0.3)],
            blob=[0.0, 0.7, 0.0, rng.uniform(0.15, 0.4)],
            diaphragm=(rng.uniform(0.7, 1.05), rng.uniform(-0.004, 0.006), rng.uniform(-20, 20)),
            n_vessels=int(rng.integers(3, 8)),
            kidney=rng.random() < 0.35,
            gallbladder=rng.random() < 0.25,
            lesion_size=(6.0, 16.0) if label == "cyst" else (9.0, 22.0),
        )
    else:
        raise ValueError(f"unknown anatomy {spec.anatomy!r} for source {spec.name}")
    return p


# ------------------------------------------------------------------------------------------ organs


def _breast(spec: SyntheticSource, g: Geometry, p: dict[str, Any], rng: np.random.Generator) -> tuple[_Canvas, Shape | None]:
    shift = rng.uniform(-30, 30)
    bounds = [wavy(g.lat, b * rng.uniform(0.93, 1.07), w, shift) for b, w in zip(p["bounds"], p["waves"])]
    t1 = smooth_noise(spec.name, g.size, rng, *p["streak_cell"])
    t2 = smooth_noise(spec.name, g.size, rng, 2.2, 2.8)
    echo, layer = _layered(g, bounds, p["levels"], p["streak"], p["blob"], t1, t2)
    fat = (layer == 1) | (layer == 3)
    echo += np.float32(p["septa"]) * ridges(t2, 0.12) * fat  # Cooper's ligaments / lobule septa
    gland = layer == 2
    echo += np.float32(0.5) * ridges(t2, 0.07) * gland
    echo += np.float32(p["fibres"]) * ridges(t1, 0.2) * gland  # fibrous strands along the tissue planes
    d = g.depth
    echo += 4.0 * _bump(d, 0.25, 0.3)  # skin entrance echo
    for k, amp in ((0, 1.2), (1, 1.5), (3, 2.5), (4, 2.0)):
        echo += np.float32(amp) * _bump(d, bounds[k], 0.22)
    atten = np.full(g.shape_padded, spec.alpha_db * p["alpha_scale"], dtype=np.float32)
    c = _Canvas(g, echo, atten)
    if p["ribs"]:
        y_rib = float(np.mean(bounds[4])) + rng.uniform(2.5, 5.0)
        for x in rng.uniform(-0.45, 0.45, size=int(rng.integers(1, 3))) * spec.width_mm:
            rib = Shape(float(x), y_rib, rng.uniform(5.0, 8.0), rng.uniform(3.0, 4.0), rng.normal(0, 0.1))
            c.fill(rib, 0.4, 9.0, wall_echo=8.0, wall_mm=0.8)
    shape = None
    if p["label"] != "normal":
        base = lesion_shape(np.random.default_rng(p["lesion_seed"]), p["label"], p["lesion_size"])
        top = float(np.mean(bounds[1])) + 0.5 * base.b
        bottom = max(top + 1.0, min(float(np.mean(bounds[2])), 0.72 * spec.depth_mm))
        shape = view_of(base, rng, rng.uniform(-0.3, 0.3) * spec.width_mm, rng.uniform(top, bottom))
        _paint_lesion(c, shape, _lesion_echo(spec, p, p["label"], "breast"), t2)
    return c, shape


def _thyroid(spec: SyntheticSource, g: Geometry, p: dict[str, Any], rng: np.random.Generator) -> tuple[_Canvas, Shape | None]:
    shift = rng.uniform(-30, 30)
    bounds = [wavy(g.lat, b * rng.uniform(0.93, 1.07), w, shift) for b, w in zip(p["bounds"], p["waves"])]
    t1 = smooth_noise(spec.name, g.size, rng, 0.4, 4.0)
    t2 = smooth_noise(spec.name, g.size, rng, 1.8, 1.8)
    echo, layer = _layered(g, bounds, p["levels"], p["streak"], p["blob"], t1, t2)
    d = g.depth
    echo += 4.0 * _bump(d, 0.25, 0.3)
    echo += np.float32(1.2) * _bump(d, bounds[0], 0.2) + np.float32(1.5) * _bump(d, bounds[2], 0.25)
    a0 = spec.alpha_db * p["alpha_scale"]
    atten = np.full(g.shape_padded, a0, dtype=np.float32)
    c = _Canvas(g, echo, atten)
    side = p["side"]
    x0 = rng.uniform(-4, 4) - side * 3.0
    strap = float(np.mean(bounds[2]))
    a, b = p["thy_a"] * rng.uniform(0.92, 1.08), p["thy_b"] * rng.uniform(0.92, 1.08)
    lobe = Shape(x0, strap + b + 0.4, a, b, rng.normal(0, 0.08), p["thy_harm"])
    c.fill(lobe, p["thy_echo"], a0, tex=t2, tex_gain=0.25, wall_echo=1.0, wall_mm=0.35)
    # longus colli below, trachea medially (air: bright front wall, shadow), vessels laterally
    c.fill(Shape(x0 - side * 0.3 * a, lobe.yc + b + 4.5, 9.0, 3.5, 0.0), 0.25, a0, tex=t1, tex_gain=0.7)
    tr = Shape(x0 - side * (a + 11.0), strap + 7.5, 7.5, 6.5, 0.0)
    win, inside, q = c.fill(tr, None, 1.5)
    below = g.Y[win] - np.float32(tr.yc - tr.b)  # air in the lumen: reverberations of the front wall
    reverb = np.float32(0.08) + np.float32(2.0) * np.exp(-below / np.float32(6.0)) * (
        np.float32(0.5) + np.float32(0.5) * np.cos(below * np.float32(2 * math.pi / 2.2))) ** 8
    c.echo[win][inside] = reverb[inside]
    front = np.float32(6.0) * np.exp(-np.square((q - 1.06) * np.float32(1 / 0.06))) * (below < 0.6 * tr.b)
    c.echo[win] += front  # only the anterior tracheal wall reflects; behind it is air
    rc = p["carotid_r"]
    xc, yc = x0 + side * (a + rc + 0.8), lobe.yc + rng.uniform(-1.0, 2.0)
    c.fill(Shape(xc + side * 2.0, strap - 0.8, 11.0, 2.8, side * 0.1), 0.3, a0, tex=t1, tex_gain=0.8)  # SCM
    c.fill(Shape(xc, yc, rc, rc, 0.0), FLUID_ECHO, FLUID_ATTEN, wall_echo=2.5, wall_mm=0.7)
    ja, jb = p["jugular"]
    c.fill(Shape(xc + side * (rc + 0.6 * ja), yc - rc * 0.7, ja, jb * rng.uniform(0.7, 1.1), side * 0.2),
           FLUID_ECHO, FLUID_ATTEN)
    shape = None
    if p["label"] != "normal":
        base = lesion_shape(np.random.default_rng(p["lesion_seed"]), p["label"], p["lesion_size"])
        shape = view_of(base, rng, x0 + rng.uniform(-0.35, 0.35) * a, lobe.yc + rng.uniform(-0.25, 0.25) * b)
        _paint_lesion(c, shape, _lesion_echo(spec, p, p["label"], "thyroid"), t2)
    return c, shape


def _liver(spec: SyntheticSource, g: Geometry, p: dict[str, Any], rng: np.random.Generator) -> tuple[_Canvas, Shape | None]:
    shift = rng.uniform(-40, 40)
    bounds = [wavy(g.lat, b * rng.uniform(0.93, 1.07), w, shift) for b, w in zip(p["bounds"], p["waves"])]
    t1 = smooth_noise(spec.name, g.size, rng, 1.0, 10.0)
    t2 = smooth_noise(spec.name, g.size, rng, 3.0, 3.0)
    echo, layer = _layered(g, bounds, p["levels"], p["streak"], p["blob"], t1, t2)
    d = g.depth
    echo += np.float32(p["levels"][1] * 8.0) * ridges(t2, 0.1) * (layer == 1)
    echo += 3.0 * _bump(d, 0.5, 0.6) + np.float32(3.0) * _bump(d, bounds[2], 0.7)
    a0 = spec.alpha_db * p["alpha_scale"]
    atten = np.full(g.shape_padded, a0, dtype=np.float32)
    c = _Canvas(g, echo, atten)
    D = spec.depth_mm
    top = float(np.mean(bounds[2])) + 4.0
    yd0, curv, xd = p["diaphragm"]
    yd = yd0 * D + rng.uniform(-5, 5)
    dia = g.Y - (np.float32(yd) + np.float32(curv) * np.square(g.X - np.float32(xd + shift * 0.3)))
    c.echo += np.float32(6.0) * np.exp(-np.square(dia * np.float32(1 / 1.8)))
    c.echo[dia > 1.5] *= np.float32(0.45)  # beyond the diaphragm: mirror image, weaker
    liver_x = 0.45 * D
    if p["gallbladder"]:
        gb = Shape(rng.uniform(-0.3, 0.3) * liver_x, top + rng.uniform(15, 35), rng.uniform(15, 28),
                   rng.uniform(7, 12), rng.normal(0, 0.3), draw_harmonics(rng, (2, 3), (0.0, 0.06)))
        c.fill(gb, FLUID_ECHO, FLUID_ATTEN, wall_echo=2.0, wall_mm=1.2)
    if p["kidney"]:
        k = Shape(rng.choice([-1, 1]) * rng.uniform(0.2, 0.45) * liver_x, rng.uniform(0.55, 0.75) * D,
                  rng.uniform(24, 34), rng.uniform(12, 17), rng.normal(0, 0.25))
        c.fill(k, 0.3, a0, tex=t2, tex_gain=0.3, wall_echo=3.0, wall_mm=1.5)
        c.fill(k.moved(a=k.a * 0.55, b=k.b * 0.45, harmonics=draw_harmonics(rng, (3, 6), (0.05, 0.15))),
               2.5, a0, tex=t1, tex_gain=0.7)
    shape = None
    if p["label"] != "normal":
        base = lesion_shape(np.random.default_rng(p["lesion_seed"]), p["label"], p["lesion_size"])
        r = base.extent()
        shape = view_of(base, rng, rng.uniform(-0.3, 0.3) * liver_x, rng.uniform(top + r, max(top + r, 0.7 * D)))
    for _ in range(p["n_vessels"]):
        r = rng.uniform(2.0, 7.0)
        v = Shape(rng.uniform(-1, 1) * liver_x, rng.uniform(top + 8, 0.85 * D), r * rng.uniform(1.0, 3.0), r,
                  rng.uniform(0, math.pi))
        portal = rng.random() < 0.5
        if shape is not None and math.hypot(v.xc - shape.xc, v.yc - shape.yc) < v.extent() + shape.extent() + 3:
            continue  # keep vessels off the lesion, so its outline stays its own
        c.fill(v, FLUID_ECHO, FLUID_ATTEN, wall_echo=2.5 if portal else 0.0, wall_mm=1.0)
    if shape is not None:
        _paint_lesion(c, shape, _lesion_echo(spec, p, p["label"], "liver"), t2)
    return c, shape


_ORGANS = {"breast": _breast, "thyroid": _thyroid, "liver": _liver}


def draw_phantom(spec: SyntheticSource, g: Geometry, p: dict[str, Any], rng: np.random.Generator) -> Phantom:
    """One view of the patient ``p``: echo and attenuation maps plus the lesion indicator."""
    c, shape = _ORGANS[spec.anatomy](spec, g, p, rng)
    np.maximum(c.echo, np.float32(0.0), out=c.echo)
    return Phantom(c.echo, c.atten, c.lesion, shape)
