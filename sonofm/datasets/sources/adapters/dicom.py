"""The DICOM adapter: a DICOM file or a folder of them as one source.

Decoding (photometric interpretations, bit depths, ultrasound regions, hashed patient groups,
anatomy from the header) lives in :mod:`sonofm.datasets.sources.dicom_io`, shared with the adapter base.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from sonofm.datasets.sources.adapters.base import (
    DICOM_EXTENSIONS,
    Adapter,
    Item,
    list_files,
    relpath,
    source_name_from_path,
)
from sonofm.datasets.sources.dicom_io import decode_dicom, is_dicom
from sonofm.datasets.sources.imageio import AdapterError


class DicomAdapter(Adapter):
    """``root`` is a DICOM file or a folder searched recursively (``.dcm``/``.dicom``, and files
    without extension that carry the DICM magic). Options: ``labels`` (``"folder"``: first
    sub-folder is the class), plus the frame-sampling options of every adapter.
    """

    name = "dicom"
    options = {"labels": None}

    def __init__(self, root, source: str | None = None, **options) -> None:
        super().__init__(root, source or source_name_from_path(root), **options)  # no name: the folder's
        if self.opts["labels"] not in (None, "folder"):
            raise AdapterError(f"dicom: labels must be 'folder' or null (?labels=null: no labels), got {self.opts['labels']!r}")
        if self.root.is_file():
            self.data_dir = self.root.parent

    def items(self) -> list[Item]:
        if self.root.is_file():
            files = [self.root]
        else:
            files = list_files(self.root, DICOM_EXTENSIONS)
            others = [
                p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() not in DICOM_EXTENSIONS
            ]
            files += [
                p
                for p in others
                if not any(x.startswith(".") for x in p.relative_to(self.root).parts) and is_dicom(p)
            ]
            files.sort(key=lambda p: relpath(p, self.root))
        if not files:
            raise AdapterError(f"dicom: no DICOM files under {self.root}")
        items = []
        for p in files:
            rel = relpath(p, self.data_dir)
            parts = Path(rel).parts
            label = parts[0] if self.opts["labels"] == "folder" and len(parts) > 1 else None
            items.append(Item(path=rel, meta={"label": label}))
        return items

    def decode(self, rel: str) -> Iterator[tuple[int | None, np.ndarray, dict[str, Any]]]:
        """Every file is DICOM here, whatever its extension: :func:`decode_dicom`."""
        yield from decode_dicom(self.data_dir / rel, self.count, **self.frame_options())
