"""Per-item work of a shard build, run in worker processes: decode, preprocess, split, encode.

Each worker rebuilds the adapter and taxonomy from a picklable :class:`Job` and turns one item
(a file, a row) into an :class:`ItemResult`: its samples ready to write, or the reason it failed.
What depends on the order of items (near-duplicate removal, cutting into shards) is left to the
main process, which receives the results in item order (:func:`item_results`), so the shards are
the same whatever the number of workers.

The frames of one clip share their acoustic field (:func:`clip_field_map`); only the first
:data:`CLIP_BUFFER` records of an item are held to find it, the rest of a long cine loop streams
through.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sonofm.datasets.build.pseudonyms import pseudonymise_meta
from sonofm.datasets.build.splits import assign_split
from sonofm.datasets.preprocess.dedup import image_digests
from sonofm.datasets.shards import encode_png, sample_key, sample_meta
from sonofm.datasets.sources.imageio import MAX_ASPECT, MIN_SIDE, degenerate_reason
from sonofm.datasets.sources.specs import SourceSpec, make_adapter
from sonofm.datasets.taxonomy import SourceInfo

#: Records of one item held in memory at once to find the fields of its clips.
CLIP_BUFFER = 64


@dataclass
class Job:
    """Everything a worker needs, picklable (workers rebuild the adapter and taxonomy themselves)."""

    spec: SourceSpec
    source: str
    info: SourceInfo
    taxonomy_files: tuple[str, ...]
    max_side: int
    fractions: dict[str, float]
    salt: str
    dedup: bool
    colour_limit: float | None = None
    pseudonym_key: bytes | None = None  # set: paths and groups stored as keyed hashes
    skip_keys: frozenset[str] = frozenset()  # shards already written: no PNG encoding for these keys
    min_side: int = MIN_SIDE
    max_aspect: float = MAX_ASPECT
    text: str = "blank"  # text touching the kept image: "blank" (default) or "keep"


@dataclass
class SampleOut:
    """One preprocessed sample, encoded, with what the main process counts for the report."""

    key: str
    meta: dict[str, Any]
    where: str  # the real ``path[#frame]`` for reports (``meta`` may hold a pseudonym)
    png: bytes | None
    mask_png: bytes | None
    field_png: bytes | None
    digests: tuple[str, int] | None  # dedup.image_digests of the preprocessed image (None without dedup)
    colour: bool
    colour_blanked: bool
    text_outside: bool
    text_inside: bool
    text_blanked: bool = False


@dataclass
class ItemResult:
    """One item's samples, or the reason it failed, and what its adapter counted meanwhile."""

    path: str
    outs: list[SampleOut]
    error: str | None
    stats: dict[str, int]
    notes: list[dict[str, str]] = field(default_factory=list)  # what this item left out, named


class Worker:
    """Decodes and preprocesses one item; lives once per process."""

    def __init__(self, job: Job):
        from sonofm.datasets.preprocess.pipeline import ColourLimitExceeded, preprocess
        from sonofm.datasets.taxonomy import Taxonomy

        self.colour_limit_exceeded = ColourLimitExceeded
        self.job = job
        self.adapter = make_adapter(job.spec)
        self.taxonomy = Taxonomy.with_user_files(job.taxonomy_files)
        self.preprocess = preprocess

    def __call__(self, item: Any) -> ItemResult:
        from sonofm.datasets.taxonomy import TaxonomyError

        path = str(getattr(item, "path", item))
        before = dict(getattr(self.adapter, "stats", {}) or {})
        self.adapter.notes = []
        try:
            outs = list(self._samples(item, path))
        except TaxonomyError:
            raise  # a configuration error, not a bad file: stop the build
        except Exception as e:  # noqa: BLE001 - any failure on one file is counted, never fatal
            reason = str(e) or type(e).__name__
            if path not in reason:
                reason = f"{path}: {reason}"
            return ItemResult(path, [], f"{type(e).__name__}: {reason}", _delta(before, self.adapter),
                              self.adapter.notes)
        return ItemResult(path, outs, None, _delta(before, self.adapter), self.adapter.notes)

    def _admit(self, record: Any) -> bool:
        """Whether a record becomes a sample; a kept one carries its checked source, organ and region."""
        job = self.job
        # a thumbnail, a strip, a blank export: counted and named, never stored as a sample
        bad = degenerate_reason(record.image, job.min_side, job.max_aspect)
        if bad is not None:
            self.adapter.skip(bad[0], _where(record.meta), bad[1])
            return False
        # organ / region / label checked and filled before the costly part; preprocess keeps them
        record.meta = self.taxonomy.annotate({**record.meta, "source": job.source}, job.info)
        return True

    def _samples(self, item: Any, path: str) -> Iterator[SampleOut]:
        """The samples of one item in record order; each clip's frames get the field found from them."""
        job = self.job
        # ``i`` stays the record's own index in the item: keys do not move. Only the first
        # CLIP_BUFFER records are held at once (a long cine loop is not decoded into memory):
        # they give each clip its field, and the rest of the item streams through with it.
        stream = enumerate(self.adapter.load(item))
        head = [(i, r) for i, r in itertools.islice(stream, CLIP_BUFFER) if self._admit(r)]
        known = clip_field_map([r for _, r in head])
        for i, record in itertools.chain(head, ((i, r) for i, r in stream if self._admit(r))):
            fld = known.get(_clip_key(record)) if record.meta.get("frame") is not None else None
            try:
                processed = self.preprocess(record, max_side=job.max_side, colour_limit=job.colour_limit,
                                            field=fld, text=job.text)
            except self.colour_limit_exceeded:
                self.adapter.count("dropped_colour_limit")  # counted in the report, the item goes on
                continue
            yield self._sample(i, path, processed)

    def _sample(self, i: int, path: str, processed: Any) -> SampleOut:
        """A preprocessed record with its group, split and key (PNGs skipped for written shards)."""
        job = self.job
        pmeta = dict(processed.meta)
        group = pmeta.get("group")
        if group is None or group == "":
            group = pmeta.get("path") or path
        pmeta["group"] = str(group)
        pmeta["split"] = assign_split(f"{job.source}/{pmeta['group']}", job.fractions, job.salt)
        where = _where({**pmeta, "path": pmeta.get("path") or path})
        if job.pseudonym_key is not None:  # after the split: it does not depend on the setting
            pmeta = pseudonymise_meta({**pmeta, "path": pmeta.get("path") or path}, job.pseudonym_key)
        key = sample_key(job.source, pmeta.get("path") or path, pmeta.get("frame"), i)
        encode = key not in job.skip_keys
        return SampleOut(
            key=key,
            meta=sample_meta(pmeta),
            where=where,
            png=encode_png(processed.image) if encode else None,
            mask_png=encode_png(processed.mask) if encode and processed.mask is not None else None,
            field_png=(
                encode_png(processed.field_mask) if encode and processed.field_mask is not None else None
            ),
            digests=image_digests(processed.image) if job.dedup else None,
            colour=bool(pmeta["colour"]["is_colour"]),
            colour_blanked=bool(pmeta["colour"].get("blanked_pixels")),
            text_outside=bool(pmeta.get("text_outside_field")),
            text_inside=bool(pmeta.get("text_inside_field")),
            text_blanked=bool(pmeta.get("text_blanked_pixels")),
        )


