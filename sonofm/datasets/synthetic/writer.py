"""Write the synthetic corpus to disk in the layout of a real dataset, deterministically.

``OUT/images/<source>/<id>.png``, ``OUT/masks/<source>/<id>.png`` (0/255) and
``OUT/manifest.csv`` (``path,mask,label,organ,region,source,group,probe,pixel_spacing_mm``,
paths relative to OUT), plus ``OUT/README.txt``. The generic CSV adapter reads it like any
user's collection.

Determinism: the plan (which source, patient and label every index gets) is drawn from the seed
alone, each patient's parameters from ``(seed, patient)`` and each image from ``(seed, index)``
(``numpy.random.SeedSequence`` spawn keys), PNGs are encoded with one fixed filter and zlib level
(:func:`png_bytes`) and BLAS runs
single-threaded, so files are byte-identical across runs and worker counts. The plan is a
prefix-stable sequence: a corpus of ``n`` images starts with the images of any smaller one
(except, possibly, the last patient of the smaller one, which the larger one completes).

Crash safety: the manifest is written last, to a temporary name then renamed, so a folder
without ``manifest.csv`` is an unfinished corpus (and a re-run first deletes the old manifest).
"""

from __future__ import annotations

import contextlib
import csv
import multiprocessing as mp
import shutil
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from sonofm.atomic_io import atomic_file

from .render import render_sample
from .sources import LABELS, SOURCES, SYNTHETIC_SOURCES

MANIFEST_COLUMNS = ("path", "mask", "label", "organ", "region", "source", "group", "probe", "pixel_spacing_mm")
_MARKER = "sonofm synthetic B-mode corpus"
_CHUNK = 16


