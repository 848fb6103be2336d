"""``sonofm shards audit``: read the stored pixels of a shard folder with OCR, before the shards leave.

Preprocessing crops to the acoustic field and blanks text that touches it, but that is only as
good as the field detection; this audit checks the result where it matters, in the stored images.
Every image (or an even ``sample`` of them) is read with OCR (:mod:`sonofm.datasets.shards.ocr`);
images whose text holds a date, a time or a run of 5+ digits are identifier-like and make the
audit fail (a pipeline can gate on the exit status); other words are listed apart.

Next to every result goes the OCR's recall measured on the same images: known identifiers are
drawn into copies of some of them (on a strip of screen background, and over the tissue) and read
back, so that "0 found" comes with the share of identifiers the reading would have caught. A
contact sheet shows each flagged image beside the text read in it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from sonofm.atomic_io import atomic_file
from sonofm.datasets.shards import ocr
from sonofm.datasets.shards.index import load_indexes
from sonofm.datasets.shards.reader import CorruptSample, count_samples, decode_png, iter_tar_samples

#: Images drawn with planted identifiers to measure recall (each twice: on background, over tissue).
RECALL_IMAGES = 16
#: Flagged images shown on the contact sheet.
SHEET_MAX = 48
_TILE_H, _TEXT_W = 144, 300


@dataclass
class Flagged:
    """One stored image in which OCR read text."""

    key: str
    shard: str
    reading: ocr.Reading
    image: np.ndarray | None = None  # kept for the contact sheet (the first SHEET_MAX only)

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "shard": self.shard, "identifiers": self.reading.identifiers,
                "words": self.reading.words, "text": self.reading.text.strip()}


@dataclass
class Recall:
    """The OCR's recall on planted identifiers: ``n`` images, planted on background and over tissue."""

    n: int = 0
    text_px: int = 0
    background: int = 0  # flagged (a new identifier-like match) with the identifier on screen background
    tissue: int = 0  # ... drawn over the tissue
    exact: int = 0  # identifiers read exactly, both placements together (of 2 n)

    def share(self, hits: int, of: int | None = None) -> float | None:
        total = self.n if of is None else of
        return hits / total if total else None

    def to_dict(self) -> dict[str, Any]:
        return {"images": self.n, "text_px": self.text_px,
                "background": self.share(self.background), "tissue": self.share(self.tissue),
                "exact": self.share(self.exact, 2 * self.n)}

    def line(self) -> str:
        if not self.n:
            return "OCR recall not measured (no image read)"
        return (f"OCR recall on {self.n} of these images with an identifier drawn in ({self.text_px} px text): "
                f"{self.background / self.n:.0%} on screen background, {self.tissue / self.n:.0%} over tissue "
                f"({self.exact / (2 * self.n):.0%} read exactly)")


@dataclass
class AuditReport:
    """What the audit found in one shard folder."""

    shard_dir: str
    engine: str
    images_total: int
    images_read: int = 0
    unreadable: int = 0
    identifiers: list[Flagged] = field(default_factory=list)  # images with identifier-like text
    other_text: list[Flagged] = field(default_factory=list)  # images with other words only
    recall: Recall = field(default_factory=Recall)
    seconds: float = 0.0
    sheet: str | None = None

    @property
    def passed(self) -> bool:
        """No identifier-like text in any image read."""
        return not self.identifiers

    def to_dict(self) -> dict[str, Any]:
        return {"shard_dir": self.shard_dir, "engine": self.engine, "images_total": self.images_total,
                "images_read": self.images_read, "unreadable": self.unreadable, "passed": self.passed,
                "identifier_images": len(self.identifiers), "other_text_images": len(self.other_text),
                "recall": self.recall.to_dict(), "seconds": round(self.seconds, 1), "sheet": self.sheet,
                "flagged": [f.to_dict() for f in self.identifiers + self.other_text]}

    def summary(self) -> str:
        """The lines the CLI prints: the verdict, the recall beside it, what was flagged."""
        kinds = {k: sum(bool(f.reading.identifiers.get(k)) for f in self.identifiers) for k in ocr.KINDS}
        lines = [
            f"audit of {self.shard_dir} ({self.engine}): read {self.images_read} of {self.images_total} stored "
            f"images in {self.seconds:.0f} s" + (f", {self.unreadable} unreadable" if self.unreadable else ""),
            f"  {len(self.identifiers)} of {self.images_read} hold identifier-like text (date {kinds['date']}, "
            f"time {kinds['time']}, 5+ digits {kinds['digits']}); {len(self.other_text)} more hold other text",
            f"  {self.recall.line()}",
        ]
        for f in self.identifiers[:20]:
            found = "; ".join(f"{k} {', '.join(v)}" for k, v in f.reading.identifiers.items())
            lines.append(f"  {f.key} ({Path(f.shard).name}): {found}")
        if len(self.identifiers) > 20:
            lines.append(f"  ... and {len(self.identifiers) - 20} more (see the JSON report)")
        if self.sheet:
            lines.append(f"  contact sheet of the flagged images: {self.sheet}")
        lines.append("  PASSED: no identifier-like text read" if self.passed
                     else "  FAILED: identifier-like text in stored pixels; do not share these shards")
        return "\n".join(lines)


