"""Build shards: adapters -> taxonomy -> preprocess -> dedup -> split -> shard writer, per source.

Determinism: the items of a source are decoded in several processes
(:mod:`~sonofm.datasets.build.workers`, in item order), and everything order-dependent
(near-duplicate removal, cutting into shards) runs here, in the main process, in item order, so the
shards are the same whatever the number of workers.

Each source is built on its own (one duplicate filter per source, its own index), so adding or
rebuilding one source never changes the shards of another. A killed build resumes from its
progress file (:mod:`~sonofm.datasets.build.progress`), a finished source whose inputs did not
change is skipped. Source specs are read by :mod:`~sonofm.datasets.sources.specs`; this module
orchestrates the build and writes its report and each source's index.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sonofm.datasets.build.progress import (
    BuildProgress,
    fingerprint,
    index_up_to_date,
    recorded_keys,
    remove_stale,
)
from sonofm.datasets.build.pseudonyms import DEFAULT_ON, key_fingerprint, pseudonym_key, scrub_report
from sonofm.datasets.build.splits import normalise_fractions
from sonofm.datasets.build.workers import (
    ItemResult,
    Job,
    SampleOut,
    clip_field_map,
    clip_fields,
    item_results,
)
from sonofm.datasets.preprocess.dedup import DuplicateFilter
from sonofm.datasets.shards import (
    INDEX_VERSION,
    EncodedSample,
    OutputError,
    ResumeMismatch,
    ShardSetWriter,
    check_source_name,
    check_split_name,
    index_path,
    keys_sha256,
    output_error,
    write_json_atomic,
)
from sonofm.datasets.sources.fmuia import PROBLEMS as ROW_PROBLEMS
from sonofm.datasets.sources.imageio import MAX_ASPECT, MIN_SIDE
from sonofm.datasets.sources.specs import (
    TEXT_MODES,
    BadSpecError,
    SourceSpec,
    load_sources_file,
    make_adapter,
    parse_source_arg,
    parse_sources,
)
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
    **ROW_PROBLEMS,  # bad rows of a benchmark's CSVs (FM_UIA)
}
#: Counters of samples written changed (``report["altered"]``).
ALTERED_LABELS = {"masks_thresholded": "soft masks cut at half range"}
#: Counters the console line already shows in its own words.
_SHOWN = {"dropped_colour_limit"}


class EmptySourceError(UserError, RuntimeError):
    """A source that gave no sample at all (every file unreadable, or every image skipped): the
    message names the source, its file count and the first reasons. Still a ``RuntimeError``."""


def _source_name(adapter: Any, spec: SourceSpec) -> str:
    """The name a source is built under: the spec's, the adapter's, or the adapter name."""
    return check_source_name(spec.source or getattr(adapter, "source", None) or spec.adapter)


@dataclass
class _Plan:
    """One source of a build, checked before anything is decoded: its spec, adapter and entry."""

    spec: SourceSpec
    adapter: Any
    source: str
    info: SourceInfo
    only_rows: bool  # one of several sources a manifest names: build only its rows


@dataclass
class _Tally:
    """What one pass over a source counts, in item order: the numbers of its report and index."""

    adapter_stats: Counter
    notes: list[dict[str, str]]
    dup_filter: DuplicateFilter | None
    counts: dict[str, Counter] = field(
        default_factory=lambda: {k: Counter() for k in ("split", "organ", "label", "region")})
    split_label: dict[str, Counter] = field(default_factory=dict)
    groups: dict[str, set[str]] = field(default_factory=dict)
    formats: dict[str, Counter] = field(default_factory=dict)
    keys_seen: dict[str, str] = field(default_factory=dict)  # key -> where it came from: unique in a source
    errors: list[dict[str, str]] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    records: int = 0
    colour: int = 0
    blanked: int = 0
    text_outside: int = 0
    text_inside: int = 0
    text_blanked: int = 0
    written: int = 0
    items_ok: int = 0

    def add_item(self, res: ItemResult) -> bool:
        """Count one item's result; ``False`` when it failed (its error is listed)."""
        ext = Path(res.path).suffix.lower() or "<none>"
        fmt = self.formats.setdefault(ext, Counter())
        fmt["files"] += 1
        self.adapter_stats.update(res.stats)
        self.notes.extend(res.notes[: max(0, MAX_ERRORS_LISTED - len(self.notes))])
        if res.error is not None:
            fmt["errors"] += 1
            self.errors.append({"file": res.path, "reason": res.error})
            return False
        self.items_ok += 1
        fmt["records"] += len(res.outs)
        return True

    def keep(self, out: SampleOut) -> bool:
        """Count one record; ``False`` when it is not written: its key was written already (the same
        file listed twice, a CSV row repeated) or it duplicates an image kept before it."""
        self.records += 1
        self.colour += out.colour
        self.blanked += out.colour_blanked
        self.text_outside += out.text_outside
        self.text_inside += out.text_inside
        self.text_blanked += out.text_blanked
        if out.key in self.keys_seen:
            self.adapter_stats["duplicate_keys"] += 1
            if len(self.notes) < MAX_ERRORS_LISTED:
                self.notes.append({"file": out.where, "counter": "duplicate_keys",
                                   "reason": f"sample key {out.key} already written from "
                                             f"{self.keys_seen[out.key]} (the same file listed twice): skipped"})
            return False
        self.keys_seen[out.key] = out.where
        if self.dup_filter is not None and not self.dup_filter.add_digests(out.key, *out.digests):
            _, kept, kind, dist = self.dup_filter.duplicates[-1]
            if len(self.duplicates) < MAX_ERRORS_LISTED:
                self.duplicates.append({"dropped": out.where, "kept_key": kept, "kind": kind,
                                        "distance": int(dist)})
            return False
        return True

    def add_written(self, meta: dict[str, Any]) -> None:
        """Count a written sample under its split, organ, region, label and group."""
        self.written += 1
        self.counts["split"][meta["split"]] += 1
        self.counts["organ"][display(meta.get("organ"))] += 1
        self.counts["region"][display(meta.get("region"))] += 1
        self.counts["label"][display(meta.get("label"))] += 1
        self.split_label.setdefault(meta["split"], Counter())[display(meta.get("label"))] += 1
        self.groups.setdefault(meta["split"], set()).add(meta["group"])

    def skipped(self) -> dict[str, int]:
        """Things left out, per reason (listing and decoding, main process and workers)."""
        return {k: int(self.adapter_stats[k]) for k in SKIP_LABELS if self.adapter_stats.get(k)}


