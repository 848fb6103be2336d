"""Names in the shard format: source and split names, shard and index file names, sample keys and
tar member names. Writer, reader and discovery all take their naming rules from here."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path, PurePath

INDEX_VERSION = 1
INDEX_SUFFIX = ".index.json"
PROGRESS_SUFFIX = ".progress.jsonl"
_SAFE = re.compile(r"[^A-Za-z0-9_-]+")
NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
SPLIT_RE = re.compile(r"^[A-Za-z0-9_]+$")


def check_source_name(source: str) -> str:
    """Source names appear in file names and sample keys: only ``[A-Za-z0-9_-]``."""
    if not isinstance(source, str) or not NAME_RE.match(source):
        raise ValueError(f"source name {source!r} must be non-empty and use only letters, digits, '_' or '-'")
    return source


def check_split_name(split: str) -> str:
    """Split names sit between dashes in shard names: only ``[A-Za-z0-9_]``."""
    if not isinstance(split, str) or not SPLIT_RE.match(split):
        raise ValueError(f"split name {split!r} must be non-empty and use only letters, digits or '_'")
    return split


def shard_name(source: str, split: str, number: int) -> str:
    """``{source}-{split}-{000000}.tar``."""
    return f"{source}-{split}-{number:06d}.tar"


def shard_pattern(source: str) -> re.Pattern[str]:
    """Regex matching exactly the shard files of ``source`` (group 1: split, group 2: number)."""
    return re.compile(rf"^{re.escape(source)}-([A-Za-z0-9_]+)-(\d{{6}})\.tar$")


def tmp_path(final: Path) -> Path:
    """Hidden temporary name next to ``final``; never matches ``*.tar`` or ``*.json`` globs."""
    return final.with_name(f".{final.name}.tmp")


def index_path(out_dir: str | os.PathLike, source: str) -> Path:
    return Path(out_dir) / f"{source}{INDEX_SUFFIX}"


def progress_path(out_dir: str | os.PathLike, source: str) -> Path:
    """Hidden per-source record of the shards finished by a build still running (or killed)."""
    return Path(out_dir) / f".{source}{PROGRESS_SUFFIX}"


def sample_key(source: str, path: str | None, frame: int | None = None, index: int = 0) -> str:
    """``{source}-{readable part of path[/frame]}-{8 hex}``: unique, stable and dot-free.

    The readable part keeps the tail of the path (the most specific part); the short hash of the
    exact ``(path, frame, index)`` keeps two paths that sanitise alike (``a b.png``, ``a_b.png``) apart.
    """
    p = str(path) if path is not None else ""
    stem = str(PurePath(p).with_suffix("")) if p else "sample"
    if frame is not None:
        stem = f"{stem}_f{int(frame):05d}"
    readable = _SAFE.sub("_", stem).strip("_")[-80:].strip("_") or "sample"
    digest = hashlib.sha1(f"{p}\x00{frame}\x00{index}".encode()).hexdigest()[:8]
    return f"{source}-{readable}-{digest}"


def member_name(key: str, ext: str) -> str:
    """Tar member of one part of a sample: ``{key}.{ext}`` (``png``, ``mask.png``, ``field.png``, ``json``)."""
    return f"{key}.{ext}"


def split_member_name(name: str) -> tuple[str, str]:
    """``dir/key.mask.png`` -> (``dir/key``, ``mask.png``): the key keeps its folder (keys never contain
    dots), so members of two folders never merge into one sample; the extension is lower-cased."""
    head, _, base = name.rpartition("/")
    key, _, ext = base.partition(".")
    return (f"{head}/{key}" if head else key), ext.lower()


def base_key(key: str) -> str:
    """A raw ``__key__`` without its folder: the sample key the builder wrote."""
    return key.rpartition("/")[2]