def _clip_key(record: Any) -> tuple[Any, ...]:
    """Frames of one clip: same file (one item), same ultrasound region, same size."""
    return record.meta.get("us_region"), record.image.shape[:2]


def clip_field_map(records: Sequence[Any]) -> dict[tuple[Any, ...], Any]:
    """One acoustic field per clip among ``records`` (the frames of a video or multi-frame DICOM).

    The frames of one clip share their field: it is detected once from all of them, where pixels
    that never change are UI, not tissue (:func:`~sonofm.datasets.preprocess.field.detect_clip_field`),
    instead of frame by frame. Stills and clips of one frame get none (detected alone).
    """
    from sonofm.datasets.preprocess.field import detect_clip_field
    from sonofm.datasets.preprocess.pipeline import detection_gray

    clips: dict[tuple[Any, ...], list[Any]] = {}
    for r in records:
        if r.meta.get("frame") is not None:
            clips.setdefault(_clip_key(r), []).append(r)
    return {key: detect_clip_field([detection_gray(r.image) for r in members])
            for key, members in clips.items() if len(members) >= 2}


def clip_fields(records: Sequence[Any]) -> list[Any]:
    """:func:`clip_field_map` per record, in order (``None`` where the record is detected alone)."""
    known = clip_field_map(records)
    return [known.get(_clip_key(r)) if r.meta.get("frame") is not None else None for r in records]


def _where(meta: dict[str, Any]) -> str:
    """``path`` or ``path#frame``: how reports name a sample."""
    frame = meta.get("frame")
    return f"{meta.get('path')}#{frame}" if frame is not None else str(meta.get("path"))


def _delta(before: dict[str, int], adapter: Any) -> dict[str, int]:
    """What the adapter counted while on one item (its counters run across items)."""
    after = dict(getattr(adapter, "stats", {}) or {})
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


_WORKER: Worker | None = None
_WORKER_ERROR: BaseException | None = None


def _init_worker(job: Job) -> None:
    # An exception escaping a Pool initializer makes the pool respawn workers forever: keep it and
    # raise it from the first task instead, so the main process sees it.
    global _WORKER, _WORKER_ERROR
    try:
        _WORKER = Worker(job)
    except BaseException as e:  # noqa: BLE001
        _WORKER_ERROR = e


def _run_item(item: Any) -> ItemResult:
    if _WORKER is None:
        raise RuntimeError(f"shard worker failed to start: {_WORKER_ERROR!r}") from _WORKER_ERROR
    return _WORKER(item)


def item_results(job: Job, items: Sequence[Any], workers: int) -> Iterator[ItemResult]:
    """Item results in item order, from ``workers`` processes (or this one when ``workers <= 1``)."""
    if workers <= 1 or len(items) <= 1:
        worker = Worker(job)
        for item in items:
            yield worker(item)
        return
    # The platform's default start method: fork on Linux (no re-import of the caller's script,
    # fast start); where it is spawn/forkserver, scripts need the usual ``if __name__ == "__main__"``.
    ctx = mp.get_context()
    with ctx.Pool(processes=workers, initializer=_init_worker, initargs=(job,)) as pool:
        yield from pool.imap(_run_item, items, chunksize=1)


__all__ = ["CLIP_BUFFER", "ItemResult", "Job", "SampleOut", "Worker", "clip_field_map", "clip_fields",
           "item_results"]
