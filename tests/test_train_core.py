"""The training core both loops share (:mod:`sonofm.train`): Accelerate set-up, EMA, the non-finite
guard, the fast path (memory layout, copies, compile) and the mask patch the recipe asks for.

The 2-process DDP run without the "Grad strides" warning is in tests/test_pretrain.py; FSDP
checkpoints in tests/test_fsdp_checkpoint.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sonofm.config.schema import FastPathConfig
from sonofm.errors import UserError
from sonofm.models import PretrainModel
from sonofm.train.fast import (
    compile_model,
    compile_unavailable,
    conv_weights_channels_last,
    plan_fast_path,
    to_device,
)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from pretrain_step import _batch, _tree  # noqa: E402  (the benchmark's synthetic batch and taxonomy)


def _model(decoder: str = "fcmae", seed: int = 0, **kw) -> PretrainModel:
    torch.manual_seed(seed)
    return PretrainModel("convnextv2_atto", img_size=64, dec_dim=32, decoder=decoder, hier_weight=1.0, tree=_tree(),
                         **kw)


def _inputs(channels_last: bool, seed: int = 0) -> dict:
    images, field, targets = _batch(2, 64, torch.Generator().manual_seed(seed))
    return to_device({"image": images, "field": field, "targets": targets}, torch.device("cpu"), channels_last)


@pytest.mark.parametrize("decoder", ["fcmae", "spark"])
@pytest.mark.parametrize("channels_last", [True, False])
def test_every_gradient_has_its_parameters_strides(decoder: str, channels_last: bool) -> None:
    """What DDP's bucket check compares (it printed "Grad strides do not match bucket view strides"
    on every rank): after the engine's layout step every gradient is strided like its parameter."""
    model = _model(decoder)
    x = _inputs(channels_last)
    plain = _model(decoder)  # without the layout step: the depthwise kernels' gradients come back NHWC
    out = plain(x["image"], x["field"], x["targets"], generator=torch.Generator().manual_seed(0))
    out["loss"].backward()
    assert [n for n, p in plain.named_parameters() if p.grad.stride() != p.stride() and "conv_dw" in n]

    conv_weights_channels_last(model, same_bytes_only=not channels_last)
    out = model(x["image"], x["field"], x["targets"], generator=torch.Generator().manual_seed(0))
    out["loss"].backward()
    bad = [(n, p.stride(), p.grad.stride()) for n, p in model.named_parameters()
           if p.grad is not None and p.grad.stride() != p.stride()]
    assert not bad, bad
    if channels_last:
        down = model.encoder.stages[1].downsample[1].weight
        assert down.is_contiguous(memory_format=torch.channels_last) and not down.is_contiguous()
    else:  # nothing moved in memory: every weight is still NCHW-contiguous
        assert all(p.is_contiguous() for p in model.parameters())


def test_channels_last_gives_the_same_loss_and_gradients() -> None:
    a, b = _model(seed=0), conv_weights_channels_last(_model(seed=0))
    outs = []
    for model, cl in ((a, False), (b, True)):
        x = _inputs(cl)
        out = model(x["image"], x["field"], x["targets"], generator=torch.Generator().manual_seed(5))
        out["loss"].backward()
        outs.append(out)
    torch.testing.assert_close(outs[1]["loss"], outs[0]["loss"], rtol=1e-5, atol=1e-6)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_to_device_layout_and_nesting() -> None:
    batch = {"image": torch.rand(2, 3, 8, 8), "mask": torch.zeros(2, 8, 8, dtype=torch.long),
             "targets": {"organ": torch.tensor([0, -1])}, "key": ["a", "b"]}
    out = to_device(batch, torch.device("cpu"), channels_last=True)
    assert out["image"].is_contiguous(memory_format=torch.channels_last) and not out["image"].is_contiguous()
    assert out["mask"].is_contiguous() and out["key"] == ["a", "b"]
    assert torch.equal(out["targets"]["organ"], batch["targets"]["organ"])
    assert to_device(batch, torch.device("cpu"))["image"].is_contiguous()


def test_fast_path_plan_follows_the_device() -> None:
    cpu = plan_fast_path(FastPathConfig(), torch.device("cpu"))
    assert (cpu.channels_last, cpu.fused_adamw, cpu.pin_memory, cpu.compile) == (True, False, False, False)
    cuda = plan_fast_path(FastPathConfig(), torch.device("cuda"))
    assert (cuda.channels_last, cuda.fused_adamw, cuda.pin_memory) == (True, True, True)
    assert not plan_fast_path(FastPathConfig(), torch.device("cuda"), fsdp=True).channels_last
    off = plan_fast_path(FastPathConfig(channels_last=False, fused_adamw=False, pin_memory=False), torch.device("cuda"))
    assert off.describe() == "off"


def test_compile_refused_with_reason_without_a_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("CXX", "no-such-c++")
    reason = compile_unavailable("cpu")
    assert reason and "C++ compiler" in reason
    with pytest.raises(UserError, match="fast.compile=true: torch.compile on CPU needs a C\\+\\+ compiler"):
        plan_fast_path(FastPathConfig(compile=True), torch.device("cpu"))


