"""Build shards: adapters -> taxonomy -> preprocess -> dedup -> split -> shard writer, per source.

Determinism: the items of a source are decoded in several processes (``Pool.imap``, which keeps
their order), and everything order-dependent (near-duplicate removal, cutting into shards) runs in
the main process in item order, so the shards are the same whatever the number of workers.

Each source is built on its own (one duplicate filter per source, its own index), so adding or
rebuilding one source never changes the shards of another.

Resuming a killed build. A sample's split comes from its group alone, but which shard it lands in
depends on how many samples of its split were kept before it, and near-duplicate removal makes
that depend on every earlier image, so a re-run cannot simply jump to the first missing shard.
We chose to decode, preprocess and deduplicate the source again (the bulk of the cost, mostly
field detection, is paid twice, but the result is always right) and to skip only the *writing*:
every finished shard is recorded in a hidden, append-only ``.{source}.progress.jsonl`` (build
fingerprint, then one line per shard: file, split, count, size, sha256 and its keys). A re-run
with the same fingerprint (settings, adapter and options, every file with its size and mtime)
hands the recorded keys to the workers, which skip PNG encoding for them, and the writer checks
that the same keys arrive in the same order and that the file still has its recorded sha256
before moving on without touching it. Any difference raises ``ResumeMismatch`` and the source is
rebuilt from scratch. A finished source gets ``{source}.index.json`` with the fingerprint; a
later run with nothing changed skips it without decoding anything. The alternative,
checkpointing the dedup state and the open shards' contents, would also save the decoding, but
is far more state to keep consistent.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing as mp
import os
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sonofm import __version__
from sonofm.atomic_io import write_text
from sonofm.datasets.dedup import image_digests
from sonofm.datasets.imageio import MAX_ASPECT, MIN_SIDE, degenerate_reason
from sonofm.datasets.pseudonyms import (
    DEFAULT_ON,
    key_fingerprint,
    pseudonym_key,
    pseudonymise_meta,
    scrub_report,
)
from sonofm.datasets.shards import (
    INDEX_VERSION,
    OutputError,
    ResumeMismatch,
    Sample,
    ShardSetWriter,
    check_source_name,
    check_split_name,
    encode_png,
    index_path,
    keys_sha256,
    output_error,
    progress_path,
    read_index,
    sample_key,
    sample_meta,
    shard_pattern,
    write_json_atomic,
)
from sonofm.datasets.splits import assign_split, normalise_fractions
from sonofm.datasets.taxonomy import SourceInfo, Taxonomy, display, regions_of
from sonofm.errors import UserError

MAX_ERRORS_LISTED = 200

#: Counters of things left out, with how the console line names them (``report["skipped"]``).
SKIP_LABELS = {
    "skipped_tiny": "tiny",
    "skipped_extreme_aspect": "extreme aspect ratio",
    "skipped_all_black": "all black",
    "skipped_constant": "constant",
    "duplicate_keys": "duplicate keys",
    "ragged_csv_rows": "ragged CSV rows",
    "symlinks_dangling": "dangling links",
    "symlinks_outside_root": "links leaving the source folder",
    "symlink_loops": "link loops",
    "files_linked_twice": "files reached twice through links",
    "special_files": "FIFOs/sockets",
    "unreadable_folders": "unreadable folders",
    "unreadable_files": "unreadable files",
    "other_files_ignored": "non-media files",
}
#: Counters of samples written changed (``report["altered"]``).
ALTERED_LABELS = {"masks_thresholded": "soft masks cut at half range"}
#: Counters the console line already shows in its own words.
_SHOWN = {"dropped_colour_limit"}


class BadSpecError(UserError, ValueError):
    """A source spec that cannot be read (form, option value, a name given twice)."""


class EmptySourceError(UserError, RuntimeError):
    """A source that gave no sample at all (every file unreadable, or every image skipped): the
    message names the source, its file count and the first reasons. Still a ``RuntimeError``."""


# ------------------------------------------------------------------------------------- source specs


#: Spec keys that describe the source itself (its place in the taxonomy), not options of its adapter.
DESCRIPTION_KEYS = ("organ", "region", "description")


@dataclass
class SourceSpec:
    """One source to build: adapter name, dataset root, optional source name, adapter options, and
    what the spec says of the source (``organ``, ``region``, ``description``; all optional)."""

    adapter: str
    root: Path
    source: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    organ: str | None = None
    region: str | None = None
    description: str | None = None
    pseudonymise: bool | None = None  # paths and groups as keyed hashes; None: on for dicom/folder/csv

    def __post_init__(self) -> None:
        self.root = Path(self.root).expanduser()


def _scalar(text: str) -> Any:
    """Option values from a query string: YAML scalars (``8`` -> int, ``true`` -> bool, ``null``)."""
    try:
        v = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return v if isinstance(v, (str, int, float, bool, type(None), list)) else text


def _flag(value: Any, name: str, where: str) -> bool:
    if not isinstance(value, bool):
        raise BadSpecError(f"{where}: {name} must be true or false, got {value!r}")
    return value


def _spec_from_mapping(entry: dict[str, Any], base: Path | None, where: str) -> SourceSpec:
    e = dict(entry)
    adapter = e.pop("adapter", None)
    root = e.pop("root", e.pop("path", None))
    if not adapter or root is None:
        raise ValueError(f"{where}: a source entry needs 'adapter' and 'root' (or 'path'), got {entry}")
    source = e.pop("source", None)
    described = {k: e.pop(k) for k in DESCRIPTION_KEYS if k in e}
    if "pseudonymise" in e:
        described["pseudonymise"] = _flag(e.pop("pseudonymise"), "pseudonymise", where)
    options = dict(e.pop("options", None) or {})
    options.update(e)  # any other key is an adapter option
    root = Path(str(root)).expanduser()
    if base is not None and not root.is_absolute():
        root = base / root
    return SourceSpec(str(adapter), root, source, options, **described)


def parse_source_arg(s: str | dict[str, Any]) -> SourceSpec | list[SourceSpec]:
    """``"busi:PATH"`` or ``"folder:PATH?source=x&mask_pattern=*_mask.png"`` -> :class:`SourceSpec`.

    A path to a YAML file (a list of such strings or of mappings with ``adapter``, ``root``,
    ``source``, ``organ``, ``region``, ``description``, ``options``/other keys; relative roots are
    relative to the file) gives a list
    of specs; :func:`build_shards` accepts such lists inside its ``sources`` and flattens them.
    """
    if isinstance(s, SourceSpec):
        return s
    if isinstance(s, dict):
        return _spec_from_mapping(s, None, "source entry")
    text = str(s).strip()
    if text.lower().endswith((".yaml", ".yml")) and Path(text).expanduser().is_file():
        return load_sources_file(text)
    adapter, sep, rest = text.partition(":")
    if not sep or not adapter or not rest:
        raise BadSpecError(
            f"source {text!r}: expected ADAPTER:PATH (e.g. busi:../shared/data/busi, "
            "folder:DIR?source=name&mask_pattern=*_mask.png) or a YAML list file"
        )
    path, _, query = rest.partition("?")
    options: dict[str, Any] = {}
    described: dict[str, str] = {}
    source = None
    for k, v in urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if k == "source":
            source = v
        elif k in DESCRIPTION_KEYS:
            described[k] = v
        elif k == "pseudonymise":
            described[k] = _flag(_scalar(v), k, text)
        else:
            options[k] = _scalar(v)
    return SourceSpec(adapter.strip(), Path(path), source, options, **described)


def load_sources_file(path: str | os.PathLike) -> list[SourceSpec]:
    """Sources listed in a YAML file (a list, or a mapping with a ``sources`` list)."""
    p = Path(path).expanduser()
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{p}: cannot read the source list ({e})") from e
    if isinstance(data, dict) and "sources" in data:
        data = data["sources"]
    if not isinstance(data, list) or not data:
        raise ValueError(f"{p}: expected a non-empty YAML list of sources")
    out: list[SourceSpec] = []
    for i, entry in enumerate(data):
        where = f"{p} entry {i}"
        if isinstance(entry, dict):
            out.append(_spec_from_mapping(entry, p.parent, where))
        elif isinstance(entry, str):
            spec = parse_source_arg(entry)
            if isinstance(spec, list):
                raise ValueError(f"{where}: nested source files are not supported")
            if not spec.root.is_absolute():
                spec.root = p.parent / spec.root
            out.append(spec)
        else:
            raise ValueError(f"{where}: expected 'adapter:PATH' or a mapping, got {entry!r}")
    return out


def parse_sources(args: Iterable[Any]) -> list[SourceSpec]:
    """Flatten strings, YAML files, mappings, specs and lists of them into a list of specs."""
    out: list[SourceSpec] = []
    for a in args:
        if isinstance(a, (list, tuple)):
            out.extend(parse_sources(a))
        else:
            spec = parse_source_arg(a)
            out.extend(spec if isinstance(spec, list) else [spec])
    return out


# ------------------------------------------------------------------------------------------- stages


def make_adapter(spec: SourceSpec) -> Any:
    """The adapter object for ``spec`` (the source override goes to the adapter)."""
    from sonofm.datasets.adapters import get_adapter

    kwargs = dict(spec.options)
    if spec.source is not None:
        kwargs["source"] = spec.source
    return get_adapter(spec.adapter, spec.root, **kwargs)


def _source_name(adapter: Any, spec: SourceSpec) -> str:
    return check_source_name(spec.source or getattr(adapter, "source", None) or spec.adapter)


@dataclass
class _Job:
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
    skip_keys: frozenset[str] = frozenset()
    min_side: int = MIN_SIDE
    max_aspect: float = MAX_ASPECT


@dataclass
class _Out:
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


@dataclass
class _ItemResult:
    path: str
    outs: list[_Out]
    error: str | None
    stats: dict[str, int]
    notes: list[dict[str, str]] = field(default_factory=list)  # what this item left out, named


class _Worker:
    """Decodes and preprocesses one item; lives once per process."""

    def __init__(self, job: _Job):
        from sonofm.datasets.preprocess import ColourLimitExceeded, preprocess
        from sonofm.datasets.taxonomy import Taxonomy

        self.colour_limit_exceeded = ColourLimitExceeded
        self.job = job
        self.adapter = make_adapter(job.spec)
        self.taxonomy = Taxonomy.with_user_files(job.taxonomy_files)
        self.preprocess = preprocess

    def __call__(self, item: Any) -> _ItemResult:
        from sonofm.datasets.taxonomy import TaxonomyError

        job = self.job
        path = str(getattr(item, "path", item))
        before = dict(getattr(self.adapter, "stats", {}) or {})
        self.adapter.notes = []
        outs: list[_Out] = []
        try:
            def admit(record: Any) -> bool:
                # a thumbnail, a strip, a blank export: counted and named, never stored as a sample
                bad = degenerate_reason(record.image, job.min_side, job.max_aspect)
                if bad is not None:
                    self.adapter.skip(bad[0], _where(record.meta), bad[1])
                    return False
                # organ / region / label checked and filled before the costly part; preprocess keeps them
                record.meta = self.taxonomy.annotate({**record.meta, "source": job.source}, job.info)
                return True

            # ``i`` stays the record's own index in the item: keys do not move. Only the first
            # CLIP_BUFFER records are held at once (a long cine loop is not decoded into memory):
            # they give each clip its field, and the rest of the item streams through with it.
            stream = enumerate(self.adapter.load(item))
            head = [(i, r) for i, r in itertools.islice(stream, CLIP_BUFFER) if admit(r)]
            known = clip_field_map([r for _, r in head])
            for i, record in itertools.chain(head, ((i, r) for i, r in stream if admit(r))):
                fld = known.get(_clip_key(record)) if record.meta.get("frame") is not None else None
                try:
                    processed = self.preprocess(record, max_side=job.max_side, colour_limit=job.colour_limit,
                                                field=fld)
                except self.colour_limit_exceeded:
                    self.adapter.count("dropped_colour_limit")  # counted in the report, the item goes on
                    continue
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
                outs.append(
                    _Out(
                        key=key,
                        meta=sample_meta(pmeta),
                        where=where,
                        png=encode_png(processed.image) if encode else None,
                        mask_png=(
                            encode_png(processed.mask) if encode and processed.mask is not None else None
                        ),
                        field_png=(
                            encode_png(processed.field_mask)
                            if encode and processed.field_mask is not None
                            else None
                        ),
                        digests=image_digests(processed.image) if job.dedup else None,
                        colour=bool(pmeta["colour"]["is_colour"]),
                        colour_blanked=bool(pmeta["colour"].get("blanked_pixels")),
                        text_outside=bool(pmeta.get("text_outside_field")),
                        text_inside=bool(pmeta.get("text_inside_field")),
                    )
                )
        except TaxonomyError:
            raise  # a configuration error, not a bad file: stop the build
        except Exception as e:  # noqa: BLE001 - any failure on one file is counted, never fatal
            reason = str(e) or type(e).__name__
            if path not in reason:
                reason = f"{path}: {reason}"
            return _ItemResult(path, [], f"{type(e).__name__}: {reason}", _delta(before, self.adapter),
                               self.adapter.notes)
        return _ItemResult(path, outs, None, _delta(before, self.adapter), self.adapter.notes)


#: Records of one item held in memory at once to find the fields of its clips.
CLIP_BUFFER = 64


def _clip_key(record: Any) -> tuple[Any, ...]:
    """Frames of one clip: same file (one item), same ultrasound region, same size."""
    return record.meta.get("us_region"), record.image.shape[:2]


def clip_field_map(records: Sequence[Any]) -> dict[tuple[Any, ...], Any]:
    """One acoustic field per clip among ``records`` (the frames of a video or multi-frame DICOM).

    The frames of one clip share their field: it is detected once from all of them, where pixels
    that never change are UI, not tissue (:func:`~sonofm.datasets.field.detect_clip_field`),
    instead of frame by frame. Stills and clips of one frame get none (detected alone).
    """
    from sonofm.datasets.field import detect_clip_field
    from sonofm.datasets.preprocess import detection_gray

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
    after = dict(getattr(adapter, "stats", {}) or {})
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


_WORKER: _Worker | None = None
_WORKER_ERROR: BaseException | None = None


def _init_worker(job: _Job) -> None:
    # An exception escaping a Pool initializer makes the pool respawn workers forever: keep it and
    # raise it from the first task instead, so the main process sees it.
    global _WORKER, _WORKER_ERROR
    try:
        _WORKER = _Worker(job)
    except BaseException as e:  # noqa: BLE001
        _WORKER_ERROR = e


def _run_item(item: Any) -> _ItemResult:
    if _WORKER is None:
        raise RuntimeError(f"shard worker failed to start: {_WORKER_ERROR!r}") from _WORKER_ERROR
    return _WORKER(item)


def _results(job: _Job, items: Sequence[Any], workers: int) -> Iterator[_ItemResult]:
    """Item results in item order, from ``workers`` processes (or this one when ``workers <= 1``)."""
    if workers <= 1 or len(items) <= 1:
        worker = _Worker(job)
        for item in items:
            yield worker(item)
        return
    # The platform's default start method: fork on Linux (no re-import of the caller's script,
    # fast start); where it is spawn/forkserver, scripts need the usual ``if __name__ == "__main__"``.
    ctx = mp.get_context()
    with ctx.Pool(processes=workers, initializer=_init_worker, initargs=(job,)) as pool:
        yield from pool.imap(_run_item, items, chunksize=1)


# --------------------------------------------------------------------------------------- the build


def _fingerprint(spec: SourceSpec, source: str, items: Sequence[Any], settings: dict[str, Any]) -> str:
    """Hash of what determines a source's shards: settings, adapter, and every file's size and mtime."""
    import hashlib

    h = hashlib.sha256()
    head = {"sonofm": __version__, "index": INDEX_VERSION, "source": source, "adapter": spec.adapter,
            "root": str(spec.root.resolve()), "options": spec.options, **settings}
    h.update(json.dumps(head, sort_keys=True, default=str).encode())
    for item in items:
        h.update(repr(item).encode())
        for rel in [getattr(item, "path", None), *getattr(item, "masks", ())]:
            if rel is None:
                continue
            try:
                st = (spec.root / str(rel)).stat()
                h.update(f"|{st.st_size}|{st.st_mtime_ns}".encode())
            except OSError:
                h.update(b"|missing")
        h.update(b"\n")
    return h.hexdigest()


def _index_up_to_date(out_dir: Path, source: str, fingerprint: str) -> dict[str, Any] | None:
    p = index_path(out_dir, source)
    if not p.is_file():
        return None
    try:
        index = read_index(p)
    except ValueError:
        return None
    if index.get("fingerprint") != fingerprint or not index.get("complete"):
        return None
    for s in index["shards"]:
        f = out_dir / s["file"]
        if not f.is_file() or f.stat().st_size != s.get("bytes"):
            return None
    return index


def _load_progress(path: Path, fingerprint: str) -> dict[str, dict[str, Any]]:
    """Shards recorded by an earlier run with the same fingerprint (a torn last line is ignored)."""
    if not path.is_file():
        return {}
    done: dict[str, dict[str, Any]] = {}
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    try:
        head = json.loads(lines[0]) if lines else {}
    except json.JSONDecodeError:
        return {}
    if head.get("fingerprint") != fingerprint:
        return {}
    for line in lines[1:]:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            break
        done[entry["file"]] = entry
    return done


class _Progress:
    """Append-only record of finished shards: header line, then one JSON line per shard."""

    def __init__(self, path: Path, fingerprint: str, done: dict[str, dict[str, Any]]):
        self.path = path
        lines = [json.dumps({"fingerprint": fingerprint})] + [json.dumps(e) for e in done.values()]
        write_text(path, "".join(line + "\n" for line in lines))

    def append(self, entry: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _remove_stale(out_dir: Path, source: str, keep: set[str]) -> list[str]:
    """Delete this source's shards not in ``keep`` and its leftover temporary files."""
    pat = shard_pattern(source)
    removed = []
    for p in out_dir.iterdir():
        n = p.name
        stale_tar = pat.match(n) and n not in keep
        stale_tmp = n.startswith(".") and n.endswith(".tmp") and pat.match(n[1:-4])
        if stale_tar or stale_tmp:
            p.unlink(missing_ok=True)
            removed.append(n)
    return removed


