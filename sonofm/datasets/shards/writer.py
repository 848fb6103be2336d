"""Writing shards: sample encoding, atomic tar files, and cutting a source into per-split shards.

Every visible ``*.tar`` in a shard folder is complete: a shard is written to a hidden temporary
name (``.{name}.tmp``, which no ``*.tar`` glob matches), flushed to disk and only then renamed
with ``os.replace``. Tar members get fixed ownership and timestamps, so the same samples give
byte-identical shards (and the same sha256) on every run.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sonofm.atomic_io import fsync_dir, to_jsonable
from sonofm.datasets.shards.names import (
    check_source_name,
    check_split_name,
    member_name,
    shard_name,
    tmp_path,
)
from sonofm.datasets.sources.records import META_KEYS
from sonofm.errors import UserError
from sonofm.faults import maybe_kill

_COMMITS = 0  # shards committed by this process: numbers the ``in_shard`` fault-injection point


# ------------------------------------------------------------------------------------------ encoding


def encode_png(array: np.ndarray, compress_level: int = 3) -> bytes:
    """PNG bytes of a uint8 (H, W) array (bool arrays become 0/255)."""
    a = np.asarray(array)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.dtype != np.uint8 or a.ndim != 2:
        raise ValueError(f"encode_png expects a (H, W) uint8 or bool array, got {a.dtype} {a.shape}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a)).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def sample_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """All :data:`META_KEYS` first (``None`` when unknown), then the extras, JSON-ready."""
    out = {k: to_jsonable(meta.get(k)) for k in META_KEYS}
    for k, v in meta.items():
        if k not in out:
            out[str(k)] = to_jsonable(v)
    return out


@dataclass
class EncodedSample:
    """One encoded sample. ``png`` is ``None`` only for samples a resumed build will not write."""

    key: str
    meta: dict[str, Any]
    png: bytes | None = None
    mask_png: bytes | None = None
    field_png: bytes | None = None

    def members(self) -> list[tuple[str, bytes]]:
        if self.png is None:
            raise ValueError(f"sample {self.key} has no encoded image")
        out = [(member_name(self.key, "png"), self.png)]
        if self.mask_png is not None:
            out.append((member_name(self.key, "mask.png"), self.mask_png))
        if self.field_png is not None:
            out.append((member_name(self.key, "field.png"), self.field_png))
        out.append((member_name(self.key, "json"), json.dumps(self.meta, sort_keys=True).encode("utf-8")))
        return out


# ----------------------------------------------------------------------------------- atomic writing


class OutputError(UserError, OSError):
    """The output folder cannot take the shards (not a folder, read-only, full): the message names
    the folder (and the file being written) and what to do; ``errno`` is the operating system's."""


_OUTPUT_HINTS = {
    errno.ENOSPC: "the disk is full: free some space or give another output folder",
    errno.EROFS: "the file system is read-only: give another output folder",
    errno.EDQUOT: "disk quota exceeded: free some space or give another output folder",
    errno.EACCES: "no permission to write there: give another output folder",
    errno.EPERM: "no permission to write there: give another output folder",
}


def output_error(what: str, err: OSError) -> OutputError:
    """:class:`OutputError` for ``what`` (a file or folder being written) from the ``OSError`` behind it."""
    hint = _OUTPUT_HINTS.get(err.errno or 0)
    out = OutputError(f"{what}: {err.strerror or err}" + (f" ({hint})" if hint else ""))
    out.errno, out.strerror = err.errno, err.strerror
    return out


class TarShard:
    """One shard being written: members go to a hidden temp file, ``commit`` renames it."""

    def __init__(self, final: Path):
        self.final = final
        self.tmp = tmp_path(final)
        try:
            self._raw = open(self.tmp, "wb")
        except OSError as e:
            raise self._error(e) from e
        self._tar = tarfile.open(fileobj=self._raw, mode="w", format=tarfile.PAX_FORMAT)
        self.keys: list[str] = []

    def _error(self, err: OSError) -> OutputError:
        return output_error(f"cannot write shard {self.final.name} in {self.final.parent}", err)

    def add(self, sample: EncodedSample) -> None:
        """Append the sample's members; an ``OSError`` (full disk) becomes :class:`OutputError`."""
        try:
            for name, data in sample.members():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mtime = 0  # fixed, so a rebuild is byte-identical
                info.mode = 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                self._tar.addfile(info, io.BytesIO(data))
        except OSError as e:
            raise self._error(e) from e
        self.keys.append(sample.key)

    def commit(self) -> dict[str, Any]:
        """Finish the tar, flush it to disk, rename it to its final name; returns its index entry.

        On failure (a full disk while flushing) the temporary file is removed: no shard is left
        under its final name, nor a partial one under the hidden name."""
        try:
            self._tar.close()
            self._raw.flush()
            os.fsync(self._raw.fileno())
            self._raw.close()
        except OSError as e:
            self.abort()
            raise self._error(e) from e
        sha, size = file_sha256(self.tmp), self.tmp.stat().st_size
        global _COMMITS
        _COMMITS += 1
        maybe_kill("in_shard", _COMMITS)  # fault injection (tests only): a complete shard not yet renamed
        os.replace(self.tmp, self.final)
        fsync_dir(self.final.parent)
        return {"file": self.final.name, "count": len(self.keys), "bytes": size, "sha256": sha}

    def abort(self) -> None:
        for closer in (self._tar.close, self._raw.close):
            try:
                closer()
            except Exception:  # noqa: BLE001 - best effort clean-up of a temp file
                pass
        self.tmp.unlink(missing_ok=True)


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def keys_sha256(keys: Iterable[str]) -> str:
    h = hashlib.sha256()
    for k in keys:
        h.update(k.encode("utf-8") + b"\n")
    return h.hexdigest()


