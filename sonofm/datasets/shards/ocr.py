"""Reading burnt-in text with OCR, and telling identifiers (dates, times, long digit runs) from other text.

Used by the shard audit (:mod:`sonofm.datasets.shards.audit`) and by the tests and benchmarks that
check what preprocessing leaves in stored pixels. The OCR is tesseract (the ``tesseract-ocr``
binary through ``pytesseract``, the ``ocr`` extra), a maintained engine that needs no weights
download. Its absence is a :class:`OcrUnavailable` with the install command, never a traceback.

OCR misses text, more so when it is small: a reading of "0 found" means something only next to the
engine's recall on the same kind of image. :func:`plant_identifier` draws a known identifier into a
copy of an image (on a strip of screen background, as scanners print them, or over the tissue) so
that recall can be measured on the very images audited.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from sonofm.datasets.synthetic.screens import text_font
from sonofm.errors import UserError

#: How to get the OCR engine (printed as one line when it is missing).
INSTALL_HINT = ("pip install 'sonofm[ocr]' and the tesseract binary "
                "(Debian/Ubuntu: apt-get install tesseract-ocr; macOS: brew install tesseract)")
#: Images are upscaled so strokes a pixel or two wide become legible to tesseract (3x for small
#: images), but no further than ``MAX_OCR_SIDE`` pixels on the long side (time grows with area).
UPSCALE = 3
MAX_OCR_SIDE = 1200
#: Tesseract page segmentation 11: sparse text, as much as it finds, in no particular order.
TESSERACT_CONFIG = "--psm 11"

#: Identifier kinds, in the order reports list them.
KINDS = ("date", "time", "digits")
_SEP = re.compile(r"\s*([/:.\-])\s*")  # OCR puts spaces around separators: "2021 /03/ 21"
# OCR reads a small ":" as "." often: a time is also two-digit hours "." minutes (a caliper's
# "12.55" then counts too: flagged text is for a person to look at, a missed time is not).
_PATTERNS = {
    "date": re.compile(r"(?<!\d)(?:\d{4}[/.\-]\d{1,2}[/.\-]\d{1,2}|\d{1,2}[/.\-]\d{1,2}[/.\-]\d{2,4})(?!\d)"),
    "time": re.compile(r"(?<![\d:.])(?:(?:[01]?\d|2[0-3]):[0-5]\d(?::[0-5]\d)?|(?:[01]\d|2[0-3])\.[0-5]\d)(?![\d:.])"),
    "digits": re.compile(r"\d{5,}"),
}
_WORD = re.compile(r"[A-Za-z]{3,}")


class OcrUnavailable(UserError, RuntimeError):
    """The OCR engine is not installed; the message is one line with the install command."""


@dataclass
class Reading:
    """What OCR read in one image: the raw text, identifier-like matches per kind, other words."""

    text: str
    identifiers: dict[str, list[str]] = field(default_factory=dict)
    words: list[str] = field(default_factory=list)

    @property
    def has_identifier(self) -> bool:
        """Whether any date, time or run of 5+ digits was read."""
        return any(self.identifiers.values())

    def matches(self) -> set[tuple[str, str]]:
        """``(kind, text)`` of every identifier-like match."""
        return {(k, m) for k, ms in self.identifiers.items() for m in ms}


def classify(text: str) -> Reading:
    """Identifier-like matches (dates, times, runs of 5+ digits) and other words (3+ letters) in ``text``.

    A run of digits inside a date is not also counted as a digit run; separators with spaces around
    them are closed up first, as OCR spaces them out.
    """
    flat = _SEP.sub(r"\1", text)
    found: dict[str, list[str]] = {}
    rest = flat
    for kind in KINDS:
        ms = _PATTERNS[kind].findall(rest)
        if ms:
            found[kind] = ms
            rest = _PATTERNS[kind].sub(" ", rest)
    return Reading(text=text, identifiers=found, words=_WORD.findall(rest))


def check_ocr() -> None:
    """Raise :class:`OcrUnavailable` (one line, with the install command) unless tesseract can run."""
    _engine_version()


@lru_cache(maxsize=1)
def _engine_version() -> str:
    try:
        import pytesseract
    except ImportError as e:
        raise OcrUnavailable(f"the shard audit needs OCR, and pytesseract is not installed: {INSTALL_HINT}") from e
    try:
        return str(pytesseract.get_tesseract_version())
    except (pytesseract.TesseractNotFoundError, OSError) as e:
        raise OcrUnavailable(f"the shard audit needs OCR, and the tesseract binary was not found: {INSTALL_HINT}") from e


def engine_name() -> str:
    """``tesseract <version>`` (for reports)."""
    return f"tesseract {_engine_version()}"


def upscale_factor(shape: tuple[int, int]) -> float:
    """How much an image of ``shape`` is enlarged before OCR (``UPSCALE``, capped by ``MAX_OCR_SIDE``)."""
    return max(1.0, min(float(UPSCALE), MAX_OCR_SIDE / max(shape)))


def read_text(image: np.ndarray) -> Reading:
    """OCR of one 8-bit grayscale image (enlarged by :func:`upscale_factor`, with a black margin)."""
    import pytesseract

    check_ocr()
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"read_text needs a uint8 (H, W) image, got {image.dtype} {image.shape}")
    f = upscale_factor(image.shape)
    im = Image.fromarray(image)
    if f > 1.0:
        im = im.resize((round(image.shape[1] * f), round(image.shape[0] * f)), Image.Resampling.BICUBIC)
    pad = Image.new("L", (im.width + 20, im.height + 20), 0)
    pad.paste(im, (10, 10))
    with _one_tesseract_thread():
        text = pytesseract.image_to_string(pad, config=TESSERACT_CONFIG)
    return classify(text)


_ENV_LOCK = threading.Lock()


@contextmanager
def _one_tesseract_thread() -> Iterator[None]:
    """One image at a time is small work: tesseract's OpenMP threads only fight over shared cores. The
    limit is set only while tesseract starts (pytesseract passes no environment of its own), never left in
    this process's environment: every later child would inherit it, and torch started under
    ``OMP_THREAD_LIMIT=1`` with two intra-op threads deadlocks in oneDNN's convolution kernels."""
    with _ENV_LOCK:  # two threads restoring each other's value would leave the limit behind
        before = os.environ.get("OMP_THREAD_LIMIT")
        os.environ["OMP_THREAD_LIMIT"] = "1"
        try:
            yield
        finally:
            if before is None:
                os.environ.pop("OMP_THREAD_LIMIT", None)
            else:
                os.environ["OMP_THREAD_LIMIT"] = before


