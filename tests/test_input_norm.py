"""Downstream models feed a pretrained encoder exactly what pretraining fed it.

Pretraining normalises [0, 1] images with ``(x - 0.5) / 0.25`` inside :class:`PretrainModel`; the
probes, UPerNet and the prompt model receive [0, 1] images too, and must apply the same statistics,
or the pretrained weights see shifted, shrunk inputs (an early version fed them raw: pretrained
encoders then lost to random ones downstream). These tests compare the downstream paths with the
pretraining forward itself, through a real checkpoint on disk (the timm export: tests/test_export.py).
"""

from __future__ import annotations

import pytest
import timm
import torch
import yaml

from sonofm.checkpoints import save_checkpoint
from sonofm.evaluation.features import pooled_features
from sonofm.models import PretrainModel, masked_forward_features
from sonofm.models.input_norm import INPUT_MEAN, INPUT_STD, InputNorm, input_stats, set_input_stats
from sonofm.models.loading import load_encoder
from sonofm.models.prompt_model import Prompt, PromptModel
from sonofm.models.upernet import SegModel, encoder_pyramid

NAME = "convnextv2_atto"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A pretraining run folder holding a (randomly initialised, then perturbed) PretrainModel."""
    torch.manual_seed(0)
    model = PretrainModel(NAME, in_chans=1, img_size=64, dec_dim=32).eval()
    with torch.no_grad():  # make the weights non-trivial, so a wrong input scale cannot go unnoticed
        for p in model.encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    run = tmp_path_factory.mktemp("run")
    save_checkpoint(run, 1, model.state_dict(), None, {})
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"name": NAME, "in_chans": 1}}))
    return run, model


def _reference(model: PretrainModel, x: torch.Tensor) -> list[torch.Tensor]:
    """The stage maps pretraining computes for [0, 1] images ``x`` with nothing masked."""
    with torch.no_grad():
        xn = (x - model.input_mean) / model.input_std
        return masked_forward_features(model.encoder, xn, torch.ones(x.shape[0], 2, 2)).stages


def test_pretraining_records_its_statistics(run):
    _, model = run
    assert (model.input_mean, model.input_std) == (INPUT_MEAN, INPUT_STD) == (0.5, 0.25)
    assert input_stats(model.encoder) == ((0.5,), (0.25,))


def test_probe_features_match_the_pretraining_forward(run):
    run_dir, model = run
    enc, info = load_encoder(str(run_dir))
    assert info["input_mean"] == [0.5] and info["input_std"] == [0.25]
    x = torch.rand(3, 1, 64, 64)
    ref = _reference(model, x)
    with torch.no_grad():
        got = pooled_features(enc, x)
        want = enc.forward_head(enc.norm_pre(ref[-1]), pre_logits=True)
        raw = enc.forward_head(enc.norm_pre(enc.forward_intermediates(x, intermediates_only=True)[-1]),
                               pre_logits=True)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(raw, want, rtol=1e-2, atol=1e-3)  # feeding [0, 1] unnormalised is detectably wrong


def test_segmentation_and_prompt_models_normalise(run):
    run_dir, model = run
    enc, _ = load_encoder(str(run_dir))
    x = torch.rand(2, 1, 64, 64)
    ref = _reference(model, x)
    seg = SegModel(enc, num_classes=2, channels=16).eval()
    prm = PromptModel(enc, ["breast"], seg_heads={"a": 2}, decoder_channels=16, use_prompts=False).eval()
    with torch.no_grad():
        for m in (seg, prm):
            got = encoder_pyramid(m.encoder, m.input_norm(x))
            for g, r in zip(got, ref):
                torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)
        logits = seg(x)
        torch.testing.assert_close(logits, seg(x.clone()))
        assert logits.shape == (2, 2, 64, 64)
        assert prm(x, "a", "seg").shape == (2, 2, 64, 64)
    # the statistics are not state: checkpoints of these models load with or without them
    assert not any("input_norm" in k for k in seg.state_dict())
    assert not any("input_norm" in k for k in prm.state_dict())


def test_random_baseline_gets_the_same_preprocessing():
    enc, info = load_encoder(f"random:{NAME}")
    assert input_stats(enc) == ((0.5,), (0.25,)) and info["input_mean"] == [0.5]
    assert timm.data.resolve_data_config(model=enc)["mean"] == (0.5,)


def test_plain_timm_model_needs_statistics():
    plain = timm.create_model(NAME, pretrained=False, in_chans=1, num_classes=0)  # ImageNet's 3-channel stats
    with pytest.raises(ValueError, match="3 values for a 1-channel encoder.*set_input_stats"):
        SegModel(plain, num_classes=2)
    with pytest.raises(ValueError, match="3 values for a 1-channel encoder"):
        pooled_features(plain, torch.rand(1, 1, 32, 32))
    set_input_stats(plain, 0.4, 0.2)
    norm = InputNorm(plain)
    torch.testing.assert_close(norm(torch.full((1, 1, 2, 2), 0.6)), torch.ones(1, 1, 2, 2))
    rgb = set_input_stats(timm.create_model(NAME, pretrained=False, in_chans=3, num_classes=0),
                          (0.1, 0.2, 0.3), (0.5, 0.5, 0.5))
    assert input_stats(rgb) == ((0.1, 0.2, 0.3), (0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="std must be > 0"):
        set_input_stats(plain, 0.5, 0.0)
    with pytest.raises(ValueError, match="2 values for a 1-channel encoder"):
        set_input_stats(plain, (0.5, 0.5), 0.25)


def test_prompt_model_forward_uses_prompts_and_normalisation(run):
    run_dir, _ = run
    enc, _ = load_encoder(str(run_dir))
    prm = PromptModel(enc, ["breast", "carotid"], cls_heads={"b": 3}, decoder_channels=16).eval()
    x = torch.rand(2, 1, 64, 64)
    prompts = [Prompt("breast", "cls", "whole", "tumour")] * 2
    with torch.no_grad():
        a = prm(x, "b", "cls", prompts)
        prm.input_norm.mean.fill_(0.0)  # a different normalisation must change the output
        b = prm(x, "b", "cls", prompts)
    assert a.shape == (2, 3) and not torch.allclose(a, b)


def test_timm_dir_statistics_come_from_its_config(tmp_path):
    import json

    from safetensors.torch import save_file as save

    from sonofm.models.loading import IncompatibleCheckpointError

    enc = timm.create_model(NAME, pretrained=False, in_chans=1, num_classes=0)
    save({k: v.contiguous() for k, v in enc.state_dict().items()}, str(tmp_path / "model.safetensors"))
    cfg_file = tmp_path / "config.json"
    cfg_file.write_text(json.dumps({"architecture": NAME, "pretrained_cfg": {"in_chans": 1, "mean": [0.3], "std": [0.2]}}))
    model, info = load_encoder(str(tmp_path))
    assert input_stats(model) == ((0.3,), (0.2,)) and info["input_mean"] == [0.3] and info["input_std"] == [0.2]
    cfg_file.write_text(json.dumps({"architecture": NAME, "pretrained_cfg": {"in_chans": 1}}))
    assert input_stats(load_encoder(str(tmp_path))[0]) == ((INPUT_MEAN,), (INPUT_STD,))  # none given: sonofm's
    cfg_file.write_text(json.dumps({"architecture": NAME, "pretrained_cfg": {"in_chans": 1, "mean": [0.4, 0.4, 0.4],
                                                                            "std": [0.2, 0.2, 0.2]}}))
    with pytest.raises(IncompatibleCheckpointError, match=r"config\.json: pretrained_cfg mean/std: mean has 3 values"):
        load_encoder(str(tmp_path))