@dataclass
class _Plan:
    """One source of a build, checked before anything is decoded: its spec, adapter and entry."""

    spec: SourceSpec
    adapter: Any
    source: str
    info: SourceInfo
    only_rows: bool  # one of several sources a manifest names: build only its rows


def _build_source(
    plan: _Plan,
    out_dir: Path,
    settings: dict[str, Any],
    taxonomy_files: tuple[str, ...],
    workers: int,
    progress: bool,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    spec, source = plan.spec, plan.source
    # listed here, in the main process: what the listing counts (images without mask, refused links,
    # ragged rows) is kept for the report, beside what the workers count while decoding
    items = plan.adapter.list_items()
    listing = (dict(plan.adapter.stats), list(plan.adapter.notes))
    if plan.only_rows:
        items = [it for it in items if getattr(it, "meta", {}).get("source") == source]
    if not items:
        raise ValueError(f"source {source}: adapter {spec.adapter!r} found no files under {spec.root}")
    pseudonymised = spec.pseudonymise if spec.pseudonymise is not None else spec.adapter in DEFAULT_ON
    key = pseudonym_key(settings["salt"]) if pseudonymised else None
    fingerprint = _fingerprint(spec, source, items, {**settings, "taxonomy": plan.info.to_dict(),
                                                     "pseudonyms": key_fingerprint(key) if key else None})

    current = _index_up_to_date(out_dir, source, fingerprint)
    if current is not None:
        report = dict(current.get("report", {}))
        report["up_to_date"] = True
        return report

    index_path(out_dir, source).unlink(missing_ok=True)  # never leave an index naming shards we replace
    ppath = progress_path(out_dir, source)
    done = _load_progress(ppath, fingerprint)
    def job(done: dict[str, dict[str, Any]]) -> _Job:
        return _Job(spec, source, plan.info, taxonomy_files, settings["max_side"], settings["split_fractions"],
                    settings["salt"], settings["dedup"], colour_limit=settings["colour_limit"],
                    pseudonym_key=key, skip_keys=frozenset(k for e in done.values() for k in e.get("keys", ())),
                    min_side=settings["min_side"], max_aspect=settings["max_aspect"])

    try:
        return _write_source(job(done), items, out_dir, settings, fingerprint, done, ppath, workers, progress, t0,
                             listing)
    except ResumeMismatch as e:
        if not done:
            raise
        print(f"[sonofm] {source}: recorded shards do not match this build ({e}); rebuilding the source")
        ppath.unlink(missing_ok=True)
        return _write_source(job({}), items, out_dir, settings, fingerprint, {}, ppath, workers, progress, t0,
                             listing)


def _final_entry(info: SourceInfo, organs: Counter, labels: Counter) -> SourceInfo:
    """The entry the index stores: a self-describing source gets the labels its samples carry, and
    the organ they all share (when every sample names the same one)."""
    if info.declared:
        return info
    out = SourceInfo(**{**info.to_dict(), "labels": sorted(k for k in labels if k != display(None))})
    known = [o for o in organs if o != display(None)]
    if out.organ is None and len(known) == 1 and sum(organs.values()) == organs[known[0]]:
        out.organ = known[0]
    return out


def _write_source(
    job: _Job,
    items: list[Any],
    out_dir: Path,
    settings: dict[str, Any],
    fingerprint: str,
    done: dict[str, dict[str, Any]],
    ppath: Path,
    workers: int,
    progress: bool,
    t0: float,
    listing: tuple[dict[str, int], list[dict[str, str]]] = ({}, []),
) -> dict[str, Any]:
    from tqdm import tqdm

    spec, source, dedup = job.spec, job.source, job.dedup
    try:
        log = _Progress(ppath, fingerprint, done)
    except OSError as e:
        raise output_error(f"cannot write {ppath}", e) from e
    writer = ShardSetWriter(out_dir, source, settings["samples_per_shard"], done=done, on_commit=log.append)
    dup_filter = None
    if dedup:
        from sonofm.datasets.dedup import DuplicateFilter

        dup_filter = DuplicateFilter()

    counts: dict[str, Counter] = {"split": Counter(), "organ": Counter(), "label": Counter(),
                                  "region": Counter()}
    split_label: dict[str, Counter] = {}
    groups: dict[str, set[str]] = {}
    formats: dict[str, Counter] = {}
    adapter_stats: Counter = Counter(listing[0])
    notes: list[dict[str, str]] = list(listing[1])
    keys_seen: dict[str, str] = {}  # sample key -> where it came from: keys are unique within a source
    errors: list[dict[str, str]] = []
    duplicates: list[dict[str, Any]] = []
    n_records = n_colour = n_blanked = n_text = n_text_inside = n_written = n_items_ok = 0
    bar = tqdm(total=len(items), desc=f"shards {source}", unit="file", disable=not progress, dynamic_ncols=True)
    try:
        for res in _results(job, items, workers):
            bar.update(1)
            ext = Path(res.path).suffix.lower() or "<none>"
            fmt = formats.setdefault(ext, Counter())
            fmt["files"] += 1
            adapter_stats.update(res.stats)
            notes.extend(res.notes[: max(0, MAX_ERRORS_LISTED - len(notes))])
            if res.error is not None:
                fmt["errors"] += 1
                errors.append({"file": res.path, "reason": res.error})
                continue
            n_items_ok += 1
            fmt["records"] += len(res.outs)
            for out in res.outs:
                n_records += 1
                n_colour += out.colour
                n_blanked += out.colour_blanked
                n_text += out.text_outside
                n_text_inside += out.text_inside
                where = out.where
                if out.key in keys_seen:  # the same file listed twice (a CSV row repeated): written once
                    adapter_stats["duplicate_keys"] += 1
                    if len(notes) < MAX_ERRORS_LISTED:
                        notes.append({"file": where, "counter": "duplicate_keys",
                                      "reason": f"sample key {out.key} already written from {keys_seen[out.key]} "
                                                "(the same file listed twice): skipped"})
                    continue
                keys_seen[out.key] = where
                if dup_filter is not None and not dup_filter.add_digests(out.key, *out.digests):
                    _, kept, kind, dist = dup_filter.duplicates[-1]
                    if len(duplicates) < MAX_ERRORS_LISTED:
                        duplicates.append({"dropped": out.where, "kept_key": kept, "kind": kind,
                                           "distance": int(dist)})
                    continue
                _write(writer.add, out_dir, source, Sample(out.key, out.meta, out.png, out.mask_png, out.field_png))
                n_written += 1
                m = out.meta
                counts["split"][m["split"]] += 1
                counts["organ"][display(m.get("organ"))] += 1
                counts["region"][display(m.get("region"))] += 1
                counts["label"][display(m.get("label"))] += 1
                split_label.setdefault(m["split"], Counter())[display(m.get("label"))] += 1
                groups.setdefault(m["split"], set()).add(m["group"])
            elapsed = time.perf_counter() - t0
            bar.set_postfix_str(f"{n_records} img, {n_records / max(elapsed, 1e-9):.1f} img/s", refresh=False)
        entries = _write(writer.close, out_dir, source)
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()

    skipped = {k: int(adapter_stats[k]) for k in SKIP_LABELS if adapter_stats.get(k)}
    if n_written == 0:
        ppath.unlink(missing_ok=True)
        raise _empty_source(source, len(items), n_items_ok, errors, skipped, notes, adapter_stats)
    elapsed = time.perf_counter() - t0
    warnings = [
        f"split {s!r} (fraction {f:.2f}) received no group"
        for s, f in settings["split_fractions"].items()
        if f > 0 and not groups.get(s)
    ]
    report = {
        "source": source,
        "adapter": spec.adapter,
        "root": str(spec.root),
        "files": len(items),
        "records_read": n_records,
        "samples_written": n_written,
        "decode_errors": len(errors),
        "errors": errors[:MAX_ERRORS_LISTED],
        "duplicates_exact": dup_filter.n_exact if dup_filter is not None else 0,
        "duplicates_near": dup_filter.n_near if dup_filter is not None else 0,
        "duplicates": duplicates,
        "colour_images": n_colour,
        "colour_blanked_images": n_blanked,
        "colour_limit_dropped": int(adapter_stats.get("dropped_colour_limit", 0)),
        "text_outside_field": n_text,
        "text_inside_field": n_text_inside,
        "formats": {k: dict(v) for k, v in sorted(formats.items())},
        "adapter_stats": dict(adapter_stats),
        # everything left out, per reason (listing and decoding, main process and workers), and named
        "skipped": skipped,
        "skipped_files": notes[:MAX_ERRORS_LISTED],
        "altered": {k: int(adapter_stats.get(k, 0)) for k in ALTERED_LABELS},
        "shards_skipped": writer.skipped,
        "seconds": round(elapsed, 3),
        "images_per_s": round(n_records / elapsed, 2) if elapsed > 0 else None,
        "workers": workers,
        "warnings": warnings,
    }
    keep = {e["file"] for e in entries}
    _remove_stale(out_dir, source, keep)
    info = _final_entry(job.info, counts["organ"], counts["label"])
    if info.organ is not None and info.region is None:
        info.region = Taxonomy.with_user_files(job.taxonomy_files).organ_region.get(info.organ)
    report["taxonomy"] = info.to_dict()
    report["pseudonymised"] = job.pseudonym_key is not None
    index = {
        "version": INDEX_VERSION,
        "source": source,
        "complete": True,
        # the source's place in the tree travels with its shards: no later stage needs a taxonomy file
        "taxonomy": {"source": info.to_dict(), "regions": regions_of(info)},
        "fingerprint": fingerprint,
        "build": {k: v for k, v in settings.items()},
        "shards": [
            {"file": e["file"], "split": e["split"], "count": e["count"], "bytes": e["bytes"],
             "sha256": e["sha256"], "keys_sha256": keys_sha256(e["keys"])}
            for e in entries
        ],
        "counts": {
            "split": dict(sorted(counts["split"].items())),
            "organ": dict(sorted(counts["organ"].items())),
            "region": dict(sorted(counts["region"].items())),
            "label": dict(sorted(counts["label"].items())),
            "split_label": {s: dict(sorted(c.items())) for s, c in sorted(split_label.items())},
            "groups": {s: len(g) for s, g in sorted(groups.items())},
        },
        # a pseudonymised source's index names no file in clear (the returned report, printed, does)
        "report": scrub_report(report, job.pseudonym_key) if job.pseudonym_key is not None else report,
    }
    write_json_atomic(index_path(out_dir, source), index)
    ppath.unlink(missing_ok=True)
    return report


def _write(call: Any, out_dir: Path, source: str, *args: Any) -> Any:
    """``call(*args)`` on the shard writer, an ``OSError`` (full disk, progress record) as :class:`OutputError`."""
    try:
        return call(*args)
    except OutputError:
        raise
    except OSError as e:
        raise output_error(f"cannot write the shards of source {source} in {out_dir}", e) from e


def _empty_source(
    source: str,
    n_files: int,
    n_items_ok: int,
    errors: list[dict[str, str]],
    skipped: dict[str, int],
    notes: list[dict[str, str]],
    stats: Counter,
) -> EmptySourceError:
    """The error for a source that gave no sample, with its file count and the first reasons."""
    if n_items_ok == 0 and errors:
        first = "; ".join(e["reason"] for e in errors[:3])
        return EmptySourceError(
            f"source {source}: every one of {n_files} files failed to decode ({len(errors)} decode errors); "
            f"first reasons: {first}"
        )
    why = [f"{len(errors)} decode errors"] if errors else []
    why += [f"{n} {SKIP_LABELS[k]}" for k, n in skipped.items()]
    if stats.get("dropped_colour_limit"):
        why.append(f"{stats['dropped_colour_limit']} over colour_limit")
    first = "; ".join(f"{n['file']}: {n['reason']}" for n in notes[:3]) or "; ".join(
        e["reason"] for e in errors[:3]
    )
    return EmptySourceError(
        f"source {source}: no sample written from {n_files} files ({', '.join(why) or 'nothing kept'}); "
        f"first reasons: {first or '?'}"
    )


def check_output_dir(out: Path) -> None:
    """Create ``out`` and prove it writable (a 4 KiB file, fsynced, removed) before any work, so an
    output that is a file, read-only or full is one clear error naming it, not a traceback later."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"output folder {out} is an existing file, not a folder: give a folder "
                          "(it is created when missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise output_error(f"cannot create the output folder {out}", e) from e
    probe = out / f".sonofm-write-test-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, bytes(4096))
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise output_error(f"output folder {out} is not writable", e) from e
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass


def build_shards(
    sources: Sequence[SourceSpec | str | dict | list],
    out_dir: str | os.PathLike,
    *,
    max_side: int = 512,
    samples_per_shard: int = 1000,
    split_fractions: dict[str, float] | None = None,
    salt: str = "sonofm",
    workers: int = 1,
    dedup: bool = True,
    progress: bool = True,
    taxonomy: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    colour_limit: float | None = None,
    min_side: int = MIN_SIDE,
    max_aspect: float = MAX_ASPECT,
) -> dict[str, Any]:
    """Build ``{source}-{split}-{000000}.tar`` shards and ``{source}.index.json`` for every source.

    ``taxonomy``: user taxonomy file(s) extending the built-in tree (new regions, organs, sources).
    ``colour_limit``: drop (and count) images whose coloured share of the field is above this share
    (colour flow is blanked either way; ``None`` keeps every image).
    ``min_side``, ``max_aspect``: decoded images with a side under ``min_side`` px or more elongated
    than ``max_aspect``:1, and all-black or constant ones, are skipped and counted (never written).
    A source needs no entry: undeclared sources are self-describing, and every index stores the
    entry its source was built with. Returns the build report: per source (files, records read,
    samples written, decode errors with file and reason, exact/near duplicates dropped, colour
    images, images with text outside the field, formats decoded, images/s; ``skipped`` per reason
    and ``skipped_files`` naming them, ``altered`` masks) and totals. Bad files never stop the
    build; a record that contradicts a declared entry, a source that gives no sample
    (:class:`EmptySourceError`) or an output folder that cannot take the shards
    (:class:`~sonofm.datasets.shards.OutputError`, checked before any work) does.
    """
    specs = parse_sources(sources)
    if not specs:
        raise ValueError("build_shards: no sources given")
    if max_side < 8:
        raise ValueError(f"max_side must be >= 8, got {max_side}")
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    fractions = normalise_fractions(split_fractions or {"train": 0.8, "val": 0.1, "test": 0.1})
    for name in fractions:
        check_split_name(name)
    out = Path(out_dir).expanduser()
    if colour_limit is not None and not 0.0 <= float(colour_limit) <= 1.0:
        raise ValueError(f"colour_limit must be a share in [0, 1] (e.g. 0.2), got {colour_limit}")
    if int(min_side) < 1 or float(max_aspect) < 1.0:
        raise ValueError(f"min_side must be >= 1 and max_aspect >= 1, got {min_side} and {max_aspect}")
    settings = {"max_side": int(max_side), "samples_per_shard": int(samples_per_shard),
                "split_fractions": fractions, "salt": str(salt), "dedup": bool(dedup),
                "colour_limit": None if colour_limit is None else float(colour_limit),
                "min_side": int(min_side), "max_aspect": float(max_aspect)}
    taxonomy_files = _taxonomy_files(taxonomy)
    tax = Taxonomy.with_user_files(taxonomy_files)

    # Check every source before decoding anything: adapter options, names, places in the taxonomy.
    plans: list[_Plan] = []
    seen: dict[str, SourceSpec] = {}
    for spec in specs:
        adapter = make_adapter(spec)
        # A manifest may name several sources (the synthetic corpus does): each is built on its own.
        named = list(adapter.sources()) if spec.source is None else []
        names = named if named else [_source_name(adapter, spec)]
        for name in names:
            check_source_name(name)
            if name in seen:
                raise BadSpecError(
                    f"source {name!r} is given twice ({seen[name].root} and {spec.root}); give one a "
                    "different name with ?source=NAME"
                )
            seen[name] = spec
            info = tax.describe(name, spec.organ, spec.region, description=spec.description)
            plans.append(_Plan(spec, adapter, name, info, only_rows=len(names) > 1))

    check_output_dir(out)  # before anything is decoded
    t0 = time.perf_counter()
    reports: dict[str, dict[str, Any]] = {}
    for plan in plans:
        rep = _build_source(plan, out, settings, taxonomy_files, max(1, int(workers)), progress)
        reports[rep["source"]] = rep
        if progress:
            print(_summary_line(rep))
    elapsed = time.perf_counter() - t0
    total_img = sum(r.get("records_read", 0) for r in reports.values() if not r.get("up_to_date"))
    return {
        "out_dir": str(out),
        "sources": reports,
        "totals": {
            "samples_written": sum(r.get("samples_written", 0) for r in reports.values()),
            "decode_errors": sum(r.get("decode_errors", 0) for r in reports.values()),
            "seconds": round(elapsed, 3),
            "images_per_s": round(total_img / elapsed, 2) if elapsed > 0 else None,
        },
        "settings": {**settings, "workers": workers, "taxonomy": list(taxonomy_files),
                     "specs": [asdict(s) | {"root": str(s.root)} for s in specs]},
    }


def _taxonomy_files(taxonomy: Any) -> tuple[str, ...]:
    """User taxonomy files as absolute paths (workers and the fingerprint must not depend on the cwd)."""
    if taxonomy is None or taxonomy == "":
        return ()
    files = [taxonomy] if isinstance(taxonomy, (str, os.PathLike)) else list(taxonomy)
    out = []
    for f in files:
        p = Path(f).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"taxonomy file {f} not found (give a YAML file with 'regions:' and 'sources:')")
        out.append(str(p.resolve()))
    return tuple(out)


def _summary_line(rep: dict[str, Any]) -> str:
    if rep.get("up_to_date"):
        return f"[sonofm] {rep['source']}: up to date ({rep.get('samples_written', '?')} samples)"
    line = (
        f"[sonofm] {rep['source']}: {rep['samples_written']} samples from {rep['records_read']} images "
        f"({rep['files']} files) at {rep['images_per_s']} img/s; {rep['decode_errors']} decode errors, "
        f"{rep['duplicates_exact']} exact + {rep['duplicates_near']} near duplicates dropped, "
        f"{rep['colour_images']} colour images, {rep['colour_blanked_images']} with coloured pixels blanked, "
        f"{rep['colour_limit_dropped']} dropped over colour_limit, {rep['text_outside_field']} with text "
        f"outside the field (cropped away), {rep['text_inside_field']} with text or marks inside it (kept)"
    )
    skipped = rep.get("skipped") or {}
    if skipped:
        line += "; skipped " + ", ".join(f"{n} {SKIP_LABELS.get(k, k)}" for k, n in skipped.items())
    altered = {k: n for k, n in (rep.get("altered") or {}).items() if n}
    if altered:
        line += "; " + ", ".join(f"{n} {ALTERED_LABELS.get(k, k)}" for k, n in altered.items())
    other = {k: n for k, n in (rep.get("adapter_stats") or {}).items()
             if n and k not in SKIP_LABELS and k not in ALTERED_LABELS and k not in _SHOWN}
    if other:
        line += "; counted " + ", ".join(f"{k} {n}" for k, n in sorted(other.items()))
    if rep["shards_skipped"]:
        line += f"; {rep['shards_skipped']} complete shards kept"
    for w in rep["warnings"]:
        line += f"\n[sonofm] {rep['source']}: warning: {w}"
    return line


__all__ = [
    "EmptySourceError",
    "SourceSpec",
    "build_shards",
    "check_output_dir",
    "load_sources_file",
    "parse_source_arg",
    "parse_sources",
]
