"""Streaming shards into training and evaluation batches.

Which shards a set holds is :mod:`sonofm.datasets.shards.discovery`; reading and decoding a shard's
samples is :mod:`sonofm.datasets.shards.reader`. This module mixes, plans, shuffles and batches.

Training stream (``make_train_loader``), infinite and reproducible
-----------------------------------------------------------------
Every consumer (one DataLoader worker of one rank) produces its own sequence of *rounds*. A round
is planned from the shard index alone, without reading data: each shard set ``i`` earns
``p_i * round_samples`` sample credits per round and draws whole shards (with replacement,
probability proportional to their sample count) until its credit is spent; overdrawn credit carries
over, so long-run shares equal ``p_i`` exactly. The samples of the round's shards are merged in a
uniformly random interleaving, passed through a shuffle buffer that is drained at the end of the
round, decoded and augmented. Every random choice comes from ``numpy`` generators seeded by
``(seed, rank, world_size, role, num_workers, round[, position])``.

Resume: ``resume_samples`` is the number of samples this rank has already consumed (a multiple of
``batch_size``; with gradient accumulation, count micro-batches). Batches are collated inside the
workers and the DataLoader takes them round-robin, so after ``B`` batches, role ``r`` has produced
exactly ``B // W + (r < B % W)`` of them. On resume, loader worker ``w`` plays role ``(w + B) % W``,
re-plans the rounds (arithmetic only) up to its position and skips the already-consumed part of
that round without decoding it. The resumed run therefore yields *exactly* the batches the
uninterrupted run would have yielded next, provided ``seed``, ``world_size``, ``num_workers``,
``batch_size`` and ``round_samples`` are unchanged and no sample before the position was corrupt
(corrupt samples shift the position by their number; the continuation is then still fresh, never a
repeat of the beginning).

Why every worker draws from every shard (resampled mode): splitting a set's shards among
``world_size * num_workers`` consumers fails as soon as a small source has fewer shards than
consumers, and makes each consumer's mixture depend on which shards it got. With resampling each
consumer draws from all shards with its own seed, which is sampling with replacement: the
distribution is exactly the mixture asked for at any scale. ``resampled=False`` instead gives each
consumer a disjoint share of every set (``shards[c::C]``, visited in a fresh random order per pass)
and fails loudly when a set has fewer shards than consumers.

Evaluation stream (``make_eval_loader``), finite, exactly once
--------------------------------------------------------------
The split's shards are dealt round-robin to the ``C = world_size * num_workers`` consumers. When
there are fewer shards than consumers, shard ``j`` is shared by consumers ``c = j, j+n, j+2n, ...``,
which take the samples whose index inside the shard is congruent to their rank among them. Each
sample is decoded by exactly one consumer, with a deterministic letterbox or centre-crop transform.

Corrupt data
------------
An unreadable PNG, bad JSON, a mask/field that does not decode or match the image size, and a
truncated or unreadable tar are skipped, logged with the shard url and key, and counted in a
counter shared by the workers: ``corrupt_counts(loader)``. A shard that yields no usable sample and
a round (or an evaluation rank) that yields nothing raise :class:`StreamError`.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from sonofm.datasets.shards.discovery import Shard, StreamError, discover_shards, shard_indexes
from sonofm.datasets.shards.names import base_key
from sonofm.datasets.shards.reader import (
    CORRUPT_KINDS,
    CorruptCounter,
    CorruptSample,
    decode_sample,
    iter_tar_samples,
)
from sonofm.datasets.stream.augment import AugmentConfig, augment_sample, eval_sample

log = logging.getLogger(__name__)

TargetFn = Callable[[dict[str, Any]], dict[str, Any]]
_PLAN, _ROUND, _AUG = 1, 2, 3  # seed-sequence tags: independent streams for planning, mixing, augmentation


@dataclass
class StreamSpec:
    """What to stream: shard sets (mixed by ``weights`` or by a temperature over their sizes) and a split.

    Each entry of ``paths`` is one shard set: a directory (all its ``*.index.json``), one
    ``{source}.index.json`` (local or URL), or shard URLs (brace pattern, ``pipe:``/``https:`` URLs,
    several joined with ``::``).
    """

    paths: list[str]
    weights: list[float] | None = None
    temperature: float = 1.0
    split: str = "train"

    def __post_init__(self) -> None:
        if isinstance(self.paths, (str, os.PathLike)):
            self.paths = [str(self.paths)]
        self.paths = [str(p) for p in self.paths]
        if not self.paths:
            raise ValueError("StreamSpec.paths is empty: give at least one shard directory, index or URL list")
        if self.weights is not None and len(self.weights) != len(self.paths):
            raise ValueError(f"StreamSpec has {len(self.paths)} paths but {len(self.weights)} weights")
        if self.temperature <= 0:
            raise ValueError(f"StreamSpec.temperature must be > 0, got {self.temperature}")


# --------------------------------------------------------------------------- mixing


def mixing_probabilities(sizes: Sequence[int], weights: Sequence[float] | None = None,
                         temperature: float = 1.0) -> np.ndarray:
    """Share of each shard set: normalised ``weights`` if given, else ``p_i ∝ n_i ** (1 / temperature)``.

    ``temperature`` 1 samples in proportion to size; larger values flatten towards uniform, which
    keeps small sources from being drowned by large ones.
    """
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (len(sizes),) or np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
            raise ValueError(f"mixing weights must be {len(sizes)} non-negative numbers, not all zero: {weights}")
        return w / w.sum()
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n = np.asarray(sizes, dtype=np.float64)
    if np.any(n <= 0):
        raise ValueError(
            f"cannot mix by temperature: set sizes {list(sizes)} include unknown (-1) or empty sets; give weights"
        )
    w = np.power(n, 1.0 / temperature)
    return w / w.sum()


# --------------------------------------------------------------------------- batching


def _collate(samples: list[dict[str, Any]], return_meta: bool) -> dict[str, Any]:
    """Stack one batch inside the worker: fixed-size tensors, targets with -1 for unknown; targets that
    are lists (a sample's boxes or points) stay one entry per sample, and ``view`` [B,4] maps each
    sample's stored pixels to its tensor's (see :func:`~sonofm.datasets.stream.augment.augment_sample`)."""
    batch: dict[str, Any] = {
        "image": torch.stack([s["image"] for s in samples]),
        "field": torch.stack([s["field"] for s in samples]),
        "key": [s["key"] for s in samples],
    }
    has = [s.get("mask") is not None for s in samples]
    batch["has_mask"] = torch.tensor(has, dtype=torch.bool)
    if any(has):
        size = samples[0]["image"].shape[-2:]
        zeros = torch.zeros(size, dtype=torch.long)
        batch["mask"] = torch.stack([s["mask"] if s.get("mask") is not None else zeros for s in samples])
    batch["view"] = torch.tensor([s["view"] for s in samples], dtype=torch.float64)
    names = sorted({k for s in samples for k in s["targets"]})
    batch["targets"] = {}
    for n in names:
        values = [s["targets"].get(n) for s in samples]
        if any(isinstance(v, (list, tuple, np.ndarray)) for v in values):  # geometry (boxes, points): per sample
            batch["targets"][n] = values
        else:
            batch["targets"][n] = torch.tensor([-1 if v is None else int(v) for v in values], dtype=torch.long)
    if return_meta:
        batch["meta"] = [s["meta"] for s in samples]
    return batch


class _ShardChecker:
    """Per-shard tallies of one round / one evaluation pass, to fail loudly on a shard that yields nothing."""

    def __init__(self) -> None:
        self.expected: Counter[str] = Counter()
        self.ok: Counter[str] = Counter()
        self.bad: Counter[str] = Counter()
        self.raw: Counter[str] = Counter()

    def check(self, where: str) -> None:
        for url, n in self.expected.items():
            if n != 0 and self.raw[url] == 0:
                raise StreamError(
                    f"shard {url} yielded no sample ({where}; index says {n}): it is empty, truncated at its "
                    "start or unreadable"
                )
            if self.ok[url] == 0 and self.bad[url] > 0 and self.bad[url] == self.raw[url]:
                raise StreamError(
                    f"shard {url} yielded no usable sample ({where}): all {self.bad[url]} samples were corrupt"
                )


class _Base(IterableDataset):
    def __init__(self, *, batch_size: int, img_size: int, target_fn: TargetFn | None, return_meta: bool,
                 counter: CorruptCounter) -> None:
        if batch_size < 1 or img_size < 1:
            raise ValueError(f"batch_size and img_size must be >= 1, got {batch_size}, {img_size}")
        self.batch_size, self.img_size = batch_size, img_size
        self.target_fn, self.return_meta, self.counter = target_fn, return_meta, counter

    def _sample(self, raw: dict[str, Any], transform: Callable[..., dict[str, Any]]) -> dict[str, Any] | None:
        try:
            image, field, mask, meta = decode_sample(raw)
            targets = self._targets(meta)
        except CorruptSample as e:
            self.counter.add(e.kind, raw["__url__"], raw["__key__"], str(e))
            return None
        out = transform(image, field, mask)
        out.pop("box", None)
        out.pop("flip", None)
        out["key"] = base_key(raw["__key__"])
        out["targets"] = targets
        out["meta"] = meta if self.return_meta else None
        return out


    def _targets(self, meta: dict[str, Any]) -> dict[str, Any]:
        """Targets of one sample; metadata they reject (unknown label, wrong type) makes it corrupt.

        One bad JSON must not kill a worker (and the run); a systematic mismatch still fails loudly,
        because a shard whose every sample is rejected raises :class:`StreamError`.
        """
        if self.target_fn is None:
            return {}
        try:
            return dict(self.target_fn(meta))
        except Exception as e:  # noqa: BLE001 - whatever the target function raises, the sample is unusable
            raise CorruptSample("json", f"metadata rejected by the targets: {type(e).__name__}: {e}") from e


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


# --------------------------------------------------------------------------- training stream


def _planned(count: int, fallback: int) -> int:
    return count if count > 0 else fallback


class _ShardSequence:
    """Infinite sequence of shards of one set for one consumer (resampled or passes over its share)."""

    def __init__(self, shards: list[Shard], resampled: bool, rng: np.random.Generator, fallback: int) -> None:
        self.shards, self.resampled, self.rng = shards, resampled, rng
        counts = np.array([_planned(c, fallback) for _, c in shards], dtype=np.float64)
        self.p = counts / counts.sum()
        self.fallback = fallback
        self._order: list[int] = []

    def take(self) -> Shard:
        """The next shard: drawn by size (resampled) or the next of a fresh permutation per round."""
        if self.resampled:
            i = int(self.rng.choice(len(self.shards), p=self.p))
        else:
            if not self._order:
                self._order = list(self.rng.permutation(len(self.shards)))
            i = int(self._order.pop(0))
        url, count = self.shards[i]
        return url, _planned(count, self.fallback)


class _TrainStream(_Base):
    def __init__(self, sets: list[list[Shard]], probs: np.ndarray, *, seed: int, rank: int, world_size: int,
                 num_workers: int, resume_samples: int, shuffle_buffer: int, round_samples: int,
                 resampled: bool, aug: AugmentConfig, **kw: Any) -> None:
        super().__init__(**kw)
        self.sets, self.probs = sets, probs
        self.seed, self.rank, self.world_size, self.num_workers = seed % 2**63, rank, world_size, num_workers
        self.resume_samples, self.shuffle_buffer = resume_samples, max(shuffle_buffer, 1)
        self.round_samples, self.resampled, self.aug = round_samples, resampled, aug
        known = [c for s in sets for _, c in s if c > 0]
        self.fallback = int(np.mean(known)) if known else 1000

    def _words(self, role: int) -> list[int]:
        return [self.seed, self.rank, self.world_size, role, self.num_workers]

    def _plans(self, role: int) -> Iterator[list[list[Shard]]]:
        words = self._words(role)
        consumer, n_consumers = self.rank * self.num_workers + role, self.world_size * self.num_workers
        seqs = []
        for i, shards in enumerate(self.sets):
            own = [s for s in shards if s[1] != 0]
            if not self.resampled:
                own = own[consumer::n_consumers]
            seqs.append(_ShardSequence(own, self.resampled, np.random.default_rng([*words, _PLAN, i]),
                                       self.fallback))
        credit = np.zeros(len(self.sets))
        while True:
            plan: list[list[Shard]] = []
            for i, seq in enumerate(seqs):
                credit[i] += self.probs[i] * self.round_samples
                chosen = []
                while credit[i] > 0:
                    url, n = seq.take()
                    chosen.append((url, n))
                    credit[i] -= n
                plan.append(chosen)
            yield plan

    def _round(self, plan: list[list[Shard]], rng: np.random.Generator,
               checker: _ShardChecker) -> Iterator[dict[str, Any]]:
        """Raw samples of one round: uniformly random merge of the sets' shard chains, then shuffle buffer."""

        def chain(shards: list[Shard]) -> Iterator[dict[str, Any]]:
            for url, _ in shards:
                for raw in iter_tar_samples(url, self.counter):
                    checker.raw[url] += 1
                    yield raw

        for shards in plan:
            for url, n in shards:
                checker.expected[url] += n
        subs = [chain(shards) for shards in plan]
        order = rng.permutation(np.repeat(np.arange(len(plan)), [sum(n for _, n in s) for s in plan]))

        def merged() -> Iterator[dict[str, Any]]:
            for i in order:
                raw = next(subs[i], None)
                if raw is not None:
                    yield raw
            for sub in subs:  # the index undercounted a shard: keep its extra samples
                yield from sub

        buf: list[dict[str, Any]] = []
        for raw in merged():
            if len(buf) < self.shuffle_buffer:
                buf.append(raw)
                continue
            j = int(rng.integers(len(buf)))
            buf[j], raw = raw, buf[j]
            yield raw
        for j in rng.permutation(len(buf)):
            yield buf[j]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, n_workers = _worker()
        if n_workers != self.num_workers:
            raise StreamError(f"stream built for {self.num_workers} workers runs in {n_workers}")
        done_batches = self.resume_samples // self.batch_size
        role = (worker + done_batches) % n_workers
        produced = done_batches // n_workers + (1 if role < done_batches % n_workers else 0)
        skip = produced * self.batch_size
        words = self._words(role)
        rounds = self._plans(role)
        round_idx = 0
        plan = next(rounds)
        while skip >= sum(n for shards in plan for _, n in shards):  # arithmetic only: no reading
            skip -= sum(n for shards in plan for _, n in shards)
            plan, round_idx = next(rounds), round_idx + 1
        batch: list[dict[str, Any]] = []
        while True:
            checker = _ShardChecker()
            rng = np.random.default_rng([*words, _ROUND, round_idx])
            decoded = ok = 0
            for pos, raw in enumerate(self._round(plan, rng, checker)):
                if pos < skip:
                    continue
                aug_rng = np.random.default_rng([*words, _AUG, round_idx, pos])
                sample = self._sample(raw, lambda im, f, m, r=aug_rng: augment_sample(
                    im, f, m, self.img_size, r, self.aug))
                decoded += 1
                if sample is None:
                    checker.bad[raw["__url__"]] += 1
                    continue
                ok += 1
                checker.ok[raw["__url__"]] += 1
                batch.append(sample)
                if len(batch) == self.batch_size:
                    yield _collate(batch, self.return_meta)
                    batch = []
            where = f"training round {round_idx} of rank {self.rank}, worker role {role}"
            checker.check(where)
            if decoded and not ok:
                raise StreamError(f"the stream yielded no usable sample in {where}: "
                                  f"corrupt counts {self.counter.as_dict()}")
            skip = 0
            plan, round_idx = next(rounds), round_idx + 1


# --------------------------------------------------------------------------- evaluation stream


def eval_assignment(n_shards: int, consumer: int, n_consumers: int) -> list[tuple[int, int, int]]:
    """``(shard, stride, offset)`` reads of one consumer so that every sample is read exactly once."""
    if n_shards >= n_consumers:
        return [(j, 1, 0) for j in range(consumer, n_shards, n_consumers)]
    j = consumer % n_shards
    sharers = len(range(j, n_consumers, n_shards))
    return [(j, sharers, consumer // n_shards)]


class _EvalStream(_Base):
    def __init__(self, shards: list[Shard], *, rank: int, world_size: int, num_workers: int, transform: str,
                 **kw: Any) -> None:
        super().__init__(**kw)
        self.shards, self.rank, self.world_size, self.num_workers = shards, rank, world_size, num_workers
        self.transform = transform

    def expected_on_rank(self) -> int:
        """Samples the index promises this rank (-1 if some count is unknown)."""
        total = 0
        for w in range(self.num_workers):
            for j, stride, offset in eval_assignment(len(self.shards), self.rank * self.num_workers + w,
                                                     self.world_size * self.num_workers):
                n = self.shards[j][1]
                if n < 0:
                    return -1
                total += len(range(offset, n, stride))
        return total

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, n_workers = _worker()
        if n_workers != self.num_workers:
            raise StreamError(f"stream built for {self.num_workers} workers runs in {n_workers}")
        checker = _ShardChecker()
        batch: list[dict[str, Any]] = []
        consumer = self.rank * n_workers + worker
        for j, stride, offset in eval_assignment(len(self.shards), consumer, self.world_size * n_workers):
            url, n = self.shards[j]
            checker.expected[url] += len(range(offset, n, stride)) if n >= 0 else -1
            for raw in iter_tar_samples(url, self.counter, stride, offset, report_tar=offset == 0):
                checker.raw[url] += 1
                sample = self._sample(raw, lambda im, f, m: eval_sample(im, f, m, self.img_size, self.transform))
                if sample is None:
                    checker.bad[url] += 1
                    continue
                checker.ok[url] += 1
                batch.append(sample)
                if len(batch) == self.batch_size:
                    yield _collate(batch, self.return_meta)
                    batch = []
        if batch:
            yield _collate(batch, self.return_meta)
        checker.check(f"evaluation, rank {self.rank}, worker {worker}")


# --------------------------------------------------------------------------- loaders


class StreamLoader(DataLoader):
    """A plain DataLoader over a stream that also exposes the corrupt-sample counts.

    Iterate a training loader once (it is infinite; a second ``iter`` restarts at the resume
    position). An evaluation loader raises :class:`StreamError` when its rank got no sample although
    the index promised some.
    """

    @property
    def corrupt(self) -> CorruptCounter:
        """The dataset's counter, shared by the workers."""
        return self.dataset.counter

    def corrupt_counts(self) -> dict[str, int]:
        """Corrupt data skipped so far on this rank, by kind, plus ``total`` (all-reduce across ranks if needed)."""
        return self.corrupt.as_dict()

    def __iter__(self) -> Iterator[Any]:
        # The training loader returns DataLoader's own iterator (no wrapping generator), so that
        # dropping it shuts the workers down exactly as a plain DataLoader does.
        if isinstance(self.dataset, _EvalStream):
            return self._checked(super().__iter__(), self.dataset)
        return super().__iter__()

    def _checked(self, batches: Iterator[Any], dataset: _EvalStream) -> Iterator[Any]:
        n = 0
        for batch in batches:
            n += len(batch["key"])
            yield batch
        if n == 0 and dataset.expected_on_rank() != 0:
            raise StreamError(f"evaluation stream of rank {dataset.rank} yielded nothing: "
                              f"corrupt counts {self.corrupt_counts()}")


def corrupt_counts(loader: StreamLoader | IterableDataset) -> dict[str, int]:
    """Corrupt samples/shards skipped so far by a loader (or its dataset) on this rank, by kind + ``total``."""
    dataset = loader.dataset if isinstance(loader, StreamLoader) else loader
    counter = getattr(dataset, "counter", None)
    if not isinstance(counter, CorruptCounter):
        raise TypeError(f"{type(loader).__name__} is not a sonofm stream loader")
    return counter.as_dict()


def _loader(dataset: _Base, num_workers: int, persistent_workers: bool, pin_memory: bool,
            prefetch_factor: int | None) -> StreamLoader:
    return StreamLoader(
        dataset,
        batch_size=None,  # batches are collated in the workers
        num_workers=num_workers,
        persistent_workers=persistent_workers and num_workers > 0,
        pin_memory=pin_memory,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
    )


def _check_common(batch_size: int, rank: int, world_size: int, num_workers: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def make_train_loader(spec: StreamSpec, *, batch_size: int, img_size: int, seed: int, rank: int = 0,
                      world_size: int = 1, num_workers: int = 2, resume_samples: int = 0,
                      shuffle_buffer: int = 1000, aug: AugmentConfig | dict[str, Any] | None = None,
                      target_fn: TargetFn | None = None, round_samples: int | None = None,
                      resampled: bool = True, return_meta: bool = False, persistent_workers: bool = True,
                      pin_memory: bool = False, prefetch_factor: int | None = 2) -> StreamLoader:
    """Infinite, reproducible, resumable training loader for one rank (see the module docstring).

    ``resume_samples``: samples this rank consumed before (``steps * batch_size``). ``round_samples``:
    samples per worker between re-planning (default ``max(1024, 4 * largest shard)``; larger is
    smoother mixing, smaller is cheaper to resume). Do not pass it through ``accelerator.prepare``.
    """
    _check_common(batch_size, rank, world_size, num_workers)
    if resume_samples < 0 or resume_samples % batch_size:
        raise ValueError(f"resume_samples must be a multiple of batch_size={batch_size}, got {resume_samples}")
    sets = [discover_shards(p, spec.split) for p in spec.paths]
    consumers = world_size * max(num_workers, 1)
    for path, shards in zip(spec.paths, sets):
        usable = [s for s in shards if s[1] != 0]
        if not usable:
            raise StreamError(f"{path}: no non-empty shard of split {spec.split!r}")
        if not resampled and len(usable) < consumers:
            raise StreamError(
                f"{path}: {len(usable)} shards of split {spec.split!r} for {consumers} consumers "
                f"(world_size {world_size} x num_workers {max(num_workers, 1)}); every consumer needs one. "
                "Write smaller shards, use fewer workers, or keep resampled=True"
            )
    sizes = [sum(c for _, c in s) if all(c >= 0 for _, c in s) else -1 for s in sets]
    probs = mixing_probabilities(sizes, spec.weights, spec.temperature)
    largest = max(c for s in sets for _, c in s)
    if round_samples is None:
        round_samples = max(1024, 4 * largest)
    if round_samples < 1:
        raise ValueError(f"round_samples must be >= 1, got {round_samples}")
    dataset = _TrainStream(
        sets, probs, seed=seed, rank=rank, world_size=world_size, num_workers=max(num_workers, 1),
        resume_samples=resume_samples, shuffle_buffer=shuffle_buffer, round_samples=round_samples,
        resampled=resampled, aug=AugmentConfig.from_any(aug), batch_size=batch_size, img_size=img_size,
        target_fn=target_fn, return_meta=return_meta, counter=CorruptCounter(),
    )
    log.info("training stream: %s", ", ".join(
        f"{p} ({len(s)} shards, {n if n >= 0 else '?'} samples, p={q:.3f})"
        for p, s, n, q in zip(spec.paths, sets, sizes, probs)))
    return _loader(dataset, num_workers, persistent_workers, pin_memory, prefetch_factor)


def make_eval_loader(spec: StreamSpec, *, batch_size: int, img_size: int, rank: int = 0, world_size: int = 1,
                     num_workers: int = 2, target_fn: TargetFn | None = None, transform: str = "letterbox",
                     return_meta: bool = False, persistent_workers: bool = False,
                     pin_memory: bool = False, prefetch_factor: int | None = 2) -> StreamLoader:
    """Finite loader reading every sample of ``spec.split`` exactly once across all ranks and workers.

    ``transform``: ``letterbox`` (whole image, zero padding) or ``center_crop``. Batches may be
    smaller than ``batch_size`` at the end of each worker's share.
    """
    _check_common(batch_size, rank, world_size, num_workers)
    shards = [s for p in spec.paths for s in discover_shards(p, spec.split)]
    if not shards:
        raise StreamError(f"no shard of split {spec.split!r} in {spec.paths}")
    if transform not in ("letterbox", "center_crop"):
        raise ValueError(f"transform must be 'letterbox' or 'center_crop', got {transform!r}")
    dataset = _EvalStream(
        shards, rank=rank, world_size=world_size, num_workers=max(num_workers, 1), transform=transform,
        batch_size=batch_size, img_size=img_size, target_fn=target_fn, return_meta=return_meta,
        counter=CorruptCounter(),
    )
    return _loader(dataset, num_workers, persistent_workers, pin_memory, prefetch_factor)


def samples_per_rank(batches: int, batch_size: int) -> int:
    """The ``resume_samples`` value after ``batches`` batches of ``batch_size`` on each rank."""
    return int(batches) * int(batch_size)


__all__ = [
    "CORRUPT_KINDS", "AugmentConfig", "CorruptCounter", "StreamError", "StreamLoader", "StreamSpec",
    "corrupt_counts", "discover_shards", "eval_assignment", "make_eval_loader", "make_train_loader", "shard_indexes",
    "mixing_probabilities", "samples_per_rank",
]
