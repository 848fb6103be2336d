"""Generic image folder: class = sub-folder, masks found by a file-name pattern or in a parallel folder.

Most collections users have look like ``root/<class>/<file>`` with masks either beside the images
(``{stem}_mask.png``, several per image allowed and merged) or in a mirrored folder
(``masks/<class>/<stem>.png``). Videos and DICOM files in the folder are decoded too (frames
sampled like every video source). The source name is ``source=NAME`` or, when absent, the folder's
name; it needs no taxonomy entry.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
from pathlib import Path

from sonofm.datasets.sources.adapters.base import (
    MEDIA_EXTENSIONS,
    Adapter,
    Item,
    list_files,
    merge_masks,
    relpath,
    source_name_from_path,
)
from sonofm.datasets.sources.imageio import IMAGE_EXTENSIONS, AdapterError


class FolderAdapter(Adapter):
    """Options: ``image_dir`` (sub-folder holding the images, default the root), ``labels``
    (``"folder"``: first sub-folder is the class; ``None``: unlabelled), ``mask_pattern`` (glob with
    ``{stem}``, e.g. ``"{stem}_mask*.png"``), ``mask_dir`` (parallel folder, same relative layout;
    with ``mask_pattern`` the pattern is applied there), ``mask_values`` (``"binary"``: any non-zero is
    class 1, several masks ORed; ``"ids"``: stored class ids, several masks take the maximum),
    ``require_mask`` (skip images without mask), ``group_regex`` (regex on the file stem whose first
    group, or whole match, is the group; default: the file), and constants ``probe``, ``organ``,
    ``region``, ``pixel_spacing_mm``.
    """

    name = "folder"
    options = {
        "image_dir": "",
        "labels": "folder",
        "mask_pattern": None,
        "mask_dir": None,
        "mask_values": "binary",
        "require_mask": False,
        "group_regex": None,
        "probe": None,
        "organ": None,
        "region": None,
        "pixel_spacing_mm": None,
    }

    def __init__(self, root, source: str | None = None, **options) -> None:
        super().__init__(root, source or source_name_from_path(root), **options)
        o = self.opts
        if not self.root.is_dir():
            raise AdapterError(f"folder: {self.root} is not a folder")
        self.image_dir = self.root / o["image_dir"] if o["image_dir"] else self.root
        if not self.image_dir.is_dir():
            raise AdapterError(f"folder: image folder {self.image_dir} does not exist")
        self.mask_dir = Path(o["mask_dir"]) if o["mask_dir"] else None
        if self.mask_dir is not None and not self.mask_dir.is_absolute():
            self.mask_dir = self.root / self.mask_dir
        if self.mask_dir is not None and not self.mask_dir.is_dir():
            raise AdapterError(f"folder: mask folder {self.mask_dir} does not exist")
        if o["mask_pattern"] is not None and "{stem}" not in o["mask_pattern"]:
            raise AdapterError(f"folder: mask_pattern must contain '{{stem}}', got {o['mask_pattern']!r}")
        if o["labels"] not in ("folder", None):
            raise AdapterError(f"folder: labels must be 'folder' or null (?labels=null: no labels), got {o['labels']!r}")
        if o["mask_values"] not in ("binary", "ids"):
            raise AdapterError(f"folder: mask_values must be 'binary' or 'ids', got {o['mask_values']!r}")
        self.group_re = re.compile(o["group_regex"]) if o["group_regex"] else None

    def _is_mask(self, p: Path) -> bool:
        if self.mask_dir is not None and self.mask_dir in p.parents:
            return True
        pattern = self.opts["mask_pattern"]
        return (
            self.mask_dir is None
            and pattern is not None
            and fnmatch.fnmatch(p.name, pattern.replace("{stem}", "*"))
        )

    def _masks_for(self, p: Path) -> list[Path]:
        rel_parent = p.parent.relative_to(self.image_dir)
        pattern = self.opts["mask_pattern"]
        if self.mask_dir is not None:
            folder = self.mask_dir / rel_parent
            if pattern is None:
                return [
                    folder / (p.stem + e)
                    for e in sorted(IMAGE_EXTENSIONS)
                    if (folder / (p.stem + e)).is_file()
                ]
        elif pattern is not None:
            folder = p.parent
        else:
            return []
        found = glob.glob(pattern.replace("{stem}", glob.escape(p.stem)), root_dir=folder)
        return sorted(folder / f for f in found if (folder / f) != p)

    def _group(self, stem: str, rel: str) -> str:
        if self.group_re is None:
            return rel
        m = self.group_re.search(stem)
        if m is None:
            raise AdapterError(f"folder: group_regex {self.group_re.pattern!r} does not match {rel}")
        return m.group(1) if m.groups() else m.group(0)

    def items(self) -> list[Item]:
        o = self.opts
        items: list[Item] = []
        self.stats.pop("images_without_mask", None)
        # links are followed inside the root, refused (and counted) when they lead out of it; a mask
        # file is accounted for with its image below (refused with it), not once more by the listing
        def skip(counter: str, file: str, reason: str) -> None:
            if not self._is_mask(Path(file)):
                self.skip(counter, file, reason)

        for p in list_files(self.image_dir, MEDIA_EXTENSIONS, root=self.root, skip=skip, count_others=True):
            if self._is_mask(p):
                continue
            rel = relpath(p, self.root)
            masks = self._masks_for(p)
            outside = [m for m in masks if not self.is_inside(m)]
            if outside:
                self.skip("symlinks_outside_root", str(outside[0]),
                          f"mask of {rel} is a symbolic link to {os.path.realpath(outside[0])}, outside "
                          f"the source folder: the image is refused with it")
                continue
            if not masks and (o["mask_pattern"] or self.mask_dir):
                self.count("images_without_mask")
                if o["require_mask"]:
                    continue
            parts = p.relative_to(self.image_dir).parts
            label = parts[0] if o["labels"] == "folder" and len(parts) > 1 else None
            spacing = o["pixel_spacing_mm"]
            if spacing is not None and not isinstance(spacing, (list, tuple)):
                spacing = [float(spacing), float(spacing)]
            meta = {
                "label": label,
                "group": self._group(p.stem, rel),
                "probe": o["probe"],
                "organ": o["organ"],
                "region": o["region"],
                "pixel_spacing_mm": list(spacing) if spacing is not None else None,
            }
            items.append(
                Item(
                    path=rel,
                    masks=tuple(relpath(m, self.root) if self.root in m.parents else str(m) for m in masks),
                    meta=meta,
                )
            )
        if not items:
            raise AdapterError(f"folder: no images, videos or DICOM files found under {self.image_dir}")
        return items

    def allowed_roots(self) -> list[Path]:
        """The root, and the mask folder wherever it is (``mask_dir`` may be given outside the root)."""
        return [self.root] + ([self.mask_dir] if self.mask_dir is not None else [])

    def read_masks(self, item: Item):
        return merge_masks(
            [self.root / m for m in item.masks], binary=self.opts["mask_values"] == "binary", count=self.count
        )
