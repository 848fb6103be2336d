"""``sonofm.datasets`` is one package whose rooms say what they hold: sub-packages by stage, public names at
the top, nothing loose beside them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import sonofm.datasets as datasets

ROOT = Path(datasets.__file__).parent


def test_public_names_resolve_and_load_lazily() -> None:
    for name in datasets.__all__:
        assert getattr(datasets, name) is not None, name
    assert {"build_shards", "make_train_loader", "ADAPTERS", "SourceSpec", "Taxonomy", "detect_field"} <= set(
        datasets.__all__)
    probe = ("import sys, sonofm.datasets as d; from sonofm.datasets import build_shards, SourceSpec; "
             "print('torch' in sys.modules); d.make_train_loader; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"]  # the build's names need no torch; the stream's bring it


def test_only_the_stages_and_two_modules_at_the_top() -> None:
    top_files = sorted(p.name for p in ROOT.glob("*.py"))
    assert top_files == ["__init__.py", "taxonomy.py"]
    packages = sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file())
    assert packages == ["build", "preprocess", "shards", "sources", "stream", "synthetic"]
    for pkg in packages:  # each room says what it holds
        assert len((ROOT / pkg / "__init__.py").read_text().split('"""')[1]) > 80, pkg
