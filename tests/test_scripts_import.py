"""Every script under ``benchmarks/`` and ``experiments/`` still imports against the package.

The scripts are run by hand, not by the suite, so a refactor that moves a name breaks them silently
(``benchmarks/seg_dice_loss.py`` imported ``_split`` from ``sonofm.quickstart`` after the quickstart
became a package, and only failed when someone ran it). Importing each file as a module runs its
imports and definitions, not its ``__main__`` block.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted([*(REPO / "benchmarks").glob("*.py"), *(REPO / "experiments").glob("*.py")])


def test_there_are_scripts_to_check() -> None:
    assert len(SCRIPTS) >= 5, SCRIPTS


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_script_imports(path: Path) -> None:
    assert '__name__ == "__main__"' in path.read_text(), f"{path}: its work must sit under a __main__ guard"
    spec = importlib.util.spec_from_file_location(f"_script_{path.parent.name}_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))  # scripts may import their neighbours
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    assert callable(getattr(module, "main", None)), f"{path}: no main()"
