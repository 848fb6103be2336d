"""``sonofm probe`` end to end on shards made here: what it wrote is printed and exists, and a split
with fewer groups than folds stops before the encoder is loaded or any feature extracted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sonofm.cli import main
from tests.conftest import synthetic_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny synthetic shards (40 images, 64 px)."""
    return synthetic_shards(tmp_path_factory.mktemp("probe"), n=40, seed=3, size=64, splits={"train": 1.0, "val": 0.0, "test": 0.0})


def _groups(shards: Path, split: str) -> int:
    indexes = [json.loads(p.read_text()) for p in shards.glob("*.index.json")]
    return sum(int(index["counts"]["groups"].get(split, 0)) for index in indexes)


def test_too_few_groups_stop_before_features(shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import sonofm.models.loading as loading

    n_groups = _groups(shards, "train")
    folds = n_groups + 1
    assert n_groups >= 2, n_groups

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the encoder was loaded before the folds were checked")

    monkeypatch.setattr(loading, "load_encoder", refuse)
    rc = main(["probe", f"data.shards=[{shards}]", "data.split=train", f"folds={folds}", f"out_dir={tmp_path / 'p'}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert f"{n_groups} group(s) cannot fill {folds} folds" in err and f"folds={n_groups} or fewer" in err
    assert "data.split=train" in err
    assert not (tmp_path / "p" / "features.npz").exists()


def test_probe_prints_what_it_wrote(shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "probe"
    rc = main(["probe", f"data.shards=[{shards}]", "data.split=train", "folds=3", "data.img_size=64",
               "data.num_workers=0", "methods=[linear,knn]", "label_key=label", f"out_dir={out}"])
    printed = capsys.readouterr().out
    assert rc == 0
    written = [out / "probe.json", out / "confusion_linear.png", out / "confusion_knn.png", out / "features.npz"]
    for path in written:
        assert path.is_file(), path
    assert str(out / "probe.json") in printed and "confusion_knn.png" in printed
    assert str(out / "features.npz") in printed
    report = json.loads((out / "probe.json").read_text())
    assert len(report["folds"]) == 3
    assert report["data"]["split"] == "train" and report["data"]["datasets"]  # what the card's table names
    from sonofm.model_card import results_table

    table = results_table(report)
    assert "| classification | " + ", ".join(report["data"]["datasets"]) + " | train | linear probe" in table
