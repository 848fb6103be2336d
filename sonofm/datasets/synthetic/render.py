"""One synthetic image end to end: phantom → echoes → display values → scan conversion → marks."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as _field  # the sample has a "field" of its own
from typing import Any

import numpy as np

from .geometry import geometry
from .imaging import beamform, log_compress
from .marks import draw_marks
from .phantom import draw_phantom, patient_params
from .sources import SOURCES


@dataclass
class SyntheticSample:
    """A rendered image with everything the tests and the writer need."""

    image: np.ndarray  # (size, size) uint8, field + burnt-in marks on black
    mask: np.ndarray  # (size, size) uint8, 255 on the lesion
    field: np.ndarray  # (size, size) bool, the acoustic field
    marks: np.ndarray  # (size, size) bool, pixels of burnt-in annotations
    label: str
    source: str
    pixel_spacing_mm: float
    envelope: np.ndarray | None = None  # (na, nl) |IQ| before log compression, when asked for
    texts: list[str] = _field(default_factory=list)  # the text lines burnt in (patient ID, date, time, ...)


def image_rng(seed: int, index: int) -> np.random.Generator:
    """Generator of image ``index``: depends on (seed, index) only, not on worker or order."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, index)))


def patient_rng(seed: int, patient: int) -> np.random.Generator:
    """Generator of the shared parameters of patient ``patient``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0, patient)))


def render_sample(
    source: str, seed: int, patient: int, index: int, size: int = 256, keep_envelope: bool = False
) -> SyntheticSample:
    """Render image ``index`` of patient ``patient`` of ``source``; deterministic in its arguments."""
    if source not in SOURCES:
        raise ValueError(f"unknown synthetic source {source!r}; known: {sorted(SOURCES)}")
    spec = SOURCES[source]
    g = geometry(source, size)
    p: dict[str, Any] = patient_params(spec, patient_rng(seed, patient))
    rng = image_rng(seed, index)
    ph = draw_phantom(spec, g, p, rng)
    env2 = beamform(spec, g, ph.echo, ph.atten, rng)
    disp = log_compress(env2, spec, gain_db=p["gain_db"] + rng.normal(0.0, 0.7))
    img = g.scan_convert(disp)
    lesion = g.scan_convert(g.inner(ph.lesion).astype(np.float32)) >= 0.5
    lesion_cm = None
    if ph.lesion_shape is not None:
        lesion_cm = 2.0 * max(ph.lesion_shape.a, ph.lesion_shape.b) / 10.0
    texts: list[str] = []
    marks = draw_marks(spec, g, rng, patient, lesion_cm, texts)
    image = np.rint(img).astype(np.uint8)
    np.maximum(image, marks, out=image)
    return SyntheticSample(
        image=image,
        mask=np.where(lesion, np.uint8(255), np.uint8(0)),
        field=g.field,
        marks=marks > 0,
        label=p["label"],
        source=source,
        pixel_spacing_mm=g.spacing_mm,
        envelope=np.sqrt(env2) if keep_envelope else None,
        texts=texts,
    )
