"""Synthetic vendor scanner screens: B-mode fields surrounded by the UI real scanners burn in.

Field detection is tuned on curated public sets, whose images are already close to their field.
Real exports are whole screens: institution, patient name and date in a band above the image,
TIS/MI/gain text below it, a depth ruler with ticks beside it, grey and colour scale bars, view
labels ("LT BREAST", "TRANS"), a focus marker, dual views, colour and power Doppler boxes, and
deep tissue fading to black. This module draws such screens with exact ground truth, so the
detector can be measured (``benchmarks/vendor_screens.py``) and tested without patient data.

A screen is deterministic in ``(layout, seed)``. The tissue is simulated on a beam grid
(complex Gaussian scatterers weighted by an echogenicity map, Gaussian point-spread function,
depth attenuation, log compression) and scan-converted into the field, so it has real speckle,
anechoic cysts and vessels, and black depth. Clips move the tissue (scatterers and anatomy
shift together, speckle partly decorrelates) while the UI stays fixed, as on a cine loop.

Truth returned with every screen: one field mask per view, a UI mask (every burnt-in text,
ruler, bar and marker pixel; always outside the fields), the in-field overlay mask (Doppler box
outline), the Doppler colour pixels, the region boxes a scanner would write into the DICOM
Sequence of Ultrasound Regions, and the identifiers printed (patient ID, date, time). Besides the
band at the top, many scanners print the patient ID and date right under or beside the image: one
such line is drawn 1-3 px from the field (:func:`_identifier_line`), what a field crop must not
take in and what the shard audit must find.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage as ndi

#: Layouts the generator draws; each varies resolution, field position, fonts and UI elements.
LAYOUTS: tuple[str, ...] = (
    "linear",  # rectangle, grey bar and ruler beside it, text above and below
    "convex",  # curvilinear sector: arc top and bottom
    "phased",  # narrow-apex sector (cardiac)
    "dual",  # two views side by side (linear or convex), labels under each
    "colour_doppler",  # colour box with red/blue flow inside the field, colour bar at the side
    "power_doppler",  # orange power box, colour bar, dark deep tissue: the reported failure
    "deep_fade",  # field reaching the screen's bottom edge, deep tissue fading to black
)

#: Screen sizes (width, height) scanners export.
RESOLUTIONS: tuple[tuple[int, int], ...] = ((640, 480), (800, 600), (1024, 768))


@dataclass
class View:
    """Geometry of one acoustic field on the screen (pixel coordinates, y down)."""

    probe: str  # "linear" | "convex" | "phased"
    box: tuple[int, int, int, int]  # (x0, y0, x1, y1), exclusive x1/y1: the field's bounding box
    depth_cm: float
    apex: tuple[float, float] = (0.0, 0.0)  # fans: (x, y) of the apex
    radii: tuple[float, float] = (0.0, 0.0)  # fans: inner and outer radius, px
    half_angle: float = 0.0  # fans: half opening angle, rad

    def coords(self, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(depth fraction, lateral fraction, inside) of every screen pixel centre."""
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
        x0, y0, x1, y1 = self.box
        if self.probe == "linear":
            d = (yy - y0) / (y1 - y0)
            lat = (xx - x0) / (x1 - x0)
            inside = (d >= 0) & (d <= 1) & (lat >= 0) & (lat <= 1)
        else:
            ax, ay = self.apex
            r = np.hypot(xx - ax, yy - ay)
            th = np.arctan2(xx - ax, yy - ay)
            r0, r1 = self.radii
            d = (r - r0) / (r1 - r0)
            lat = (th + self.half_angle) / (2 * self.half_angle)
            inside = (d >= 0) & (d <= 1) & (lat >= 0) & (lat <= 1)
        # Clip to the box: a field cut by the screen edge (deep_fade) ends there.
        inside &= (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)
        return d, lat, inside

    def region(self, h: int, w: int) -> dict[str, Any]:
        """The DICOM ultrasound region of this view (as ``write_us_dicom`` takes it)."""
        x0, y0, x1, y1 = self.box
        if self.probe == "linear":
            dy = self.depth_cm / (y1 - y0)
        else:
            dy = self.depth_cm / (self.radii[1] - self.radii[0])
        return {
            "box": (x0, y0, x1 - 1, y1 - 1),  # DICOM region bounds are inclusive
            "spatial_format": 1,
            "data_type": 1,
            "delta_x_cm": dy,
            "delta_y_cm": dy,
            "transducer": {"linear": "LINEAR", "convex": "CURVED LINEAR", "phased": "SECTOR_PHASED"}[self.probe],
        }


