"""``baselines=[random, timm:...]`` on ``sonofm probe`` and ``sonofm finetune seg``: one row per baseline
in the printed table, ``comparison.md``/``.png`` and ``results.json``, whose records reach the model card.
The ImageNet row comes from a Hugging Face cache the test writes (``fake_hub``, offline)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sonofm.cli import main
from sonofm.model_card import load_results, results_table
from tests.conftest import HUB_NAME, synthetic_shards

SPEC = f"timm:{HUB_NAME}"
RANDOM = "random:convnextv2_atto"


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_shards(tmp_path_factory.mktemp("base"), n=40, seed=4, size=64,
                            splits={"train": 0.6, "val": 0.4, "test": 0.0}, samples_per_shard=8)


def _card_rows(results: Path) -> str:
    return results_table(load_results(results))


def test_probe_baselines_one_row_each(fake_hub, shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "probe"
    rc = main(["probe", f"data.shards=[{shards}]", "data.split=train", "folds=2", "data.img_size=64",
               "data.num_workers=0", "methods=[linear]", f"out_dir={out}", f"encoder={SPEC}",
               "baselines=[random]"])
    printed = capsys.readouterr().out
    assert rc == 0
    # the encoder itself is a published one here; the baseline `random` is its architecture, random init
    assert (out / "probe.json").is_file() and (out / "baselines" / "random" / "probe.json").is_file()
    table = (out / "comparison.md").read_text()
    rows = [ln for ln in table.splitlines() if ln.startswith(f"| {SPEC}") or ln.startswith(f"| {RANDOM}")]
    assert len(rows) == 2 and "linear bal. acc" in table and table.split("\n\n", 1)[1].strip() in printed
    assert (out / "comparison.png").stat().st_size > 0
    card = _card_rows(out / "results.json")
    assert f"| {SPEC} | balanced accuracy" in card and f"| {RANDOM} | balanced accuracy" in card


def test_finetune_seg_baselines_one_row_each(fake_hub, shards: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "seg"
    rc = main(["finetune", "seg", f"data.shards=[{shards}]", f"out_dir={out}", "steps=2", "eval_every=0",
               "data.img_size=64", "data.batch_size=2", "data.num_workers=0", "data.shuffle_buffer=4",
               "seg.decoder_channels=8", "checkpoint.every=2", "optim.warmup_steps=1",
               f"baselines=[random,{SPEC}]"])
    printed = capsys.readouterr().out
    assert rc == 0
    assert not (out / "baselines" / "random").exists()  # the encoder is random itself: no second random run
    for folder in (out, out / "baselines" / HUB_NAME):
        assert (folder / "report.json").is_file(), folder
    table = (out / "comparison.md").read_text()
    for enc in (RANDOM, SPEC):
        assert f"| {enc} " in table
    assert "| encoder " in printed and "dice" in table
    records = json.loads((out / "results.json").read_text())["results"]
    assert {r["encoder"] for r in records} == {RANDOM, SPEC}  # the encoder (random) is its own baseline: one row
    assert f"| {SPEC} | Dice" in _card_rows(out / "results.json")


def test_baseline_missing_offline_stops_before_work(fake_hub, shards: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["probe", f"data.shards=[{shards}]", "data.split=train", "folds=2", f"out_dir={tmp_path / 'p'}",
               "baselines=[random,timm:convnextv2_atto.fcmae]"])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1 and "hf download timm/convnextv2_atto.fcmae" in err
    assert not (tmp_path / "p").exists()
