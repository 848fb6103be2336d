"""The FM_UIA 2026 prediction folder: the one module that knows its file names and entry shapes.

A prediction folder (what ``sonofm predict`` writes and the challenge scores) holds:

- ``classification_predictions.json``: a list of ``{image_path, task_id, predicted_class, predicted_probs}``;
- ``detection_predictions.json``: ``{image_path, task_id, bbox_pixels: [x_min, y_min, x_max, y_max],
  bbox_normalized}``;
- ``regression_predictions.json``: ``{image_path, task_id, predicted_points_pixels: [x1, y1, x2, y2, ...],
  predicted_points_normalized}``;
- for segmentation, a grayscale PNG of class indices at the original image size at
  ``<out>/<mask_path without its leading ../>``.

``image_path`` is copied exactly as the CSV has it (the scorer matches on it). Normalised coordinates
are ``x / width`` and ``y / height`` of the original image, as in the challenge's baseline.

:class:`PredictionWriter` streams: each JSON entry is appended as one line to a hidden temporary file
as it comes, so memory does not grow with the number of images; :meth:`PredictionWriter.close`
turns each temporary file into the final JSON list (line by line, atomically). A crash leaves no
half-written prediction file under its final name. :func:`read_predictions` loads a folder back,
checking every entry's shape and naming the file and entry of the first problems it finds.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np
from PIL import Image

from sonofm.atomic_io import atomic_file, temp_file
from sonofm.errors import UserError

CLASSIFICATION_FILE = "classification_predictions.json"
DETECTION_FILE = "detection_predictions.json"
REGRESSION_FILE = "regression_predictions.json"
#: The kinds with a JSON file (sonofm's kind names; the challenge calls keypoints "Regression") and
#: their file, in the order they are written.
JSON_FILES: dict[str, str] = {
    "classification": CLASSIFICATION_FILE,
    "detection": DETECTION_FILE,
    "keypoints": REGRESSION_FILE,
}
#: The keys every entry of a kind's file must have (beyond ``image_path`` and ``task_id``).
ENTRY_KEYS: dict[str, tuple[str, ...]] = {
    "classification": ("predicted_class", "predicted_probs"),
    "detection": ("bbox_pixels", "bbox_normalized"),
    "keypoints": ("predicted_points_pixels", "predicted_points_normalized"),
}


class PredictionFormatError(UserError, ValueError):
    """A prediction that cannot be written or read in the challenge's format (names the file and entry)."""


def segmentation_relpath(mask_path: str) -> PurePosixPath:
    """Where the predicted mask for the CSV's ``mask_path`` goes, relative to the output folder.

    The CSVs give paths relative to ``csv_files/`` starting with ``../``; the challenge stores the
    prediction at the same path under the output folder without that prefix. A path that would
    still leave the folder (absolute, or another ``..``) is refused rather than written elsewhere."""
    text = str(mask_path).replace("\\", "/")
    rel = text[3:] if text.startswith("../") else text
    parts = PurePosixPath(rel).parts
    if not rel or text.startswith("/") or ".." in parts or (parts and parts[0].endswith(":")):
        raise PredictionFormatError(
            f"mask_path {mask_path!r}: expected a path relative to csv_files/ such as "
            "'../Segmentation/Two/<dataset>/mask.png' that stays inside the output folder")
    return PurePosixPath(*[p for p in parts if p != "."])


def segmentation_path(out_dir: str | os.PathLike, mask_path: str) -> Path:
    """The predicted mask's path for the CSV's ``mask_path`` under ``out_dir``."""
    return Path(out_dir, *segmentation_relpath(mask_path).parts)


def _floats(values: Any, what: str, n: int | None = None) -> list[float]:
    """``values`` as a flat list of finite Python floats (``n`` of them when given)."""
    a = np.asarray(values, dtype=np.float64).reshape(-1)
    if n is not None and a.size != n:
        raise PredictionFormatError(f"{what}: expected {n} numbers, got {a.size}")
    if not np.isfinite(a).all():
        raise PredictionFormatError(f"{what}: not all finite: {a.tolist()}")
    return [float(v) for v in a]


