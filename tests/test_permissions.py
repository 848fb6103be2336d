"""Outputs are readable by colleagues: every artefact gets the mode the user's umask gives.

Atomic writes go through temporary files, and ``tempfile`` creates those 0600 / 0700 whatever the
umask; a rename keeps that mode. These tests write each kind of artefact under umask 022 and 027
and check that no file or folder ends up stricter than a plain ``open`` / ``mkdir`` would make it
(they fail with the old ``mkstemp`` / ``mkdtemp`` writes: 0600 instead of 0644 / 0640).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch

from sonofm.atomic_io import user_mode


@pytest.fixture(params=[0o022, 0o027])
def umask(request: pytest.FixtureRequest):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _modes(root: Path) -> dict[str, int]:
    out = {}
    for p in [root, *root.rglob("*")]:
        if p.is_symlink() or p.name.startswith("."):
            continue
        out[str(p.relative_to(root.parent))] = stat.S_IMODE(p.stat().st_mode)
    return out


def _check(root: Path, mask: int) -> None:
    modes = _modes(root)
    assert modes
    for name, mode in modes.items():
        expect = (0o777 if Path(root.parent, name).is_dir() else 0o666) & ~mask
        assert mode == expect, f"{name}: mode {oct(mode)}, expected {oct(expect)} under umask {oct(mask)}"


def test_user_mode_follows_the_umask(umask: int) -> None:
    assert user_mode() == 0o666 & ~umask and user_mode(directory=True) == 0o777 & ~umask


def test_run_checkpoint_export_config_report_and_plots(tmp_path: Path, umask: int) -> None:
    from sonofm.atomic_io import write_json
    from sonofm.evaluation.plots import plot_confusion
    from sonofm.export import export_backbone
    from sonofm.finetune.seg_train import save_weights
    from tests.test_export import make_run

    run, _ = make_run(tmp_path)  # config.yaml (save_config) + checkpoints/step-7 (save_checkpoint)
    _check(run, umask)
    out = export_backbone(run, tmp_path / "export")
    _check(out, umask)
    reports = tmp_path / "reports"
    write_json(reports / "probe.json", {"score": 1.0})
    plot_confusion([[3, 1], [0, 4]], ["a", "b"], reports / "confusion.png")
    plt.close("all")
    save_weights({"w": torch.zeros(2)}, reports / "best", {"step": 1})
    _check(reports, umask)
