"""Reading shards: tar members grouped into raw samples, and a raw sample decoded into arrays.

The one reader of the shard format, for the stream, finetuning from shards and ``shards inspect``.
A tar is read in stream mode from a local path or any ``gopen`` URL. Members that the builder never
writes (links, devices, absolute or ``..`` names) are skipped. Corrupt data is either counted in a
:class:`CorruptCounter` (the stream: skip and go on) or raised (everyone else).
"""

from __future__ import annotations

import io
import json
import logging
import multiprocessing
import os
import tarfile
import warnings
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from sonofm.datasets.shards.index import is_url
from sonofm.datasets.shards.names import split_member_name
from sonofm.datasets.sources.imageio import MAX_PIXELS
from sonofm.errors import UserError

log = logging.getLogger(__name__)

CORRUPT_KINDS: tuple[str, ...] = ("image", "json", "mask", "field", "tar")


class CorruptCounter:
    """Counts of skipped corrupt data by kind, in shared memory so DataLoader workers can add to it."""

    def __init__(self) -> None:
        self._values = multiprocessing.get_context().Array("q", len(CORRUPT_KINDS))

    def add(self, kind: str, url: str, key: str | None, reason: str) -> None:
        with self._values.get_lock():
            self._values[CORRUPT_KINDS.index(kind)] += 1
        log.warning("corrupt %s skipped: shard %s, key %s: %s", kind, url, key or "-", reason)

    def as_dict(self) -> dict[str, int]:
        with self._values.get_lock():
            out = {k: int(v) for k, v in zip(CORRUPT_KINDS, self._values[:])}
        out["total"] = sum(out.values())
        return out