@pytest.mark.slow
def test_compiled_model_trains_like_eager() -> None:
    """``fast.compile``: a few optimiser steps of the compiled model give the eager losses (inductor,
    C++ on this CPU: it compiles for a minute or more on 2 cores)."""
    reason = compile_unavailable("cpu")
    if reason:
        pytest.skip(reason)
    from sonofm.train.optim import adamw, param_groups

    losses = []
    for compiled in (False, True):
        model = conv_weights_channels_last(_model(seed=1))
        names = list(model.state_dict())
        opt = adamw(param_groups(model, 0.05), 1e-3, (0.9, 0.95))
        if compiled:
            compile_model(model)
            assert list(model.state_dict()) == names, "compiled in place: the state dict keeps its names"
        run = []
        for step in range(3):
            x = _inputs(True, seed=step)
            out = model(x["image"], x["field"], x["targets"], generator=torch.Generator().manual_seed(step))
            out["loss"].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            run.append(float(out["loss"].detach()))
        losses.append(run)
    assert losses[1] == pytest.approx(losses[0], rel=1e-4, abs=1e-5), losses


def test_fp16_without_a_gradient_scaler_is_refused() -> None:
    code = "from sonofm.train.accel import make_accelerator\nmake_accelerator('fp16')\n"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode != 0
    assert "precision=fp16 needs a CUDA device" in proc.stderr


def test_non_finite_guard_counts_without_sync_and_raises_once_per_step(tmp_path: Path) -> None:
    from accelerate import Accelerator

    from sonofm.train.guard import NonFiniteGuard, NonFiniteLossError

    guard = NonFiniteGuard(Accelerator(cpu=True))
    guard.add(torch.tensor(1.0))
    guard.check(0, tmp_path)  # finite: nothing
    guard.add(torch.tensor(float("nan")))
    guard.add(torch.tensor(2.0))
    guard.add(torch.tensor(float("inf")))
    assert guard.count.item() == 2
    with pytest.raises(NonFiniteLossError, match="non-finite loss in 2 micro-batch\\(es\\) at step 8"):
        guard.check(7, tmp_path)
    guard.check(8, tmp_path)  # the counter was reset


def test_ema_is_timms_average_with_the_models_names() -> None:
    from sonofm.train.ema import ModelEMA

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = ModelEMA(model, 0.9)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model[1].num_batches_tracked += 5
    ema.update(model)
    state = ema.state_dict()
    assert list(state) == list(model.state_dict())  # no "module." prefix: loads into the model itself
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(state[k], 0.9 * start[k] + 0.1 * v)
        else:
            assert torch.equal(state[k], v)
    assert not any(p.requires_grad for p in ema.module.parameters())
    other = ModelEMA(model, 0.5)
    other.load_state_dict(state)
    assert all(torch.equal(other.state_dict()[k], v) for k, v in state.items())
    with pytest.raises(ValueError, match="decay"):
        ModelEMA(model, 1.0)


def test_mask_patch_masks_whole_squares() -> None:
    """``masking.patch_size=64``: the mask is drawn on the 64-pixel grid, each square 2x2 encoder cells."""
    model = PretrainModel("convnextv2_atto", img_size=128, dec_dim=32, hier_weight=0.0, mask_patch=64)
    images = torch.rand(3, 1, 128, 128)
    out = model(images, None, None, generator=torch.Generator().manual_seed(0))
    mask = out["mask"]
    assert mask.shape == (3, 4, 4)
    blocks = mask.reshape(3, 2, 2, 2, 2)  # [B, gy, fy, gx, fx]
    assert torch.equal(blocks, blocks[:, :, :1, :, :1].expand_as(blocks)), "a square is masked whole"
    assert ((1 - mask).flatten(1).sum(1) == 8).all()  # round(0.6 * 4) = 2 squares of 4 cells
    with pytest.raises(ValueError, match="multiple of 64 \\(the mask patch\\)"):
        PretrainModel("convnextv2_atto", img_size=96, mask_patch=64)
    with pytest.raises(ValueError, match="multiple of the encoder's stride"):
        PretrainModel("convnextv2_atto", img_size=96, mask_patch=48)


def test_engine_builds_the_mask_patch_the_recipe_asks_for() -> None:
    from sonofm.config import PretrainConfig, load_config
    from sonofm.pretrain.engine import build_model

    cfg = load_config(PretrainConfig, None, ["masking.patch_size=64", "data.img_size=128", "hierarchy.weight=0"])
    assert build_model(cfg, None).mask_patch == 64


def test_threads_stay_within_the_openmp_thread_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    from sonofm.train.accel import within_omp_thread_limit

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setenv("OMP_THREAD_LIMIT", "1")
        assert within_omp_thread_limit() == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_THREAD_LIMIT", "4")
        assert within_omp_thread_limit() is None and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


def test_a_training_step_under_omp_thread_limit_1_finishes() -> None:
    # torch with two intra-op threads under OMP_THREAD_LIMIT=1 never returns from a 1x1 convolution's
    # backward (oneDNN waits for a thread OpenMP will not start); the Accelerator factory lowers the threads
    code = ("import torch\nfrom sonofm.train.accel import make_accelerator\n"
            "torch.set_num_threads(2)\nacc = make_accelerator('no', cpu=True)\n"
            "conv = torch.nn.Conv2d(32, 64, 1)\nx = torch.randn(4, 32, 16, 16)\n"
            "conv(x).sum().backward()\nprint('threads', torch.get_num_threads())\n")
    env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
    env.pop("OMP_NUM_THREADS", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "threads 1" in out.stdout
