"""Pretraining engine end to end on shards built from the synthetic corpus (CPU, tiny sizes).

What these prove: the loop trains (loss goes down on a small fixed set), two processes under
``accelerate launch`` read different data and both train, a run killed with SIGKILL resumes with
``--resume auto`` and then produces exactly the losses of an uninterrupted run, a kill in the
middle of a checkpoint write never leaves a readable-looking half checkpoint, and a non-finite
loss stops the run with a clear message.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sonofm.checkpoints import latest_checkpoint, load_checkpoint
from sonofm.config import PretrainConfig, load_config
from sonofm.train.loggers import read_metrics
from tests.conftest import synthetic_shards, two_cpu_processes

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synth_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny synthetic shards (48 images, 96 px)."""
    return synthetic_shards(tmp_path_factory.mktemp("synth"), n=48, seed=1, size=96, splits={"train": 1.0, "val": 0.0, "test": 0.0}, samples_per_shard=8)


def _overrides(shards: Path, run_dir: Path, **extra: object) -> list[str]:
    base = {
        "run_dir": str(run_dir),
        "steps": 12,
        "seed": 3,
        "data.shards": f"[{shards}]",
        "data.img_size": 64,
        "data.batch_size": 4,
        "data.num_workers": 0,
        "data.shuffle_buffer": 16,
        "decoder.dim": 32,
        "optim.base_lr": 0.02,
        "optim.warmup_steps": 2,
        "logging.log_every": 1,
        "logging.sample_every": 6,
        "logging.progress": False,
        "checkpoint.every": 4,
        "checkpoint.keep_last": 2,
    }
    base.update({k: v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in base.items()]


def _run(args: list[str], env_extra: dict[str, str] | None = None, launcher: list[str] | None = None,
         check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", **(env_extra or {})}
    cmd = (launcher or [sys.executable, "-m"]) + ["sonofm", "pretrain", "--config",
                                                    str(REPO / "configs/pretrain/quickstart.yaml"), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"pretrain failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def _losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r}


def _fixed_batch_loss(cfg: PretrainConfig, state: dict | None) -> tuple[float, float]:
    """Loss of a model (initial weights when ``state`` is None) on one fixed batch with a fixed mask."""
    import torch
    from accelerate.utils import set_seed

    from sonofm.datasets.stream.loader import StreamSpec, make_eval_loader
    from sonofm.pretrain.engine import build_model, mask_generator, taxonomy_for

    taxonomy = taxonomy_for(cfg)  # the tree the shards' indexes describe, as the engine builds it
    set_seed(cfg.seed)  # the engine seeds the same way before building the model
    model = build_model(cfg, taxonomy.tree())
    if state is not None:
        model.load_state_dict(state, strict=True)
    loader = make_eval_loader(StreamSpec(paths=list(cfg.data.shards), split="train"), batch_size=16,
                              img_size=cfg.data.img_size, num_workers=0, target_fn=taxonomy.targets)
    batch = next(iter(loader))
    model.eval()
    with torch.no_grad():
        out = model(batch["image"], batch["field"], batch["targets"], generator=mask_generator(99, 0, 0, 0))
    return float(out["loss"]), float(out["loss_rec"])


def test_trains_saves_and_loss_decreases(synth_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sonofm.pretrain.engine import run_pretraining

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # keep the suite's one thread (the engine would pick its own)

    run = tmp_path / "run"
    cfg = load_config(PretrainConfig, "configs/pretrain/quickstart.yaml",
                      _overrides(synth_shards, run, steps=60, **{"checkpoint.every": 20, "optim.lr": 2e-3}))
    run_pretraining(cfg)
    losses = _losses(run)
    assert sorted(losses) == list(range(1, 61))
    before, before_rec = _fixed_batch_loss(cfg, None)
    after, after_rec = _fixed_batch_loss(cfg, load_checkpoint(latest_checkpoint(run))["model"])
    # 0.95: the classifier's tree holds only the shards' six synthetic sources (log 24 leaves at the
    # start, not the whole built-in taxonomy), so the total starts lower and falls less in 60 steps
    assert after < 0.95 * before, f"loss on a fixed batch did not decrease: {before:.4f} -> {after:.4f}"
    assert after_rec < before_rec, f"reconstruction loss did not decrease: {before_rec:.4f} -> {after_rec:.4f}"
    rows = read_metrics(run / "metrics.jsonl")
    assert any(k.startswith("acc/") for k in rows[-1]), "per-level accuracy is logged"
    assert {"lr", "images_per_s", "data_wait", "loss_rec", "loss_hier"} <= set(rows[-1])
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("step-*"))
    assert ckpts == ["step-00000040", "step-00000060"]  # keep_last=2
    assert latest_checkpoint(run).name == "step-00000060"
    assert (run / "config.yaml").is_file() and (run / "plots" / "loss.png").is_file()
    assert sorted(p.name for p in (run / "samples").glob("*.png"))[-1] == "step-00000060.png"
    saved = load_config(PretrainConfig, run / "config.yaml")
    assert saved.steps == 60 and saved.data.img_size == 64


def test_resume_after_kill_equals_uninterrupted(synth_shards: Path, tmp_path: Path) -> None:
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    _run(_overrides(synth_shards, full))
    # killed right after step 6: the last complete checkpoint is step 4
    proc = _run(_overrides(synth_shards, crashed), env_extra={"SONOFM_FAULT": "after_step:6"}, check=False)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert latest_checkpoint(crashed).name == "step-00000004"
    _run([*_overrides(synth_shards, crashed), "--resume", "auto"])
    a, b = _losses(full), _losses(crashed)
    assert sorted(b) == list(range(1, 13)), "resumed log has each step once"
    for step in range(5, 13):
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-6), f"step {step}: {b[step]} vs {a[step]}"
    ca, cb = load_checkpoint(latest_checkpoint(full)), load_checkpoint(latest_checkpoint(crashed))
    for k in ca["model"]:
        assert (ca["model"][k] - cb["model"][k]).abs().max() < 1e-5, k


def test_kill_during_checkpoint_write_keeps_last_complete(synth_shards: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = _run(_overrides(synth_shards, run), env_extra={"SONOFM_FAULT": "in_checkpoint:8"}, check=False)
    assert proc.returncode == -9
    root = run / "checkpoints"
    assert sorted(p.name for p in root.glob("step-*")) == ["step-00000004"]
    assert latest_checkpoint(run).name == "step-00000004"
    assert list(root.glob(".step-00000008.tmp-*")), "the half-written checkpoint stayed hidden"
    load_checkpoint(latest_checkpoint(run))  # readable
    _run([*_overrides(synth_shards, run), "--resume", "auto"])
    assert latest_checkpoint(run).name == "step-00000012"
    assert not list(root.glob(".step-*")), "stale temporary checkpoint cleaned up"


@pytest.mark.slow
def test_two_process_accelerate_launch(synth_shards: Path, tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    launcher = two_cpu_processes(29517)
    proc = _run(_overrides(synth_shards, run, steps=20, **{"logging.log_keys": "true", "checkpoint.every": 10}),
                launcher=launcher)
    # DDP compares each gradient's strides with its bucket view's: conv kernels stored NCHW while timm's
    # ConvNeXt hands them NHWC activations made it warn on every rank (sonofm.train.fast)
    assert "Grad strides do not match bucket view strides" not in proc.stderr, proc.stderr[-3000:]
    assert "(MULTI_CPU)" in proc.stdout and "fast path: channels_last" in proc.stdout
    keys = {}
    for r in (0, 1):
        lines = (run / "keys" / f"rank{r}.txt").read_text().splitlines()
        assert len(lines) == 20
        keys[r] = [line.split("\t")[1] for line in lines]
    assert keys[0] != keys[1], "both ranks read the same data"
    assert keys[0][0].split(",") != keys[1][0].split(",")
    losses = _losses(run)
    assert sum(losses[s] for s in range(16, 21)) < sum(losses[s] for s in range(1, 6))
    state = json.loads((latest_checkpoint(run) / "state.json").read_text())
    assert state["world_size"] == 2 and state["images_seen"] == 2 * 20 * 4
    assert (latest_checkpoint(run) / "rng-rank1.pt").is_file()


def test_non_finite_loss_stops_with_message(synth_shards: Path, tmp_path: Path) -> None:
    proc = _run(_overrides(synth_shards, tmp_path / "nan", **{"optim.lr": 1e30, "optim.clip_grad": "null"}),
                check=False)
    assert proc.returncode != 0
    assert "non-finite loss" in proc.stderr


def test_ema_with_accumulation_resumes_exactly(synth_shards: Path, tmp_path: Path) -> None:
    """EMA weights are saved, reloaded on resume after a kill and end equal to an uninterrupted run's,
    with gradient accumulation (the finite check runs once per step over both micro-batches). The EMA is
    built after ``accelerator.prepare`` so it sits on the model's device; showing that needs a GPU."""
    import torch

    extra = {"steps": 8, "ema": 0.5, "optim.accum_steps": 2, "logging.sample_every": 100}
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    _run(_overrides(synth_shards, full, **extra))
    proc = _run(_overrides(synth_shards, crashed, **extra), env_extra={"SONOFM_FAULT": "after_step:6"}, check=False)
    assert proc.returncode == -9, proc.stderr[-2000:]
    _run([*_overrides(synth_shards, crashed, **extra), "--resume", "auto"])
    a, b = load_checkpoint(latest_checkpoint(full)), load_checkpoint(latest_checkpoint(crashed))
    assert "ema" in a and "ema" in b
    for k, v in a["ema"].items():
        torch.testing.assert_close(b["ema"][k], v, rtol=1e-5, atol=1e-5)
    moved = [k for k, v in a["ema"].items() if v.is_floating_point() and not torch.allclose(v, a["model"][k])]
    assert moved, "EMA weights should lag behind the model's"
