"""benchmarks/baseline_study.py (``gpu_throughput.py --study``) in its ``--tiny`` CPU mode, against a
Hugging Face cache the test writes (``fake_hub``, offline): every encoder gets a row, every stage a time.

The GPU figures themselves need a lent GPU and the real published weights; this checks that the command
is ready: it runs end to end here and writes a complete report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGENET = "timm:convnextv2_atto.fcmae_ft_in1k"


def _study(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_throughput.py"), "--study", *args],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=600)


def test_tiny_study_rows_for_random_imagenet_pretrained_and_continued(fake_hub, tmp_path: Path) -> None:
    out = tmp_path / "study"
    proc = _study(["--tiny", "--out", str(out)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    report = json.loads((out / "study.json").read_text())
    encoders = ["pretrained", "random", IMAGENET, f"continued from {IMAGENET}"]
    assert list(report["encoders"]) == encoders and report["tiny"] and report["device"] == "cpu"
    rows = [ln.split("|")[1].strip() for ln in report["table"].splitlines()[2:]]
    assert rows == encoders
    assert {r["encoder"] for r in report["results"]} == set(encoders)
    assert {r["task"] for r in report["results"]} == {"classification", "segmentation"}
    assert set(report["seconds"]) == {"shards", "pretrain", "pretrain_continued", "probes", "segmentation"}
    state = json.loads(next((out / "pretrain_continued" / "checkpoints").glob("step-*/state.json")).read_text())
    assert state["init"]["spec"] == IMAGENET  # the continued run really started from the published weights
    assert (out / "comparison.png").stat().st_size > 0 and "| encoder" in proc.stdout


def test_missing_published_weights_stop_the_study_before_work(fake_hub, tmp_path: Path) -> None:
    proc = _study(["--tiny", "--out", str(tmp_path / "s"), "--init", "timm:convnextv2_atto.fcmae"])
    assert proc.returncode != 0 and "hf download timm/convnextv2_atto.fcmae" in proc.stderr
    assert not (tmp_path / "s").exists()
