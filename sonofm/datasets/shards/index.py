"""The shard index ``{source}.index.json``: written atomically, read from a path or URL, checked,
and resolved to the shard files it lists (only plain file names beside it)."""

from __future__ import annotations

import glob
import json
import os
import re
from pathlib import Path
from typing import Any

from sonofm.atomic_io import write_json
from sonofm.datasets.shards.names import INDEX_SUFFIX
from sonofm.datasets.shards.writer import output_error

_ENTRY_KEYS = frozenset({"file", "split", "count"})
_ENTRY_FILE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def is_url(spec: str) -> bool:
    """A remote or ``pipe:`` location (opened with webdataset's ``gopen``), not a local path."""
    return "://" in spec or spec.startswith("pipe:")


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write the shard index (or any JSON) atomically; a full disk becomes :class:`OutputError`."""
    try:
        write_json(path, obj, indent=1, end="\n")
    except OSError as e:
        raise output_error(f"cannot write {Path(path)}", e) from e


def read_index(path_or_url: str | os.PathLike) -> dict[str, Any]:
    """Load one index (local path or URL); a ``ValueError`` names it if it is not a valid index.

    An index without ``source`` takes it from its file name, ``{source}.index.json``.
    """
    url = str(path_or_url)
    try:
        if is_url(url):
            from webdataset.gopen import gopen

            with gopen(url) as f:
                index = json.loads(f.read())
        else:
            with open(url, encoding="utf-8") as f:
                index = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{url}: cannot read shard index: {e}") from e
    shards = index.get("shards") if isinstance(index, dict) else None
    if not isinstance(shards, list) or not all(isinstance(s, dict) and _ENTRY_KEYS <= set(s) for s in shards):
        raise ValueError(f"{url}: not a shard index (needs 'shards': [{{'file', 'split', 'count'}}, ...])")
    name = url.rsplit("/", 1)[-1]
    if "source" not in index and name.endswith(INDEX_SUFFIX):
        index["source"] = name[: -len(INDEX_SUFFIX)]
    return index


def index_files(folder: str | os.PathLike) -> list[str]:
    """The visible ``*.index.json`` files of a folder, sorted (hidden temporary files never match)."""
    return sorted(glob.glob(os.path.join(glob.escape(str(folder)), f"*{INDEX_SUFFIX}")))


def load_indexes(shard_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every index in ``shard_dir``, sorted by source name."""
    d = Path(shard_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"shard folder not found: {d}")
    return [read_index(p) for p in index_files(d)]


def entry_file(index_url: str, name: Any) -> str:
    """An index's ``file`` entry, which must be a plain file name beside the index.

    An index is data (it may come with downloaded shards): letting it name a ``pipe:`` command, a URL,
    an absolute path or ``../`` would let a shard folder run commands or read files elsewhere. Only
    the user's own arguments may be URLs or ``pipe:`` commands.
    """
    if not isinstance(name, str) or not _ENTRY_FILE_RE.match(name) or ".." in name:
        raise ValueError(f"{index_url}: refusing shard entry {name!r}: an index may only name shard files in "
                         "its own folder (no paths, URLs or pipe: commands)")
    return name


def index_shards(index_url: str | os.PathLike, split: str | None) -> list[tuple[str, int]]:
    """``(url, sample count)`` of the index's shards of ``split`` (all when ``None``); local ones must exist."""
    index_url = str(index_url)
    index = read_index(index_url)
    base = index_url.rsplit("/", 1)[0] if "/" in index_url else "."
    out = []
    for s in index["shards"]:
        if split is None or s["split"] == split:
            url = f"{base}/{entry_file(index_url, s['file'])}"
            if not is_url(url) and not os.path.isfile(url):
                raise ValueError(f"{index_url}: lists shard {s['file']} but {url} does not exist")
            out.append((url, int(s["count"])))
    return out
