"""BUSI (Al-Dhabyani et al. 2020): breast ultrasound, ``<class>/<class> (N).png`` with lesion masks.

An image may have several lesion masks (``_mask.png``, ``_mask_1.png``, ``_mask_2.png``); they are
merged by logical OR into class 1. The class comes from the folder (benign, malignant, normal).
BUSI carries no patient identifiers, so every image is its own group: splits by group are then
splits by image, and near-duplicate images of one patient may fall into different splits (report
repeated or cross-validated figures on BUSI).
"""

from __future__ import annotations

import re
from pathlib import Path

from sonofm.datasets.sources.adapters.base import Adapter, Item, relpath

CLASSES = ("benign", "malignant", "normal")
_MASK = re.compile(r"^(?P<stem>.+)_mask(?:_\d+)?$")


class BusiAdapter(Adapter):
    """``root`` is ``Dataset_BUSI_with_GT`` or the folder that contains it."""

    name = "busi"
    options = {"require_mask": True}

    def __init__(self, root, source: str | None = None, **options) -> None:
        super().__init__(root, source, **options)
        self.data_dir = self.find_layout("Dataset_BUSI_with_GT", CLASSES)

    def items(self) -> list[Item]:
        items: list[Item] = []
        for key in ("masks_without_image", "images_without_mask"):
            self.stats.pop(key, None)
        for cls in CLASSES:
            folder = self.data_dir / cls
            images: dict[str, Path] = {}
            masks: dict[str, list[Path]] = {}
            for p in folder.iterdir():
                if not p.is_file() or p.suffix.lower() != ".png" or p.name.startswith("."):
                    continue
                m = _MASK.match(p.stem)
                if m:
                    masks.setdefault(m.group("stem"), []).append(p)
                else:
                    images[p.stem] = p
            for stem in sorted(set(masks) - set(images)):
                self.count("masks_without_image", len(masks[stem]))
            for stem in sorted(images, key=_natural_key):
                mask_paths = sorted(masks.get(stem, []), key=lambda p: _natural_key(p.stem))
                if not mask_paths and self.opts["require_mask"]:
                    self.count("images_without_mask")
                    continue
                rel = relpath(images[stem], self.data_dir)
                items.append(
                    Item(
                        path=rel,
                        masks=tuple(relpath(m, self.data_dir) for m in mask_paths),
                        meta={"label": cls, "group": f"{cls}/{stem}"},
                    )
                )
        return items


def _natural_key(s: str) -> list:
    """Sort ``benign (2)`` before ``benign (10)``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]
