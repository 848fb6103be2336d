"""The FM_UIA 2026 challenge's data root: the one module that reads and writes its layout.

A root (the challenge's ``train/`` or ``val/`` folder) holds ``csv_files/*.csv``, read and
concatenated, and the image folders (``Classification/``, ``Detection/``, ``Regression/``,
``Segmentation/{Two,Three,...}/<dataset>/``) that the CSVs point to with paths relative to
``csv_files/`` (they start with ``../``). Every row has ``image_path``, ``task_id``, ``task_name``
and ``num_classes``; ``task_name`` says the kind:

============== ============== ==================================================================
task_name      kind           label columns
============== ============== ==================================================================
segmentation   segmentation   ``mask_path``: PNG of class ids 0..C-1 (``num_classes`` counts
                              background)
classification classification ``mask``: the integer class
detection      detection      ``x_min, y_min, x_max, y_max`` in original pixels (one box)
Regression     keypoints      ``point_1_xy .. point_K_xy``: JSON ``[x, y]``; ``num_classes`` is K
============== ============== ==================================================================

Rows without labels are allowed (the challenge's validation and test CSVs carry none). A row that
cannot be used (a missing file, a box that is not four ordered numbers, a point that is not JSON,
an unknown ``task_name``, ...) becomes a :class:`Problem` with a counter from :data:`PROBLEMS`,
never an exception: the adapter counts and names it in the build report and builds the rest.
What needs the decoded image (mask size and values, a box or point outside the image) is
checked by :func:`check_targets` when the image is read. :class:`RootWriter` writes a root in the
same layout (tests and benchmarks make theirs with it).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

CSV_DIR = "csv_files"
REQUIRED_COLUMNS = ("image_path", "task_id", "task_name", "num_classes")
LABEL_COLUMN = "mask"
MASK_COLUMN = "mask_path"
BOX_COLUMNS = ("x_min", "y_min", "x_max", "y_max")
_POINT_COLUMN = re.compile(r"^point_(\d+)_xy$")
_NUMBER_WORDS = ("Zero", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine", "Ten")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")

#: Counter of each kind of bad row -> how the build report names it.
PROBLEMS: dict[str, str] = {
    "row_missing_value": "rows missing image_path, task_id, task_name or num_classes",
    "row_unknown_task_name": "rows with an unknown task_name",
    "row_bad_num_classes": "rows whose num_classes is not a usable integer",
    "row_task_inconsistent": "rows whose task_name or num_classes differ from their task's",
    "row_path_outside_root": "rows with a path leaving the data root",
    "row_missing_file": "rows whose image or mask file is missing",
    "row_bad_label": "rows whose class (column mask) is not an integer in 0..C-1",
    "row_bad_box": "rows whose box is not four ordered numbers",
    "row_point_not_json": "rows with a point that is not JSON",
    "row_bad_point": "rows whose points are not K pairs [x, y] of numbers",
    "row_mask_wrong_size": "rows whose mask size differs from the image's",
    "row_mask_bad_values": "rows whose mask holds values >= num_classes",
    "row_box_outside_image": "rows whose box leaves the image",
    "row_point_outside_image": "rows with a point outside the image",
}


@dataclass(frozen=True)
class Task:
    """One subtask of a root: its id, kind and class count, read from its rows."""

    task_id: str
    kind: str
    num_classes: int

    @property
    def task_name(self) -> str:
        return LAYOUTS[self.kind].task_name

    def classes(self) -> list[str] | None:
        """Class names as records carry them (``"0"``, ``"1"``, ...) for classification, else ``None``."""
        return [str(i) for i in range(self.num_classes)] if LAYOUTS[self.kind].named_classes else None

    def to_index(self) -> dict[str, Any]:
        """``index["task"]`` of the source built from this task: what later stages read the kind from."""
        out: dict[str, Any] = {"kind": self.kind, "num_classes": self.num_classes, "task_id": self.task_id,
                               "task_name": self.task_name}
        classes = self.classes()
        if classes is not None:
            out["classes"] = classes
        return out


@dataclass(frozen=True)
class Row:
    """One usable CSV row: paths exactly as written and resolved against the root, typed labels.

    ``image`` and ``mask`` are POSIX paths relative to the root; ``label``, ``box`` and ``points``
    are ``None`` on an unlabelled row; ``extras`` are the other non-empty columns.
    """

    where: str
    task_id: str
    kind: str
    num_classes: int
    image_path: str
    image: str
    mask_path: str | None = None
    mask: str | None = None
    label: int | None = None
    box: tuple[float, float, float, float] | None = None
    points: tuple[tuple[float, float], ...] | None = None
    extras: Mapping[str, str] = field(default_factory=dict)

    @property
    def labelled(self) -> bool:
        return any(v is not None for v in (self.mask, self.label, self.box, self.points))


@dataclass(frozen=True)
class Problem:
    """A row left out: its counter (a key of :data:`PROBLEMS`), where it is, its task, and why."""

    counter: str
    where: str
    task_id: str | None
    reason: str


@dataclass
class RootTable:
    """Every row of a root's CSVs, read: the usable ones, the problems, and the tasks."""

    root: Path
    rows: list[Row]
    problems: list[Problem]
    tasks: dict[str, Task]
    n_rows: int
    #: tasks whose masks are absent altogether (a validation root): their rows are unlabelled
    unlabelled_tasks: tuple[str, ...] = ()

    def problem_counts(self) -> dict[str, int]:
        return dict(Counter(p.counter for p in self.problems))


