"""Echo formation: scatterers → point-spread function → attenuation/TGC → envelope → log compression.

The model is the standard one behind speckle (Goodman; Wagner et al. 1983): tissue is a dense
field of sub-resolution scatterers with random complex amplitudes (Gaussian real and imaginary
parts) whose variance is the local echogenicity. The received baseband (IQ) signal is that field
convolved with the point-spread function; many scatterers per resolution cell make it a circular
complex Gaussian, so its magnitude -- the envelope -- is Rayleigh distributed (mean/std =
sqrt(pi/(4-pi)) ≈ 1.91) wherever tissue is homogeneous.

PSF: the transmitted pulse is a Gaussian-modulated cosine; in the IQ (demodulated) domain it is
its complex baseband equivalent, a Gaussian envelope along the beam of width ``axial_res_mm``.
Across the beam the profile is Gaussian, narrow at the focus and wider away from it: the IQ
field is filtered with both widths and blended by depth (a blend of jointly Gaussian fields
stays Gaussian, and is renormalised to unit variance, so the speckle statistics are kept).
The filtering is done by FFT on the beam grid, with the PSF's Gaussian transfer function.

Attenuation is integrated along each beam, two ways, from a per-sample map in dB/(cm MHz):
fluid (cysts, vessels) attenuates little and brightens what lies behind it (posterior
enhancement); dense malignant tissue and bone attenuate strongly and shadow. Time-gain
compensation gives back a fixed fraction of the average tissue loss, as a sonographer's TGC
would; electronic noise is added before the TGC, so it shows at depth.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy import fft as sfft

from .geometry import Geometry, geometry, psf_sigmas
from .sources import SOURCES, SyntheticSource

#: mean/std of a Rayleigh envelope: what a homogeneous, fully developed speckle region shows.
RAYLEIGH_MEAN_STD = math.sqrt(math.pi / (4.0 - math.pi))


def _gauss_transfer(n: int, sigma: float) -> np.ndarray:
    f = sfft.fftfreq(n)
    return np.exp(-2.0 * (math.pi * sigma * f) ** 2)


@lru_cache(maxsize=64)
def _filters(source: str, size: int) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """Transfer functions (focused, defocused), their correlation and the per-row blend weight."""
    spec = SOURCES[source]
    g = geometry(source, size)
    na_p, nl_p = g.shape_padded
    lateral_step = g.spacing_mm if g.probe == "linear" else g.dtheta * (g.radius_mm + spec.focus_frac * spec.depth_mm)
    sa, sl, sl_wide = psf_sigmas(spec, g.dr_mm, lateral_step)
    ha = _gauss_transfer(na_p, sa)[:, None]
    h1 = ha * _gauss_transfer(nl_p, sl)[None, :]
    h2 = ha * _gauss_transfer(nl_p, sl_wide)[None, :]
    h1 /= math.sqrt(float(np.mean(h1**2)))  # unit output variance for unit-variance white input
    h2 /= math.sqrt(float(np.mean(h2**2)))
    rho = float(np.mean(h1 * h2))
    focus = spec.focus_frac * spec.depth_mm
    w = np.clip(np.abs(g.depth - focus) / (0.55 * spec.depth_mm), 0.0, 1.0) ** 1.5  # (na_p, 1)
    norm = np.sqrt((1 - w) ** 2 + w**2 + 2 * w * (1 - w) * rho)
    return h1.astype(np.float32), h2.astype(np.float32), rho, np.concatenate([(1 - w) / norm, w / norm], 1).astype(np.float32)


def tgc_db(spec: SyntheticSource, g: Geometry) -> np.ndarray:
    """Time-gain compensation per sample row, dB (two-way, a fraction of the mean tissue loss)."""
    return (spec.tgc * 2.0 * spec.alpha_db * spec.freq_mhz * g.depth / 10.0).astype(np.float32)


def beamform(
    spec: SyntheticSource, g: Geometry, echo: np.ndarray, atten: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Squared envelope (power, linear, TGC applied) on the unpadded beam grid.

    ``echo`` is the backscatter intensity (1 = reference tissue) and ``atten`` the attenuation
    coefficient in dB/(cm MHz), both on the padded beam grid.
    """
    h1, h2, _, wmix = _filters(spec.name, g.size)
    # two-way loss accumulated along each beam (rows), in dB, then as a power factor
    loss_db = np.cumsum(atten, axis=0, dtype=np.float32) * np.float32(2.0 * spec.freq_mhz * g.dr_mm / 10.0)
    power = echo * np.power(np.float32(10.0), loss_db * np.float32(-0.1)) + np.float32(10.0 ** (spec.noise_db / 10))
    amp = np.sqrt(power * np.float32(0.5))
    z = rng.standard_normal((2,) + amp.shape, dtype=np.float32)
    iq = np.empty(amp.shape, dtype=np.complex64)
    iq.real = z[0] * amp
    iq.imag = z[1] * amp
    spectrum = sfft.fft2(iq, overwrite_x=True)
    a = sfft.ifft2(spectrum * h1)
    b = sfft.ifft2(spectrum * h2, overwrite_x=True)
    iq = a * wmix[:, :1] + b * wmix[:, 1:]
    iq = g.inner(iq)
    env2 = iq.real**2 + iq.imag**2
    tgc = tgc_db(spec, g)[g.pad_a : g.pad_a + g.na]
    return env2 * np.power(np.float32(10.0), tgc * np.float32(0.1))


def log_compress(env2: np.ndarray, spec: SyntheticSource, gain_db: float = 0.0) -> np.ndarray:
    """Display values 0..255 (float32) from squared envelope: dB, gain, dynamic-range window.

    Reference tissue (0 dB) sits at mid-grey, as on a scanner's default preset. A light 5x5
    smoothing of the display values follows, like a scanner's post-processing filter (and like
    the down-sampling real images go through before they are 256 px): it softens the black
    speckle nulls without touching the envelope statistics.
    """
    dr = spec.dynamic_range_db
    db = np.float32(10.0) * np.log10(env2 + np.float32(1e-12))
    lo = -0.5 * dr - spec.gain_db - gain_db
    v = np.clip((db - np.float32(lo)) * np.float32(255.0 / dr), 0.0, 255.0)
    for _ in range(2):  # twice: a 5-tap binomial filter (sigma 1 sample) along and across the beams
        v[1:-1] = np.float32(0.5) * v[1:-1] + np.float32(0.25) * (v[:-2] + v[2:])
        v[:, 1:-1] = np.float32(0.5) * v[:, 1:-1] + np.float32(0.25) * (v[:, :-2] + v[:, 2:])
    return v


def simulate_homogeneous_envelope(
    source: str = "synth_breast_linear_a", size: int = 256, seed: int = 0, attenuate: bool = True
) -> np.ndarray:
    """Envelope |IQ| (before log compression) of homogeneous reference tissue, on the beam grid.

    Runs the same pipeline as the corpus (scatterers, PSF, attenuation, TGC, noise) on a phantom
    of constant echogenicity; used to check that the speckle is fully developed (Rayleigh).
    With ``attenuate=True`` the depth trend left by partial TGC is present: compare statistics
    within a band of depths.
    """
    spec = SOURCES[source]
    g = geometry(source, size)
    echo = np.ones(g.shape_padded, dtype=np.float32)
    atten = np.full(g.shape_padded, spec.alpha_db if attenuate else 0.0, dtype=np.float32)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(7,)))
    return np.sqrt(beamform(spec, g, echo, atten, rng))
