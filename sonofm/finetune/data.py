"""Records -> fixed-size tensors for finetuning, and predictions back to each record's original size.

Downstream training and evaluation can read either the shard stream (``sonofm.datasets.stream.loader``)
or records straight from an adapter, and this module gives both the same batch layout.

Training batches (``image`` [B,1,S,S], ``mask`` [B,S,S] + ``has_mask``, ``targets["label"]``, ``key``)
come from a *batch source* that knows its position, so a resumed run continues with exactly the
batches the uninterrupted run would have drawn next:

- :class:`StreamBatches`: the pretraining stream (:func:`sonofm.datasets.stream.loader.make_train_loader`,
  decoding and augmentation in its workers, memory independent of the data's size). Rows the task
  cannot use (no mask for segmentation; a group outside the label fraction) are dropped here and
  batches refilled to full size from the next stream batches; the position is (stream batches
  consumed, rows of the next one already used).
- :class:`SampleBatches`: in-memory :class:`Sample` lists (small sets, the quickstart): one seeded
  permutation per epoch shared by all ranks, rank ``r`` taking global batches ``r, r + W, ...``;
  the position is the number of batches drawn.

Label fractions keep whole groups on both paths, with one rule
(:func:`sonofm.finetune.label_efficiency.select_groups`: a seeded permutation of the sorted group
names, the first ``ceil(fraction * n)``, nested across fractions). On a stream the group names come
from one pass over the split's metadata (:func:`split_groups`, PNGs not decoded, memory per group
not per image); the kept set reaches the stream's workers through its target function.

Evaluation at the stored size: images are letterboxed exactly as the stream's evaluation transform
does (:func:`sonofm.datasets.stream.augment.eval_sample`: longest side scaled to ``size``, zero padding,
centred), so :func:`logits_to_original` can undo it — crop the letterbox window, resize to the
original ``(H, W)`` — and segmentation metrics are computed against the untouched stored mask, not
against a resized copy. :func:`shard_eval_loader` reads a split exactly once across ranks and loader
workers with the stream's assignment (:func:`sonofm.datasets.stream.loader.eval_assignment`) and keeps each
sample's stored image and mask beside its letterboxed tensor (the stream's own evaluation loader
hands out the letterboxed mask only); :func:`sample_eval_batches` does the same for in-memory
samples (rank ``r`` takes samples ``r::W``). Each evaluated sample carries ``order``, its place in
the data, so gathered results sort the same for any number of processes.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from sonofm.datasets.sources.records import Record
from sonofm.datasets.stream.augment import AugmentConfig, augment_sample, eval_sample, letterbox_window

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
    "group_of",
    "SampleBatches",
    "RowTargets",
    "StreamBatches",
    "split_groups",
    "split_size",
    "sample_eval_batches",
    "shard_eval_loader",
]


#: sample metadata that holds targets in the stored sample's pixels (see ``sonofm.datasets.sources.records``)
GEOMETRY_KEYS: tuple[str, ...] = ("boxes", "box_labels", "points")


def _geometry_targets(rows: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """Per-sample geometry lists of a batch, one key per name any sample has (``[]`` where it has none)."""
    names = sorted({k for r in rows for k in r})
    return {k: [list(r.get(k) or []) for r in rows] for k in names}


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
        return group_of(self.meta)


def group_of(meta: dict[str, Any]) -> str:
    """A sample's group (patient, recording, video): ``meta["group"]``, else its path."""
    g = meta.get("group")
    return str(g if g is not None else meta.get("path"))


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
    out["geometry"] = {k: s.meta[k] for k in GEOMETRY_KEYS if s.meta.get(k) is not None}
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
        "view": torch.tensor([it["view"] for it in items], dtype=torch.float64),
        "targets": {"label": torch.tensor([it["label"] for it in items], dtype=torch.long),
                    **_geometry_targets([it["geometry"] for it in items])},
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
    from sonofm.datasets.shards import CorruptSample, base_key, decode_sample, iter_tar_samples
    from sonofm.datasets.shards.discovery import discover_shards

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


