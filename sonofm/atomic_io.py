"""Temporary files for atomic writes that end up with the user's permissions.

Every artefact sonofm writes (checkpoints, exports, configs, reports, plots) is written under a
hidden temporary name and renamed into place, so a crash never leaves half a file. Python's
``tempfile.mkstemp``/``mkdtemp`` create those with mode 0600/0700 whatever the umask, and the rename
keeps that mode: colleagues in the same group could not read a finished run. These helpers create
the temporary file or folder the same way and then give it the mode a plain ``open``/``mkdir``
would have had (0666/0777 minus the umask).

This module is the only code that knows how to write a file atomically: :func:`atomic_file` (for
writers that want a path: ``savefig``, ``np.savez``, ``torch.save``), :func:`write_bytes`,
:func:`write_text`, :func:`write_json` and :func:`fsync_dir`. Everything else calls them.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it: set and restore at once
    os.umask(mask)
    return mask


def user_mode(directory: bool = False) -> int:
    """The permission bits ``open()`` (or ``mkdir()``) would give a new file (folder) under the current umask."""
    return (0o777 if directory else 0o666) & ~_umask()


def temp_file(directory: str | os.PathLike, prefix: str, suffix: str = ".tmp") -> str:
    """Create an empty hidden temporary file in ``directory`` (same filesystem as its target, so the
    final ``os.replace`` is atomic) with the user's permissions; returns its path."""
    fd, path = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=suffix)
    try:
        os.fchmod(fd, user_mode())
    finally:
        os.close(fd)
    return path


def temp_dir(directory: str | os.PathLike, prefix: str) -> Path:
    """Create a hidden temporary folder in ``directory`` with the user's permissions."""
    path = Path(tempfile.mkdtemp(dir=directory, prefix=prefix))
    os.chmod(path, user_mode(directory=True))
    return path


def save_safetensors(state: dict, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file`` with the user's permissions (it creates its files 0600)."""
    from safetensors.torch import save_file

    save_file(state, str(path), metadata=metadata)
    os.chmod(path, user_mode())


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries to disk, so a rename into it survives a power cut.

    Best effort: platforms without directory descriptors, or file systems that refuse to fsync a
    folder, are skipped (the rename itself already happened and cannot be undone)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    """Flush one file's data to disk (for files a library wrote and closed itself)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: str | os.PathLike) -> None:
    """Flush every file of a folder, then the folder itself, to disk (before the folder is renamed)."""
    for f in Path(path).iterdir():
        if f.is_file():
            fsync_file(f)
    fsync_dir(path)


@contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a hidden temporary path next to ``path``; on a clean exit it is fsynced and renamed onto
    ``path`` (then the folder is fsynced), on an error it is removed and nothing appears at ``path``.

    ``suffix`` is the temporary's ending: writers that choose a format by extension (``savefig``) or
    append one (``np.savez`` adds ``.npz``) need the real one. The parent folder is created."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(temp_file(final.parent, prefix=f".{final.name}.", suffix=suffix))
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(final.parent)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically with the user's permissions."""
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8", newline: str | None = None) -> Path:
    """Write ``text`` to ``path`` atomically (``newline`` as for :func:`open`: ``""`` writes it untranslated)."""
    with atomic_file(path) as tmp:
        with open(tmp, "w", encoding=encoding, newline=newline) as f:
            f.write(text)
    return Path(path)


def save_figure(fig: Any, path: str | os.PathLike, **savefig_kwargs: Any) -> Path:
    """``fig.savefig`` atomically (format from ``path``'s suffix), then close the figure, also on
    an error, so pyplot does not keep every plot of a long run in memory."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_file(path, suffix=path.suffix or ".png") as tmp:  # savefig picks the format by suffix
            fig.savefig(tmp, **savefig_kwargs)
    finally:
        plt.close(fig)
    return path


def to_jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays, paths, tuples and sets to plain JSON types (NaN/inf -> None), so
    any JSON reader (not only Python's, which accepts ``NaN``) can read what sonofm writes."""
    if obj is None or isinstance(obj, (str, bool)):
        return obj
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj, key=str) if isinstance(obj, (set, frozenset)) else obj
        return [to_jsonable(v) for v in items]
    raise TypeError(f"cannot store {type(obj).__name__} in JSON (sample metadata, reports): {obj!r}")


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2, *, convert: bool = True, end: str = "") -> Path:
    """Write ``obj`` as JSON to ``path`` atomically.

    ``convert`` passes it through :func:`to_jsonable` first (numpy values, NaN -> null); ``end`` is
    appended after the document (the shard index ends with a newline, reports do not)."""
    data = to_jsonable(obj) if convert else obj
    return write_text(path, json.dumps(data, indent=indent) + end)
