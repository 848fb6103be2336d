"""Built-in synthetic B-mode ultrasound corpus: the default data of ``sonofm quickstart``.

Simulated the physical way (see :mod:`.imaging`): complex Gaussian scatterers weighted by a
tissue phantom (:mod:`.phantom`: layered tissue, organs, vessels, cysts, benign and malignant
masses), a Gaussian point-spread function applied on the beam grid of a linear or convex probe
(:mod:`.geometry`), attenuation integrated along the beams with partial time-gain compensation,
envelope detection, log compression, scan conversion, and burnt-in annotations outside the
acoustic field (:mod:`.marks`). Written as image + mask folders and a CSV manifest
(:mod:`.writer`).
"""

from __future__ import annotations

from .contact_sheet import make_contact_sheet
from .imaging import RAYLEIGH_MEAN_STD, simulate_homogeneous_envelope
from .render import SyntheticSample, render_sample
from .sources import LABELS, SOURCES, SYNTHETIC_SOURCES, SyntheticSource
from .writer import MANIFEST_COLUMNS, generate_corpus, plan

__all__ = [
    "LABELS",
    "MANIFEST_COLUMNS",
    "RAYLEIGH_MEAN_STD",
    "SOURCES",
    "SYNTHETIC_SOURCES",
    "SyntheticSample",
    "SyntheticSource",
    "generate_corpus",
    "make_contact_sheet",
    "plan",
    "render_sample",
    "simulate_homogeneous_envelope",
]
