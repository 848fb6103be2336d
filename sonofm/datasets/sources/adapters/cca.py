"""CCA (Momot 2022): transverse common-carotid B-mode frames with expert lumen masks.

``US images/`` and ``Expert mask images/`` hold files of the same name; the lumen (255) becomes
class 1. Frames come from 15 recordings and the recording id is the file-name prefix before
``_slice_``: that prefix is the group, so no recording is split across train and test. Images
without a mask (the published copy has a few ``... - Copy.png`` duplicates) and masks without an
image are skipped and counted in :meth:`report` unless ``require_mask=False``.
"""

from __future__ import annotations

from pathlib import Path

from sonofm.datasets.sources.adapters.base import Adapter, Item, relpath
from sonofm.datasets.sources.imageio import IMAGE_EXTENSIONS

DATASET_DIR = "Common Carotid Artery Ultrasound Images"
IMAGES, MASKS = "US images", "Expert mask images"


class CcaAdapter(Adapter):
    """``root`` is ``Common Carotid Artery Ultrasound Images`` or the folder that contains it."""

    name = "cca"
    options = {"require_mask": True}

    def __init__(self, root, source: str | None = None, **options) -> None:
        super().__init__(root, source, **options)
        self.data_dir = self.find_layout(DATASET_DIR, (IMAGES, MASKS))

    @staticmethod
    def recording(stem: str) -> str:
        """Recording id of a frame: the file-name prefix before ``_slice_``."""
        return stem.split("_slice_")[0]

    def _files(self, sub: str) -> dict[str, Path]:
        folder = self.data_dir / sub
        return {
            p.name: p
            for p in folder.iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
        }

    def items(self) -> list[Item]:
        images, masks = self._files(IMAGES), self._files(MASKS)
        self.stats.pop("images_without_mask", None)
        self.stats.pop("masks_without_image", None)
        if len(set(masks) - set(images)):
            self.count("masks_without_image", len(set(masks) - set(images)))
        items = []
        for name in sorted(images):
            mask = masks.get(name)
            if mask is None:
                self.count("images_without_mask")
                if self.opts["require_mask"]:
                    continue
            items.append(
                Item(
                    path=relpath(images[name], self.data_dir),
                    masks=(relpath(mask, self.data_dir),) if mask is not None else (),
                    meta={"group": self.recording(Path(name).stem), "probe": "linear"},
                )
            )
        return items
