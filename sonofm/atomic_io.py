"""Temporary files for atomic writes that end up with the user's permissions.

Every artefact sonofm writes (checkpoints, exports, configs, reports, plots) is written under a
hidden temporary name and renamed into place, so a crash never leaves half a file. Python's
``tempfile.mkstemp``/``mkdtemp`` create those with mode 0600/0700 whatever the umask, and the rename
keeps that mode: colleagues in the same group could not read a finished run. These helpers create
the temporary file or folder the same way and then give it the mode a plain ``open``/``mkdir``
would have had (0666/0777 minus the umask).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


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