@dataclass
class _SourceRun:
    """One source's build once its items are listed and its fingerprint known: passes that write
    its shards (a second one from scratch when the recorded shards do not match), report, index."""

    plan: _Plan
    items: list[Any]
    listing: tuple[dict[str, int], list[dict[str, str]]]  # what the listing counted and named
    out_dir: Path
    settings: dict[str, Any]
    taxonomy_files: tuple[str, ...]
    workers: int
    show_progress: bool
    t0: float
    pseudonym_key: bytes | None
    log: BuildProgress

    def job(self, done: dict[str, dict[str, Any]]) -> Job:
        """What the workers need; the keys of the recorded shards ``done`` are not encoded again."""
        s = self.settings
        return Job(self.plan.spec, self.plan.source, self.plan.info, self.taxonomy_files, s["max_side"],
                   s["split_fractions"], s["salt"], s["dedup"], colour_limit=s["colour_limit"],
                   pseudonym_key=self.pseudonym_key, skip_keys=recorded_keys(done),
                   min_side=s["min_side"], max_aspect=s["max_aspect"], text=_text_mode(self.plan.spec, s))

    def write(self, done: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """One pass writing the shards, reusing the recorded ones ``done``; returns the report."""
        from tqdm import tqdm

        source = self.plan.source
        try:
            self.log.start(done)
        except OSError as e:
            raise output_error(f"cannot write {self.log.path}", e) from e
        writer = ShardSetWriter(self.out_dir, source, self.settings["samples_per_shard"], done=done,
                                on_commit=self.log.append)
        dedup = self.settings["dedup"] and getattr(self.plan.adapter, "deduplicate", True)
        tally = _Tally(Counter(self.listing[0]), list(self.listing[1]), DuplicateFilter() if dedup else None)
        bar = tqdm(total=len(self.items), desc=f"shards {source}", unit="file", disable=not self.show_progress,
                   dynamic_ncols=True)
        try:
            self._write_items(self.job(done), writer, tally, bar)
            entries = _write(writer.close, self.out_dir, source)
        except BaseException:
            writer.abort()
            raise
        finally:
            bar.close()
        if tally.written == 0:
            self.log.discard()
            raise _empty_source(source, len(self.items), tally)
        report = self._report(tally, writer.skipped)
        remove_stale(self.out_dir, source, {e["file"] for e in entries})
        info = _final_entry(self.plan.info, tally.counts["organ"], tally.counts["label"])
        if info.organ is not None and info.region is None:
            info.region = Taxonomy.with_user_files(self.taxonomy_files).organ_region.get(info.organ)
        report["taxonomy"] = info.to_dict()
        report["pseudonymised"] = self.pseudonym_key is not None
        details = self.plan.adapter.describe_source(source) if hasattr(self.plan.adapter, "describe_source") else {}
        report.update(details)  # e.g. the task of a benchmark's source, and how it was split
        index = {**details, **self._index(report, info, tally, entries)}
        write_json_atomic(index_path(self.out_dir, source), index)
        self.log.discard()
        return report

    def _write_items(self, job: Job, writer: ShardSetWriter, tally: _Tally, bar: Any) -> None:
        """The workers' results in item order, counted, deduplicated and added to the shards."""
        for res in item_results(job, self.items, self.workers):
            bar.update(1)
            if not tally.add_item(res):
                continue
            for out in res.outs:
                if not tally.keep(out):
                    continue
                _write(writer.add, self.out_dir, job.source,
                       EncodedSample(out.key, out.meta, out.png, out.mask_png, out.field_png))
                tally.add_written(out.meta)
            elapsed = time.perf_counter() - self.t0
            bar.set_postfix_str(f"{tally.records} img, {tally.records / max(elapsed, 1e-9):.1f} img/s",
                                refresh=False)

    def _report(self, tally: _Tally, shards_skipped: int) -> dict[str, Any]:
        """The source's build report (returned, printed, and stored in its index)."""
        spec, n_records = self.plan.spec, tally.records
        elapsed = time.perf_counter() - self.t0
        stats = tally.adapter_stats
        warnings = [
            f"split {s!r} (fraction {f:.2f}) received no group"
            for s, f in self.settings["split_fractions"].items()
            if f > 0 and not tally.groups.get(s)
        ]
        return {
            "source": self.plan.source,
            "adapter": spec.adapter,
            "root": str(spec.root),
            "files": len(self.items),
            "records_read": n_records,
            "samples_written": tally.written,
            "decode_errors": len(tally.errors),
            "errors": tally.errors[:MAX_ERRORS_LISTED],
            "duplicates_exact": tally.dup_filter.n_exact if tally.dup_filter is not None else 0,
            "duplicates_near": tally.dup_filter.n_near if tally.dup_filter is not None else 0,
            "duplicates": tally.duplicates,
            "colour_images": tally.colour,
            "colour_blanked_images": tally.blanked,
            "colour_limit_dropped": int(stats.get("dropped_colour_limit", 0)),
            "text_outside_field": tally.text_outside,
            "text_inside_field": tally.text_inside,
            "text_blanked_images": tally.text_blanked,
            "text_mode": _text_mode(spec, self.settings),
            "formats": {k: dict(v) for k, v in sorted(tally.formats.items())},
            "adapter_stats": dict(stats),
            # everything left out, per reason (listing and decoding, main process and workers), and named
            "skipped": tally.skipped(),
            "skipped_files": tally.notes[:MAX_ERRORS_LISTED],
            "altered": {k: int(stats.get(k, 0)) for k in ALTERED_LABELS},
            "shards_skipped": shards_skipped,
            "seconds": round(elapsed, 3),
            "images_per_s": round(n_records / elapsed, 2) if elapsed > 0 else None,
            "workers": self.workers,
            "warnings": warnings,
        }

    def _index(self, report: dict[str, Any], info: SourceInfo, tally: _Tally,
               entries: list[dict[str, Any]]) -> dict[str, Any]:
        """``{source}.index.json``: the shards, their counts, the source's entry, fingerprint, report."""
        counts = tally.counts
        return {
            "version": INDEX_VERSION,
            "source": self.plan.source,
            "complete": True,
            # the source's place in the tree travels with its shards: no later stage needs a taxonomy file
            "taxonomy": {"source": info.to_dict(), "regions": regions_of(info)},
            "fingerprint": self.log.fingerprint,
            "build": dict(self.settings),
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
                "split_label": {s: dict(sorted(c.items())) for s, c in sorted(tally.split_label.items())},
                "groups": {s: len(g) for s, g in sorted(tally.groups.items())},
            },
            # a pseudonymised source's index names no file in clear (the returned report, printed, does)
            "report": scrub_report(report, self.pseudonym_key) if self.pseudonym_key is not None else report,
        }


