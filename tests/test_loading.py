"""load_encoder: random, pretraining runs (model/ema, last as link or file), exported timm dirs, strict errors."""

from __future__ import annotations

import json

import pytest
import timm
import torch
import yaml
from safetensors.torch import save_file

from sonofm.checkpoints import save_checkpoint
from sonofm.models.loading import IncompatibleCheckpointError, load_encoder

NAME = "convnextv2_atto"


def _timm(name: str = NAME, in_chans: int = 1, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, in_chans=in_chans, num_classes=0)


def _run_dir(tmp_path, enc, cfg_model, last="link", prefix="encoder."):
    """A pretraining run written through the checkpoint owner, its ``last`` pointer in each form."""
    run = tmp_path / "run"
    state = {prefix + k: v.contiguous() for k, v in enc.state_dict().items()}
    state["decoder.proj.weight"] = torch.zeros(3, 3)  # other PretrainModel parts are ignored
    ema = {k: v + 1.0 if v.is_floating_point() else v for k, v in state.items()}
    step = save_checkpoint(run, 10, state, None, {}, ema_state=ema)
    (run / "checkpoints" / "step-00000005").mkdir()  # older, incomplete: must not be picked
    pointer = run / "checkpoints" / "last"
    if last != "link":  # save_checkpoint wrote a symlink
        pointer.unlink()
    if last == "file":
        pointer.write_text("step-00000010\n")
    (run / "config.yaml").write_text(yaml.safe_dump({"model": cfg_model}))
    return run, step


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_random_spec():
    model, info = load_encoder(f"random:{NAME}")
    assert info["kind"] == "random" and info["feature_channels"] == [40, 80, 160, 320]
    assert model(torch.zeros(1, 1, 64, 64)).shape == (1, 320)
    with pytest.raises(ValueError, match="cannot create"):
        load_encoder("random:not_a_model_xyz")


@pytest.mark.parametrize("last", ["link", "file", None])
def test_pretrain_run_dir(tmp_path, last):
    enc = _timm(seed=3)
    run, step = _run_dir(tmp_path, enc, {"name": NAME, "in_chans": 1}, last=last)
    model, info = load_encoder(str(run))
    assert info["kind"] == "pretrain" and info["step_dir"] == str(step)
    assert _same(model, enc)
    # a step dir directly, and the EMA weights
    model2, _ = load_encoder(str(step))
    assert _same(model2, enc)
    ema, _ = load_encoder(str(run), weights="ema")
    assert torch.allclose(ema.stem[0].weight, enc.stem[0].weight + 1.0)


def test_pretrain_wrapped_prefix(tmp_path):
    enc = _timm(seed=4)
    run, _ = _run_dir(tmp_path, enc, {"name": NAME}, prefix="encoder.model.")
    model, _ = load_encoder(str(run))
    assert _same(model, enc)


def test_wrong_architecture_lists_keys(tmp_path):
    enc = _timm(seed=1)
    run, _ = _run_dir(tmp_path, enc, {"name": "convnext_atto", "in_chans": 1})  # V1: no GRN
    with pytest.raises(IncompatibleCheckpointError) as e:
        load_encoder(str(run))
    msg = str(e.value)
    assert "unexpected" in msg and "grn" in msg and "model.safetensors" in msg


def test_wrong_channels(tmp_path):
    enc = _timm(in_chans=3)
    run, _ = _run_dir(tmp_path, enc, {"name": NAME, "in_chans": 3})
    with pytest.raises(IncompatibleCheckpointError, match="in_chans=3"):
        load_encoder(str(run), in_chans=1)
    # config silent about channels: the shape check names the stem
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"name": NAME}}))
    with pytest.raises(IncompatibleCheckpointError, match=r"shape mismatch.*stem\.0\.weight"):
        load_encoder(str(run), in_chans=1)


def test_exported_timm_dir(tmp_path):
    enc = _timm(seed=2)
    out = tmp_path / "export"
    out.mkdir()
    state = {k: v.contiguous() for k, v in enc.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps({"architecture": NAME, "pretrained_cfg": {"in_chans": 1}}))
    model, info = load_encoder(str(out))
    assert info["kind"] == "timm" and _same(model, enc)
    with pytest.raises(IncompatibleCheckpointError, match="in_chans=1"):
        load_encoder(str(out), in_chans=3)
    # a truncated export is rejected, naming the missing keys
    del state["stem.0.weight"]
    save_file(state, str(out / "model.safetensors"))
    with pytest.raises(IncompatibleCheckpointError, match=r"missing \(1\): stem\.0\.weight"):
        load_encoder(str(out))


def test_missing_path():
    with pytest.raises(FileNotFoundError, match="no such path"):
        load_encoder("/nonexistent/run")
