"""Generic CSV manifest: one row per image, video or DICOM file, with any subset of known columns.

Columns: ``path`` (required), ``label``, ``mask`` (several files separated by ``;`` are merged),
``group``, ``organ``, ``region``, ``source``, ``probe``, ``pixel_spacing_mm`` (one number, or
``row col`` separated by space, ``;``, ``x`` or written as ``[row, col]``); any other column is
copied into the metadata as a string. Paths are relative to the CSV's folder and must stay inside
it: a manifest is a dataset description, and a path escaping it is almost always a mistake (or a
manifest from elsewhere), so it is an error naming the CSV and the row.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Any

from sonofm.datasets.sources.adapters.base import Adapter, Item, merge_masks, source_name_from_path
from sonofm.datasets.sources.imageio import AdapterError

KNOWN_COLUMNS = ("path", "label", "mask", "group", "organ", "region", "source", "probe", "pixel_spacing_mm")


def parse_spacing(text: str) -> list[float] | None:
    """``"0.1"`` -> ``[0.1, 0.1]``; ``"0.1 0.2"``, ``"0.1;0.2"``, ``"0.1x0.2"``, ``"[0.1, 0.2]"`` -> ``[0.1, 0.2]``."""
    parts = [t for t in re.split(r"[\s,;xX\[\]()]+", text.strip()) if t]
    if not parts:
        return None
    values = [float(t) for t in parts]
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or any(v <= 0 for v in values):
        raise ValueError(f"expected one or two positive numbers, got {text!r}")
    return values


class CsvAdapter(Adapter):
    """``root`` is the CSV file, or a folder holding ``manifest`` (default ``manifest.csv``).

    Options: ``manifest`` (file name when ``root`` is a folder), ``mask_values`` (``"binary"``: any
    non-zero is class 1, e.g. 0/255 masks; ``"ids"``: stored class ids).
    Rows without a ``source`` value belong to ``source=NAME``, else to a source named after the CSV.
    """

    name = "csv"
    options = {"manifest": "manifest.csv", "mask_values": "binary"}

    def __init__(self, root, source: str | None = None, **options) -> None:
        super().__init__(root, source, **options)
        self.source_given = source is not None
        self.csv_path = self.root if self.root.is_file() else self.root / self.opts["manifest"]
        if not self.csv_path.is_file():
            raise AdapterError(f"{type(self).__name__}: manifest {self.csv_path} not found")
        self.data_dir = self.csv_path.parent
        if self.opts["mask_values"] not in ("binary", "ids"):
            raise AdapterError(f"csv: mask_values must be 'binary' or 'ids', got {self.opts['mask_values']!r}")

    def _inside(self, value: str, row: int, column: str) -> str:
        """``value`` as a normalised POSIX path relative to the CSV's folder, or an error if it escapes."""
        where = f"{self.csv_path}, row {row}, column {column!r}"
        base = os.path.abspath(self.data_dir)
        full = os.path.normpath(os.path.join(base, value))
        if os.path.commonpath([base, full]) != base:
            raise AdapterError(f"{where}: path {value!r} leaves the dataset folder {self.data_dir}")
        return Path(os.path.relpath(full, base)).as_posix()

    def _default_source(self) -> str:
        """``source=NAME``, else the CSV's stem (the folder's name for the default ``manifest.csv``)."""
        if self.source_given:
            return self.source
        named_file = self.root.is_file()
        return source_name_from_path(self.csv_path if named_file else self.root)

    def items(self) -> list[Item]:
        """One item per row. A ragged row (more or fewer cells than the header: usually an unquoted
        comma, whose cells then sit under the wrong columns) is skipped and counted, naming the CSV
        and the row, rather than read with cells lost or shifted; so are rows whose file or mask is
        a symbolic link leading out of the CSV's folder, or a dangling one."""
        try:
            with open(self.csv_path, newline="", encoding="utf-8-sig") as f:
                reader = csv.reader(f)
                header = [h.strip() for h in next(reader, [])]
                if "path" not in header:
                    raise AdapterError(f"{self.csv_path}: required column 'path' missing (columns: {header})")
                rows = [(reader.line_num, cells) for cells in reader if cells]
        except (csv.Error, UnicodeDecodeError) as e:
            raise AdapterError(f"{self.csv_path}: cannot parse CSV ({e})") from e
        items, ragged = [], []
        for n, cells in rows:
            if len(cells) != len(header):
                ragged.append(n)
                self.skip("ragged_csv_rows", f"{self.csv_path}, row {n}",
                          f"{len(cells)} cells where the header has {len(header)} (an unquoted comma?): "
                          "row skipped")
                continue
            row = {k: v.strip() for k, v in zip(header, cells) if k}
            item = self._item(row, n)
            if self._linked_out(item, n):
                continue
            items.append(item)
        if not items:
            why = (f" ({len(ragged)} ragged rows skipped, the first at row {ragged[0]}: more or fewer cells "
                   f"than the {len(header)} of the header)" if ragged else "")
            raise AdapterError(f"{self.csv_path}: manifest has no rows{why}")
        return items

    def _linked_out(self, item: Item, n: int) -> bool:
        """Skip (and count) a row whose file or mask is a dangling link or a link out of the folder."""
        for rel in (item.path, *item.masks):
            p = self.data_dir / rel
            real = os.path.realpath(p)
            where = f"{self.csv_path}, row {n}: {rel}"
            if os.path.islink(p) and not os.path.exists(real):
                self.skip("symlinks_dangling", where, f"symbolic link to {os.readlink(p)}, which does not exist")
                return True
            if not self.is_inside(p):
                self.skip("symlinks_outside_root", where,
                          f"symbolic link to {real}, outside the dataset folder {self.data_dir}: refused "
                          "(give links=any to follow links out of the folder)")
                return True
        return False

    def _item(self, row: dict[str, str], n: int) -> Item:
        if not row.get("path"):
            raise AdapterError(f"{self.csv_path}, row {n}: empty 'path'")
        path = self._inside(row["path"], n, "path")
        masks = tuple(self._inside(m.strip(), n, "mask") for m in row.get("mask", "").split(";") if m.strip())
        source = row.get("source") or self._default_source()
        meta: dict[str, Any] = {"source": source}
        for key in ("label", "group", "organ", "region", "probe"):
            if row.get(key):
                meta[key] = row[key]
        if row.get("pixel_spacing_mm"):
            try:
                meta["pixel_spacing_mm"] = parse_spacing(row["pixel_spacing_mm"])
            except ValueError as e:
                raise AdapterError(f"{self.csv_path}, row {n}, column 'pixel_spacing_mm': {e}") from e
        for key, value in row.items():
            if key and key not in KNOWN_COLUMNS and value:
                meta[key] = value
        return Item(path=path, masks=masks, meta=meta)

    def sources(self) -> list[str]:
        """Every source named by the manifest's rows (or the adapter's own), sorted."""
        return sorted({item.meta["source"] for item in self.items()})

    def read_masks(self, item: Item):
        return merge_masks(
            [self.data_dir / m for m in item.masks], binary=self.opts["mask_values"] == "binary", count=self.count
        )