# --------------------------------------------------------------------------- training batch sources


class SampleBatches:
    """Endless augmented batches over in-memory samples, for rank ``rank`` of ``world_size``; resumable.

    Epoch ``e`` is one permutation seeded by ``(seed, e)`` cut into ``len // batch_size`` global
    batches (the last partial one is dropped); rank ``r`` draws global batches ``r, r + W, ...``, so
    the ranks together walk the same epochs as one process. Each batch's augmentation is seeded by
    ``(seed, e, batch)``. ``position()`` is the number of batches this rank drew.
    """

    def __init__(self, samples: Sequence[Sample], size: int, batch_size: int, seed: int = 0, augment: bool = True,
                 aug: AugmentConfig | None = None, rank: int = 0, world_size: int = 1) -> None:
        if not samples:
            raise ValueError("SampleBatches: no samples")
        self.samples, self.size, self.seed, self.augment = samples, size, seed, augment
        self.aug, self.rank, self.world_size = aug, rank, world_size
        self.batch_size = min(batch_size, len(samples))
        self.per_epoch = len(samples) // self.batch_size
        self.drawn = 0
        self._order: tuple[int, np.ndarray] | None = None

    def position(self) -> dict[str, Any]:
        return {"batches": self.drawn}

    def seek(self, position: dict[str, Any]) -> None:
        self.drawn = int(position["batches"])

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.samples)))
        return self._order[1]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            g = self.drawn * self.world_size + self.rank
            epoch, b = divmod(g, self.per_epoch)
            idx = self._epoch_order(epoch)[b * self.batch_size : (b + 1) * self.batch_size].tolist()
            rng = np.random.default_rng([self.seed, epoch, b]) if self.augment else None
            self.drawn += 1
            batch = next(iterate_batches(self.samples, self.size, self.batch_size, idx, rng, self.aug))
            batch["has_mask"] = torch.tensor([self.samples[i].mask is not None for i in idx], dtype=torch.bool)
            yield batch


