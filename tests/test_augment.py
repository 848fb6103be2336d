"""Augmentation: crops inside the acoustic field, exact mask alignment, determinism, eval transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sonofm.datasets.stream.augment import (
    AugmentConfig,
    augment_sample,
    eval_sample,
    field_fraction,
    random_field_crop,
)


def fan(h: int = 60, w: int = 80) -> np.ndarray:
    """A convex-probe fan in a wider frame: the field covers well under half of the image."""
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot(xx - w / 2, yy + 10)
    angle = np.abs(np.arctan2(xx - w / 2, yy + 10))
    return (r > 12) & (r < h + 5) & (angle < 0.45)


def blocks(h: int = 60, w: int = 80, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Image of 10-px blocks (asymmetric) and the mask of its bright blocks."""
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 2, (h // 10 + 1, w // 10 + 1))
    mask = np.kron(grid, np.ones((10, 10), dtype=np.int64))[:h, :w].astype(np.uint8)
    return (mask * 200 + 20).astype(np.uint8), mask


def test_crops_lie_mostly_inside_the_field() -> None:
    field = fan()
    assert field.mean() < 0.5
    cfg = AugmentConfig(min_field_fraction=0.7)
    fractions = []
    for seed in range(200):
        box = random_field_crop(field, field.shape, np.random.default_rng(seed), cfg)
        x0, y0, x1, y1 = box
        assert 0 <= x0 < x1 <= field.shape[1] and 0 <= y0 < y1 <= field.shape[0]
        fractions.append(field_fraction(field, box))
    assert min(fractions) >= 0.7
    # a plain random crop of the same sizes would often fall outside: the constraint does work
    plain = AugmentConfig(min_field_fraction=0.0)
    plain_fr = [field_fraction(field, random_field_crop(field, field.shape, np.random.default_rng(s), plain))
                for s in range(200)]
    assert np.mean(np.array(plain_fr) < 0.7) > 0.3
    image, mask = blocks()
    out = augment_sample(image, field, mask, 32, np.random.default_rng(3), cfg)
    assert out["field"].mean() > 0.5


def test_output_shapes_dtypes_and_ranges() -> None:
    image, mask = blocks()
    out = augment_sample(image, fan(), mask, 48, np.random.default_rng(0), AugmentConfig())
    assert out["image"].shape == (1, 48, 48) and out["image"].dtype == torch.float32
    assert 0.0 <= out["image"].min() and out["image"].max() <= 1.0
    assert out["field"].shape == (1, 48, 48) and set(out["field"].unique().tolist()) <= {0.0, 1.0}
    assert out["mask"].shape == (48, 48) and out["mask"].dtype == torch.long
    no_field = augment_sample(image, None, None, 24, np.random.default_rng(0), AugmentConfig())
    assert torch.equal(no_field["field"], torch.ones(1, 24, 24)) and "mask" not in no_field


def test_deterministic_for_a_seed() -> None:
    image, mask = blocks()
    a = augment_sample(image, fan(), mask, 32, np.random.default_rng(5), AugmentConfig())
    b = augment_sample(image, fan(), mask, 32, np.random.default_rng(5), AugmentConfig())
    c = augment_sample(image, fan(), mask, 32, np.random.default_rng(6), AugmentConfig())
    assert all(torch.equal(a[k], b[k]) for k in ("image", "field", "mask")) and a["box"] == b["box"]
    assert not torch.equal(a["image"], c["image"])


@pytest.mark.parametrize("seed", range(6))
def test_mask_and_field_follow_crop_and_flip_exactly(seed: int) -> None:
    image, mask = blocks(seed=seed)
    field = fan()
    plain = dict(gamma=(1.0, 1.0), gain=(1.0, 1.0), min_field_fraction=0.0)
    kept = augment_sample(image, field, mask, 40, np.random.default_rng(seed), AugmentConfig(hflip=0.0, **plain))
    flipped = augment_sample(image, field, mask, 40, np.random.default_rng(seed), AugmentConfig(hflip=1.0, **plain))
    assert kept["box"] == flipped["box"] and flipped["flip"] and not kept["flip"]
    for k in ("image", "field", "mask"):
        assert torch.equal(flipped[k], kept[k].flip(-1)), k
    for out in (kept, flipped):  # the mask marks the bright blocks of the transformed image
        agree = ((out["image"][0] > 0.47) == (out["mask"] == 1)).float().mean()
        assert agree > 0.9, float(agree)
    # the same box applied to the field: its crop equals the field re-sampled with nearest neighbours
    again = augment_sample(field.astype(np.uint8) * 255, field, field.astype(np.uint8), 40,
                           np.random.default_rng(seed), AugmentConfig(hflip=0.5, **plain))
    assert torch.equal(again["mask"].float(), again["field"][0])


def test_gamma_and_gain_change_intensity_only() -> None:
    image, mask = blocks()
    geo = dict(min_field_fraction=0.0, hflip=0.0)
    base = augment_sample(image, None, mask, 32, np.random.default_rng(1),
                          AugmentConfig(gamma=(1.0, 1.0), gain=(1.0, 1.0), **geo))
    dark = augment_sample(image, None, mask, 32, np.random.default_rng(1),
                          AugmentConfig(gamma=(2.0, 2.0), gain=(0.5, 0.5), **geo))
    assert torch.equal(base["mask"], dark["mask"])
    torch.testing.assert_close(dark["image"], (0.5 * base["image"] ** 2), atol=1e-6, rtol=0)


def test_eval_transforms_are_deterministic_and_keep_the_content() -> None:
    image, mask = blocks(60, 80)
    lb = eval_sample(image, fan(), mask, 40, "letterbox")
    assert lb["image"].shape == (1, 40, 40) and lb["mask"].shape == (40, 40)
    assert lb["field"][0, :5].sum() == 0 and lb["field"][0, -5:].sum() == 0  # 30-px tall content, padded
    assert torch.equal(lb["image"], eval_sample(image, fan(), mask, 40, "letterbox")["image"])
    cc = eval_sample(image, None, mask, 40, "center_crop")
    assert cc["image"].shape == (1, 40, 40) and torch.equal(cc["field"], torch.ones(1, 40, 40))
    with pytest.raises(ValueError, match="letterbox"):
        eval_sample(image, None, None, 40, "stretch")


def test_config_from_dict_rejects_unknown_keys() -> None:
    assert AugmentConfig.from_any({"hflip": 0.0, "gamma": (0.9, 1.1)}).gamma == [0.9, 1.1]
    assert AugmentConfig.from_any(None) == AugmentConfig()
    with pytest.raises(ValueError, match="unknown augmentation keys.*valid keys"):
        AugmentConfig.from_any({"vflip": 0.5})
    with pytest.raises(ValueError, match="crop_scale"):
        AugmentConfig.from_any({"crop_scale": (0.5, 0.2)})