@dataclass
class Screen:
    """One rendered screen (or clip) and its truth."""

    layout: str
    image: np.ndarray  # (H, W, 3) uint8 RGB: frame 0
    fields: list[np.ndarray]  # one (H, W) bool mask per view
    ui: np.ndarray  # (H, W) bool: burnt-in text, rulers, bars, markers (outside every field)
    overlay: np.ndarray  # (H, W) bool: UI drawn inside a field (Doppler box outline)
    colour: np.ndarray  # (H, W) bool: Doppler colour pixels of frame 0 (inside the fields)
    views: list[View]
    frames: list[np.ndarray] = field(default_factory=list)  # RGB frames of a clip (frames[0] is image)
    identifiers: list[str] = field(default_factory=list)  # patient ID, date, time lines as printed
    colour_frames: list[np.ndarray] = field(default_factory=list)  # colour mask per frame

    @property
    def field(self) -> np.ndarray:
        """Union of the view fields."""
        return np.logical_or.reduce(self.fields)

    @property
    def regions(self) -> list[dict[str, Any]]:
        """DICOM ultrasound regions, one per view."""
        h, w = self.ui.shape
        return [v.region(h, w) for v in self.views]


# --- text ---------------------------------------------------------------------------------------

@lru_cache(maxsize=16)
def text_font(px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's default font at ``px`` pixels (the bitmap font on Pillow < 10.1), cached."""
    try:
        return ImageFont.load_default(size=px)
    except TypeError:  # Pillow < 10.1: one bitmap size only
        return ImageFont.load_default()


class _Painter:
    """Draws UI on an RGB layer and records every pixel it touches in a mask."""

    def __init__(self, h: int, w: int, keepout: np.ndarray) -> None:
        self.h, self.w = h, w
        self.rgb = np.zeros((h, w, 3), np.uint8)
        self.mask = np.zeros((h, w), bool)
        self.keepout = keepout  # fields grown by the minimum gap: nothing is drawn there

    def _commit(self, layer: Image.Image, colour: tuple[int, int, int]) -> None:
        a = np.asarray(layer) > 40  # the antialiased fringe below this stays black
        a &= ~self.keepout
        self.rgb[a] = colour
        self.mask |= a

    def text(self, x: int, y: int, s: str, px: int, colour: tuple[int, int, int], anchor: str = "la",
             keepout: np.ndarray | None = None) -> tuple[int, int, int, int]:
        """Draw ``s``; returns its box (x0, y0, x1, y1). ``anchor`` as PIL's ("ra": right-aligned).
        ``keepout``: a narrower keep-out than the painter's (a line printed closer to the image)."""
        layer = Image.new("L", (self.w, self.h), 0)
        d = ImageDraw.Draw(layer)
        d.text((x, y), s, fill=255, font=text_font(px), anchor=anchor)
        if keepout is None:
            self._commit(layer, colour)
        else:
            a = (np.asarray(layer) > 40) & ~keepout
            self.rgb[a] = colour
            self.mask |= a
        return d.textbbox((x, y), s, font=text_font(px), anchor=anchor)

    def shape(self, draw_fn, colour: tuple[int, int, int]) -> None:
        layer = Image.new("L", (self.w, self.h), 0)
        draw_fn(ImageDraw.Draw(layer))
        self._commit(layer, colour)

    def block(self, x0: int, y0: int, rgb: np.ndarray) -> None:
        """Paste an (h, w, 3) block (grey or colour bar) at (x0, y0)."""
        bh, bw = rgb.shape[:2]
        sl = (slice(y0, y0 + bh), slice(x0, x0 + bw))
        ok = ~self.keepout[sl]
        self.rgb[sl][ok] = rgb[ok]
        self.mask[sl] |= ok & (rgb.max(axis=2) > 0)


# --- tissue ---------------------------------------------------------------------------------------

def _smooth(rng: np.random.Generator, shape: tuple[int, int], sa: float, sl: float) -> np.ndarray:
    """Unit-variance smooth Gaussian field with correlation lengths (sa, sl) samples."""
    f = ndi.gaussian_filter(rng.standard_normal(shape), (sa, sl), mode="wrap")
    return f / (f.std() + 1e-9)


@dataclass
class _Tissue:
    """Echogenicity (linear power) and flow maps on a padded beam grid, shared by a clip's frames."""

    echo: np.ndarray  # (na_p, nl_p)
    flow: np.ndarray  # (na_p, nl_p) signed flow velocity in [-1, 1] (0 outside vessels)
    pad: int
    na: int
    nl: int
    att_db: float  # attenuation over the full depth, after TGC
    gain_db: float


def _tissue(rng: np.random.Generator, na: int, nl: int, probe: str, att_db: float, vessels: int) -> _Tissue:
    pad = 24
    shape = (na + 2 * pad, nl + 2 * pad)
    a = (np.arange(shape[0]) - pad)[:, None] / na  # depth fraction
    lat = (np.arange(shape[1]) - pad)[None, :] / nl
    tex = np.exp(0.45 * _smooth(rng, shape, 4, 10) + 0.25 * _smooth(rng, shape, 1.5, 6))
    echo = np.ones(shape)
    # skin and subcutaneous layer, a bright fascia, streaky muscle, deeper parenchyma
    wave = 0.015 * _smooth(rng, (1, shape[1]), 1, 20)[0]
    d_sub = rng.uniform(0.06, 0.14) + wave
    d_fas = d_sub + rng.uniform(0.12, 0.3)
    echo = np.where(a < 0.015, 3.0, echo)
    echo = np.where((a >= 0.015) & (a < d_sub), rng.uniform(0.3, 0.7), echo)
    echo = echo + 6.0 * np.exp(-(((a - d_fas) / 0.008) ** 2))
    streak = np.exp(0.6 * _smooth(rng, shape, 0.8, 25))
    echo = np.where((a > d_sub) & (a < d_fas), echo * streak * rng.uniform(0.5, 1.2), echo)
    echo = echo * tex
    flow = np.zeros(shape)
    # anechoic cysts (posterior enhancement below) and vessels (flow inside)
    for _ in range(int(rng.integers(1, 4))):
        ca, cl = rng.uniform(0.25, 0.75), rng.uniform(0.15, 0.85)
        ra, rl = rng.uniform(0.04, 0.12), rng.uniform(0.05, 0.15)
        q = ((a - ca) / ra) ** 2 + ((lat - cl) / rl) ** 2
        below = (a > ca) & (np.abs(lat - cl) < rl * 0.8)
        echo = np.where(below, echo * (1 + 0.8 * np.exp(-(a - ca) / 0.2)), echo)
        echo = np.where(q < 1, 2e-4, echo)
    for i in range(vessels):
        ca = rng.uniform(0.3, 0.6) if i == 0 else rng.uniform(0.2, 0.8)
        ra = rng.uniform(0.05, 0.09)
        tilt = rng.uniform(-0.25, 0.25)
        centre = ca + tilt * (lat - 0.5)
        q = np.abs(a - centre) / ra
        inside = q < 1
        echo = np.where(inside, 1e-4, echo)
        echo = echo + 4.0 * np.exp(-(((q - 1.05) / 0.08) ** 2))  # bright vessel wall
        direction = 1.0 if rng.random() < 0.5 else -1.0
        flow = np.where(inside, direction * (1 - q**2), flow)
    gain = rng.uniform(-3, 3)
    return _Tissue(echo, flow, pad, na, nl, att_db, gain)


def _frame_display(t: _Tissue, rng: np.random.Generator, z_prev: np.ndarray | None, shift: tuple[int, int],
                   contact: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Display values 0..255 on the (na, nl) beam grid, the scatterer field, and the flow window."""
    shape = t.echo.shape
    z = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    if z_prev is not None:  # tissue moved by ``shift``; speckle partly decorrelates
        z = 0.85 * z_prev + math.sqrt(1 - 0.85**2) * z
    zf = ndi.gaussian_filter(z.real, (0.9, 1.4)) + 1j * ndi.gaussian_filter(z.imag, (0.9, 1.4))
    zf /= np.sqrt(np.mean(np.abs(zf) ** 2))
    oy, ox = shift
    win = (slice(t.pad + oy, t.pad + oy + t.na), slice(t.pad + ox, t.pad + ox + t.nl))
    echo = t.echo[win]
    if contact is not None:
        echo = echo * contact
    depth = (np.arange(t.na) / t.na)[:, None]
    loss = 10 ** (-(t.att_db * depth) / 10)
    env2 = echo * np.abs(zf[win]) ** 2 * loss + 10 ** (-7.0)  # electronic noise floor, -70 dB
    db = 10 * np.log10(env2)
    dr = 60.0
    lo = -0.55 * dr - t.gain_db
    disp = np.clip((db - lo) * 255.0 / dr, 0, 255)
    disp = ndi.uniform_filter(disp, 2)
    return disp, z, t.flow[win]


def _scan(beam: np.ndarray, d: np.ndarray, lat: np.ndarray, inside: np.ndarray) -> np.ndarray:
    na, nl = beam.shape
    out = np.zeros(d.shape, np.float32)
    ia = np.clip(d[inside], 0, 1) * (na - 1)
    il = np.clip(lat[inside], 0, 1) * (nl - 1)
    out[inside] = ndi.map_coordinates(beam, [ia, il], order=1, mode="nearest")
    return out


# --- layout -------------------------------------------------------------------------------------------

_INSTITUTIONS = ("ST MARY'S HOSPITAL", "CITY GENERAL RADIOLOGY", "NORTHSIDE IMAGING CTR",
                 "UNIV. MEDICAL CENTER", "RIVERSIDE CLINIC US")
_NAMES = ("DOE^JANE", "SMITH^JOHN A", "MULLER^ANNA", "GARCIA^MARIA", "NGUYEN^THI", "KOWALSKI^P")
_PRESETS = {"linear": ("BREAST", "THYROID", "SMALL PARTS", "VASCULAR", "MSK"),
            "convex": ("ABDOMEN", "OB/GYN", "RENAL", "LIVER"),
            "phased": ("CARDIAC", "ADULT ECHO", "TCD")}
_PROBES = {"linear": ("L12-5", "ML6-15", "L4-12t", "14L5"), "convex": ("C5-1", "C1-6", "4C-RS", "C60x"),
           "phased": ("S5-1", "M5Sc", "P4-2", "3Sp")}
_LABELS = {"linear": ("LT BREAST", "RT BREAST", "R THYROID", "L CCA", "TRANS", "SAG", "LONG"),
           "convex": ("LIVER", "RT KIDNEY", "GB", "TRANS", "SAG", "RUQ"),
           "phased": ("PLAX", "A4C", "PSAX", "SUBCOSTAL")}


def _colour_bar(h: int, w: int, kind: str) -> np.ndarray:
    t = np.linspace(1, -1, h)[:, None] * np.ones((1, w))
    if kind == "grey":
        g = np.linspace(255, 0, h)[:, None] * np.ones((1, w))
        return np.repeat(g[..., None], 3, axis=2).astype(np.uint8)
    if kind == "power":
        u = (t + 1) / 2  # dark red at the bottom to yellow at the top
        r = np.clip(80 + 175 * u * 1.6, 0, 255)
        g = np.clip(255 * (u - 0.3) * 1.4, 0, 255)
        b = np.clip(255 * (u - 0.85) * 4, 0, 255)
        return np.stack([r, g, b], axis=2).astype(np.uint8)
    # velocity map: red/yellow above the baseline, blue/cyan below, black at the baseline
    pos, neg = np.clip(t, 0, 1), np.clip(-t, 0, 1)
    r = 255 * np.clip(pos * 1.6, 0, 1)
    g = 255 * np.clip(pos - 0.6, 0, 1) * 2 + 255 * np.clip(neg - 0.6, 0, 1) * 2
    b = 255 * np.clip(neg * 1.6, 0, 1)
    return np.stack([r, g, b], axis=2).clip(0, 255).astype(np.uint8)


def _doppler_rgb(v: np.ndarray, power: bool) -> np.ndarray:
    """Colour of flow ``v`` in [-1, 1] (power: magnitude only)."""
    m = np.abs(v)
    if power:
        r = 150 + 105 * m
        g = 40 + 170 * m
        b = 10 + 40 * m**3
    else:
        r = np.where(v > 0, 120 + 135 * m, 0)
        g = 180 * np.clip(m - 0.6, 0, 1) * 2.5
        b = np.where(v < 0, 140 + 115 * m, 0)
    return np.stack([r, g, b], axis=-1).clip(0, 255).astype(np.uint8)


def _plan(layout: str, rng: np.random.Generator) -> dict[str, Any]:
    """Screen size, view geometry and UI options of one screen."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown screen layout {layout!r}; known: {', '.join(LAYOUTS)}")
    w, h = RESOLUTIONS[int(rng.integers(len(RESOLUTIONS)))]
    s = h / 480.0
    top = int(rng.uniform(50, 75) * s)  # text band above the image
    bottom = int(rng.uniform(45, 70) * s)  # text band below
    side_l = int(rng.uniform(95, 150) * s)  # parameter panel / bars on the left
    side_r = int(rng.uniform(70, 120) * s)  # ruler and bars on the right
    probe = {"linear": "linear", "convex": "convex", "phased": "phased", "colour_doppler": "linear",
             "power_doppler": "linear", "deep_fade": "convex" if rng.random() < 0.5 else "linear",
             "dual": "linear" if rng.random() < 0.5 else "convex"}[layout]
    if layout == "colour_doppler" and rng.random() < 0.35:
        probe = "convex"
    if layout == "deep_fade":
        bottom = 0
    avail_w = w - side_l - side_r
    avail_h = h - top - bottom
    plan: dict[str, Any] = {"w": w, "h": h, "s": s, "probe": probe, "top": top, "bottom": bottom,
                            "px": max(10, int(round(rng.uniform(11, 15) * s)))}
    views: list[View] = []
    n_views = 2 if layout == "dual" else 1
    gap = int(rng.uniform(8, 30) * s)
    vw = (avail_w - gap * (n_views - 1)) // n_views
    for i in range(n_views):
        x_lo = side_l + i * (vw + gap)
        if probe == "linear":
            fw = int(vw * rng.uniform(0.7, 0.95)) if n_views == 1 else vw
            fh = int(avail_h * rng.uniform(0.85, 0.97)) if layout != "deep_fade" else avail_h - int(rng.uniform(0, 8) * s)
            x0 = x_lo + int(rng.uniform(0, vw - fw + 1))
            y0 = top + int(rng.uniform(0, max(1, avail_h - fh)))
            if layout == "deep_fade":
                y0 = h - fh
            views.append(View("linear", (x0, y0, x0 + fw, y0 + fh), depth_cm=float(rng.uniform(3, 6))))
        else:
            phased = probe == "phased"
            half = math.radians(rng.uniform(36, 45) if phased else rng.uniform(28, 38))
            fh = avail_h * (rng.uniform(0.88, 0.97) if layout != "deep_fade" else 1.15)
            if phased:
                r0 = rng.uniform(0, 6) * s
            else:
                r0 = rng.uniform(0.35, 0.7) * fh
            r1 = r0 + fh  # so the sector is about fh tall below the apex region
            width = 2 * r1 * math.sin(half)
            if width > vw:  # too wide: narrow the opening
                half = math.asin(min(0.98, vw / (2 * r1)))
                width = 2 * r1 * math.sin(half)
            ax = x_lo + vw / 2 + rng.uniform(-0.5, 0.5) * (vw - width)
            y_top = top + rng.uniform(0, 0.03) * avail_h
            ay = y_top - r0
            x0, x1 = int(math.floor(ax - width / 2)), int(math.ceil(ax + width / 2))
            y1 = min(h, int(math.ceil(ay + r1)))
            views.append(View(probe, (max(0, x0), int(math.floor(y_top)), min(w, x1), y1),
                              depth_cm=float(rng.uniform(8, 16)), apex=(ax, ay), radii=(r0, r1), half_angle=half))
    plan["views"] = views
    plan["doppler"] = {"colour_doppler": "colour", "power_doppler": "power"}.get(layout)
    plan["att_db"] = float(rng.uniform(45, 60) if layout in ("deep_fade", "power_doppler") else rng.uniform(8, 22))
    return plan


def _identifier_line(p: _Painter, plan: dict[str, Any], rng: np.random.Generator, fields: np.ndarray,
                     text: str, colour: tuple[int, int, int]) -> int:
    """Print ``text`` (patient ID and date) 1-3 px from the (first) field: under it when the screen
    has room there, else above its top edge (a field down to the screen's bottom). Returns the rows
    it takes under the field (0 when it went above), so the view labels move below it."""
    gap = int(rng.integers(1, 4))
    keepout = ndi.binary_dilation(fields, structure=np.ones((3, 3), bool), iterations=gap)
    v: View = plan["views"][0]
    px = plan["px"]
    x0, y0, x1, y1 = v.box
    font = text_font(px)
    box = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), text, font=font, anchor="la")
    top, height = box[1], box[3] - box[1]  # the ink starts ``top`` below the anchor
    dist = ndi.distance_transform_edt(~fields)

    def nearest(x: int, y: int, anchor: str) -> int:
        """Rows between the line drawn at (x, y) and the field, less the ``gap`` wanted."""
        layer = Image.new("L", (p.w, p.h), 0)
        ImageDraw.Draw(layer).text((x, y), text, fill=255, font=font, anchor=anchor)
        ink = np.asarray(layer) > 40
        return int(round(float(dist[ink].min()))) - (gap + 1) if ink.any() else 0

    if y1 + gap + height + 2 < p.h - 2 * px:  # under the image: left-aligned, or centred under a fan's arc
        x, anchor = (x0, "la") if v.probe == "linear" else (int(v.apex[0]), "ma")
        y = y1 + gap - top
        y -= nearest(x, y, anchor)  # a fan's arc is lowest at its centre only: close the gap there
        bb = p.text(x, y, text, px, colour, anchor=anchor, keepout=keepout)
        return max(0, int(bb[3] - y1 + 1))
    y = y0 - gap - height - top
    y += nearest(x0, y, "la")
    p.text(x0, y, text, px, colour, keepout=keepout)  # above the image (a field down to the screen's bottom)
    return 0