def _build_source(
    plan: _Plan,
    out_dir: Path,
    settings: dict[str, Any],
    taxonomy_files: tuple[str, ...],
    workers: int,
    progress: bool,
) -> dict[str, Any]:
    """Build one source's shards, resuming a killed run; a source whose inputs did not change since
    its index was written is not decoded at all (its stored report, marked ``up_to_date``)."""
    t0 = time.perf_counter()
    spec, source = plan.spec, plan.source
    # listed here, in the main process: what the listing counts (images without mask, refused links,
    # ragged rows) is kept for the report, beside what the workers count while decoding
    items = plan.adapter.list_items(source) if plan.only_rows else plan.adapter.list_items()
    listing = (dict(plan.adapter.stats), list(plan.adapter.notes))
    if not items:
        raise ValueError(f"source {source}: adapter {spec.adapter!r} found no files under {spec.root}")
    pseudonymised = spec.pseudonymise if spec.pseudonymise is not None else spec.adapter in DEFAULT_ON
    key = pseudonym_key(settings["salt"]) if pseudonymised else None
    fp = fingerprint(spec, source, items, {**settings, "text": _text_mode(spec, settings),
                                           "taxonomy": plan.info.to_dict(),
                                           "pseudonyms": key_fingerprint(key) if key else None})

    current = index_up_to_date(out_dir, source, fp)
    if current is not None:
        report = dict(current.get("report", {}))
        report["up_to_date"] = True
        return report

    index_path(out_dir, source).unlink(missing_ok=True)  # never leave an index naming shards we replace
    run = _SourceRun(plan, items, listing, out_dir, settings, taxonomy_files, workers, progress, t0, key,
                     BuildProgress(out_dir, source, fp))
    done = run.log.recorded()
    try:
        return run.write(done)
    except ResumeMismatch as e:
        if not done:
            raise
        print(f"[sonofm] {source}: recorded shards do not match this build ({e}); rebuilding the source")
        run.log.discard()
        return run.write({})


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


