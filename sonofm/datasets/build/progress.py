"""What an earlier shard build left for a later one: the fingerprint of a source's build, its
up-to-date index, and the hidden ``.{source}.progress.jsonl`` resume file (sole owner of that format).

Resuming a killed build. A sample's split comes from its group alone, but which shard it lands in
depends on how many samples of its split were kept before it, and near-duplicate removal makes
that depend on every earlier image, so a re-run cannot simply jump to the first missing shard.
We chose to decode, preprocess and deduplicate the source again (the bulk of the cost, mostly
field detection, is paid twice, but the result is always right) and to skip only the *writing*:
every finished shard is recorded in the append-only progress file (build fingerprint, then one
line per shard: file, split, count, size, sha256 and its keys, the entry
:class:`~sonofm.datasets.shards.ShardSetWriter` commits). A re-run with the same fingerprint
(settings, adapter and options, every file with its size and mtime) hands the recorded keys to the
workers, which skip PNG encoding for them, and the writer checks that the same keys arrive in the
same order and that the file still has its recorded sha256 before moving on without touching it.
Any difference raises ``ResumeMismatch`` and the source is rebuilt from scratch. A finished source
gets ``{source}.index.json`` with the fingerprint; a later run with nothing changed skips it
without decoding anything. The alternative, checkpointing the dedup state and the open shards'
contents, would also save the decoding, but is far more state to keep consistent.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sonofm import __version__
from sonofm.atomic_io import write_text
from sonofm.datasets.shards import INDEX_VERSION, index_path, progress_path, read_index, shard_pattern
from sonofm.datasets.sources.specs import SourceSpec


def fingerprint(spec: SourceSpec, source: str, items: Sequence[Any], settings: dict[str, Any]) -> str:
    """Hash of what determines a source's shards: settings, adapter, and every file's size and mtime."""
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


def index_up_to_date(out_dir: Path, source: str, fingerprint: str) -> dict[str, Any] | None:
    """The source's complete index when it was built with ``fingerprint`` and its shards are all
    there at their recorded size (then nothing needs decoding); ``None`` otherwise."""
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


class BuildProgress:
    """The append-only record of one source's finished shards: header line, then one JSON line per shard."""

    def __init__(self, out_dir: Path, source: str, fingerprint: str):
        self.path = progress_path(out_dir, source)
        self.fingerprint = fingerprint

    def recorded(self) -> dict[str, dict[str, Any]]:
        """Shards recorded by an earlier run with the same fingerprint (a torn last line is ignored)."""
        if not self.path.is_file():
            return {}
        done: dict[str, dict[str, Any]] = {}
        with open(self.path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        try:
            head = json.loads(lines[0]) if lines else {}
        except json.JSONDecodeError:
            return {}
        if head.get("fingerprint") != self.fingerprint:
            return {}
        for line in lines[1:]:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                break
            done[entry["file"]] = entry
        return done

    def start(self, done: dict[str, dict[str, Any]]) -> None:
        """Begin this run's record, keeping the shards ``done`` it will reuse (``OSError`` if unwritable)."""
        lines = [json.dumps({"fingerprint": self.fingerprint})] + [json.dumps(e) for e in done.values()]
        write_text(self.path, "".join(line + "\n" for line in lines))

    def append(self, entry: dict[str, Any]) -> None:
        """Record one finished shard, on disk before the writer moves on (a crash keeps it)."""
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def discard(self) -> None:
        """Forget the record: the source is finished, empty, or rebuilt from scratch."""
        self.path.unlink(missing_ok=True)


def recorded_keys(done: dict[str, dict[str, Any]]) -> frozenset[str]:
    """Sample keys of the recorded shards: the workers skip encoding them."""
    return frozenset(k for e in done.values() for k in e.get("keys", ()))


def remove_stale(out_dir: Path, source: str, keep: set[str]) -> list[str]:
    """Delete this source's shards not in ``keep`` and the temporary files a killed run left."""
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


__all__ = ["BuildProgress", "fingerprint", "index_up_to_date", "recorded_keys", "remove_stale"]
