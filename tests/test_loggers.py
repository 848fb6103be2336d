"""Metric logging backends: JSON lines always, TensorBoard and wandb (offline) on request."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sonofm.train.loggers import MetricsLogger, read_metrics


def test_jsonl_truncates_steps_after_resume_point(tmp_path: Path) -> None:
    log = MetricsLogger(tmp_path)
    for step in range(1, 6):
        log.log(step, {"loss": 1.0 / step})
    log.close()
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 6, "loss"')  # a line cut by a crash
    MetricsLogger(tmp_path, resume_step=3).close()
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3]


def test_tensorboard_events_written(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    log = MetricsLogger(tmp_path, tensorboard=True)
    log.log(1, {"loss": 0.5, "lr": 1e-3})
    log.close()
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


@pytest.mark.slow
def test_wandb_offline_run_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    log = MetricsLogger(tmp_path / "run", wandb=True, wandb_mode="offline")
    log.log(1, {"loss": 0.5})
    log.close()
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert runs, "wandb wrote no offline run"
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])["loss"] == 0.5