# --- planted identifiers: the OCR's recall on the images at hand ----------------------------------------


def identifier_text(kind: str, rng: np.random.Generator) -> str:
    """A random identifier as scanners print them: ``ID 4829173``, ``2019/07/23`` or ``14:52``."""
    if kind == "digits":
        return f"ID {int(rng.integers(10**6, 10**7))}"
    if kind == "date":
        return f"{int(rng.integers(2010, 2026))}/{int(rng.integers(1, 13)):02d}/{int(rng.integers(1, 29)):02d}"
    if kind == "time":
        return f"{int(rng.integers(7, 19)):02d}:{int(rng.integers(60)):02d}"
    raise ValueError(f"unknown identifier kind {kind!r}; known: {', '.join(KINDS)}")


def text_px(shape: tuple[int, int]) -> int:
    """Font size planted identifiers get: the synthetic corpus's rule (1/26 of the side, at least 7 px)."""
    return max(7, round(max(shape) / 26))


def plant_identifier(image: np.ndarray, text: str, rng: np.random.Generator, background: bool = True) -> np.ndarray:
    """A copy of ``image`` with ``text`` drawn at a random place, white or light grey.

    ``background``: on a black strip with a 2-pixel margin, as a line printed beside the image on
    the screen's background; otherwise straight over the pixels (a label over tissue).
    """
    h, w = image.shape
    px = text_px(image.shape)
    font = text_font(px)
    x0, y0, x1, y1 = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), text, font=font)
    tw, th = x1 - x0, y1 - y0
    x = int(rng.integers(2, max(3, w - tw - 2)))
    y = int(rng.integers(2, max(3, h - th - 2)))
    im = Image.fromarray(image.copy())
    d = ImageDraw.Draw(im)
    if background:
        d.rectangle((x - 2, y - 2, x + tw + 2, y + th + 2), fill=0)
    d.text((x - x0, y - y0), text, fill=int(rng.integers(190, 256)), font=font)
    return np.asarray(im)


def planted_read(reading: Reading, clean: Reading) -> bool:
    """Whether OCR flagged a planted identifier: an identifier-like match the clean image did not give."""
    return bool(reading.matches() - clean.matches())


def exact_read(reading: Reading, text: str) -> bool:
    """Whether the digits of the planted identifier ``text`` were read in one identifier-like match
    (separators aside: OCR often reads ":" as "." or drops a "/")."""
    want = {re.sub(r"\D", "", m) for _, m in classify(text).matches()}
    got = {re.sub(r"\D", "", m) for _, m in reading.matches()}
    return bool(want) and want <= got


__all__ = ["INSTALL_HINT", "KINDS", "OcrUnavailable", "Reading", "check_ocr", "classify", "engine_name",
           "exact_read", "identifier_text", "plant_identifier", "planted_read", "read_text", "text_px",
           "upscale_factor"]
