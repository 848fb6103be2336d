"""Where sonofm finds its recipes, its taxonomy and the shared real data.

Recipes and the built-in taxonomy ship inside the package (``sonofm/configs/``, package data), so a
wheel install finds them wherever it runs. A path the user gives wins: a relative recipe path is
looked up first in the working directory, then inside the package (``configs/pretrain/x.yaml``,
``pretrain/x.yaml`` and ``x.yaml`` under ``pretrain/`` all name the same shipped recipe).
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path, PurePosixPath

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent


def packaged_configs() -> Path:
    """The ``configs`` folder shipped inside the installed package (a real folder: setuptools installs
    package data as files, and ``_base_`` recipes are resolved relative to their file)."""
    return Path(str(resources.files("sonofm").joinpath("configs")))


def config_path(path: str | os.PathLike) -> Path:
    """Resolve a recipe path: as given (absolute, or relative to the working directory), else shipped."""
    p = Path(path).expanduser()
    if p.exists() or p.is_absolute():
        return p
    shipped = packaged_configs()
    parts = PurePosixPath(p.as_posix()).parts
    rel = PurePosixPath(*parts[1:]) if parts and parts[0] == "configs" and len(parts) > 1 else PurePosixPath(*parts)
    candidate = shipped / rel
    if candidate.exists():
        return candidate
    shipped_list = ", ".join(sorted(str(q.relative_to(shipped)) for q in shipped.glob("*/*.yaml")))
    raise FileNotFoundError(
        f"config file not found: {path} (not in the working directory {Path.cwd()}, nor shipped with "
        f"sonofm; shipped recipes: {shipped_list})"
    )


def shared_data_dir() -> Path:
    """The real datasets (BUSI, CCA, POCUS): ``$SONOFM_SHARED_DATA`` or ``../shared/data`` of the repo."""
    env = os.environ.get("SONOFM_SHARED_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"