def _draw_ui(plan: dict[str, Any], rng: np.random.Generator, fields: np.ndarray, layout: str,
             near: np.random.Generator | None = None) -> tuple[_Painter, list[str]]:
    """Text bands, left panel, rulers, bars, focus markers and labels around the fields; also the
    identifiers printed (with ``near``, the generator of the ID line printed 1-3 px from the field)."""
    w, h, s, px = plan["w"], plan["h"], plan["s"], plan["px"]
    views: list[View] = plan["views"]
    min_gap = max(4, int(round(4 * s)))
    keepout = ndi.binary_dilation(fields, structure=np.ones((3, 3), bool), iterations=min_gap)
    p = _Painter(h, w, keepout)
    white = (235, 235, 235)
    grey = (int(rng.integers(150, 200)),) * 3
    accent = [(120, 200, 255), (255, 230, 110), white][int(rng.integers(3))]
    probe = plan["probe"]
    line = int(px * 1.25)

    # band above: institution / patient / id left, date / time right, preset / probe / freq
    y = int(4 * s)
    date = f"{int(rng.integers(2015, 2025))}/{int(rng.integers(1, 13)):02d}/{int(rng.integers(1, 29)):02d}"
    clock = f"{int(rng.integers(7, 19)):02d}:{int(rng.integers(60)):02d}:{int(rng.integers(60)):02d}"
    patient_id = f"ID {int(rng.integers(1e6, 1e7))}"
    left_lines = [_INSTITUTIONS[int(rng.integers(len(_INSTITUTIONS)))],
                  f"{_NAMES[int(rng.integers(len(_NAMES)))]}  {patient_id}"]
    identifiers = [patient_id, date, clock]
    below = 0
    if near is not None:  # drawn first: the labels under the view make room for it
        below = _identifier_line(p, plan, near, fields, f"{patient_id}  {date}", white)
    right_lines = [f"{date}  {clock}", f"{_PROBES[probe][int(rng.integers(4))]}  "
                   f"{_PRESETS[probe][int(rng.integers(len(_PRESETS[probe])))]}"]
    mi = f"MI {rng.uniform(0.2, 1.4):.1f}  TIS {rng.uniform(0.1, 1.2):.1f}"
    if rng.random() < 0.5:
        right_lines.append(mi)
    top_limit = plan["top"] - min_gap
    for i, t in enumerate(left_lines):
        if y + (i + 1) * line <= top_limit:
            p.text(int(8 * s), y + i * line, t, px, white if i else accent)
    for i, t in enumerate(right_lines):
        if y + (i + 1) * line <= top_limit:
            p.text(w - int(8 * s), y + i * line, t, px, white, anchor="ra")
    if rng.random() < 0.6:  # a vendor logo-like block: a filled rounded rectangle with text
        bx = int(w * rng.uniform(0.38, 0.5))
        p.shape(lambda d: d.rounded_rectangle((bx, y, bx + int(70 * s), y + line), radius=3, outline=255, width=2), grey)
        p.text(bx + int(6 * s), y + 1, "SONO", px - 2, grey)

    # left panel: acquisition parameters, a grey bar
    params = [f"{rng.uniform(2, 15):.1f}MHz", f"Gn {int(rng.integers(30, 70))}", f"DR {int(rng.integers(50, 80))}",
              f"FR {int(rng.integers(12, 60))}Hz", f"D {views[0].depth_cm:.1f}cm", "2D", f"P{int(rng.integers(1, 9))}"]
    if plan["doppler"]:
        params += ["CF" if plan["doppler"] == "colour" else "PDI", f"PRF {rng.uniform(0.5, 4):.1f}k",
                   f"WF {int(rng.integers(40, 200))}", f"CG {int(rng.integers(40, 70))}"]
    x_field0 = min(v.box[0] for v in views)
    y = plan["top"] + int(6 * s)
    for t in params:
        if y + line > h - plan["bottom"] - min_gap:
            break
        bb = p.text(int(8 * s), y, t, px - 1, grey)
        if bb[2] >= x_field0 - min_gap:
            break
        y += line
    # scale bars: grey always; a colour bar in Doppler modes
    bar_w, bar_h = int(rng.uniform(9, 16) * s), int(rng.uniform(90, 160) * s)
    bars = [_colour_bar(bar_h, bar_w, "grey")]
    if plan["doppler"]:
        bars.append(_colour_bar(bar_h, bar_w, plan["doppler"]))
    v_last = views[-1]
    x_right = max(v.box[2] for v in views)
    bars_right = rng.random() < 0.6
    # ruler beside the (last) view: a tick every 0.5 cm, long ticks and numbers every cm
    ruler_x = v_last.box[2] + min_gap + int(rng.uniform(0, 6) * s)
    if v_last.probe != "linear":
        ruler_x = int(v_last.apex[0] + v_last.radii[1] * math.sin(v_last.half_angle)) + min_gap + int(rng.uniform(2, 8) * s)
        ruler_x = max(ruler_x, v_last.box[2] + min_gap)
    y_top = v_last.box[1] if v_last.probe == "linear" else v_last.apex[1] + v_last.radii[0]
    depth_px = (v_last.box[3] - v_last.box[1]) if v_last.probe == "linear" else v_last.radii[1] - v_last.radii[0]
    per_cm = depth_px / v_last.depth_cm
    tick = int(rng.uniform(4, 7) * s)

    def ruler(d: ImageDraw.ImageDraw) -> None:
        k = 0
        while k * per_cm / 2 <= depth_px:
            yy = int(round(y_top + k * per_cm / 2))
            if yy < h - plan["bottom"] - min_gap:
                d.line((ruler_x, yy, ruler_x + (2 * tick if k % 2 == 0 else tick), yy), fill=255, width=max(1, int(s)))
            k += 1
        if rng.random() < 0.5:
            d.line((ruler_x, int(y_top), ruler_x, int(min(y_top + depth_px, h - plan["bottom"] - min_gap))), fill=255, width=1)

    if ruler_x + 2 * tick < w:
        p.shape(ruler, grey)
        for cm in range(1, int(v_last.depth_cm) + 1):
            yy = int(round(y_top + cm * per_cm))
            if yy + px < h - plan["bottom"] - min_gap and ruler_x + 2 * tick + 3 * px < w:
                p.text(ruler_x + 2 * tick + 3, yy, str(cm), px - 2, grey, anchor="lm")
    # focus marker: a small triangle pointing at the field on the ruler side, at the focal depth
    fy = int(y_top + rng.uniform(0.3, 0.6) * depth_px)
    fx = ruler_x - 1
    p.shape(lambda d: d.polygon([(fx, fy), (fx + int(7 * s), fy - int(5 * s)), (fx + int(7 * s), fy + int(5 * s))], fill=255),
            accent)
    n_bars = len(bars)
    bars_w = n_bars * bar_w + (n_bars - 1) * int(6 * s)
    if bars_right:  # beyond the ruler and its numbers
        bar_x = x_right + int(rng.uniform(45, 60) * s)
    else:  # between the parameter panel and the field, close to the field's left edge
        bar_x = x_field0 - min_gap - int(rng.uniform(4, 20) * s) - bars_w
        if views[0].probe != "linear":
            bar_x = int(views[0].apex[0] - views[0].radii[1] * math.sin(views[0].half_angle)) - min_gap - bars_w
    bar_y = plan["top"] + int(rng.uniform(5, 40) * s)
    for i, bar in enumerate(bars):
        bx = bar_x + i * (bar_w + int(6 * s))
        if bx + bar_w + 2 < w and bar_y + bar_h < h - plan["bottom"] - min_gap:
            p.block(bx, bar_y, bar)
            if plan["doppler"] and i == 1:
                p.text(bx + bar_w // 2, bar_y - 2, f"+{rng.uniform(5, 40):.1f}", px - 3, grey, anchor="md")
                p.text(bx + bar_w // 2, bar_y + bar_h + 2, f"-{rng.uniform(5, 40):.1f}", px - 3, grey, anchor="ma")
    # labels under each view, and a body marker pictogram
    for i_view, v in enumerate(views):
        ly = v.box[3] + min_gap + 2 + (below if i_view == 0 else 0)
        label = _LABELS[v.probe if v.probe in _LABELS else "linear"]
        t = label[int(rng.integers(len(label)))]
        if ly + px < h:
            bb = p.text(v.box[0] + int(rng.uniform(0, 0.4) * (v.box[2] - v.box[0])), ly, t, px, accent)
            if bb[3] + line < h and rng.random() < 0.7:
                p.text(bb[0], bb[3] + 3, ("TRANS", "SAG", "LONG", "OBL")[int(rng.integers(4))], px, accent)
        elif layout == "deep_fade":  # the field reaches the bottom: labels go to the corner beside it
            p.text(int(8 * s), h - 2 * line, t, px, accent)
    if plan["bottom"] > 3 * line:  # body marker: a breast/torso outline with the probe bar
        cx, cy, r = int(w - 60 * s), h - plan["bottom"] // 2, int(14 * s)

        def marker(d: ImageDraw.ImageDraw) -> None:
            d.ellipse((cx - r, cy - r, cx + r, cy + r), outline=255, width=max(1, int(s)))
            d.line((cx - r // 2, cy - r // 3, cx + r // 2, cy + r // 3), fill=255, width=max(2, int(3 * s)))

        p.shape(marker, grey)
    # band below: TIS/MI/TIB, gain and depth
    bottom_y = h - int(6 * s) - line
    txt = [f"TIS {rng.uniform(0.1, 1.0):.1f}  MI {rng.uniform(0.3, 1.3):.1f}  TIB {rng.uniform(0.1, 1.5):.1f}",
           f"Gain {int(rng.integers(30, 70))}  Depth {views[0].depth_cm:.1f} cm"]
    if layout == "deep_fade":
        p.text(w - int(8 * s), bottom_y, txt[0], px - 2, grey, anchor="ra")
        p.text(w - int(8 * s), bottom_y - line, txt[1], px - 2, grey, anchor="ra")
    else:
        p.text(int(8 * s), bottom_y, txt[0], px, white)
        if rng.random() < 0.7:
            p.text(w // 2, bottom_y, txt[1], px, white)
    return p, identifiers


def _contact_loss(nl: int, na: int, rng: np.random.Generator) -> np.ndarray:
    """Echo factor of a probe partly off the skin: one side of the field dark (first frame of a clip)."""
    lat = np.arange(nl) / nl
    side = rng.uniform(0.35, 0.5)
    f = np.where(lat < side, 1e-5, 1.0) if rng.random() < 0.5 else np.where(lat > 1 - side, 1e-5, 1.0)
    return np.broadcast_to(f[None, :], (na, nl))


def render_screen(layout: str, seed: int, n_frames: int = 1, hard_first: bool = False,
                  near_identifiers: bool = True) -> Screen:
    """Draw one vendor screen (``n_frames`` > 1: a clip whose tissue moves under a fixed UI).

    ``hard_first`` makes frame 0 of a clip hard for a still detector: the probe is half off the
    skin, so a large part of the field is black in that frame only. ``near_identifiers`` prints the
    patient ID and date a second time 1-3 px from the field (own random stream: the rest of the
    screen is the same either way).
    """
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(LAYOUTS.index(layout) if layout in LAYOUTS else 0, 77)))
    plan = _plan(layout, rng)
    h, w = plan["h"], plan["w"]
    views: list[View] = plan["views"]
    geo = [v.coords(h, w) for v in views]
    fields = [g[2] for g in geo]
    union = np.logical_or.reduce(fields)
    near = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(LAYOUTS.index(layout), 78)))
    painter, identifiers = _draw_ui(plan, rng, union, layout, near if near_identifiers else None)
    ui = painter.mask & ~union

    # one tissue model per view; a Doppler box inside the (first) field
    tissues = []
    for v in views:
        fh = v.box[3] - v.box[1]
        fw = v.box[2] - v.box[0]
        tissues.append(_tissue(rng, max(48, fh // 2), max(48, fw // 2), v.probe, plan["att_db"],
                               vessels=2 if plan["doppler"] else int(rng.integers(0, 2))))
    overlay = np.zeros((h, w), bool)
    box_mask = np.zeros((h, w), bool)
    if plan["doppler"]:
        d, lat, inside = geo[0]
        da, db_ = sorted(rng.uniform(0.05, 0.85, size=2))
        db_ = max(db_, da + 0.3)
        la, lb = sorted(rng.uniform(0.05, 0.95, size=2))
        lb = max(lb, la + 0.35)
        box_mask = inside & (d >= da) & (d <= min(db_, 0.97)) & (lat >= la) & (lat <= min(lb, 0.97))
        overlay = box_mask & ~ndi.binary_erosion(box_mask, iterations=max(1, int(plan["s"])))
    n_total = n_frames
    frames, colours = [], []
    zs: list[np.ndarray | None] = [None] * len(views)
    phase = rng.uniform(0, 2 * math.pi)
    for k in range(n_total):
        img = np.zeros((h, w, 3), np.uint8)
        col = np.zeros((h, w), bool)
        for i, (t, (d, lat, inside)) in enumerate(zip(tissues, geo)):
            shift = (int(round(6 * math.sin(phase + 2 * math.pi * k / max(4, n_total)))) if k else 0,
                     int(round(3 * math.sin(phase + 1 + 2 * math.pi * k / max(6, n_total)))) if k else 0)
            contact = _contact_loss(t.nl, t.na, rng) if (hard_first and k == 0) else None
            disp, zs[i], flow = _frame_display(t, rng, zs[i], shift, contact)
            g = _scan(disp, d, lat, inside)
            img[inside] = np.clip(np.rint(g[inside]), 0, 255).astype(np.uint8)[:, None]
            if plan["doppler"] and i == 0:
                pulse = 0.55 + 0.45 * math.sin(phase + 2 * math.pi * k / 5)
                fl = _scan(flow, d, lat, inside) * pulse
                noise = _scan(ndi.gaussian_filter(rng.standard_normal(flow.shape), 1.2), d, lat, inside)
                show = box_mask & ((np.abs(fl) > 0.12) | (noise > 2.2 * 0.25))
                vals = np.where(np.abs(fl) > 0.12, fl, 0.3 * np.sign(noise + 1e-9))
                img[show] = _doppler_rgb(vals[show], plan["doppler"] == "power")
                col = show
        img[overlay] = (200, 200, 200)
        img[painter.mask] = painter.rgb[painter.mask]
        frames.append(img)
        colours.append(col & ~overlay)
    return Screen(layout=layout, image=frames[0], fields=fields, ui=ui, overlay=overlay, colour=colours[0],
                  views=views, frames=frames if n_frames > 1 else [], colour_frames=colours if n_frames > 1 else [],
                  identifiers=identifiers)


def screen_gray(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luminance of a screen, as the preprocessing computes it."""
    f = rgb.astype(np.float32)
    return np.clip(np.rint(0.299 * f[..., 0] + 0.587 * f[..., 1] + 0.114 * f[..., 2]), 0, 255).astype(np.uint8)


def score_field(screen: Screen, kept: np.ndarray) -> dict[str, float]:
    """How well a kept-field mask (what preprocessing leaves unblanked) matches the truth.

    ``iou`` compares ``kept`` with the union of the true fields, leaving the Doppler colour pixels
    out of both (colour flow is blanked by preprocessing either way); ``ui_kept`` is the share of
    UI pixels left in the output and ``ui_kept_px`` their count (all of them lie outside the field).
    """
    truth = screen.field
    colour = screen.colour if not screen.colour_frames else np.logical_or.reduce(screen.colour_frames)
    valid = ~colour
    inter = float((kept & truth & valid).sum())
    union = float(((kept | truth) & valid).sum())
    ui_kept = int((kept & screen.ui).sum())
    return {
        "iou": inter / union if union else 1.0,
        "ui_kept": ui_kept / max(1, int(screen.ui.sum())),
        "ui_kept_px": float(ui_kept),
        "recall": inter / max(1.0, float((truth & valid).sum())),
    }