def _image_hw(image_hw: Sequence[int], what: str) -> tuple[int, int]:
    if len(image_hw) != 2 or any(int(v) != v or v < 1 for v in image_hw):
        raise PredictionFormatError(f"{what}: image_hw must be (height, width) in pixels, got {image_hw!r}")
    return int(image_hw[0]), int(image_hw[1])


def _normalised_xy(xy: list[float], hw: tuple[int, int]) -> list[float]:
    """Pixel ``[x, y, x, y, ...]`` -> ``[x / width, y / height, ...]``."""
    h, w = hw
    return [v / (w if i % 2 == 0 else h) for i, v in enumerate(xy)]


def _class_map(class_map: Any, what: str) -> np.ndarray:
    a = np.asarray(class_map)
    if a.ndim != 2 or a.size == 0:
        raise PredictionFormatError(f"{what}: a class map must be a non-empty (H, W) array, got shape {a.shape}")
    if a.dtype == bool:
        return a.astype(np.uint8)
    if not np.issubdtype(a.dtype, np.integer):
        if not np.issubdtype(a.dtype, np.floating) or not np.isfinite(a).all() or (a != np.round(a)).any():
            raise PredictionFormatError(f"{what}: class map values must be whole class indices, got {a.dtype}")
    lo, hi = a.min(), a.max()
    if lo < 0 or hi > 255:
        raise PredictionFormatError(f"{what}: class indices span {lo}..{hi}; a PNG class map holds 0..255")
    return a.astype(np.uint8)


@dataclass
class _Stream:
    """One kind's temporary JSON-lines file and how many entries it holds."""

    path: Path
    handle: IO[str]
    count: int = 0


