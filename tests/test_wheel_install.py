"""A plain (non-editable) install works: the wheel carries the recipes and the taxonomy, and
``sonofm quickstart --small`` runs from a directory outside the repository.

The wheel is built from this checkout and installed into a fresh virtual environment without
``-e``. The environment sees the machine's installed packages (``--system-site-packages``: CI has
no network for torch and friends) but sonofm itself comes only from the wheel, which the test
checks before running anything. This is the test that failed with "config file not found:
configs/pretrain/quickstart.yaml" when the YAML lived outside the package.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update({"WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"})
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_wheel_in_a_fresh_venv_runs_quickstart_outside_the_repo(tmp_path: Path) -> None:
    # build from a clean copy: setuptools reuses a build/ folder, and a stale one beside the
    # checkout would put modules that no longer exist into the wheel
    src = tmp_path / "src"
    top = {".git", "build", "dist", "runs", "shards", "wandb", ".pytest_cache", ".ruff_cache"}

    def ignore(folder: str, names: list[str]) -> list[str]:
        at_top = Path(folder) == REPO
        return [n for n in names if (at_top and n in top) or n == "__pycache__" or n.endswith(".egg-info")]

    shutil.copytree(REPO, src, symlinks=True, ignore=ignore)
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
          str(src)], cwd=tmp_path)
    (wheel,) = dist.glob("sonofm-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for shipped in ("sonofm/configs/taxonomy.yaml", "sonofm/configs/pretrain/quickstart.yaml",
                    "sonofm/configs/finetune/seg.yaml", "sonofm/configs/shards/shared.yaml"):
        assert shipped in names, f"{shipped} missing from the wheel"
    modules = {n for n in names if n.startswith("sonofm/") and n.endswith(".py")}
    assert modules == {p.relative_to(src).as_posix() for p in (src / "sonofm").rglob("*.py")}, "wheel != source"

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], cwd=tmp_path)
    py = venv / "bin" / "python"
    # --ignore-installed: the machine may have sonofm installed in editable mode; this one must be the wheel
    _run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed", str(wheel)],
         cwd=tmp_path)
    outside = tmp_path / "somewhere_else"
    outside.mkdir()
    where = _run([str(py), "-c", "import sonofm, sonofm.paths as p; print(sonofm.__file__); "
                  "print(p.config_path('configs/pretrain/quickstart.yaml'))"], cwd=outside).stdout.split()
    assert all(Path(w).resolve().is_relative_to(venv.resolve()) for w in where), where

    _run([str(venv / "bin" / "sonofm"), "quickstart", "--small", "--out", "qs"], cwd=outside, timeout=1500)
    summary = json.loads((outside / "qs" / "summary.json").read_text())
    assert "pretrained" in summary["table"] and "random" in summary["table"]
    assert (outside / "qs" / "export" / "model.safetensors").is_file()