class RowTargets:
    """The stream's target function for finetuning (runs in its workers).

    ``label``: the class id of ``meta[key]`` in ``classes`` (-1 when absent; a label outside the
    vocabulary makes the sample corrupt, counted and skipped). ``keep``: 1 when the sample's group
    is in ``groups`` (the label fraction), else 0. ``geometry``: metadata keys passed through as lists
    (a detection task's ``boxes``, a keypoint task's ``points``).
    """

    def __init__(self, classes: Sequence[str] | None = None, key: str = "label",
                 groups: frozenset[str] | None = None, geometry: Sequence[str] = ()) -> None:
        self.index = {c: i for i, c in enumerate(classes)} if classes is not None else None
        self.key, self.groups, self.geometry = key, groups, tuple(geometry)

    def __call__(self, meta: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.index is not None:
            v = meta.get(self.key)
            if v is not None and str(v) not in self.index:
                raise ValueError(f"label {v!r} of meta key {self.key!r} is not one of {list(self.index)}")
            out["label"] = -1 if v is None else self.index[str(v)]
        if self.groups is not None:
            out["keep"] = int(group_of(meta) in self.groups)
        for k in self.geometry:  # boxes / points in the stored sample's pixels (lists, one entry per sample)
            out[k] = list(meta.get(k) or [])
        return out


class StreamBatches:
    """Training batches of one rank streamed from shards (see the module docstring); resumable.

    ``need_mask``: drop samples without a mask (segmentation). ``groups``: keep only these groups.
    ``geometry``: metadata keys carried as per-sample lists (``targets[key]``); a sample whose first
    one is empty (no boxes, no points) is dropped.
    ``binary_mask``: every foreground id becomes 1. Loader settings as
    :func:`~sonofm.datasets.stream.loader.make_train_loader` (``paths`` are shard sets mixed by ``weights``
    or ``temperature``).
    """

    def __init__(self, paths: Sequence[str], *, batch_size: int, img_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, num_workers: int = 2, shuffle_buffer: int = 1000,
                 aug: AugmentConfig | dict[str, Any] | None = None, weights: Sequence[float] | None = None,
                 temperature: float = 1.0, split: str = "train", classes: Sequence[str] | None = None,
                 groups: frozenset[str] | None = None, need_mask: bool = False, binary_mask: bool = False,
                 geometry: Sequence[str] = ()) -> None:
        from sonofm.datasets.stream.loader import StreamSpec

        paths = [str(p) for p in paths]
        if weights is None and len(paths) == 1:
            weights = [1.0]  # one set: nothing to mix (and its size may be unknown)
        self.spec = StreamSpec(paths=paths, weights=list(weights) if weights is not None else None,
                               temperature=temperature, split=split)
        self.batch_size, self.img_size, self.seed, self.rank, self.world_size = batch_size, img_size, seed, rank, world_size
        self.num_workers, self.shuffle_buffer, self.aug = num_workers, shuffle_buffer, aug
        self.targets = (RowTargets(classes, groups=groups, geometry=geometry)
                        if classes is not None or groups is not None or geometry else None)
        self.geometry = tuple(geometry)
        self.need_mask, self.binary_mask = need_mask, binary_mask
        self.consumed, self.used = 0, 0  # stream batches fully consumed; rows of the next one already used
        self.loader: Any = None

    def position(self) -> dict[str, Any]:
        return {"stream_batches": self.consumed, "rows": self.used}

    def seek(self, position: dict[str, Any]) -> None:
        self.consumed, self.used = int(position["stream_batches"]), int(position["rows"])

    def corrupt_counts(self) -> dict[str, int]:
        return self.loader.corrupt_counts() if self.loader is not None else {}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from sonofm.datasets.stream.loader import make_train_loader

        self.loader = make_train_loader(
            self.spec, batch_size=self.batch_size, img_size=self.img_size, seed=self.seed, rank=self.rank,
            world_size=self.world_size, num_workers=self.num_workers, resume_samples=self.consumed * self.batch_size,
            shuffle_buffer=self.shuffle_buffer, aug=self.aug, target_fn=self.targets)
        return self._rows(iter(self.loader))  # the loader's iterator (and its seed draw) starts now

    def _kept(self, sb: dict[str, Any]) -> list[int]:
        n = len(sb["key"])
        keep = torch.ones(n, dtype=torch.bool)
        if self.need_mask:
            keep &= sb["has_mask"]
        if "keep" in sb["targets"]:
            keep &= sb["targets"]["keep"] > 0
        for k in self.geometry[:1]:  # a detection sample needs its boxes, a keypoint sample its points
            keep &= torch.tensor([len(v) > 0 for v in sb["targets"][k]], dtype=torch.bool)
        return torch.nonzero(keep).flatten().tolist()

    def _rows(self, stream: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Full batches of kept rows; the position is the first row not yet handed out."""
        rows: list[dict[str, Any]] = []
        c, skip = self.consumed, self.used
        for sb in stream:
            kept = self._kept(sb)
            for t in range(skip, len(kept)):
                rows.append(self._row(sb, kept[t]))  # a copy: the stream batch is freed at once
                if len(rows) == self.batch_size:
                    self.consumed, self.used = (c, t + 1) if t + 1 < len(kept) else (c + 1, 0)
                    yield self._collate(rows)
                    rows = []
            c, skip = c + 1, 0

    def _row(self, sb: dict[str, Any], i: int) -> dict[str, Any]:
        has = bool(sb["has_mask"][i])
        return {"image": sb["image"][i].clone(), "field": sb["field"][i].clone(),
                "mask": sb["mask"][i].clone() if has else None, "key": sb["key"][i],
                "label": int(sb["targets"]["label"][i]) if "label" in sb["targets"] else -1,
                "view": sb["view"][i].clone(), "geometry": {k: sb["targets"][k][i] for k in self.geometry}}

    def _collate(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        zeros = torch.zeros(rows[0]["image"].shape[-2:], dtype=torch.long)
        mask = torch.stack([r["mask"] if r["mask"] is not None else zeros for r in rows])
        if self.binary_mask:
            mask = (mask > 0).long()
        return {
            "image": torch.stack([r["image"] for r in rows]),
            "field": torch.stack([r["field"] for r in rows]),
            "mask": mask,
            "has_mask": torch.tensor([r["mask"] is not None for r in rows], dtype=torch.bool),
            "key": [r["key"] for r in rows],
            "view": torch.stack([r["view"] for r in rows]),
            "targets": {"label": torch.tensor([r["label"] for r in rows], dtype=torch.long),
                        **_geometry_targets([r["geometry"] for r in rows])},
        }


def split_groups(paths: Sequence[str], split: str, need_mask: bool = False) -> Counter[str]:
    """Samples per group in ``split`` of these shard sets, from one pass over their metadata.

    PNGs are read past, not decoded; memory grows with the number of groups, not of images.
    ``need_mask``: count only samples with a mask. Unreadable samples are left out (the stream
    counts them when it meets them).
    """
    import json

    from sonofm.datasets.shards.discovery import discover_shards
    from sonofm.datasets.shards.reader import CorruptCounter, iter_tar_samples

    counts: Counter[str] = Counter()
    counter = CorruptCounter()
    for url, _ in discover_shards([str(p) for p in paths], split):
        for raw in iter_tar_samples(url, counter):
            if need_mask and "mask.png" not in raw:
                continue
            try:
                meta = json.loads(raw.get("json", b""))
            except (ValueError, UnicodeDecodeError):
                continue
            if isinstance(meta, dict):
                counts[group_of(meta)] += 1
    return counts


def split_size(paths: Sequence[str], split: str) -> int:
    """Samples in ``split`` of these shard sets: the indexes' counts (local shards without one are
    counted from their tar headers; -1 when a remote shard's count is unknown)."""
    from sonofm.datasets.shards.discovery import discover_shards
    from sonofm.datasets.shards.reader import count_samples

    total = 0
    for url, n in discover_shards([str(p) for p in paths], split):
        if n < 0:
            if not Path(url).is_file():
                return -1
            n = count_samples(url)
        total += n
    return total


# --------------------------------------------------------------------------- evaluation at the stored size


def _eval_item(image: np.ndarray, field: np.ndarray | None, mask: np.ndarray | None, meta: dict[str, Any],
               size: int, order: Any, key: str, label: int) -> dict[str, Any]:
    out = eval_sample(image, field, mask, size, "letterbox")
    return {"image": out["image"], "stored_image": image, "stored_mask": mask, "meta": meta, "key": key,
            "order": order, "label": label, "view": out["view"], "input_size": size}


def _eval_collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "image": torch.stack([it["image"] for it in items]),
        "stored": [{k: v for k, v in it.items() if k != "image"} for it in items],
        "targets": {"label": torch.tensor([it["label"] for it in items], dtype=torch.long)},
    }


def sample_eval_batches(samples: Sequence[Sample], size: int, batch_size: int, rank: int = 0,
                        world_size: int = 1, need_mask: bool = False) -> Iterator[dict[str, Any]]:
    """Letterboxed batches of samples ``rank::world_size`` with each sample's stored image and mask.

    ``need_mask``: a sample without a mask is an error (segmentation cannot be scored without one).
    """
    items: list[dict[str, Any]] = []
    for i in range(rank, len(samples), world_size):
        s = samples[i]
        if need_mask and s.mask is None:
            raise ValueError(f"{s.key}: no mask: cannot evaluate segmentation")
        items.append(_eval_item(s.image, None, s.mask, s.meta, size, i, s.key, s.label))
        if len(items) == batch_size:
            yield _eval_collate(items)
            items = []
    if items:
        yield _eval_collate(items)


class _StoredSizeEval(IterableDataset):
    """A split read exactly once across ranks and workers (the stream's assignment), stored size kept."""

    def __init__(self, shards: list[tuple[str, int]], *, size: int, batch_size: int, rank: int, world_size: int,
                 num_workers: int, binary_mask: bool, need_mask: bool, targets: RowTargets | None) -> None:
        from sonofm.datasets.shards.reader import CorruptCounter

        self.shards, self.size, self.batch_size = shards, size, batch_size
        self.rank, self.world_size, self.num_workers = rank, world_size, max(num_workers, 1)
        self.binary_mask, self.need_mask, self.targets = binary_mask, need_mask, targets
        self.counter = CorruptCounter()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from sonofm.datasets.shards.names import base_key
        from sonofm.datasets.shards.reader import CorruptSample, decode_sample, iter_tar_samples
        from sonofm.datasets.stream.loader import eval_assignment

        info = get_worker_info()
        worker = 0 if info is None else info.id
        consumer = self.rank * self.num_workers + worker
        items: list[dict[str, Any]] = []
        for j, stride, offset in eval_assignment(len(self.shards), consumer, self.world_size * self.num_workers):
            url = self.shards[j][0]
            for k, raw in enumerate(iter_tar_samples(url, self.counter, stride, offset, report_tar=offset == 0)):
                try:
                    image, field, mask, meta = decode_sample(raw)
                    label = self.targets(meta).get("label", -1) if self.targets is not None else -1
                except CorruptSample as e:
                    self.counter.add(e.kind, url, raw["__key__"], str(e))
                    continue
                except ValueError as e:  # a label outside the vocabulary
                    self.counter.add("json", url, raw["__key__"], str(e))
                    continue
                if mask is None and self.need_mask:
                    continue
                if mask is not None and self.binary_mask:
                    mask = (mask > 0).astype(np.uint8)
                key = base_key(raw["__key__"])
                meta.setdefault("key", key)
                items.append(_eval_item(image, field, mask, meta, self.size, (j, offset + k * stride), key, label))
                if len(items) == self.batch_size:
                    yield _eval_collate(items)
                    items = []
        if items:
            yield _eval_collate(items)


def shard_eval_loader(paths: Sequence[str], split: str, *, size: int, batch_size: int, rank: int = 0,
                      world_size: int = 1, num_workers: int = 0, binary_mask: bool = False, need_mask: bool = False,
                      classes: Sequence[str] | None = None) -> DataLoader:
    """Batches of ``split`` for this rank (every sample exactly once over all ranks and workers), each
    sample letterboxed to ``size`` with its stored image, mask and metadata beside it.

    ``need_mask``: samples without a mask are left out; ``classes``: the label vocabulary
    (``targets["label"]``). Corrupt samples are skipped and counted (``loader.dataset.counter``).
    """
    from sonofm.datasets.shards.discovery import StreamError, discover_shards

    shards = [s for s in discover_shards([str(p) for p in paths], split) if s[1] != 0]
    if not shards:
        raise StreamError(f"no shard of split {split!r} in {list(paths)}")
    dataset = _StoredSizeEval(shards, size=size, batch_size=batch_size, rank=rank, world_size=world_size,
                              num_workers=num_workers, binary_mask=binary_mask, need_mask=need_mask,
                              targets=RowTargets(classes) if classes is not None else None)
    return DataLoader(dataset, batch_size=None, num_workers=num_workers, collate_fn=_as_is)


def _as_is(batch: Any) -> Any:
    """The loader's collate: batches are made in the dataset; the stored arrays stay numpy."""
    return batch
