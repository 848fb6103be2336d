"""Masked ConvNeXt forward (no leak, sparse semantics, timm equality) and field-aware patch masking."""

from __future__ import annotations

import pytest
import timm
import torch

from sonofm.models import (
    MaskedConvNeXt,
    create_encoder,
    masked_forward_features,
    patches_in_field,
    random_patch_mask,
)

# (timm name, extra kwargs): V1 and V2, both MLP layouts, and an overlapping stem
ENCODERS = [
    ("convnext_atto", {}),
    ("convnextv2_atto", {}),
    ("convnextv2_atto", {"conv_mlp": False}),
    ("convnext_atto_ols", {}),
]
IDS = ["v1", "v2", "v2-linear-mlp", "v1-overlap-stem"]


def _encoder(name: str, kwargs: dict) -> torch.nn.Module:
    """Eval encoder with layer scale 1, random GRN weights and random biases, so that every path
    carries signal (timm initialises GRN to the identity, V1's layer scale to 1e-6 and biases to 0:
    with those, a missing mask multiplication could go unnoticed)."""
    torch.manual_seed(0)
    enc = create_encoder(name, drop_path_rate=0.0, **kwargs).eval()
    with torch.no_grad():
        for n, p in enc.named_parameters():
            if "grn" in n:
                p.normal_(0.0, 0.5)
            elif n.endswith("gamma"):
                p.fill_(1.0)
            elif n.endswith("bias"):
                p.normal_(0.0, 0.2)
    return enc


@pytest.mark.parametrize(("name", "kwargs"), ENCODERS, ids=IDS)
def test_no_leak_from_masked_pixels(name: str, kwargs: dict) -> None:
    enc = _encoder(name, kwargs)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 96, 128, generator=g)
    mask = torch.ones(2, 3, 4)
    mask[0, 1, 1] = mask[0, 0, 3] = mask[1, 2, 0] = mask[1, 1, 2] = 0
    noisy = x.clone()
    for b, i, j in (mask == 0).nonzero().tolist():
        noisy[b, :, 32 * i : 32 * i + 32, 32 * j : 32 * j + 32] += 3 * torch.randn(1, 32, 32, generator=g)
    with torch.no_grad():
        ref = masked_forward_features(enc, x, mask)
        out = masked_forward_features(enc, noisy, mask)
        dense_ref, dense_out = enc.forward_intermediates(x)[1], enc.forward_intermediates(noisy)[1]
    for s, (a, b) in enumerate(zip(ref.stages, out.stages)):
        vis = torch.nn.functional.interpolate(mask[:, None], size=a.shape[-2:], mode="nearest").bool()
        assert torch.allclose(a, b, atol=1e-5), f"stage {s}: visible features changed"
        assert torch.all(a.masked_fill(vis, 0) == 0), f"stage {s}: masked positions are not zero"
        # the same perturbation does leak into visible positions of the dense network
        diff = (dense_ref[s] - dense_out[s]).abs().masked_fill(~vis, 0).max()
        assert diff > 1e-3, f"stage {s}: perturbation too weak to detect a leak"
    assert torch.allclose(ref.last, out.last, atol=1e-5)
    # perturbing a visible patch does change the visible features
    moved = x.clone()
    moved[0, :, 0:32, 0:32] += 1.0
    with torch.no_grad():
        changed = masked_forward_features(enc, moved, mask)
    for a, b in zip(ref.stages, changed.stages):
        assert not torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize(("name", "kwargs"), ENCODERS[:3], ids=IDS[:3])
def test_masked_equals_dense_on_visible_crop(name: str, kwargs: dict) -> None:
    """Sparse semantics: with the right half masked, the visible features equal the dense network run
    on the left half alone (zero padding at the border = zeros at masked positions; GRN statistics over
    visible positions only). Fails if any of the internal mask multiplications is missing."""
    enc = _encoder(name, kwargs)
    x = torch.randn(2, 1, 64, 128, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 2, 4)
    mask[:, :, 2:] = 0
    with torch.no_grad():
        out = masked_forward_features(enc, x, mask)
        _, ref = enc.forward_intermediates(x[..., :64])
    for s, (a, r) in enumerate(zip(out.stages, ref)):
        torch.testing.assert_close(a[..., : r.shape[-1]], r, atol=1e-5, rtol=1e-5, msg=f"stage {s}")