def shard_files(shard_dir: str | os.PathLike) -> list[tuple[Path, int]]:
    """``(file, samples)`` of every shard in ``shard_dir``, from the indexes (else every ``*.tar``)."""
    d = Path(shard_dir).expanduser()
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: no such shard folder")
    out: list[tuple[Path, int]] = []
    for idx in load_indexes(d):
        for s in idx.get("shards", []):
            p = d / s["file"]
            if p.is_file():
                out.append((p, int(s.get("count", 0)) or count_samples(p)))
    if not out:
        out = [(p, count_samples(p)) for p in sorted(d.glob("*.tar"))]
    if not out:
        raise FileNotFoundError(f"{d}: no shards (*.tar) found; build them with 'sonofm shards build'")
    return out


def _positions(total: int, sample: int | None) -> set[int]:
    """Global sample positions to read: all, or ``sample`` of them spread evenly."""
    if sample is None or sample >= total:
        return set(range(total))
    return {int(i) for i in np.linspace(0, total - 1, max(1, sample)).round()}


def audit_shards(shard_dir: str | os.PathLike, sample: int | None = None, recall_images: int = RECALL_IMAGES,
                 seed: int = 0, sheet: str | os.PathLike | None = None, progress: bool = True) -> AuditReport:
    """Read the stored images of ``shard_dir`` (all, or ``sample`` spread evenly) with OCR.

    Returns an :class:`AuditReport` (identifier-like text, other text, the OCR's recall measured on
    ``recall_images`` of the images read); writes the contact sheet of flagged images to ``sheet``
    when given. Raises :class:`~sonofm.datasets.shards.ocr.OcrUnavailable` without the OCR engine.
    """
    from tqdm.auto import tqdm

    ocr.check_ocr()
    if sample is not None and sample < 1:
        raise ValueError(f"sample must be a positive number of images, got {sample}")
    t0 = time.perf_counter()
    files = shard_files(shard_dir)
    total = sum(n for _, n in files)
    wanted = _positions(total, sample)
    report = AuditReport(str(Path(shard_dir).expanduser()), ocr.engine_name(), total)
    kept: list[tuple[np.ndarray, ocr.Reading]] = []  # candidates for the recall measurement
    every = max(1, len(wanted) // max(1, recall_images))
    bar = tqdm(total=len(wanted), desc="audit (OCR)", unit="img", disable=not progress, dynamic_ncols=True)
    start = 0
    try:
        for path, n in files:
            if not any(start <= p < start + n for p in wanted):
                start += n
                continue
            for j, raw in enumerate(iter_tar_samples(path)):
                if start + j not in wanted:
                    continue
                bar.update(1)
                try:
                    image = decode_png(raw["png"], "image") if "png" in raw else None
                except CorruptSample:
                    image = None
                if image is None:
                    report.unreadable += 1
                    continue
                reading = ocr.read_text(image)
                if report.images_read % every == 0 and len(kept) < recall_images:
                    kept.append((image, reading))
                report.images_read += 1
                if reading.has_identifier or reading.words:
                    show = len(report.identifiers) + len(report.other_text) < SHEET_MAX
                    flag = Flagged(raw["__key__"], str(path), reading, image if show else None)
                    (report.identifiers if reading.has_identifier else report.other_text).append(flag)
            start += n
    finally:
        bar.close()
    report.recall = measure_recall(kept, seed)
    report.seconds = time.perf_counter() - t0
    if sheet is not None and (report.identifiers or report.other_text):
        report.sheet = str(write_sheet(report, Path(sheet).expanduser()))
    return report


def measure_recall(images: list[tuple[np.ndarray, ocr.Reading]], seed: int = 0) -> Recall:
    """Draw one identifier into each image twice (on background, over tissue) and read them back.

    ``images`` pairs each image with its own reading (so text already there is not credited to the
    planted identifier). Identifier kinds take turns (ID number, date, time).
    """
    rng = np.random.default_rng(seed)
    rec = Recall(n=len(images), text_px=ocr.text_px(images[0][0].shape) if images else 0)
    for i, (image, clean) in enumerate(images):
        for j, background in enumerate((True, False)):
            text = ocr.identifier_text(ocr.KINDS[(i + j) % len(ocr.KINDS)], rng)
            reading = ocr.read_text(ocr.plant_identifier(image, text, rng, background=background))
            hit = ocr.planted_read(reading, clean)
            if background:
                rec.background += hit
            else:
                rec.tissue += hit
            rec.exact += ocr.exact_read(reading, text)
    return rec


def _tile(f: Flagged) -> Image.Image:
    """The image (scaled to the tile height) with the text read in it beside it."""
    img = Image.fromarray(f.image if f.image is not None else np.zeros((8, 8), np.uint8))
    scale = _TILE_H / img.height
    img = img.resize((max(1, round(img.width * scale)), _TILE_H), Image.Resampling.NEAREST).convert("RGB")
    tile = Image.new("RGB", (img.width + _TEXT_W, _TILE_H + 4), (16, 16, 16))
    tile.paste(img, (0, 2))
    d = ImageDraw.Draw(tile)
    x, y = img.width + 6, 4
    d.text((x, y), f.key[-40:], fill=(200, 200, 200))
    y += 14
    for kind, ms in f.reading.identifiers.items():
        d.text((x, y), f"{kind}: {', '.join(ms)}"[:48], fill=(255, 80, 80))
        y += 12
    for line in [s for s in f.reading.text.splitlines() if s.strip()]:
        if y > _TILE_H - 10:
            break
        d.text((x, y), line.strip()[:48], fill=(255, 230, 0))
        y += 12
    return tile


def write_sheet(report: AuditReport, out: Path) -> Path:
    """Contact sheet of the flagged images (identifier-like first), each beside the text read in it."""
    shown = [f for f in report.identifiers + report.other_text if f.image is not None][:SHEET_MAX]
    tiles = [_tile(f) for f in shown]
    cols = 2 if len(tiles) > 1 else 1
    width = cols * max(t.width for t in tiles)
    rows = (len(tiles) + cols - 1) // cols
    sheet = Image.new("RGB", (width, 44 + rows * (_TILE_H + 4)), (0, 0, 0))
    d = ImageDraw.Draw(sheet)
    d.text((4, 4), f"audit of {report.shard_dir}: {len(report.identifiers)} of {report.images_read} images hold "
                   f"identifier-like text (red), {len(report.other_text)} other text (yellow: all text read)",
           fill=(255, 255, 255))
    d.text((4, 20), report.recall.line(), fill=(180, 180, 180))
    cell = width // cols
    for i, t in enumerate(tiles):
        sheet.paste(t, ((i % cols) * cell, 44 + (i // cols) * (_TILE_H + 4)))
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out) as tmp:
        sheet.save(tmp, format="PNG")
    return out


__all__ = ["AuditReport", "Flagged", "Recall", "audit_shards", "measure_recall", "shard_files", "write_sheet"]