@dataclass
class PredictionWriter:
    """Streams predictions into the challenge's folder layout under ``out_dir``.

    Entries are not kept in memory: each is appended to a hidden temporary file of its kind, and
    :meth:`close` writes the final JSON lists atomically. Use it as a context manager, or call
    :meth:`close` (or :meth:`abort` on failure, which leaves no JSON behind)."""

    out_dir: str | os.PathLike
    counts: Counter = field(default_factory=Counter, init=False)
    _streams: dict[str, _Stream] = field(default_factory=dict, init=False, repr=False)
    _mask_dirs: set[Path] = field(default_factory=set, init=False, repr=False)
    _closed: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> PredictionWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _append(self, kind: str, entry: dict[str, Any]) -> None:
        if self._closed:
            raise RuntimeError("PredictionWriter is closed")
        stream = self._streams.get(kind)
        if stream is None:
            path = Path(temp_file(self.out_dir, prefix=f".{JSON_FILES[kind]}.", suffix=".parts"))
            stream = self._streams[kind] = _Stream(path, open(path, "w", encoding="utf-8"))
        stream.handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
        stream.count += 1
        self.counts[kind] += 1

    @staticmethod
    def _ids(image_path: str, task_id: str) -> dict[str, str]:
        if not isinstance(image_path, str) or not image_path:
            raise PredictionFormatError(f"image_path must be the CSV's path string, got {image_path!r}")
        return {"image_path": image_path, "task_id": str(task_id)}

    def add_classification(self, image_path: str, task_id: str, probs: Sequence[float] | np.ndarray) -> None:
        """One image's class probabilities; ``predicted_class`` is their argmax (first on ties)."""
        p = _floats(probs, f"classification {image_path}: predicted_probs")
        if len(p) < 2:
            raise PredictionFormatError(f"classification {image_path}: need a probability per class, got {p}")
        entry = self._ids(image_path, task_id)
        entry.update(predicted_class=int(np.argmax(p)), predicted_probs=p)
        self._append("classification", entry)

    def add_detection(self, image_path: str, task_id: str, box_xyxy_pixels: Sequence[float] | np.ndarray,
                      image_hw: Sequence[int]) -> None:
        """One image's box ``[x_min, y_min, x_max, y_max]`` in original pixels, ``image_hw`` its original size."""
        what = f"detection {image_path}"
        box = _floats(box_xyxy_pixels, f"{what}: bbox_pixels", 4)
        hw = _image_hw(image_hw, what)
        entry = self._ids(image_path, task_id)
        entry.update(bbox_pixels=box, bbox_normalized=_normalised_xy(box, hw))
        self._append("detection", entry)

    def add_keypoints(self, image_path: str, task_id: str, points_xy_pixels: Sequence[Any] | np.ndarray,
                      image_hw: Sequence[int]) -> None:
        """One image's K points, ``(K, 2)`` or flat ``[x1, y1, ...]``, in original pixels."""
        what = f"keypoints {image_path}"
        xy = _floats(points_xy_pixels, f"{what}: predicted_points_pixels")
        if not xy or len(xy) % 2:
            raise PredictionFormatError(f"{what}: points must be (x, y) pairs, got {len(xy)} numbers")
        hw = _image_hw(image_hw, what)
        entry = self._ids(image_path, task_id)
        entry.update(predicted_points_pixels=xy, predicted_points_normalized=_normalised_xy(xy, hw))
        self._append("keypoints", entry)

    def add_segmentation(self, mask_path: str, class_map: np.ndarray) -> Path:
        """Write one ``(H, W)`` map of class indices (at the original size) as the PNG for ``mask_path``."""
        if self._closed:
            raise RuntimeError("PredictionWriter is closed")
        target = segmentation_path(self.out_dir, mask_path)
        if target.suffix.lower() != ".png":
            raise PredictionFormatError(f"mask_path {mask_path!r}: the challenge's masks are PNG files")
        a = _class_map(class_map, f"segmentation {mask_path}")
        with atomic_file(target, suffix=".png") as tmp:
            Image.fromarray(a).save(tmp, format="PNG")  # 2-D uint8: mode L
        self.counts["segmentation"] += 1
        self._mask_dirs.add(target.parent)
        return target

    def close(self) -> list[Path]:
        """Write the JSON files; returns them, then each folder that received segmentation PNGs.

        Folders rather than every PNG: a list of each mask would grow with the number of images."""
        if self._closed:
            return []
        written: list[Path] = []
        try:
            for kind, name in JSON_FILES.items():
                stream = self._streams.get(kind)
                if stream is None:
                    continue
                stream.handle.close()
                final = Path(self.out_dir, name)
                with atomic_file(final) as tmp, open(tmp, "w", encoding="utf-8") as out, \
                        open(stream.path, encoding="utf-8") as parts:
                    out.write("[")
                    for i, line in enumerate(parts):
                        out.write(("\n" if i == 0 else ",\n") + line.rstrip("\n"))
                    out.write("\n]\n")
                stream.path.unlink()
                written.append(final)
        finally:
            self._closed = True
            self._drop_streams()
        return written + sorted(self._mask_dirs)

    def abort(self) -> None:
        """Remove the temporary files without writing any JSON (PNGs already written stay)."""
        self._closed = True
        self._drop_streams()

    def _drop_streams(self) -> None:
        for stream in self._streams.values():
            stream.handle.close()
            stream.path.unlink(missing_ok=True)
        self._streams.clear()


# --- reading a prediction folder back ----------------------------------------------------------------------


@dataclass
class PredictionFolder:
    """A prediction folder read back: per JSON kind, ``{(task_id, image_path): entry}``.

    ``duplicates`` names entries whose ``(task_id, image_path)`` came twice (the first is kept);
    ``files`` says which JSON files existed. Segmentation PNGs are read on demand through
    :meth:`mask_path`."""

    root: Path
    entries: dict[str, dict[tuple[str, str], dict[str, Any]]]
    files: dict[str, bool]
    duplicates: list[str]

    def mask_path(self, csv_mask_path: str) -> Path:
        return segmentation_path(self.root, csv_mask_path)

    def mask_files(self) -> Iterator[PurePosixPath]:
        """Every PNG under the folder (relative, posix), hidden files and folders left out."""
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.lower().endswith(".png") and not name.startswith("."):
                    yield PurePosixPath(Path(dirpath, name).relative_to(self.root).as_posix())


