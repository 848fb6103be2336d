"""Which shards a stream reads: a shard set (folder, index, brace pattern or URLs) to ``(url, count)``
pairs, and the indexes behind a set (where later stages read the taxonomy from)."""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Sequence
from typing import Any

import braceexpand

from sonofm.datasets.shards.index import index_files, index_shards, is_url, load_indexes, read_index
from sonofm.datasets.shards.names import INDEX_SUFFIX
from sonofm.datasets.shards.reader import count_samples
from sonofm.errors import UserError

log = logging.getLogger(__name__)

Shard = tuple[str, int]  # (url, sample count; -1 when unknown)


class StreamError(UserError, RuntimeError):
    """The stream cannot produce data: empty split, unreadable shard, or nothing but corrupt samples."""


def _sibling_counts(path: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for idx in index_files(os.path.dirname(path) or "."):
        for url, n in index_shards(idx, None):
            counts[os.path.abspath(url)] = n
    return counts


def shard_indexes(paths: str | os.PathLike | Sequence[str]) -> list[dict[str, Any]]:
    """The index of every source in these shard sets (what later stages read the taxonomy from).

    A directory gives its ``*.index.json``, an index path or URL itself, a local brace pattern the
    indexes beside the shards it names; remote shard URLs without an index give none.
    """
    if not isinstance(paths, (str, os.PathLike)):
        out: list[dict[str, Any]] = []
        for p in paths:
            out.extend(shard_indexes(p))
        return out
    spec = str(paths)
    if "::" in spec:
        return shard_indexes(spec.split("::"))
    if os.path.isdir(spec):
        return load_indexes(spec)
    if spec.endswith(INDEX_SUFFIX):
        return [read_index(spec)]
    folders = sorted({os.path.dirname(u) or "." for u in braceexpand.braceexpand(spec) if not is_url(u)})
    found = []
    for folder in folders:
        for idx in index_files(folder):
            index = read_index(idx)
            if any(re.fullmatch(rf"{re.escape(str(index.get('source')))}-.*\.tar", os.path.basename(u))
                   for u in braceexpand.braceexpand(spec)):
                found.append(index)
    return found


def discover_shards(path_or_urls: str | os.PathLike | Sequence[str], split: str | None) -> list[Shard]:
    """List ``(url, sample_count)`` of one shard set; the count is -1 when no index knows it.

    A directory reads its ``*.index.json`` files (falling back to ``*-{split}-*.tar`` scanned for
    counts), an ``*.index.json`` path or URL reads that index, anything else is a brace pattern or a
    ``::``-separated list of shard URLs taken as given (``split`` does not filter explicit URLs).
    """
    if not isinstance(path_or_urls, (str, os.PathLike)):
        return [s for p in path_or_urls for s in discover_shards(p, split)]
    spec = str(path_or_urls)
    if "::" in spec:
        return [s for p in spec.split("::") for s in discover_shards(p, split)]
    if os.path.isdir(spec):
        indexes = index_files(spec)
        if indexes:
            shards = [s for idx in indexes for s in index_shards(idx, split)]
        else:
            pattern = f"*-{split}-*.tar" if split else "*.tar"
            tars = sorted(glob.glob(os.path.join(glob.escape(spec), pattern)))
            if tars:
                log.warning("%s: no *.index.json; counting samples of %d shards by scanning", spec, len(tars))
            shards = [(t, count_samples(t)) for t in tars]
        if not shards:
            raise StreamError(f"{spec}: no shards of split {split!r} (looked for *.index.json and {split}-*.tar)")
        return shards
    if spec.endswith(INDEX_SUFFIX):
        shards = index_shards(spec, split)
        if not shards:
            raise StreamError(f"{spec}: the index lists no shard of split {split!r}")
        return shards
    urls = list(braceexpand.braceexpand(spec))
    known: dict[str, int] = {}
    out = []
    for url in urls:
        if is_url(url):
            out.append((url, -1))
            continue
        if not os.path.isfile(url):
            raise StreamError(f"{url}: shard file not found (from {spec!r})")
        if not known:
            known = _sibling_counts(url)
        n = known.get(os.path.abspath(url))
        out.append((url, n if n is not None else count_samples(url)))
    return out