@pytest.mark.parametrize(("name", "kwargs"), ENCODERS, ids=IDS)
def test_all_visible_equals_timm_forward_features(name: str, kwargs: dict) -> None:
    enc = _encoder(name, kwargs)
    x = torch.randn(2, 1, 64, 96)
    with torch.no_grad():
        ref = enc.forward_features(x)
        full = masked_forward_features(enc, x, torch.ones(2, 2, 3))
        dense = masked_forward_features(enc, x, None)
        inter = enc.forward_intermediates(x)[1]
    torch.testing.assert_close(full.last, ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(dense.last, ref, atol=1e-6, rtol=1e-6)
    for a, r in zip(full.stages, inter):
        torch.testing.assert_close(a, r, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", ["convnext_atto", "convnextv2_atto"])
def test_state_dict_loads_into_plain_timm(name: str) -> None:
    enc = create_encoder(name, in_chans=1)
    plain = timm.create_model(name, pretrained=False, in_chans=1, num_classes=0)
    plain.load_state_dict(enc.state_dict(), strict=True)
    wrapped = MaskedConvNeXt(enc)
    plain.load_state_dict(wrapped.model.state_dict(), strict=True)
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x, torch.ones(1, 2, 2)).last, plain.eval().forward_features(x))


def test_encoder_input_errors() -> None:
    with pytest.raises(ValueError, match="not a timm convnext"):
        create_encoder("resnet18")
    enc = create_encoder("convnext_atto")
    with pytest.raises(ValueError, match="does not fit input"):
        masked_forward_features(enc, torch.randn(1, 1, 64, 64), torch.ones(1, 3, 3))


def _fan_field(b: int, h: int, w: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    fan = ((yy > 0.1) & (xx.abs() < 0.15 + 0.7 * yy)).float()
    return fan.expand(b, 1, h, w).clone()


def test_mask_only_inside_field_and_ratio() -> None:
    field = _fan_field(4, 256, 256)
    inside = patches_in_field(field)
    g = torch.Generator().manual_seed(0)
    mask = random_patch_mask(field, 256, ratio=0.6, generator=g)
    assert mask.shape == (4, 8, 8) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    # patches outside the field are never masked
    assert torch.all(mask[inside == 0] == 1)
    n_in = inside.flatten(1).sum(1)
    n_masked = (1 - mask).flatten(1).sum(1)
    assert torch.equal(n_masked, torch.round(0.6 * n_in))
    assert 0 < n_in[0] < 64  # the fan really excludes some patches


def test_mask_is_deterministic_and_random() -> None:
    field = _fan_field(3, 128, 192)
    a = random_patch_mask(field, (128, 192), generator=torch.Generator().manual_seed(5))
    b = random_patch_mask(field, (128, 192), generator=torch.Generator().manual_seed(5))
    c = random_patch_mask(field, (128, 192), generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == (3, 4, 6)


def test_mask_keeps_a_visible_patch_in_small_fields() -> None:
    field = torch.zeros(3, 1, 128, 128)
    field[0, :, :32, :32] = 1  # one in-field patch: nothing can be masked
    field[1, :, :32, :64] = 1  # two: one masked, one visible
    field[2] = 0  # empty field: falls back to every patch
    mask = random_patch_mask(field, 128, ratio=0.9, generator=torch.Generator().manual_seed(0))
    assert mask[0].sum() == 16
    assert mask[1, 0, :2].sum() == 1 and mask[1].sum() == 15
    assert mask[2].sum() >= 1 and mask[2].sum() < 16
    # no field: the whole image is field, at least one patch stays visible even at a high ratio
    m = random_patch_mask(None, 64, ratio=0.99, batch_size=2, generator=torch.Generator().manual_seed(0))
    assert m.shape == (2, 2, 2) and torch.all(m.flatten(1).sum(1) == 1)


def test_mask_argument_errors() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        random_patch_mask(None, 64)
    with pytest.raises(ValueError, match="multiples of 32"):
        random_patch_mask(None, 100, batch_size=1)
    with pytest.raises(ValueError, match="field size"):
        random_patch_mask(torch.ones(1, 1, 64, 64), 128)
    with pytest.raises(ValueError, match="ratio"):
        random_patch_mask(None, 64, ratio=1.0, batch_size=1)
