"""FM_UIA 2026 challenge roots (``fmuia:ROOT``): one source per ``task_id``, kind and classes from the CSVs.

``ROOT`` is a challenge ``train/`` or ``val/`` folder (``csv_files/*.csv`` plus the image folders;
the format is read by :mod:`sonofm.datasets.sources.fmuia`). Each task becomes its own source,
``{prefix}-{task_id}`` (prefix ``fmuia`` by default, ``?prefix=NAME`` to change it), so subtasks
build, split and stream apart, and each source's index records its task (``index["task"]``:
kind, ``num_classes``, ``task_id``, and the class names of a classification task): later stages
read the kind from there, nothing about the challenge's 27 subtasks is written in code.

Records carry the row's ``task_id``, ``image_path`` exactly as the CSV writes it (predictions copy
it), ``mask_path`` for segmentation (predicted masks are written there), the class as ``label``
(``"0"``, ``"1"``, ...), and boxes and points in the original image's pixels (``meta["boxes"]``,
``meta["points"]``; preprocessing maps them into the stored sample's pixels). Masks keep their
class ids. Images are read as they are stored (3-channel files become grayscale in preprocessing).

The challenge gives no patient identifiers: rows are split by image unless ``?group=COLUMN`` names
a column to group by, and each source's report says which (``split_by``). Bad rows (see
:data:`~sonofm.datasets.sources.fmuia.PROBLEMS`) are counted and named in the report of their
task's source; a row whose task has no usable row at all is reported with the first source.
Near-duplicate removal is off for these sources: every row is a labelled example of the benchmark.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from sonofm.datasets.sources.adapters.base import Adapter, Item
from sonofm.datasets.sources.fmuia import (
    CSV_DIR,
    LAYOUTS,
    RootTable,
    Task,
    check_targets,
    read_root,
    source_name,
)
from sonofm.datasets.sources.imageio import AdapterError, read_image, read_mask
from sonofm.datasets.sources.records import Record
from sonofm.errors import BadOptionError


@dataclass
class FmuiaItem(Item):
    """An :class:`Item` with what the row's checks need once the image is decoded."""

    kind: str = ""
    num_classes: int = 0
    where: str = ""


