"""Where sonofm finds its recipes and the shared real data.

Recipes live in the repository's ``configs/`` folder; a user may run from anywhere, so a relative
recipe path is looked up first in the working directory, then in the repository next to the package.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent


def config_path(path: str | os.PathLike) -> Path:
    """Resolve a recipe path: as given, else relative to the repository (``configs/...``)."""
    p = Path(path)
    if p.exists() or p.is_absolute():
        return p
    for candidate in (REPO_ROOT / p, REPO_ROOT / "configs" / p):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"config file not found: {path} (looked in {Path.cwd()} and {REPO_ROOT / 'configs'})")


def shared_data_dir() -> Path:
    """The real datasets (BUSI, CCA, POCUS): ``$SONOFM_SHARED_DATA`` or ``../shared/data`` of the repo."""
    env = os.environ.get("SONOFM_SHARED_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"
