"""POCUS (Born et al. 2021): lung cine loops and still images, class from the file-name prefix.

Layout: ``pocus_videos/{convex,linear}/`` (gif, mp4, avi, mov, mpeg) and
``pocus_images/{convex,linear}/``; ``linear/label_uncertain/`` holds clips without a reliable label.
The prefix gives the class (``Cov`` covid, ``Pneu``/``pneu`` pneumonia, ``Reg`` healthy, ``Vir``
viral), the folder gives the probe, and each file is its own group: consecutive frames of a clip
are nearly identical, so a clip must never be split across train and test. Video frames are
sampled (``frames_per_video`` evenly, or ``fps``) and near-duplicates dropped. When
``dataset_metadata.csv`` is present, each file's licence (several are non-commercial) is copied
into ``meta["license"]``.
"""

from __future__ import annotations

import csv
import re

from sonofm.datasets.sources.adapters.base import MEDIA_EXTENSIONS, Adapter, Item, list_files, relpath
from sonofm.datasets.sources.imageio import AdapterError

FOLDERS = ("pocus_videos", "pocus_images")
PROBES = ("convex", "linear")
UNCERTAIN = "label_uncertain"
LABELS = {"cov": "covid", "pneu": "pneumonia", "reg": "healthy", "vir": "viral"}
_PREFIX = re.compile(r"^(cov|pneu|reg|vir)(?=[-_ +.]|$)", re.IGNORECASE)


def label_from_name(name: str) -> str | None:
    """Class of a POCUS file from its name prefix, or None when the prefix is not a known class."""
    m = _PREFIX.match(name)
    return LABELS[m.group(1).lower()] if m else None


class PocusAdapter(Adapter):
    """``root`` holds ``pocus_videos/`` and/or ``pocus_images/`` (and optionally ``dataset_metadata.csv``)."""

    name = "pocus"
    options = {"videos": True, "images": True, "metadata": "dataset_metadata.csv"}

    def __init__(self, root, source: str | None = None, **options) -> None:
        super().__init__(root, source, **options)
        if not any((self.root / f).is_dir() for f in FOLDERS):
            raise AdapterError(
                f"pocus: {self.root} is not the POCUS layout: expected {' or '.join(FOLDERS)}/ in it"
            )
        self.licenses = self._read_licenses()

    def _read_licenses(self) -> dict[str, str]:
        """File stem -> licence from ``dataset_metadata.csv`` (rows are keyed by file name without extension)."""
        name = self.opts["metadata"]
        path = self.root / name if name else None
        if path is None or not path.is_file():
            return {}
        out: dict[str, str] = {}
        try:
            with open(path, newline="", encoding="utf-8", errors="replace") as f:
                for row in csv.DictReader(f):
                    stem = (row.get("Filename") or "").strip()
                    lic = (row.get("License") or "").strip()
                    if stem and lic and stem not in out:
                        out[stem] = lic
        except csv.Error as e:
            raise AdapterError(f"{path}: cannot parse metadata CSV ({e})") from e
        return out

    def items(self) -> list[Item]:
        folders = [f for f, on in zip(FOLDERS, (self.opts["videos"], self.opts["images"])) if on]
        items: list[Item] = []
        self.stats.pop("unknown_prefix", None)
        for folder in folders:
            for probe in PROBES:
                base = self.root / folder / probe
                if not base.is_dir():
                    continue
                for p in list_files(base, MEDIA_EXTENSIONS):
                    rel = relpath(p, self.root)
                    uncertain = UNCERTAIN in p.relative_to(base).parts
                    label = None if uncertain else label_from_name(p.name)
                    if label is None and not uncertain:
                        self.count("unknown_prefix")
                    meta = {
                        "label": label,
                        "group": rel,
                        "probe": probe,
                        "label_uncertain": uncertain,
                        "license": self.licenses.get(p.stem),
                    }
                    items.append(Item(path=rel, meta=meta))
        if not items:
            raise AdapterError(
                f"pocus: no images or videos found under {self.root}/{{{','.join(folders)}}}/{{convex,linear}}"
            )
        return items