class CorruptSample(ValueError):
    """A sample that cannot be used; ``kind`` is one of :data:`CORRUPT_KINDS` (what was wrong)."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


class ShardReadError(UserError, ValueError):
    """A shard that cannot be read to its end (truncated, not a tar, a failing ``pipe:``): names the file."""


class DecodedSample(NamedTuple):
    """One sample as arrays: uint8 image, bool field (or None), uint8 mask (or None), metadata."""

    image: np.ndarray
    field: np.ndarray | None
    mask: np.ndarray | None
    meta: dict[str, Any]


def _unsafe(member: tarfile.TarInfo) -> bool:
    return not member.isreg() or member.name.startswith("/") or ".." in member.name.split("/")


def _open(url: str) -> Any:
    if is_url(url):
        from webdataset.gopen import gopen

        return gopen(url)
    return open(url, "rb")


def iter_tar_samples(path_or_url: str | os.PathLike, counter: CorruptCounter | None = None, stride: int = 1,
                     offset: int = 0, report_tar: bool = True) -> Iterator[dict[str, Any]]:
    """Raw samples ``{"__key__", "__url__", ext: bytes}`` of one shard, in file order, indices ``offset::stride``.

    Keys follow :func:`~sonofm.datasets.shards.names.split_member_name`. A read error (truncated or
    unreadable tar) drops the sample in progress and ends the shard: with a ``counter`` it is counted
    once (by the reader with ``report_tar``) and the samples read so far stand; without one it raises
    :class:`ShardReadError`. Samples of other strides are skipped over, not read.
    """
    url = str(path_or_url)
    index, current, stream, finished = 0, None, None, False  # index: position of ``current`` in the shard

    def skipped(name: str) -> None:
        reason = "member skipped: not a regular file with a relative name (symlink, link, device, absolute " \
                 "or '..' path)"
        if counter is None:
            log.warning("%s: %s: %s", url, name, reason)
        elif report_tar:  # never written by the builder: a tampered or foreign tar
            counter.add("tar", url, name, reason)

    try:
        stream = _open(url)
        tar = tarfile.open(fileobj=stream, mode="r|*")
        for member in tar:
            if member.isdir():
                continue
            if _unsafe(member):
                skipped(member.name)
                continue
            key, ext = split_member_name(member.name)
            if key.startswith("__") or not ext:
                continue
            if current is not None and key != current["__key__"]:
                if index % stride == offset:
                    yield current
                current, index = None, index + 1
            if current is None:
                current = {"__key__": key, "__url__": url}
            current[ext] = tar.extractfile(member).read() if index % stride == offset else b""
            tar.members = []  # stream mode keeps every TarInfo otherwise: memory would grow per shard
        if current is not None and index % stride == offset:
            yield current
        finished = True
    except (OSError, EOFError, tarfile.TarError, ValueError) as e:
        where = f" (in sample {current['__key__']})" if current is not None else ""
        if counter is None:
            raise ShardReadError(f"{url}: unreadable shard{where}: {type(e).__name__}: {e}") from e
        if report_tar:
            counter.add("tar", url, current["__key__"] if current is not None else None,
                        f"{type(e).__name__}: {e} (shard ends here)")
    finally:
        if stream is not None:
            try:
                stream.close()
            except Exception as e:  # a pipe: command that failed reports here
                if counter is None:
                    if finished:
                        raise ShardReadError(f"{url}: reading the shard failed when closing it: {e}") from e
                elif report_tar:
                    counter.add("tar", url, None, f"closing failed: {e}")


def count_samples(path: str | os.PathLike) -> int:
    """Number of samples in a local tar, from its headers only (seeks over the data); the same
    members count as :func:`iter_tar_samples` reads."""
    keys = set()
    try:
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                if m.isdir() or _unsafe(m):
                    continue
                key, ext = split_member_name(m.name)
                if ext and not key.startswith("__"):
                    keys.add(key)
    except (OSError, tarfile.TarError) as e:
        log.warning("%s: could not scan the whole shard (%s); counted %d samples", path, e, len(keys))
    return len(keys)


def decode_png(data: bytes, kind: str) -> np.ndarray:
    """uint8 (H, W) of stored PNG bytes: colour to luma, 16-bit scaled to 8-bit; more than
    ``MAX_PIXELS`` is refused (the build never writes one: a decompression bomb).

    Raises :class:`CorruptSample` of ``kind`` for anything that does not decode.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit below
            im = Image.open(io.BytesIO(data))
        with im:
            if im.width * im.height > MAX_PIXELS:
                raise ValueError(f"{im.width}x{im.height} exceeds the {MAX_PIXELS / 1e6:.0f} MP limit")
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im).astype(np.float64)
                top = max(arr.max(), 1.0)
                return (arr * (255.0 / top)).astype(np.uint8) if top > 255 else arr.astype(np.uint8)
            if im.mode != "L":
                im = im.convert("L")
            return np.asarray(im)
    except Exception as e:  # PIL raises many types for bad bytes: all mean the same here
        raise CorruptSample(kind, f"{kind} PNG does not decode: {type(e).__name__}: {e}") from e


def decode_sample(raw: dict[str, Any]) -> DecodedSample:
    """Image, field, mask and metadata of one raw sample; :class:`CorruptSample` says what is wrong."""
    if "png" not in raw:
        raise CorruptSample("image", f"no image member (has {sorted(k for k in raw if not k.startswith('__'))})")
    image = decode_png(raw["png"], "image")
    if "json" not in raw:
        raise CorruptSample("json", "no json member")
    try:
        meta = json.loads(raw["json"])
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptSample("json", f"bad JSON: {e}") from e
    if not isinstance(meta, dict):
        raise CorruptSample("json", f"JSON is a {type(meta).__name__}, not an object")
    mask = field = None
    if "mask.png" in raw:
        mask = decode_png(raw["mask.png"], "mask")
        if mask.shape != image.shape:
            raise CorruptSample("mask", f"mask size {mask.shape} differs from image size {image.shape}")
    if "field.png" in raw:
        field = decode_png(raw["field.png"], "field") > 127
        if field.shape != image.shape:
            raise CorruptSample("field", f"field size {field.shape} differs from image size {image.shape}")
    return DecodedSample(image, field, mask, meta)
