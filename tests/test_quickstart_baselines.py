"""The quickstart's ImageNet row: added when ``timm:convnextv2_atto.fcmae_ft_in1k`` is in the local Hugging
Face cache (here one the test writes, offline), left out with one line when it is not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sonofm.quickstart import run_quickstart
from sonofm.quickstart.plan import IMAGENET_SPEC, RANDOM_SPEC
from sonofm.quickstart.stages import baseline_encoders, safe_name


def test_imagenet_row_left_out_with_one_line_when_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert baseline_encoders(None) == {"random": RANDOM_SPEC}
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert len(lines) == 1 and "ImageNet row left out" in lines[0] and str(tmp_path / "empty-cache") in lines[0]
    assert "hf download timm/convnextv2_atto.fcmae_ft_in1k" in lines[0]
    assert baseline_encoders(["random"]) == {"random": RANDOM_SPEC}


def test_small_run_adds_the_imagenet_row_from_the_cache(fake_hub, tmp_path: Path) -> None:
    out = tmp_path / "qs"
    summary = run_quickstart(out=out, small=True)
    rows = [ln.split("|")[1].strip() for ln in summary["table"].splitlines()[2:]]
    assert rows == ["pretrained", "random", IMAGENET_SPEC]
    for task, by_enc in {**summary["probe"], **summary["seg"]}.items():
        assert set(by_enc) == {"pretrained", "random", IMAGENET_SPEC}, task
        report = json.loads(Path(by_enc[IMAGENET_SPEC]).read_text())
        assert Path(by_enc[IMAGENET_SPEC]).parent.name == safe_name(IMAGENET_SPEC)
        if "encoder" in report:  # probe reports name the encoder they loaded
            assert report["encoder"]["kind"] == "timm" and report["encoder"]["adapted_from_chans"] == 3
    assert f"vs {IMAGENET_SPEC}: pretrained ahead on" in summary["conclusion"]
    assert IMAGENET_SPEC in summary["footnote"]
    results = json.loads((out / "results.json").read_text())["results"]
    assert {r["encoder"] for r in results} == {"pretrained", "random", IMAGENET_SPEC}
    card = (out / "export" / "README.md").read_text()
    assert f"| {IMAGENET_SPEC} |" in card  # the model card's results table has the row
    assert (out / "comparison.png").stat().st_size > 0
