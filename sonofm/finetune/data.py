"""Records -> fixed-size tensors for finetuning, and predictions back to each record's original size.

Downstream training and evaluation can read either the shard stream (``sonofm.datasets.stream``)
or records straight from an adapter. This module covers the second path and the geometry shared by
both: images are letterboxed exactly as the stream's evaluation transform does
(:func:`sonofm.datasets.augment.eval_sample`: longest side scaled to ``size``, zero padding,
centred), so :func:`logits_to_original` can undo it — crop the letterbox window, resize to the
original ``(H, W)`` — and segmentation metrics are computed against the untouched original mask,
not against a resized copy. Records are decoded once and kept in memory (datasets here are small).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sonofm.datasets.augment import AugmentConfig, augment_sample, eval_sample, letterbox_window
from sonofm.datasets.records import Record

__all__ = [
    "to_gray",
    "letterbox_window",
    "logits_to_original",
    "Sample",
    "load_samples",
    "encode_labels",
    "sample_tensors",
    "collate",
    "iterate_batches",
    "samples_from_shards",
]


def to_gray(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W) from (H, W) or (H, W, 3) with ITU-R 601 luma weights."""
    if image.ndim == 2:
        return image
    rgb = image.astype(np.float32)
    gray = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    return np.clip(np.rint(gray), 0, 255).astype(np.uint8)


def logits_to_original(logits: Tensor, orig_hw: tuple[int, int]) -> Tensor:
    """Undo the letterbox of one sample: ``[C, S, S]`` logits -> ``[C, H, W]`` at the original size."""
    size = logits.shape[-1]
    h, w = orig_hw
    oy, ox, nh, nw = letterbox_window(h, w, size)
    window = logits[None, :, oy : oy + nh, ox : ox + nw].float()
    return F.interpolate(window, size=(h, w), mode="bilinear", align_corners=False)[0]


@dataclass
class Sample:
    """One decoded record kept in memory: grayscale image, optional mask, metadata and class id."""

    image: np.ndarray  # uint8 (H, W)
    mask: np.ndarray | None  # uint8 (H, W) class ids
    meta: dict[str, Any]
    label: int = -1  # class id, -1 when unknown

    @property
    def key(self) -> str:
        return f"{self.meta.get('source')}/{self.meta.get('path')}#{self.meta.get('frame')}"

    @property
    def group(self) -> str:
        g = self.meta.get("group")
        return str(g if g is not None else self.meta.get("path"))


def load_samples(records: Iterable[Record], binary_mask: bool = False) -> list[Sample]:
    """Decode records once (grayscale); ``binary_mask`` maps every foreground id to 1."""
    out = []
    for r in records:
        mask = r.mask
        if mask is not None and binary_mask:
            mask = (mask > 0).astype(np.uint8)
        out.append(Sample(to_gray(r.image), mask, dict(r.meta)))
    return out


def encode_labels(samples: Sequence[Sample], key: str = "label", classes: Sequence[str] | None = None) -> list[str]:
    """Set ``sample.label`` from ``meta[key]`` (sorted vocabulary unless ``classes`` is given); returns it."""
    names = sorted({str(s.meta[key]) for s in samples if s.meta.get(key) is not None})
    vocab = list(classes) if classes is not None else names
    unknown = sorted(set(names) - set(vocab))
    if unknown:
        raise ValueError(f"labels {unknown} of meta key {key!r} are not in the classes {vocab}")
    index = {c: i for i, c in enumerate(vocab)}
    for s in samples:
        v = s.meta.get(key)
        s.label = -1 if v is None else index[str(v)]
    return vocab


def sample_tensors(
    s: Sample, size: int, rng: np.random.Generator | None = None, aug: AugmentConfig | None = None
) -> dict[str, Any]:
    """Letterboxed (evaluation, ``rng=None``) or augmented (training) tensors of one sample."""
    if rng is None:
        out = eval_sample(s.image, None, s.mask, size, "letterbox")
    else:
        out = augment_sample(s.image, None, s.mask, size, rng, aug or AugmentConfig())
        out.pop("box", None)
        out.pop("flip", None)
    out["label"] = s.label
    out["key"] = s.key
    out["orig_hw"] = tuple(s.image.shape)
    out["meta"] = s.meta
    return out


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples into the batch layout of the stream loaders (``image``, ``mask``, ``targets``...)."""
    batch: dict[str, Any] = {
        "image": torch.stack([it["image"] for it in items]),
        "field": torch.stack([it["field"] for it in items]),
        "key": [it["key"] for it in items],
        "orig_hw": [it["orig_hw"] for it in items],
        "meta": [it["meta"] for it in items],
        "targets": {"label": torch.tensor([it["label"] for it in items], dtype=torch.long)},
    }
    if all("mask" in it for it in items):
        batch["mask"] = torch.stack([it["mask"] for it in items])
    return batch


def iterate_batches(
    samples: Sequence[Sample],
    size: int,
    batch_size: int,
    indices: Sequence[int] | None = None,
    rng: np.random.Generator | None = None,
    aug: AugmentConfig | None = None,
) -> Iterator[dict[str, Any]]:
    """Batches over ``indices`` (all by default) in order; augmented when ``rng`` is given."""
    idx = list(range(len(samples))) if indices is None else list(indices)
    for start in range(0, len(idx), batch_size):
        chunk = idx[start : start + batch_size]
        batch = collate([sample_tensors(samples[i], size, rng, aug) for i in chunk])
        batch["index"] = torch.tensor(chunk, dtype=torch.long)
        yield batch


def samples_from_shards(
    paths: str | os.PathLike | Sequence[str | os.PathLike], split: str, binary_mask: bool = False
) -> list[Sample]:
    """Read every sample of ``split`` from local shard sets (directories, index files or tar paths).

    Used to evaluate segmentation at the stored size of shard data and to finetune from shards
    without the streaming machinery; the stored (preprocessed) image is the "original" here.
    """
    from sonofm.datasets.shard_discovery import discover_shards
    from sonofm.datasets.shards import CorruptSample, base_key, decode_sample, iter_tar_samples

    path_list = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    samples: list[Sample] = []
    for p in path_list:
        for url, _ in discover_shards(str(p), split):
            if not Path(url).is_file():
                raise FileNotFoundError(f"{url}: samples_from_shards reads local shard files only")
            for raw in iter_tar_samples(url):
                try:
                    image, _, mask, meta = decode_sample(raw)
                except CorruptSample as e:
                    raise ValueError(f"{url}:{raw['__key__']}: {e}") from e
                if mask is not None and binary_mask:
                    mask = (mask > 0).astype(np.uint8)
                meta.setdefault("key", base_key(raw["__key__"]))
                samples.append(Sample(image, mask, meta))
    if not samples:
        raise ValueError(f"no samples of split {split!r} in {path_list}")
    return samples