def _write(call: Any, out_dir: Path, source: str, *args: Any) -> Any:
    """``call(*args)`` on the shard writer, an ``OSError`` (full disk, progress record) as :class:`OutputError`."""
    try:
        return call(*args)
    except OutputError:
        raise
    except OSError as e:
        raise output_error(f"cannot write the shards of source {source} in {out_dir}", e) from e


def _empty_source(source: str, n_files: int, tally: _Tally) -> EmptySourceError:
    """The error for a source that gave no sample, with its file count and the first reasons."""
    errors, notes, stats = tally.errors, tally.notes, tally.adapter_stats
    if tally.items_ok == 0 and errors:
        first = "; ".join(e["reason"] for e in errors[:3])
        return EmptySourceError(
            f"source {source}: every one of {n_files} files failed to decode ({len(errors)} decode errors); "
            f"first reasons: {first}"
        )
    why = [f"{len(errors)} decode errors"] if errors else []
    why += [f"{n} {SKIP_LABELS[k]}" for k, n in tally.skipped().items()]
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
    text: str = "blank",
) -> dict[str, Any]:
    """Build ``{source}-{split}-{000000}.tar`` shards and ``{source}.index.json`` for every source.

    ``taxonomy``: user taxonomy file(s) extending the built-in tree (new regions, organs, sources).
    ``colour_limit``: drop (and count) images whose coloured share of the field is above this share
    (colour flow is blanked either way; ``None`` keeps every image).
    ``text``: ``"blank"`` (default) sets text that touches the kept image (found inside the field, or
    burnt-in beside it and covered by the field's edge) to 0; ``"keep"`` keeps it. A source's own
    ``?text=`` option wins. The report counts images with such text and those blanked.
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
    if text not in TEXT_MODES:
        raise ValueError(f"text must be one of {', '.join(TEXT_MODES)}, got {text!r}")
    if int(min_side) < 1 or float(max_aspect) < 1.0:
        raise ValueError(f"min_side must be >= 1 and max_aspect >= 1, got {min_side} and {max_aspect}")
    settings = {"max_side": int(max_side), "samples_per_shard": int(samples_per_shard),
                "split_fractions": fractions, "salt": str(salt), "dedup": bool(dedup),
                "colour_limit": None if colour_limit is None else float(colour_limit),
                "min_side": int(min_side), "max_aspect": float(max_aspect), "text": str(text)}
    taxonomy_files = _taxonomy_files(taxonomy)
    plans = _plans(specs, Taxonomy.with_user_files(taxonomy_files))
    check_output_dir(out)  # before anything is decoded
    t0 = time.perf_counter()
    reports: dict[str, dict[str, Any]] = {}
    for plan in plans:
        rep = _build_source(plan, out, settings, taxonomy_files, max(1, int(workers)), progress)
        reports[rep["source"]] = rep
        if progress:
            print(_summary_line(rep))
    return {
        "out_dir": str(out),
        "sources": reports,
        "totals": _totals(reports, time.perf_counter() - t0),
        "settings": {**settings, "workers": workers, "taxonomy": list(taxonomy_files),
                     "specs": [asdict(s) | {"root": str(s.root)} for s in specs]},
    }


def _plans(specs: list[SourceSpec], tax: Taxonomy) -> list[_Plan]:
    """Every source checked before anything is decoded: adapter options, names, places in the taxonomy."""
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
    return plans


def _text_mode(spec: SourceSpec, settings: dict[str, Any]) -> str:
    """What becomes of text touching a source's kept image: its own ``?text=``, else the build's."""
    return spec.text or settings.get("text", "blank")


def _totals(reports: dict[str, dict[str, Any]], elapsed: float) -> dict[str, Any]:
    """The build's totals; sources found up to date decoded nothing and do not count in images/s."""
    total_img = sum(r.get("records_read", 0) for r in reports.values() if not r.get("up_to_date"))
    return {
        "samples_written": sum(r.get("samples_written", 0) for r in reports.values()),
        "decode_errors": sum(r.get("decode_errors", 0) for r in reports.values()),
        "seconds": round(elapsed, 3),
        "images_per_s": round(total_img / elapsed, 2) if elapsed > 0 else None,
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
        f"outside the field (cropped away), {rep['text_inside_field']} with text or marks touching it "
        f"({rep['text_blanked_images']} blanked" + (", text=keep)" if rep.get("text_mode") == "keep" else ")")
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
    if rep.get("split_by"):
        line += f"; split by {rep['split_by']}"
    for w in rep["warnings"]:
        line += f"\n[sonofm] {rep['source']}: warning: {w}"
    return line


__all__ = [
    "BadSpecError",
    "EmptySourceError",
    "SourceSpec",
    "build_shards",
    "check_output_dir",
    "clip_field_map",
    "clip_fields",
    "load_sources_file",
    "make_adapter",
    "parse_source_arg",
    "parse_sources",
]