class _Bad(Exception):
    """A row problem found while parsing (internal: becomes a :class:`Problem`)."""

    def __init__(self, counter: str, reason: str):
        super().__init__(reason)
        self.counter, self.reason = counter, reason


# ------------------------------------------------------------------------------------------ reading


def csv_files(root: str | os.PathLike) -> list[Path]:
    """The root's ``csv_files/*.csv``, sorted; an error naming the folder when there is none."""
    folder = Path(root) / CSV_DIR
    files = sorted(p for p in folder.glob("*.csv") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise FileNotFoundError(f"{folder}: no CSV files (an FM_UIA root holds csv_files/*.csv)")
    return files


def read_csv_rows(root: str | os.PathLike) -> list[tuple[str, dict[str, str]]]:
    """``(where, cells)`` of every row of every CSV, in file then row order (cells stripped)."""
    out: list[tuple[str, dict[str, str]]] = []
    for path in csv_files(root):
        name = f"{CSV_DIR}/{path.name}"
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                for cells in reader:
                    where = f"{name}, row {reader.line_num}"
                    clean = {str(k).strip(): (v or "").strip() if isinstance(v, str) else ""
                             for k, v in cells.items() if k is not None}
                    if any(clean.values()):
                        out.append((where, clean))
        except (csv.Error, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: cannot parse CSV ({e})") from e
    return out


def resolve(root: Path, value: str) -> str:
    """A CSV path (relative to ``csv_files/``) as a POSIX path relative to ``root``; :class:`_Bad`
    when it leaves the root (a manifest is a description of its root, never of other folders)."""
    base = os.path.abspath(root)
    full = os.path.normpath(os.path.join(base, CSV_DIR, value))
    if os.path.commonpath([base, full]) != base:
        raise _Bad("row_path_outside_root", f"path {value!r} leaves the data root {root}")
    return Path(os.path.relpath(full, base)).as_posix()


def _int(text: str, what: str, counter: str) -> int:
    try:
        v = float(text)
    except ValueError:
        raise _Bad(counter, f"{what} {text!r} is not an integer") from None
    if not math.isfinite(v) or v != int(v):
        raise _Bad(counter, f"{what} {text!r} is not an integer")
    return int(v)


def _box(cells: Mapping[str, str]) -> tuple[float, float, float, float] | None:
    values = [cells.get(c, "") for c in BOX_COLUMNS]
    if not any(values):
        return None
    if not all(values):
        missing = [c for c, v in zip(BOX_COLUMNS, values) if not v]
        raise _Bad("row_bad_box", f"box column(s) {', '.join(missing)} empty")
    try:
        x0, y0, x1, y1 = (float(v) for v in values)
    except ValueError:
        raise _Bad("row_bad_box", f"box {values} is not four numbers") from None
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise _Bad("row_bad_box", f"box {values} is not finite")
    if x1 <= x0 or y1 <= y0:
        raise _Bad("row_bad_box", f"box {values}: x_max must exceed x_min and y_max y_min")
    return x0, y0, x1, y1


def point_columns(columns: Iterable[str]) -> list[str]:
    """``point_K_xy`` columns in the order of K."""
    found = [(int(m.group(1)), c) for c in columns if (m := _POINT_COLUMN.match(c))]
    return [c for _, c in sorted(found)]


def _points(cells: Mapping[str, str], k: int) -> tuple[tuple[float, float], ...] | None:
    cols = point_columns(cells)
    values = [(c, cells[c]) for c in cols if cells.get(c)]
    if not values:
        return None
    pts: list[tuple[float, float]] = []
    for c, text in values:
        try:
            v = json.loads(text)
        except json.JSONDecodeError:
            raise _Bad("row_point_not_json", f"{c} {text!r} is not JSON (expected [x, y])") from None
        if (not isinstance(v, list) or len(v) != 2
                or not all(isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t)
                           for t in v)):
            raise _Bad("row_bad_point", f"{c} {text!r} is not [x, y] with two finite numbers")
        pts.append((float(v[0]), float(v[1])))
    if len(pts) != k:
        raise _Bad("row_bad_point", f"{len(pts)} points given ({', '.join(c for c, _ in values)}) but "
                                    f"num_classes says {k}")
    return tuple(pts)


@dataclass(frozen=True)
class KindLayout:
    """How the challenge lays out one kind of subtask: its ``task_name``, its image folder, the
    smallest usable ``num_classes``, and its label columns read into :class:`Row` fields and written
    back. The one place that knows a kind's columns: reading, writing and folders all ask it."""

    kind: str
    task_name: str
    folder: str
    min_classes: int
    #: ``(cells, num_classes) -> Row fields`` (``label`` / ``box`` / ``points``), :class:`_Bad` when unusable
    read_labels: Callable[[Mapping[str, str], int], dict[str, Any]]
    #: ``(num_classes, mask_path=, label=, box=, points=) -> cells`` (``None`` leaves a cell empty)
    label_cells: Callable[..., dict[str, str]]
    #: the label is a mask PNG named by ``mask_path`` (folders ``<Word>/<dataset>/{images,masks}``)
    masks: bool = False
    #: records carry class names ``"0"``..``"C-1"``
    named_classes: bool = False


def _read_class(cells: Mapping[str, str], n: int) -> dict[str, Any]:
    if not cells.get(LABEL_COLUMN):
        return {}
    label = _int(cells[LABEL_COLUMN], "class (column mask)", "row_bad_label")
    if not 0 <= label < n:
        raise _Bad("row_bad_label", f"class {label} outside 0..{n - 1} (num_classes {n})")
    return {"label": label}


def _mask_cells(n: int, *, mask_path: str | None = None, **_: Any) -> dict[str, str]:
    return {MASK_COLUMN: mask_path or ""}


def _class_cells(n: int, *, label: int | None = None, **_: Any) -> dict[str, str]:
    return {LABEL_COLUMN: "" if label is None else str(int(label))}


def _box_cells(n: int, *, box: Sequence[float] | None = None, **_: Any) -> dict[str, str]:
    return {c: "" if v is None else _num(v) for c, v in zip(BOX_COLUMNS, box if box is not None else [None] * 4)}


def _point_cells(n: int, *, points: Sequence[Sequence[float]] | None = None, **_: Any) -> dict[str, str]:
    return {f"point_{i + 1}_xy": "" if points is None else json.dumps([float(points[i][0]), float(points[i][1])])
            for i in range(n)}


#: kind -> its layout; mask PNGs count background, so segmentation and classification need 2 classes.
LAYOUTS: dict[str, KindLayout] = {layout.kind: layout for layout in (
    KindLayout("segmentation", "segmentation", "Segmentation", 2, lambda cells, n: {}, _mask_cells, masks=True),
    KindLayout("classification", "classification", "Classification", 2, _read_class, _class_cells,
               named_classes=True),
    KindLayout("detection", "detection", "Detection", 1, lambda cells, n: {"box": _box(cells)}, _box_cells),
    KindLayout("keypoints", "Regression", "Regression", 1, lambda cells, n: {"points": _points(cells, n)},
               _point_cells),
)}
#: ``task_name`` as the challenge writes it -> its layout.
TASK_KINDS: dict[str, KindLayout] = {layout.task_name: layout for layout in LAYOUTS.values()}


def parse_row(root: Path, where: str, cells: Mapping[str, str], check_files: bool = True,
              labels: bool = True) -> Row:
    """One CSV row as a :class:`Row`; :class:`_Bad` (counter and reason) for anything unusable.

    ``check_files``: a missing image is a problem here (whether a missing mask is one, or means an
    unlabelled task, :func:`read_root` decides). ``labels=False`` reads no label column (the row is
    unlabelled; ``mask_path`` is kept): predicting needs every image, whatever its labels hold.
    """
    missing = [c for c in REQUIRED_COLUMNS if not cells.get(c)]
    if missing:
        raise _Bad("row_missing_value", f"empty or absent column(s) {', '.join(missing)}")
    task_name = cells["task_name"]
    layout = TASK_KINDS.get(task_name)
    if layout is None:
        raise _Bad("row_unknown_task_name",
                   f"task_name {task_name!r} is not one of {', '.join(TASK_KINDS)} (case matters)")
    n = _int(cells["num_classes"], "num_classes", "row_bad_num_classes")
    if not layout.min_classes <= n <= 255:
        raise _Bad("row_bad_num_classes", f"num_classes {n} for {task_name} must be in {layout.min_classes}..255")
    image = resolve(root, cells["image_path"])
    if check_files and not (root / image).is_file():
        raise _Bad("row_missing_file", f"image {cells['image_path']} not found ({root / image})")
    mask_path = cells.get(MASK_COLUMN) or None if layout.masks else None
    mask = resolve(root, mask_path) if mask_path and labels else None
    targets = layout.read_labels(cells, n) if labels else {}
    known = {*REQUIRED_COLUMNS, MASK_COLUMN, LABEL_COLUMN, *BOX_COLUMNS}
    extras = {k: v for k, v in cells.items() if v and k not in known and not _POINT_COLUMN.match(k)}
    return Row(where=where, task_id=cells["task_id"], kind=layout.kind, num_classes=n,
               image_path=cells["image_path"], image=image, mask_path=mask_path, mask=mask, extras=extras, **targets)


def read_root(root: str | os.PathLike, labels: bool = True) -> RootTable:
    """Read and check every row of ``root/csv_files/*.csv`` (no image is decoded).

    A task's kind and class count are those of most of its rows; rows that disagree are
    ``row_task_inconsistent``. A task whose named masks are all absent is unlabelled (a validation
    root names the masks to predict); a task with some masks present reports the missing ones as
    ``row_missing_file``. ``labels=False``: every row unlabelled, no label column read (for prediction).
    """
    root = Path(root)
    rows: list[Row] = []
    problems: list[Problem] = []
    raw = read_csv_rows(root)
    for where, cells in raw:
        try:
            rows.append(parse_row(root, where, cells, labels=labels))
        except _Bad as e:
            problems.append(Problem(e.counter, where, cells.get("task_id") or None, e.reason))
    votes: dict[str, Counter] = {}
    for r in rows:
        votes.setdefault(r.task_id, Counter())[(r.kind, r.num_classes)] += 1
    tasks = {tid: Task(tid, *c.most_common(1)[0][0]) for tid, c in votes.items()}
    kept: list[Row] = []
    for r in rows:
        t = tasks[r.task_id]
        if (r.kind, r.num_classes) != (t.kind, t.num_classes):
            problems.append(Problem("row_task_inconsistent", r.where, r.task_id,
                                    f"{LAYOUTS[r.kind].task_name} with num_classes {r.num_classes}, but task "
                                    f"{r.task_id!r} is {t.task_name} with num_classes {t.num_classes} "
                                    "in most of its rows"))
        else:
            kept.append(r)
    named: dict[str, int] = Counter(r.task_id for r in kept if r.mask is not None)
    present: dict[str, int] = Counter(r.task_id for r in kept if r.mask is not None and (root / r.mask).is_file())
    unlabelled = sorted(tid for tid in named if not present[tid])
    final: list[Row] = []
    for r in kept:
        if r.mask is not None and not (root / r.mask).is_file():
            if not present[r.task_id]:  # no mask of the task exists: predict them, do not train on them
                r = replace(r, mask=None)
            else:
                problems.append(Problem("row_missing_file", r.where, r.task_id,
                                        f"mask {r.mask_path} not found ({root / r.mask})"))
                continue
        final.append(r)
    by_task = {r.task_id for r in kept}
    tasks = {tid: t for tid, t in tasks.items() if tid in by_task}
    return RootTable(root, final, problems, tasks, len(raw), tuple(sorted(unlabelled)))


def source_name(task_id: str, prefix: str = "fmuia") -> str:
    """The shard source built from a task: ``{prefix}-{task_id}`` with only ``[A-Za-z0-9_-]``."""
    safe = _UNSAFE.sub("_", task_id).strip("_")
    if not safe:
        safe = "task"
    return f"{prefix}-{safe}" if prefix else safe


# -------------------------------------------------------------------------------- image checks


def check_targets(row_kind: str, num_classes: int, image_hw: tuple[int, int], mask: np.ndarray | None = None,
                  box: Sequence[float] | None = None, points: Sequence[Sequence[float]] | None = None,
                  ) -> tuple[str, str] | None:
    """``(counter, reason)`` when a row's targets do not fit its decoded image, else ``None``.

    Coordinates are continuous pixels (``[0, W] x [0, H]``): a box or point on the far edge is inside.
    """
    h, w = image_hw
    if mask is not None:
        if mask.shape[:2] != (h, w):
            return "row_mask_wrong_size", f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is {w}x{h}"
        hi = int(mask.max()) if mask.size else 0
        if hi >= num_classes:
            return ("row_mask_bad_values", f"mask holds class id {hi} but num_classes is {num_classes} "
                                           f"(values {sorted(int(v) for v in np.unique(mask))[:8]})")
    if box is not None:
        x0, y0, x1, y1 = box
        if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
            return "row_box_outside_image", f"box {list(box)} leaves the {w}x{h} image"
    for i, (x, y) in enumerate(points or ()):
        if not (0 <= x <= w and 0 <= y <= h):
            return "row_point_outside_image", f"point_{i + 1}_xy [{x}, {y}] is outside the {w}x{h} image"
    return None


# ------------------------------------------------------------------------------------------ writing


def number_word(n: int) -> str:
    """``2`` -> ``"Two"``: the challenge names segmentation folders by their class count."""
    return _NUMBER_WORDS[n] if 0 <= n < len(_NUMBER_WORDS) else f"C{n}"


def row_cells(task_id: str, kind: str, num_classes: int, image_path: str, *, mask_path: str | None = None,
              label: int | None = None, box: Sequence[float] | None = None,
              points: Sequence[Sequence[float]] | None = None) -> dict[str, str]:
    """One CSV row in the challenge's columns (``None`` labels leave their cells empty)."""
    layout = LAYOUTS[kind]
    cells = {"image_path": image_path, "task_id": task_id, "task_name": layout.task_name,
             "num_classes": str(num_classes)}
    cells.update(layout.label_cells(num_classes, mask_path=mask_path, label=label, box=box, points=points))
    return cells


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, str]]) -> Path:
    """Rows (dicts) as a CSV with the union of their columns, in first-seen order."""
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in cols})
    return p


