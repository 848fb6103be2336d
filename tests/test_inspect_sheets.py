"""``sonofm shards inspect``: contact sheets go where the user says (default: the working directory),
never into the shard folder (here read-only), and carry a legend and a file caption per thumbnail."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sonofm.cli import main
from sonofm.datasets.shards.inspect import CAPTION, LEGEND, MASK_RGB, TILE, _caption_name
from tests.conftest import synthetic_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny synthetic shards (24 images, 64 px)."""
    return synthetic_shards(tmp_path_factory.mktemp("inspect"), n=24, seed=5, size=64)


def _read_only(folder: Path) -> None:
    for p in [folder, *folder.iterdir()]:
        p.chmod(stat.S_IRUSR | stat.S_IXUSR if p.is_dir() else stat.S_IRUSR)


def test_sheets_go_to_the_working_directory_not_the_shard_folder(shards: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    before = sorted(p.name for p in shards.iterdir())
    _read_only(shards)
    try:
        monkeypatch.chdir(tmp_path)
        assert main(["shards", "inspect", str(shards)]) == 0
    finally:
        for p in [shards, *shards.iterdir()]:
            p.chmod(stat.S_IRWXU)
    printed = capsys.readouterr().out
    sheets = sorted(tmp_path.glob("*.contact.png"))
    assert sheets and all(f"contact sheet: {s}" in printed for s in sheets)
    assert sorted(p.name for p in shards.iterdir()) == before  # nothing written beside the shards
    named = tmp_path / "sheets"
    assert main(["shards", "inspect", str(shards), "--out", str(named)]) == 0
    assert sorted(p.name for p in named.glob("*.contact.png")) == [s.name for s in sheets]


def test_sheet_has_a_legend_and_a_caption_under_every_thumbnail(shards: Path, tmp_path: Path) -> None:
    from sonofm.datasets.shards.inspect import inspect_shards

    inspect_shards(shards, contact_sheet_dir=tmp_path)
    sheet = max(tmp_path.glob("*.contact.png"), key=lambda p: p.stat().st_size)
    arr = np.asarray(Image.open(sheet).convert("RGB"))
    legend = arr[:LEGEND]
    assert (legend == MASK_RGB).all(axis=2).any(), "no mask colour swatch in the legend"
    assert (legend[:16] > 200).any(), "no title in the legend"
    rows = (arr.shape[0] - LEGEND) // (TILE + CAPTION)
    assert rows >= 1 and (arr.shape[0] - LEGEND) % (TILE + CAPTION) == 0
    for r in range(rows):
        top = LEGEND + r * (TILE + CAPTION) + TILE
        first_tile_caption = arr[top + 12 : top + CAPTION, :TILE]
        assert (first_tile_caption > 150).any(), f"row {r}: no file caption under the first thumbnail"


def test_caption_is_the_file_name_with_its_frame() -> None:
    assert _caption_name({"path": "benign/benign (12).png", "frame": None}, "busi/ab12") == "benign (12).png"
    assert _caption_name({"path": "videos/Cov_case3.mp4", "frame": 7}, "pocus/x") == "Cov_case3.mp4 #7"
    assert _caption_name({}, "src/0a1b2c") == "0a1b2c"
    meta = json.loads(json.dumps({"path": os.path.join("a", "b.dcm")}))
    assert _caption_name(meta, "k") == "b.dcm"
