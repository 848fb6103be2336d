"""Dataset adapters: each turns one collection layout into :class:`~sonofm.datasets.sources.records.Record` objects.

``get_adapter("busi", root)`` builds one by name; :data:`ADAPTERS` lists them. Every adapter has a
cheap ``items()`` listing and a ``load(item)`` that decodes one item (see :mod:`.base`), and raises
:class:`AdapterError` naming the file for anything it cannot read.
"""

from __future__ import annotations

import difflib
import os
from typing import Any

from sonofm.datasets.sources.adapters.base import Adapter, Item, merge_masks
from sonofm.datasets.sources.adapters.busi import BusiAdapter
from sonofm.datasets.sources.adapters.cca import CcaAdapter
from sonofm.datasets.sources.adapters.csv_manifest import CsvAdapter
from sonofm.datasets.sources.adapters.dicom import DicomAdapter
from sonofm.datasets.sources.adapters.fmuia import FmuiaAdapter
from sonofm.datasets.sources.adapters.folder import FolderAdapter
from sonofm.datasets.sources.adapters.hc18 import Hc18Adapter
from sonofm.datasets.sources.adapters.pocus import PocusAdapter
from sonofm.datasets.sources.adapters.synthetic import SyntheticAdapter
from sonofm.datasets.sources.imageio import AdapterError
from sonofm.errors import UnknownNameError

ADAPTERS: dict[str, type[Adapter]] = {
    "busi": BusiAdapter,
    "cca": CcaAdapter,
    "pocus": PocusAdapter,
    "hc18": Hc18Adapter,
    "folder": FolderAdapter,
    "csv": CsvAdapter,
    "dicom": DicomAdapter,
    "synthetic": SyntheticAdapter,
    "fmuia": FmuiaAdapter,
}


def get_adapter(name: str, root: str | os.PathLike, **options: Any) -> Adapter:
    """The adapter called ``name`` over ``root``; an unknown name lists the known ones."""
    cls = ADAPTERS.get(name)
    if cls is None:
        close = difflib.get_close_matches(name, ADAPTERS, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UnknownNameError(f"unknown adapter {name!r}{hint}; known adapters: {', '.join(sorted(ADAPTERS))}")
    return cls(root, **options)


__all__ = [
    "ADAPTERS",
    "Adapter",
    "AdapterError",
    "BusiAdapter",
    "CcaAdapter",
    "CsvAdapter",
    "DicomAdapter",
    "FmuiaAdapter",
    "FolderAdapter",
    "Hc18Adapter",
    "Item",
    "PocusAdapter",
    "SyntheticAdapter",
    "get_adapter",
    "merge_masks",
]