class ResumeMismatch(RuntimeError):
    """A resumed build would write different samples than a recorded shard holds: start over."""


@dataclass
class _Open:
    number: int
    shard: TarShard | None = None  # None while checking a recorded (already complete) shard
    recorded: dict[str, Any] | None = None
    seen: int = 0


@dataclass
class ShardSetWriter:
    """Cut one source's samples into per-split shards of ``samples_per_shard``, in arrival order.

    Because shards are cut by count in a deterministic sample order, shard ``n`` of a split always
    holds the same samples. ``done`` maps shard file names to entries recorded by an interrupted
    build (``count``, ``bytes``, ``sha256``, ``keys``): such a shard is not rewritten; arriving
    samples are only checked against its recorded keys (a difference raises :class:`ResumeMismatch`).
    ``on_commit`` is called with every finished entry (the build uses it to record progress).
    """

    out_dir: Path
    source: str
    samples_per_shard: int = 1000
    done: dict[str, dict[str, Any]] = field(default_factory=dict)
    on_commit: Callable[[dict[str, Any]], None] | None = None
    entries: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0
    _open: dict[str, _Open] = field(default_factory=dict)
    _next: dict[str, int] = field(default_factory=dict)
    _closed: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        check_source_name(self.source)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.samples_per_shard < 1:
            raise ValueError(f"samples_per_shard must be >= 1, got {self.samples_per_shard}")

    def _usable(self, name: str) -> dict[str, Any] | None:
        rec = self.done.get(name)
        if rec is None:
            return None
        p = self.out_dir / name
        if not p.is_file() or p.stat().st_size != rec.get("bytes") or file_sha256(p) != rec.get("sha256"):
            return None  # gone or changed since it was recorded: write it again
        return rec

    def add(self, sample: EncodedSample) -> None:
        split = check_split_name(str(sample.meta.get("split")))
        if split in self._closed:
            raise ResumeMismatch(f"{self.source}: more {split} samples than the recorded final shard holds")
        o = self._open.get(split)
        if o is None:
            number = self._next.get(split, 0)
            self._next[split] = number + 1
            name = shard_name(self.source, split, number)
            rec = self._usable(name)
            o = _Open(number, None if rec else TarShard(self.out_dir / name), rec)
            self._open[split] = o
        if o.shard is not None:
            if sample.png is None:
                raise ResumeMismatch(f"{self.source}: sample {sample.key} was not encoded but must be written")
            o.shard.add(sample)
            o.seen += 1
        else:
            keys = o.recorded["keys"]
            if o.seen >= len(keys) or keys[o.seen] != sample.key:
                raise ResumeMismatch(
                    f"{self.source}: sample {o.seen} of {shard_name(self.source, split, o.number)} is "
                    f"{sample.key}, the recorded shard has {keys[o.seen] if o.seen < len(keys) else 'no more'}"
                )
            o.seen += 1
        if o.seen >= self.samples_per_shard or (o.shard is None and o.seen == len(o.recorded["keys"])):
            self._finish(split, o)

    def _finish(self, split: str, o: _Open) -> None:
        del self._open[split]
        if o.shard is not None:
            entry = o.shard.commit()
            entry["keys"] = o.shard.keys
        else:
            entry = dict(o.recorded)
            self.skipped += 1
            if o.seen < self.samples_per_shard:
                self._closed.add(split)  # a recorded final shard: nothing more may follow
        entry["split"] = split
        self.entries.append(entry)
        if self.on_commit is not None:
            self.on_commit(entry)

    def close(self) -> list[dict[str, Any]]:
        """Commit the last, partial shard of every split; returns all entries sorted by file name."""
        for split in sorted(self._open):
            o = self._open[split]
            if o.shard is None:
                raise ResumeMismatch(
                    f"{self.source}: recorded shard {shard_name(self.source, split, o.number)} has "
                    f"{len(o.recorded['keys'])} samples, this build has only {o.seen}"
                )
            self._finish(split, o)
        return sorted(self.entries, key=lambda e: e["file"])

    def abort(self) -> None:
        for o in self._open.values():
            if o.shard is not None:
                o.shard.abort()
        self._open.clear()
