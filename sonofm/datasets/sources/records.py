"""The record: what every adapter yields and every later stage consumes.

Keeping one small, explicit type between adapters, preprocessing and the shard writer means a
new data source only has to produce ``Record`` objects to get splits, shards and streaming.

Shard sample layout (written by ``sonofm.datasets.shards``, read by ``sonofm.datasets.stream.loader``):

- ``__key__``: ``{source}-{uid}`` with only ``[A-Za-z0-9_-]`` characters (no dots: webdataset
  splits keys on dots).
- ``png``: 8-bit grayscale PNG, preprocessed (cropped to the acoustic field, resized).
- ``mask.png`` (optional): 8-bit PNG of class ids (0 background, 1.. foreground classes).
- ``field.png`` (optional): 0/255 PNG of the acoustic field at the stored image size.
- ``json``: :data:`META_KEYS` (unknown values are ``null``) plus any source-specific extras.
  Geometry written by preprocessing: ``orig_size`` ``[h, w]`` of the decoded image, ``crop``
  ``[top, left, bottom, right]`` taken from it and ``size`` ``[h, w]`` stored
  (``sonofm.datasets.preprocess.geometry.original_from_stored`` maps stored pixels back).
  Targets beside the mask: ``boxes`` ``[[x_min, y_min, x_max, y_max], ...]`` (optional
  ``box_labels`` ``[int, ...]``) and ``points`` ``[[x, y], ...]`` (K points, in order), in the
  stored sample's pixels (continuous coordinates: pixel ``i`` covers ``[i, i + 1)``); a record
  carries them in its original image's pixels, and the crop grows so that none is cut.
  Benchmark rows (FM_UIA) also carry ``task_id``, ``image_path`` exactly as their CSV wrote it,
  and for segmentation ``mask_path``; the source's index says its task (``index["task"]``:
  ``kind``, ``num_classes``, ``task_id``, ``classes`` for classification).

Every shard directory holds ``{source}-{split}-{000000}.tar`` files and one
``{source}.index.json`` per source: ``{"version", "source", "complete", "fingerprint", "build",
"taxonomy": {"source": {name, organ, region, labels, probe, description, declared}, "regions":
{region: [organ]}}, "shards": [{"file", "split", "count", "bytes", "sha256", "keys_sha256"}],
"counts": {"split": {}, "organ": {}, "region": {}, "label": {}, "split_label": {split: {label: n}},
"groups": {split: n}}, "report": {...}}`` (labels and organs are counted under their string form,
``"unlabelled"`` when unknown; indexes written before said ``"None"``). The ``taxonomy`` entry is
the source's place in the tree, so later stages need no taxonomy file. Only complete shards are ever visible (temporary names start with a dot and end in
``.tmp``), and an index is written only once every shard it names exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Metadata keys every sample carries (value ``None`` when unknown).
META_KEYS: tuple[str, ...] = (
    "source",  # taxonomy source name, e.g. "busi"
    "region",  # taxonomy region, e.g. "thorax"
    "organ",  # taxonomy organ, e.g. "breast"
    "label",  # diagnostic label string from the source's vocabulary, or None
    "group",  # unit of splitting: patient, recording or video id (string)
    "split",  # "train" | "val" | "test"
    "probe",  # "convex" | "linear" | "phased" | None
    "pixel_spacing_mm",  # [row_mm, col_mm] of the stored image, or None
    "path",  # original file path relative to the dataset root
    "frame",  # frame index for video sources, else None
)


@dataclass
class Record:
    """One image from a source, before preprocessing.

    ``image`` is ``uint8`` (H, W) grayscale or (H, W, 3) RGB as decoded from disk, ``mask`` is an
    optional (H, W) ``uint8`` array of class ids at the same size, and ``meta`` holds the
    :data:`META_KEYS` the adapter knows (at least ``source``, ``group`` and ``path``).
    """

    image: np.ndarray
    mask: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = self.meta.get("path", "<unknown file>")
        if self.image.dtype != np.uint8:
            raise ValueError(f"{where}: image must be uint8, got {self.image.dtype}")
        if self.image.ndim not in (2, 3) or (self.image.ndim == 3 and self.image.shape[2] != 3):
            raise ValueError(f"{where}: image must be (H, W) or (H, W, 3), got {self.image.shape}")
        if self.mask is not None and self.mask.shape[:2] != self.image.shape[:2]:
            raise ValueError(
                f"{where}: mask size {self.mask.shape[:2]} differs from image size {self.image.shape[:2]}"
            )