def _check_entry(kind: str, entry: Any, where: str) -> str | None:
    """Why ``entry`` is not a valid ``kind`` entry, or None."""
    if not isinstance(entry, dict):
        return f"{where}: expected an object, got {type(entry).__name__}"
    missing = [k for k in ("image_path", "task_id", *ENTRY_KEYS[kind]) if k not in entry]
    if missing:
        return f"{where}: missing key(s) {missing}"
    if not isinstance(entry["image_path"], str):
        return f"{where}: image_path must be a string"

    def numbers(key: str) -> list[Any] | None:
        v = entry[key]
        ok = isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                         and math.isfinite(x) for x in v)
        return v if ok else None

    if kind == "classification":
        c = entry["predicted_class"]
        if not isinstance(c, int) or isinstance(c, bool):
            return f"{where}: predicted_class must be an integer, got {c!r}"
        probs = numbers("predicted_probs")
        if probs is None or len(probs) < 2:
            return f"{where}: predicted_probs must be a list of finite numbers, one per class"
    elif kind == "detection":
        for key in ENTRY_KEYS[kind]:
            box = numbers(key)
            if box is None or len(box) != 4:
                return f"{where}: {key} must be [x_min, y_min, x_max, y_max] (4 finite numbers)"
    else:
        for key in ENTRY_KEYS[kind]:
            pts = numbers(key)
            if pts is None or not pts or len(pts) % 2:
                return f"{where}: {key} must be a flat list [x1, y1, x2, y2, ...] of finite numbers"
    return None


def read_predictions(pred_dir: str | os.PathLike) -> PredictionFolder:
    """Load a prediction folder's JSON files (a missing file is an empty kind; the scorer then names
    every image it lacks). Malformed files or entries raise :class:`PredictionFormatError`."""
    root = Path(pred_dir)
    if not root.is_dir():
        raise FileNotFoundError(2, "prediction folder not found", str(root))
    entries: dict[str, dict[tuple[str, str], dict[str, Any]]] = {k: {} for k in JSON_FILES}
    files: dict[str, bool] = {}
    duplicates: list[str] = []
    problems: list[str] = []
    for kind, name in JSON_FILES.items():
        path = root / name
        files[kind] = path.is_file()
        if not files[kind]:
            continue
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PredictionFormatError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, list):
            raise PredictionFormatError(f"{path}: expected a JSON list of entries, got {type(data).__name__}")
        for i, entry in enumerate(data):
            why = _check_entry(kind, entry, f"{path} entry {i}")
            if why:
                problems.append(why)
                continue
            key = (str(entry["task_id"]), entry["image_path"])
            if key in entries[kind]:
                duplicates.append(f"{name}: task {key[0]} {key[1]}")
                continue
            entries[kind][key] = entry
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise PredictionFormatError(f"{len(problems)} malformed prediction(s): " + "; ".join(problems[:5]) + more)
    return PredictionFolder(root=root, entries=entries, files=files, duplicates=duplicates)


def read_class_map(path: str | os.PathLike) -> np.ndarray:
    """A predicted (or true) mask PNG as ``(H, W)`` ``uint8`` class indices."""
    from sonofm.datasets.sources.imageio import read_mask

    return read_mask(path)


__all__ = [
    "CLASSIFICATION_FILE",
    "DETECTION_FILE",
    "REGRESSION_FILE",
    "JSON_FILES",
    "PredictionFormatError",
    "PredictionWriter",
    "PredictionFolder",
    "read_predictions",
    "read_class_map",
    "segmentation_path",
    "segmentation_relpath",
]