def plan(n: int, seed: int) -> list[tuple[int, str, int]]:
    """``(index, source, patient)`` of every image: 2-6 consecutive images per synthetic patient."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2,)))
    names = sorted(SOURCES)
    out: list[tuple[int, str, int]] = []
    patient = 0
    while len(out) < n:
        source = names[int(rng.integers(len(names)))]
        k = int(rng.integers(2, 7))
        start = len(out)
        out.extend((start + j, source, patient) for j in range(min(k, n - start)))
        patient += 1
    return out


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_bytes(array: np.ndarray) -> bytes:
    """8-bit greyscale PNG: "Sub" row filter, zlib level 1.

    Written by hand because it is fixed (byte-identical output for identical pixels, whatever
    the imaging library's version or heuristics) and about twice as fast as PIL's adaptive
    filtering, which matters at ~100 images/s.
    """
    a = np.ascontiguousarray(array, dtype=np.uint8)
    if a.ndim != 2:
        raise ValueError(f"png_bytes expects a 2-D uint8 array, got shape {a.shape}")
    h, w = a.shape
    raw = np.empty((h, w + 1), dtype=np.uint8)
    raw[:, 0] = 1  # filter type Sub: each byte minus its left neighbour (mod 256)
    raw[:, 1] = a[:, 0]
    np.subtract(a[:, 1:], a[:, :-1], out=raw[:, 2:])
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw.tobytes(), 1)) + _chunk(b"IEND", b"")


def _write_png(path: Path, array: np.ndarray) -> None:
    # Not renamed into place: the manifest, written last and atomically, is what marks a corpus
    # complete, and a rename per file costs more than the encoding on some file systems.
    path.write_bytes(png_bytes(array))


def _single_threaded_blas():
    """One BLAS thread while rendering: the texture matrix products then give the same bits in
    every process (and threads would only fight over the cores the worker pool already uses)."""
    try:
        from threadpoolctl import threadpool_limits  # installed with scikit-learn
    except ImportError:  # pragma: no cover - scikit-learn is a dependency
        return contextlib.nullcontext()
    return threadpool_limits(limits=1)


def _render_chunk(args: tuple[str, list[tuple[int, str, int]], int, int]) -> list[dict[str, str]]:
    """Render and write a chunk of images; returns their manifest rows (in index order)."""
    out_dir, items, seed, size = args
    root = Path(out_dir)
    rows = []
    with _single_threaded_blas():
        for index, source, patient in items:
            s = render_sample(source, seed, patient, index, size)
            name = f"{index:07d}.png"
            img_rel, mask_rel = f"images/{source}/{name}", f"masks/{source}/{name}"
            _write_png(root / img_rel, s.image)
            _write_png(root / mask_rel, s.mask)
            meta = SYNTHETIC_SOURCES[source]
            rows.append({
                "path": img_rel, "mask": mask_rel, "label": s.label, "organ": meta["organ"],
                "region": meta["region"], "source": source, "group": f"{source}_p{patient:06d}",
                "probe": meta["probe"], "pixel_spacing_mm": f"{s.pixel_spacing_mm:.6f}",
            })
    return rows


def _prepare(out: Path) -> None:
    """Make ``out`` ready: new, empty, or a previous synthetic corpus (whose files are removed)."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        readme = out / "README.txt"
        ours = readme.is_file() and readme.read_text(errors="replace").startswith(_MARKER)
        if not ours:
            raise FileExistsError(
                f"{out}: directory is not empty and is not a sonofm synthetic corpus (no {readme.name} "
                f"starting with '{_MARKER}'); choose an empty or new folder"
            )
        (out / "manifest.csv").unlink(missing_ok=True)  # first: the old corpus is no longer complete
        for sub in ("images", "masks"):
            shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def _readme(n: int, seed: int, size: int) -> str:
    lines = [
        f"{_MARKER}",
        "",
        f"{n} images of {size}x{size} px, seed {seed}, written by `sonofm demo-data`.",
        "Simulated, not real: fully developed speckle (complex Gaussian scatterers, Gaussian PSF on the",
        "beam grid, envelope detection), attenuation integrated along the beams with partial TGC, log",
        "compression, convex or linear fields with burnt-in text outside the field.",
        "",
        "Layout: images/<source>/<id>.png (8-bit grey), masks/<source>/<id>.png (255 = lesion, 0 elsewhere;",
        "empty for normal images), manifest.csv with columns " + ",".join(MANIFEST_COLUMNS) + ".",
        "Paths are relative to this folder; pixel_spacing_mm is isotropic; group is the synthetic patient",
        "(2-6 images sharing anatomy and the same lesion): split by group.",
        "manifest.csv is written last: a folder without it is an unfinished corpus.",
        "",
        "Labels: " + ", ".join(LABELS) + ".",
        "  normal: no lesion; cyst: anechoic, smooth, posterior enhancement;",
        "  benign: solid, smooth/lobulated ellipse (hypoechoic; hyperechoic in the liver);",
        "  malignant: solid, hypoechoic, spiculated, posterior shadowing.",
        "",
        "Sources (organ, region, probe):",
    ]
    for name, meta in SYNTHETIC_SOURCES.items():
        lines.append(f"  {name}: {meta['organ']}, {meta['region']}, {meta['probe']}")
    return "\n".join(lines) + "\n"


def _chunks(items: list[tuple[int, str, int]]) -> Iterator[list[tuple[int, str, int]]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


def generate_corpus(
    out_dir: str | Path, n: int, seed: int = 0, size: int = 256, workers: int = 1, progress: bool = True
) -> Path:
    """Write ``n`` synthetic B-mode images with masks and a manifest into ``out_dir``; returns the manifest.

    Byte-identical output for the same ``(n, seed, size)`` whatever ``workers`` is.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if size < 64:
        raise ValueError(f"size must be at least 64 pixels, got {size}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    out = Path(out_dir)
    _prepare(out)
    items = plan(n, seed)
    for source in sorted({s for _, s, _ in items}):
        (out / "images" / source).mkdir(parents=True, exist_ok=True)
        (out / "masks" / source).mkdir(parents=True, exist_ok=True)
    (out / "README.txt").write_text(_readme(n, seed, size))
    tasks = [(str(out), chunk, seed, size) for chunk in _chunks(items)]

    from tqdm import tqdm

    rows: list[dict[str, str]] = []
    with tqdm(total=n, desc="synthetic images", unit="img", disable=not progress) as bar:
        if workers == 1:
            for t in tasks:
                rows.extend(_render_chunk(t))
                bar.update(len(t[1]))
        else:
            ctx = mp.get_context("spawn")  # fresh interpreters: no inherited threads or BLAS state
            with ctx.Pool(processes=workers) as pool:
                for part in pool.imap(_render_chunk, tasks):
                    rows.extend(part)
                    bar.update(len(part))

    manifest = out / "manifest.csv"
    with atomic_file(manifest) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return manifest