def as_rgb(image: np.ndarray) -> np.ndarray:
    """A uint8 image as (H, W, 3): the challenge's images are 3-channel files."""
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {a.dtype}")
    if a.ndim == 2:
        return np.repeat(a[..., None], 3, axis=2)
    if a.ndim == 3 and a.shape[2] == 3:
        return a
    raise ValueError(f"images must be (H, W) or (H, W, 3), got {a.shape}")


class RootWriter:
    """Writes a data root in the challenge's layout: images (3-channel) and masks as they are
    added, and one ``csv_files/<task_id>.csv`` per task on :meth:`close` (rows in added order).

    ``labelled=False`` writes the CSVs without labels (and no masks), as the challenge's
    validation CSVs come; the mask paths are still named, since predictions are written there.
    """

    def __init__(self, root: str | os.PathLike, labelled: bool = True):
        self.root = Path(root)
        self.labelled = labelled
        self.rows: dict[str, list[dict[str, str]]] = {}
        (self.root / CSV_DIR).mkdir(parents=True, exist_ok=True)

    def folder(self, kind: str, num_classes: int, dataset: str) -> str:
        """The image folder of a task's dataset, relative to the root."""
        layout = LAYOUTS[kind]
        if layout.masks:  # the challenge's Segmentation/<Two|Three|...>/<dataset>
            return f"{layout.folder}/{number_word(num_classes)}/{dataset}"
        return f"{layout.folder}/{dataset}"

    def add(self, task_id: str, kind: str, num_classes: int, dataset: str, name: str, image: np.ndarray, *,
            mask: np.ndarray | None = None, label: int | None = None, box: Sequence[float] | None = None,
            points: Sequence[Sequence[float]] | None = None, image_format: str = "png") -> dict[str, str]:
        """Write one image (and its mask) under the task's folder and queue its CSV row."""
        layout = LAYOUTS.get(kind)
        if layout is None:
            raise ValueError(f"unknown kind {kind!r}; known: {', '.join(LAYOUTS)}")
        base = self.folder(kind, num_classes, dataset)
        img_rel = f"{base}/images/{name}.{image_format}" if layout.masks else f"{base}/{name}.{image_format}"
        self._save(as_rgb(image), img_rel)
        mask_rel = None
        if layout.masks:
            mask_rel = f"{base}/masks/{name}.png"
            if self.labelled:
                if mask is None:
                    raise ValueError(f"{task_id}/{name}: a labelled segmentation row needs its mask")
                self._save(np.asarray(mask, dtype=np.uint8), mask_rel)
        keep = self.labelled
        cells = row_cells(task_id, kind, num_classes, f"../{img_rel}",
                          mask_path=f"../{mask_rel}" if mask_rel else None,
                          label=label if keep else None, box=box if keep else None,
                          points=points if keep else None)
        self.rows.setdefault(task_id, []).append(cells)
        return cells

    def _save(self, array: np.ndarray, rel: str) -> None:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(p)

    def close(self) -> list[Path]:
        """Write the CSVs; returns their paths."""
        return [write_csv(self.root / CSV_DIR / f"{source_name(tid, '')}.csv", rows)
                for tid, rows in sorted(self.rows.items())]


__all__ = [
    "BOX_COLUMNS",
    "CSV_DIR",
    "LABEL_COLUMN",
    "LAYOUTS",
    "MASK_COLUMN",
    "PROBLEMS",
    "REQUIRED_COLUMNS",
    "TASK_KINDS",
    "KindLayout",
    "Problem",
    "RootTable",
    "RootWriter",
    "Row",
    "Task",
    "as_rgb",
    "check_targets",
    "csv_files",
    "number_word",
    "parse_row",
    "point_columns",
    "read_csv_rows",
    "read_root",
    "resolve",
    "row_cells",
    "source_name",
    "write_csv",
]
