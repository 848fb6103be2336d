"""Every form of the encoder spec loads offline from a Hugging Face cache the test writes itself
(``fake_hub``: timm's ``save_for_hf`` output of a random 3-channel ConvNeXt-V2 under the cache's layout
for ``timm/convnextv2_atto.fcmae_ft_in1k``), the grey/RGB equivalence of timm's stem adaptation, and
the one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from sonofm.models.encoder_spec import (
    EncoderSpecError,
    WeightsNotCachedError,
    baseline_specs,
    parse_spec,
    short_name,
    spec_architecture,
)
from sonofm.models.input_norm import InputNorm, input_stats
from sonofm.models.loading import IncompatibleCheckpointError, load_encoder
from tests.conftest import HUB_NAME

ARCH = "convnextv2_atto"
GREY_MEAN = (0.485 + 0.456 + 0.406) / 3
GREY_STD = (0.229 + 0.224 + 0.225) / 3


def _same_weights(adapted: torch.nn.Module, rgb: torch.nn.Module) -> None:
    want = rgb.state_dict()
    got = adapted.state_dict()
    for k, v in got.items():
        if k == "stem.0.weight":
            assert torch.allclose(v, want[k].sum(1, keepdim=True))  # timm's adapt_input_conv: RGB kernels summed
        else:
            assert torch.equal(v, want[k]), k
    assert not any(k.startswith("head.fc") for k in got)


def test_parse_forms() -> None:
    assert parse_spec("timm:convnextv2_atto.fcmae").kind == "timm"
    assert parse_spec("hf-hub:timm/x").location == "timm/x"
    assert parse_spec("local-dir:/a/b").kind == "local-dir"
    s = parse_spec("convnextv2_atto@w/enc.safetensors")
    assert (s.kind, s.name, s.location) == ("file", ARCH, "w/enc.safetensors")
    assert parse_spec("runs/pretrain").kind == "path"
    for bad, why in (("timm:", "expected timm:<timm name>"), ("hf-hub:nope", "hf-hub:<org>/<repo>"),
                     ("w/enc.safetensors", "needs its architecture"), ("random:x.tag", "without a tag"), (" ", "empty")):
        with pytest.raises(EncoderSpecError, match=why):
            parse_spec(bad)
    assert baseline_specs(["random", f"timm:{HUB_NAME}", "random"], ARCH) == [f"random:{ARCH}", f"timm:{HUB_NAME}"]
    assert short_name(f"timm:{HUB_NAME}") == HUB_NAME and short_name(f"random:{ARCH}") == "random"


@pytest.mark.parametrize("form", ["timm", "hf-hub"])
def test_published_weights_load_offline_adapted_to_grey(fake_hub, form: str) -> None:
    _, rgb = fake_hub
    spec = f"timm:{HUB_NAME}" if form == "timm" else f"hf-hub:timm/{HUB_NAME}"
    enc, info = load_encoder(spec)
    _same_weights(enc, rgb)
    mean, std = input_stats(enc)
    assert mean == pytest.approx((GREY_MEAN,)) and std == pytest.approx((GREY_STD,))
    assert info["kind"] == form and info["name"] == ARCH and info["adapted_from_chans"] == 3
    assert info["source"] == f"timm/{HUB_NAME}" and Path(info["weights_file"]).is_file()
    assert spec_architecture(spec) == ARCH
    enc3, _ = load_encoder(spec, in_chans=3)  # 3 channels: the weights and statistics as published
    assert input_stats(enc3) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_grey_image_through_adapted_model_equals_rgb_copy_through_original(fake_hub) -> None:
    """timm sums the RGB kernels, so grey x through the 1-channel model is [x, x, x] through the 3-channel
    one exactly when every channel is normalised with the grey statistics (means of ImageNet's)."""
    _, _ = fake_hub
    grey, _ = load_encoder(f"timm:{HUB_NAME}", in_chans=1)
    rgb, _ = load_encoder(f"timm:{HUB_NAME}", in_chans=3)
    torch.manual_seed(1)
    x = torch.rand(2, 1, 64, 64)
    (m,), (s,) = input_stats(grey)
    with torch.no_grad():
        a = grey.forward_features(InputNorm(grey)(x))
        b = rgb.forward_features((x.expand(-1, 3, -1, -1) - m) / s)
        c = rgb.forward_features(InputNorm(rgb)(x.expand(-1, 3, -1, -1)))  # ImageNet's per-channel stats
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(a, c, atol=1e-5, rtol=1e-4)  # the reduction matters: per-channel stats differ


def test_local_folder_and_file_forms(fake_hub, tmp_path: Path) -> None:
    cache, rgb = fake_hub
    snap = next((cache / f"models--timm--{HUB_NAME}" / "snapshots").iterdir())
    for spec in (str(snap), f"local-dir:{snap}"):
        enc, info = load_encoder(spec)
        _same_weights(enc, rgb)
        assert info["kind"] == "timm" and input_stats(enc)[0] == pytest.approx((GREY_MEAN,))
    save_file({k: v.contiguous() for k, v in rgb.state_dict().items()}, str(tmp_path / "enc.safetensors"))
    enc, info = load_encoder(f"{ARCH}@{tmp_path / 'enc.safetensors'}")
    _same_weights(enc, rgb)
    assert info["kind"] == "file" and input_stats(enc)[1] == pytest.approx((GREY_STD,))
    with pytest.raises(IncompatibleCheckpointError, match="does not fit"):
        load_encoder(f"convnextv2_femto@{tmp_path / 'enc.safetensors'}")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_encoder(f"local-dir:{tmp_path}")


def test_missing_weights_offline_is_one_line(fake_hub) -> None:
    cache, _ = fake_hub
    with pytest.raises(WeightsNotCachedError) as e:
        load_encoder("timm:convnextv2_atto.fcmae")
    msg = str(e.value)
    assert "\n" not in msg and "timm:convnextv2_atto.fcmae" in msg
    assert str(cache / "models--timm--convnextv2_atto.fcmae") in msg and "hf download timm/convnextv2_atto.fcmae" in msg
    with pytest.raises(WeightsNotCachedError, match="hf download timm/nothing_here"):
        load_encoder("hf-hub:timm/nothing_here")
    with pytest.raises(EncoderSpecError, match="no model 'convnextv9_atto'"):
        load_encoder("timm:convnextv9_atto.fcmae")
    with pytest.raises(EncoderSpecError, match="no published weights 'convnextv2_atto.nosuchtag'"):
        load_encoder("timm:convnextv2_atto.nosuchtag")


def test_cli_prints_the_one_line(fake_hub, tmp_path: Path) -> None:
    """The user sees exactly one line from the command, not a traceback."""
    proc = subprocess.run([sys.executable, "-m", "sonofm", "probe", "encoder=timm:convnextv2_atto.fcmae",
                           f"data.shards=[{tmp_path}]", f"out_dir={tmp_path / 'out'}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "hf download timm/convnextv2_atto.fcmae" in lines[0], proc.stderr


def test_timm_loads_what_timm_loads(fake_hub) -> None:
    """The adapted encoder is exactly what plain timm builds from the same cache (no sonofm re-implementation)."""
    enc, _ = load_encoder(f"timm:{HUB_NAME}")
    ref = timm.create_model(HUB_NAME, pretrained=True, in_chans=1, num_classes=0)
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in enc.state_dict().items())