class FmuiaAdapter(Adapter):
    """``root``: a challenge data root (holding ``csv_files/``). Options: ``group`` (a CSV column
    whose value groups rows for the split; default: each image its own group), ``prefix`` (of the
    source names), ``labels`` (``false``: read no label column, every row an unlabelled image: what
    prediction needs, so that a row whose labels are bad still gets its prediction)."""

    name = "fmuia"
    options = {"group": None, "prefix": "fmuia", "labels": True}
    deduplicate = False

    def __init__(self, root, source: str | None = None, **options) -> None:
        if source is not None:
            raise BadOptionError(
                f"fmuia: source={source!r} given, but an FM_UIA root builds one source per task_id "
                "({prefix}-{task_id}); give prefix=NAME to change the names"
            )
        super().__init__(root, None, **options)
        if not isinstance(self.opts["labels"], bool):
            raise BadOptionError(f"fmuia: labels must be true or false, got {self.opts['labels']!r}")
        if not (self.root / CSV_DIR).is_dir():
            raise AdapterError(f"fmuia: {self.root} is not an FM_UIA data root: expected the folder "
                               f"{self.root / CSV_DIR} with the challenge's CSV files")
        self._table: RootTable | None = None

    # -- the root's table, read once per process ----------------------------------------------
    def table(self) -> RootTable:
        """Every row of the root's CSVs, checked (cached: the build lists each task's source in turn)."""
        if self._table is None:
            try:
                self._table = read_root(self.root, labels=bool(self.opts["labels"]))
            except (OSError, ValueError) as e:
                raise AdapterError(f"fmuia: {e}") from e
        return self._table

    def task_sources(self) -> dict[str, Task]:
        """Source name -> task, for every task with at least one usable row."""
        out: dict[str, Task] = {}
        for tid, task in sorted(self.table().tasks.items()):
            name = source_name(tid, str(self.opts["prefix"] or ""))
            if name in out:
                raise AdapterError(f"fmuia: task ids {out[name].task_id!r} and {tid!r} give the same source "
                                   f"name {name!r} (characters outside [A-Za-z0-9_-] become '_'); rename one")
            out[name] = task
        return out

    def task(self, source: str) -> Task:
        """The task a source was built from."""
        tasks = self.task_sources()
        if source not in tasks:
            raise KeyError(f"fmuia: no source {source!r} in {self.root}; sources: {', '.join(tasks)}")
        return tasks[source]

    def sources(self) -> list[str]:
        """One source per task; an error naming the problems when no row at all is usable."""
        names = sorted(self.task_sources())
        if not names:
            t = self.table()
            counts = ", ".join(f"{n} {k}" for k, n in sorted(t.problem_counts().items())) or "no rows"
            first = "; ".join(f"{p.where}: {p.reason}" for p in t.problems[:3])
            raise AdapterError(f"fmuia: {self.root}: none of the {t.n_rows} rows of {CSV_DIR}/*.csv is usable "
                               f"({counts}){'; first: ' + first if first else ''}")
        return names

    def describe_source(self, source: str) -> dict[str, Any]:
        task = self.task(source)
        rows = [r for r in self.table().rows if r.task_id == task.task_id]
        column = self.opts["group"]
        return {
            "task": {**task.to_index(), "rows": len(rows), "labelled_rows": sum(r.labelled for r in rows)},
            "split_by": (f"column {column!r} of the CSVs (rows sharing a value stay in one split)" if column else
                         "image: the challenge gives no patient ids, so each image is its own group "
                         "(give ?group=COLUMN to group rows by a CSV column)"),
            "dedup": "off: every row of a benchmark is a labelled example, near-duplicates are kept",
        }

    # -- listing -----------------------------------------------------------------------------
    def items(self) -> list[Item]:
        """The usable rows of the source being listed (all sources when none), in CSV order; its
        bad rows are counted and named (rows of a task with no usable row go with the first source)."""
        table = self.table()
        names = {task.task_id: name for name, task in self.task_sources().items()}
        first = min(names.values()) if names else None
        only = self.listing_source
        for p in table.problems:
            owner = names.get(p.task_id or "")
            if only is not None and only != (owner or first):
                continue
            reason = p.reason if owner else (
                f"{p.reason} (task {p.task_id!r} has no usable row)" if p.task_id else p.reason)
            self.skip(p.counter, p.where, reason)
        column = self.opts["group"]
        if column and not any(column in r.extras for r in table.rows):
            raise AdapterError(f"fmuia: group={column!r}: no row of {self.root / CSV_DIR} has a value in that "
                               "column; give a column of the CSVs or leave group out (split by image)")
        items: list[Item] = []
        for r in table.rows:
            source = names[r.task_id]
            if only is not None and source != only:
                continue
            if not r.labelled:
                self.count("rows_unlabelled")
            group = r.image
            if column:
                if r.extras.get(column):
                    group = f"{column}={r.extras[column]}"
                else:
                    self.count("rows_without_group_value")
            meta: dict[str, Any] = {"source": source, "task_id": r.task_id, "image_path": r.image_path,
                                    "csv_row": r.where, "group": group}
            if LAYOUTS[r.kind].masks:
                meta["mask_path"] = r.mask_path
            if r.label is not None:
                meta["label"] = str(r.label)
            if r.box is not None:
                meta["boxes"] = [list(r.box)]
            if r.points is not None:
                meta["points"] = [list(p) for p in r.points]
            items.append(FmuiaItem(path=r.image, masks=(r.mask,) if r.mask else (), meta=meta, kind=r.kind,
                                   num_classes=r.num_classes, where=r.where))
        return items

    # -- decoding ----------------------------------------------------------------------------
    def load(self, item: Item) -> Iterator[Record]:
        """One record; a row whose targets do not fit the decoded image is counted and named instead."""
        kind = getattr(item, "kind", "")
        n = int(getattr(item, "num_classes", 0))
        where = f"{getattr(item, 'where', '')}: {item.meta.get('image_path', item.path)}"
        path = self.data_dir / item.path
        self.check_inside(path)
        image = read_image(path)
        mask = None
        if item.masks:
            mpath = self.data_dir / item.masks[0]
            self.check_inside(mpath)
            mask = read_mask(mpath)
            if n == 2 and mask.size and int(mask.max()) == 255 and not ((mask > 0) & (mask < 255)).any():
                mask = (mask > 0).astype(np.uint8)  # a binary task stored 0/255: the classes are 0/1
                self.count("masks_0_255_read_as_0_1")
        bad = check_targets(kind, n, image.shape[:2], mask=mask,
                            box=(item.meta.get("boxes") or [None])[0], points=item.meta.get("points"))
        if bad is not None:
            self.skip(bad[0], where, bad[1])
            return
        yield Record(image=image, mask=mask, meta=self.meta(item))
