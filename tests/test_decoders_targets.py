"""Decoders, reconstruction targets, the masked in-field loss and the PretrainModel plumbing."""

from __future__ import annotations

import pytest
import torch

from sonofm.models import (
    PretrainModel,
    create_decoder,
    make_target,
    masked_patch_loss,
    patchify,
    unpatchify,
)
from sonofm.models.targets import gaussian_blur
from sonofm.train.optim import param_groups

DIMS = [40, 80, 160, 320]  # convnext(v2)_atto


def _stages(b: int, h: int, w: int) -> list[torch.Tensor]:
    return [torch.randn(b, c, h // s, w // s) for c, s in zip(DIMS, (4, 8, 16, 32))]


@pytest.mark.parametrize("kind", ["fcmae", "spark"])
def test_decoder_output_shapes(kind: str) -> None:
    torch.manual_seed(0)
    dec = create_decoder(kind, DIMS, dec_dim=64, in_chans=1)
    mask = torch.ones(2, 2, 3)
    mask[:, 0, 1] = 0
    out = dec(_stages(2, 64, 96), mask)
    assert out.shape == (2, 6, 32 * 32)
    assert torch.isfinite(out).all()
    # the mask token is used: the output depends on which patches are masked
    other = torch.ones(2, 2, 3)
    assert not torch.allclose(out, dec(_stages(2, 64, 96), other))
    dec3 = create_decoder(kind, DIMS, dec_dim=64, in_chans=3)
    assert dec3(_stages(1, 64, 64), torch.ones(1, 2, 2)).shape == (1, 4, 32 * 32 * 3)


@pytest.mark.parametrize("out_stride", [1, 2, 4])
def test_spark_output_strides(out_stride: int) -> None:
    dec = create_decoder("spark", DIMS, dec_dim=64, in_chans=1, out_stride=out_stride)
    out = dec(_stages(1, 64, 96), torch.ones(1, 2, 3))
    assert out.shape == (1, 6, 32 * 32) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="out_stride"):
        create_decoder("spark", DIMS, out_stride=8)


def test_unknown_decoder_and_target() -> None:
    with pytest.raises(ValueError, match="fcmae, spark"):
        create_decoder("mae", DIMS)
    with pytest.raises(ValueError, match="norm_pix"):
        make_target(torch.zeros(1, 1, 32, 32), "hog")


def test_patchify_roundtrip() -> None:
    x = torch.randn(2, 3, 64, 96)
    p = patchify(x, 32)
    assert p.shape == (2, 6, 32 * 32 * 3)
    # patch 1 (row 0, column 1), pixel (row 0, col 0), channel 2
    assert p[0, 1, 2] == x[0, 2, 0, 32]
    torch.testing.assert_close(unpatchify(p, 32, (2, 3), 3), x)


def test_norm_pix_target_and_constant_patch_guard() -> None:
    g = torch.Generator().manual_seed(0)
    img = torch.rand(1, 1, 64, 64, generator=g)
    img[..., :32, :32] = 0.0  # black corner
    img[..., :32, 32:] = 0.4 + 1e-3 * torch.rand(32, 32, generator=g)  # nearly flat
    t = make_target(img, "norm_pix", 32, var_floor=1e-4, low_var_weight=0.25)
    assert torch.isfinite(t.target).all()
    assert torch.all(t.target[0, 0] == 0)  # a constant patch gives an all-zero target
    assert t.target[0, 1].abs().max() < 0.1  # not blown up to unit variance
    torch.testing.assert_close(t.target[0, 2:].mean(-1), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(t.target[0, 2:].var(-1, unbiased=False), torch.ones(2), atol=1e-3, rtol=0)
    assert t.weight.tolist() == [[0.25, 0.25, 1.0, 1.0]]
    # back to pixels
    torch.testing.assert_close(unpatchify(t.target * t.std + t.mean, 32, (2, 2)), img, atol=1e-5, rtol=0)


def test_lowpass_target_reduces_speckle() -> None:
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(1, 1, 64, 64, generator=g)
    blurred = gaussian_blur(noise, 2.0)
    assert blurred.shape == noise.shape
    assert blurred.std() < 0.3 * noise.std()
    torch.testing.assert_close(gaussian_blur(torch.full((1, 1, 64, 64), 0.3), 2.0), torch.full((1, 1, 64, 64), 0.3))
    lp = make_target(noise, "lowpass", 32, sigma=2.0)
    np_ = make_target(noise, "norm_pix", 32)
    assert torch.isfinite(lp.target).all() and not torch.allclose(lp.target, np_.target)
    pix = make_target(noise, "pix", 32)
    torch.testing.assert_close(pix.target, patchify(noise, 32))


def test_masked_patch_loss_weights() -> None:
    target = torch.zeros(1, 3, 4)
    pred = torch.tensor([[[1.0] * 4, [2.0] * 4, [3.0] * 4]])
    assert masked_patch_loss(pred, target, torch.tensor([[0.0, 1.0, 0.0]])) == 4.0
    assert masked_patch_loss(pred, target, torch.tensor([[1.0, 0.0, 1.0]])) == 5.0
    assert masked_patch_loss(pred, target, torch.zeros(1, 3)) == 0.0


@pytest.mark.parametrize("target", ["norm_pix", "lowpass", "pix"])
def test_all_black_image_gives_finite_loss(target: str) -> None:
    torch.manual_seed(0)
    model = PretrainModel("convnextv2_atto", img_size=64, dec_dim=32, target=target)
    images = torch.zeros(2, 1, 64, 64)
    for field in (None, torch.zeros(2, 1, 64, 64)):
        out = model(images, field, generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(out["loss"])
        out["loss"].backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("decoder", ["fcmae", "spark"])
def test_loss_only_on_masked_patches_inside_field(decoder: str) -> None:
    torch.manual_seed(0)
    model = PretrainModel("convnextv2_atto", img_size=96, decoder=decoder, dec_dim=32).eval()
    images = torch.rand(2, 1, 96, 96)
    field = torch.ones(2, 1, 96, 96)
    field[:, :, :, 64:] = 0  # last patch column outside the field
    mask = torch.ones(2, 3, 3)
    mask[:, 1, 1] = 0  # masked, in field
    mask[:, 0, 2] = 0  # masked, outside the field: no loss
    weight = ((1 - mask) * torch.tensor([[1.0, 1.0, 0.0]])).flatten(1)  # masked & in field
    delta = torch.zeros(2, 9, 1)
    hook = model.decoder.register_forward_hook(lambda m, i, o: o + delta)
    base = model(images, field, mask=mask)["loss"]
    delta[:] = 5.0 * (weight == 0).float()[..., None]  # change every other patch's prediction
    assert torch.equal(model(images, field, mask=mask)["loss"], base)
    delta[:] = 5.0 * weight[..., None]
    assert model(images, field, mask=mask)["loss"] > base + 1.0
    hook.remove()
    out = model(images, field, mask=mask)
    assert out["pred"].shape == out["target"].shape == (2, 9, 1024)
    torch.testing.assert_close(out["in_field"], torch.tensor([1.0, 1.0, 0.0]).expand(2, 3, 3))


def test_reconstruction_images() -> None:
    torch.manual_seed(0)
    model = PretrainModel("convnext_atto", img_size=64, dec_dim=32)
    images = torch.rand(2, 1, 64, 64)
    out = model(images, generator=torch.Generator().manual_seed(0))
    rec = model.reconstruction(images, out)
    vis = torch.nn.functional.interpolate(out["mask"][:, None], size=(64, 64)).bool()
    for k in ("masked", "target", "pred", "pasted"):
        assert rec[k].shape == images.shape and (rec[k] >= 0).all() and (rec[k] <= 1).all()
    assert torch.equal(rec["pasted"][vis], images[vis])
    assert torch.all(rec["masked"][~vis] == 0)
    torch.testing.assert_close(rec["target"], images, atol=1e-5, rtol=0)  # norm_pix de-normalises exactly
    assert model.unpatchify(out["pred"]).shape == (2, 1, 64, 64)


def test_input_validation() -> None:
    model = PretrainModel("convnextv2_atto", img_size=64, dec_dim=32)
    with pytest.raises(ValueError, match="channel"):
        model(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="multiple of 32"):
        PretrainModel("convnextv2_atto", img_size=100)
    with pytest.raises(ValueError, match="tree"):
        PretrainModel("convnextv2_atto", img_size=64, hier_weight=1.0)


def test_param_groups_no_decay_on_norms_biases_tokens() -> None:
    model = PretrainModel("convnext_atto", img_size=64, decoder="spark", dec_dim=32)
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    nd = {names[id(p)] for p in no_decay["params"]}
    d = {names[id(p)] for p in decay["params"]}
    assert "encoder.stages.0.blocks.0.gamma" in nd
    assert "encoder.stem.1.weight" in nd and "encoder.stem.0.bias" in nd
    assert "decoder.mask_tokens.0" in nd
    assert "encoder.stem.0.weight" in d and "encoder.stages.0.blocks.0.mlp.fc1.weight" in d
    assert all(not n.startswith("encoder.head.norm") for n in nd | d)  # frozen without hierarchical heads
    assert len(nd) + len(d) == sum(p.requires_grad for p in model.parameters())


def test_pixels_outside_the_field_take_no_part_in_target_or_loss() -> None:
    """Blanked colour flow and screen background (field 0) may hold anything: neither the per-patch
    statistics nor the loss change, while a change inside the field does change the loss."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 1, 64, 64, generator=g)
    field = torch.ones(2, 1, 64, 64)
    field[:, :, 10:40, 5:30] = 0  # a blanked colour box straddling patches
    pred = torch.randn(2, 4, 32 * 32, generator=g)
    weight = torch.ones(2, 4)

    def loss(x: torch.Tensor) -> torch.Tensor:
        t = make_target(x, "norm_pix", 32, field=field)
        return masked_patch_loss(pred, t.target, weight, t.pixel_weight)

    outside = images.clone()
    outside[field == 0] = torch.rand(int((field == 0).sum()), generator=g) * 7
    assert torch.allclose(loss(images), loss(outside))
    inside = images.clone()
    inside[:, :, 50:60, 50:60] += 0.3
    assert not torch.allclose(loss(images), loss(inside))
    # a patch with no field pixel drops out instead of counting as a perfect reconstruction
    empty = torch.ones(1, 1, 32, 64)
    empty[:, :, :, :32] = 0
    t = make_target(torch.rand(1, 1, 32, 64, generator=g), "norm_pix", 32, field=empty)
    zero_pred = torch.zeros(1, 2, 32 * 32)
    full = masked_patch_loss(zero_pred, t.target, torch.ones(1, 2), t.pixel_weight)
    right = masked_patch_loss(zero_pred, t.target, torch.tensor([[0.0, 1.0]]), t.pixel_weight)
    assert torch.allclose(full, right)


def test_field_pixels_option_reaches_the_loss() -> None:
    """``target.field_pixels=true``: changing pixels outside the field (with the same mask and encoder
    input left visible-equal) changes the default loss but not the field-only one."""
    from sonofm.config import PretrainConfig, load_config
    from sonofm.pretrain.engine import build_model

    torch.manual_seed(0)
    images = torch.rand(2, 1, 64, 64)
    field = torch.ones(2, 1, 64, 64)
    field[:, :, :, :8] = 0  # a dark band outside the field, inside the first column of patches
    mask = torch.zeros(2, 2, 2)  # every patch masked: the encoder sees no pixel at all
    other = images.clone()
    other[field.expand_as(images) == 0] = 1.0
    losses = {}
    for flag in (False, True):
        cfg = load_config(PretrainConfig, None, ["data.img_size=64", "decoder.dim=16", "hierarchy.weight=0",
                                                 f"target.field_pixels={str(flag).lower()}"])
        model = build_model(cfg, None).eval()
        assert model.field_pixels is flag
        with torch.no_grad():
            losses[flag] = [float(model(x, field, mask=mask)["loss_rec"]) for x in (images, other)]
    assert losses[False][0] != pytest.approx(losses[False][1])
    assert losses[True][0] == pytest.approx(losses[True][1], rel=1e-5)
