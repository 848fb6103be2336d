"""Probe geometry: the beam grid the echoes are simulated on and its scan conversion to pixels.

Echoes are formed along beams, so the simulation runs on a beam grid (rows = samples along a
beam, columns = beam lines): straight parallel lines for a linear probe, rays of a fan for a
convex one. The point-spread function and the attenuation accumulated along each beam are
applied there, which is what makes convex images blur and shadow along the rays like real
ones. Scan conversion then maps the grid to Cartesian pixels with bilinear weights; the lesion
masks go through the very same mapping, so they align with the lesions in the image.

Physical coordinates are in mm: ``x`` lateral, ``y`` downward, origin at the centre of the
probe face (skin). For a convex probe the fan apex is at ``(0, -R)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage
from scipy.fft import next_fast_len

from .sources import SOURCES, SyntheticSource


@dataclass(frozen=True, eq=False)
class Geometry:
    """Beam grid (with FFT padding) and scan-conversion tables of one source at one image size."""

    size: int
    probe: str
    spacing_mm: float  # isotropic pixel spacing of the output image
    na: int  # samples per beam inside the field
    nl: int  # beam lines inside the field
    pad_a: int  # extra samples above/below the field (convolution support)
    pad_l: int  # extra lines left/right of the field
    dr_mm: float  # axial sample spacing
    depth: np.ndarray  # (na_p, 1) depth below the probe face along the beam, mm
    lat: np.ndarray  # (1, nl_p) lateral position along the probe face, mm
    X: np.ndarray  # (na_p, nl_p) Cartesian x, mm
    Y: np.ndarray  # (na_p, nl_p) Cartesian y, mm
    field: np.ndarray  # (size, size) bool, the acoustic field
    keepout: np.ndarray  # (size, size) bool, the field dilated: burnt-in marks stay out of it
    field_flat: np.ndarray  # (M,) flat pixel indices of the field
    lut_idx: np.ndarray  # (M,) flat index of the top-left grid neighbour (unpadded grid)
    lut_w: np.ndarray  # (4, M) bilinear weights of the neighbours (0, 0), (0, 1), (1, 0), (1, 1)
    origin_px: tuple[float, float]  # (row, col) of the physical origin in the output image
    radius_mm: float = 0.0
    dtheta: float = 0.0  # convex: angle between lines, rad
    theta0: float = 0.0  # convex: angle of line 0 (unpadded), rad

    @property
    def shape_padded(self) -> tuple[int, int]:
        return self.X.shape

    def inner(self, a: np.ndarray) -> np.ndarray:
        """The part of a padded beam-grid array that lies inside the field."""
        return a[self.pad_a : self.pad_a + self.na, self.pad_l : self.pad_l + self.nl]

    def window(self, xc: float, yc: float, radius: float) -> tuple[slice, slice]:
        """Padded-grid index ranges covering the disc of ``radius`` mm around ``(xc, yc)``."""
        na_p, nl_p = self.X.shape
        if self.probe == "linear":
            d0, d1 = yc - radius, yc + radius
            l0, l1 = xc - radius, xc + radius
            step_l = self.spacing_mm
            lat0 = float(self.lat[0, 0])
        else:
            r = math.hypot(xc, yc + self.radius_mm)
            th = math.atan2(xc, yc + self.radius_mm)
            dth = math.asin(min(1.0, radius / max(r, 1e-6)))
            d0, d1 = r - radius - self.radius_mm, r + radius - self.radius_mm
            l0, l1 = th - dth, th + dth
            step_l = self.dtheta
            lat0 = self.theta0 - self.pad_l * self.dtheta
        depth0 = float(self.depth[0, 0])
        a0 = max(0, int(math.floor((d0 - depth0) / self.dr_mm)) - 1)
        a1 = min(na_p, int(math.ceil((d1 - depth0) / self.dr_mm)) + 2)
        c0 = max(0, int(math.floor((l0 - lat0) / step_l)) - 1)
        c1 = min(nl_p, int(math.ceil((l1 - lat0) / step_l)) + 2)
        return slice(a0, max(a0, a1)), slice(c0, max(c0, c1))

    def scan_convert(self, beam: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """Map an unpadded ``(na, nl)`` beam-grid array to a ``(size, size)`` float32 image."""
        flat = np.ascontiguousarray(beam, dtype=np.float32).ravel()
        i = self.lut_idx
        nl = self.nl
        vals = (
            self.lut_w[0] * flat[i]
            + self.lut_w[1] * flat[i + 1]
            + self.lut_w[2] * flat[i + nl]
            + self.lut_w[3] * flat[i + nl + 1]
        )
        out = np.full(self.size * self.size, fill, dtype=np.float32)
        out[self.field_flat] = vals
        return out.reshape(self.size, self.size)


def psf_sigmas(spec: SyntheticSource, dr_mm: float, lateral_step_mm: float) -> tuple[float, float, float]:
    """PSF widths in grid samples: axial, lateral at focus, lateral far from focus.

    Here, not in :mod:`.imaging` (which filters with them), because the beam grid's padding is sized
    by them and imaging imports the geometry.

    They are floored at about one sample: a narrower PSF would alias into pixel noise at small
    image sizes instead of forming speckle grains.
    """
    sa = max(spec.axial_res_mm / dr_mm, 1.0)
    sl = max(spec.lateral_res_mm / lateral_step_mm, 1.6)
    return sa, sl, sl * spec.defocus


def _psf_pad(spec: SyntheticSource, dr: float, lateral_step_mm: float) -> tuple[int, int]:
    """Padding that keeps FFT wrap-around of the widest PSF out of the field."""
    sa, _, sl_wide = psf_sigmas(spec, dr, lateral_step_mm)
    return int(math.ceil(3.5 * sa)) + 1, int(math.ceil(3.5 * sl_wide)) + 1


def _finish(
    spec: SyntheticSource, size: int, s: float, r0: float, c0: float, na: int, nl: int, dr: float,
    lateral_step_mm: float, to_grid, grid_xy,
) -> Geometry:
    """Pad the beam grid to FFT-friendly sizes and build the scan-conversion tables."""
    pa, pl = _psf_pad(spec, dr, lateral_step_mm)
    na_p = next_fast_len(na + 2 * pa)
    nl_p = next_fast_len(nl + 2 * pl)
    pad_a = (na_p - na) // 2
    pad_l = (nl_p - nl) // 2
    ia = np.arange(na_p, dtype=np.float64) - pad_a
    il = np.arange(nl_p, dtype=np.float64) - pad_l
    X, Y, depth, lat = grid_xy(ia, il)

    rows, cols = np.mgrid[0:size, 0:size]
    x = (cols + 0.5 - c0) * s
    y = (rows + 0.5 - r0) * s
    fa, fl = to_grid(x, y)  # fractional indices in the unpadded grid
    field = (fa >= -0.5) & (fa <= na - 0.5) & (fl >= -0.5) & (fl <= nl - 0.5)
    fa = np.clip(fa[field], 0.0, na - 1.0)
    fl = np.clip(fl[field], 0.0, nl - 1.0)
    a0 = np.minimum(np.floor(fa).astype(np.int64), na - 2)
    l0 = np.minimum(np.floor(fl).astype(np.int64), nl - 2)
    ta = (fa - a0).astype(np.float32)
    tl = (fl - l0).astype(np.float32)
    w = np.stack([(1 - ta) * (1 - tl), (1 - ta) * tl, ta * (1 - tl), ta * tl])
    keepout = ndimage.binary_dilation(field, iterations=max(2, size // 100))
    return Geometry(
        size=size, probe=spec.probe, spacing_mm=float(s), na=na, nl=nl, pad_a=pad_a, pad_l=pad_l, dr_mm=dr,
        depth=depth.astype(np.float32), lat=lat.astype(np.float32), X=X.astype(np.float32),
        Y=Y.astype(np.float32), field=field, keepout=keepout,
        field_flat=np.flatnonzero(field), lut_idx=(a0 * nl + l0), lut_w=w.astype(np.float32),
        origin_px=(float(r0), float(c0)),
    )


def _linear(spec: SyntheticSource, size: int) -> Geometry:
    top = round(0.075 * size)
    bottom = round(0.03 * size)
    side = round(0.14 * size)
    s = max(spec.depth_mm / (size - top - bottom), spec.width_mm / (size - 2 * side))
    na = int(round(spec.depth_mm / s))
    nl = int(round(spec.width_mm / s))
    r0, c0 = float(top), size / 2.0
    dr = spec.depth_mm / na
    half_w = nl * s / 2.0

    def to_grid(x, y):
        return y / dr - 0.5, (x + half_w) / s - 0.5

    def grid_xy(ia, il):
        depth = ((ia + 0.5) * dr)[:, None]
        lat = ((il + 0.5) * s - half_w)[None, :]
        X = np.broadcast_to(lat, (ia.size, il.size))
        Y = np.broadcast_to(depth, (ia.size, il.size))
        return X, Y, depth, lat

    return _finish(spec, size, s, r0, c0, na, nl, dr, s, to_grid, grid_xy)


def _convex(spec: SyntheticSource, size: int) -> Geometry:
    R, D = spec.radius_mm, spec.depth_mm
    tm = math.radians(spec.half_angle_deg)
    top = round(0.075 * size)
    bottom = round(0.03 * size)
    side = round(0.07 * size)
    height = (R + D) - R * math.cos(tm)
    width = 2 * (R + D) * math.sin(tm)
    s = max(height / (size - top - bottom), width / (size - 2 * side))
    na = int(round(D / s))
    dr = D / na
    arc_mid = 2 * tm * (R + 0.6 * D)
    nl = max(64, int(round(0.8 * arc_mid / s)))
    dth = 2 * tm / nl
    th0 = -tm + 0.5 * dth
    r0 = top + (R - R * math.cos(tm)) / s
    c0 = size / 2.0

    def to_grid(x, y):
        r = np.hypot(x, y + R)
        th = np.arctan2(x, y + R)
        return (r - R) / dr - 0.5, (th - th0) / dth

    def grid_xy(ia, il):
        depth = ((ia + 0.5) * dr)[:, None]
        th = (th0 + il * dth)[None, :]
        r = R + depth
        X = r * np.sin(th)
        Y = r * np.cos(th) - R
        return X, Y, depth, th * R  # lateral position: arc length along the probe face

    g = _finish(spec, size, s, r0, c0, na, nl, dr, dth * (R + spec.focus_frac * D), to_grid, grid_xy)
    object.__setattr__(g, "radius_mm", R)
    object.__setattr__(g, "dtheta", dth)
    object.__setattr__(g, "theta0", th0)
    return g


@lru_cache(maxsize=64)
def geometry(source: str, size: int) -> Geometry:
    """Geometry of ``source`` at ``size`` pixels (cached: every image of a source shares it)."""
    if size < 64:
        raise ValueError(f"synthetic image size must be at least 64 pixels, got {size}")
    spec = SOURCES[source]
    return _linear(spec, size) if spec.probe == "linear" else _convex(spec, size)
