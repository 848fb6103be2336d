"""Shard-time preprocessing: grayscale + colour report, crop, blanking, resize, mask alignment."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from sonofm.datasets.preprocess.pipeline import preprocess, to_grayscale
from sonofm.datasets.sources.records import Record


def _screen(h: int = 600, w: int = 800, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A linear-probe screen: speckle rectangle rows 60:540, cols 180:620 (at 600 x 800), text left of it."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w), np.uint8)
    t, b, left, r = h // 10, h * 9 // 10, w * 9 // 40, w * 31 // 40
    img[t:b, left:r] = np.clip(rng.rayleigh(70, size=(b - t, r - left)), 1, 255).astype(np.uint8)
    pil = Image.fromarray(img)
    ImageDraw.Draw(pil).text((10, 10), "ST MARY HOSPITAL 2024", fill=255)
    mask = np.zeros((h, w), np.uint8)
    mask[200:300, 300:420] = 1  # a lesion of class 1
    mask[400:420, 500:510] = 2
    return np.asarray(pil).copy(), mask


def test_crop_resize_mask_and_spacing() -> None:
    img, mask = _screen()
    rec = Record(img, mask, {"path": "x.png", "source": "syn", "pixel_spacing_mm": [0.1, 0.2]})
    out = preprocess(rec, max_side=220)
    m = out.meta
    assert m["field"]["kind"] == "rect"
    t, left, b, r = m["crop"]
    # The field is grown by about one detection pixel (~3 px here) so that no tissue is cut.
    assert abs(t - 60) <= 6 and abs(left - 180) <= 6 and abs(b - 540) <= 6 and abs(r - 620) <= 6
    assert max(out.image.shape) == 220 and out.image.dtype == np.uint8
    assert out.mask is not None and out.mask.shape == out.image.shape == out.field_mask.shape
    assert set(np.unique(out.mask)) <= {0, 1, 2}  # nearest: no blended class ids
    # The lesion lands where it should after crop + scale.
    sy, sx = out.image.shape[0] / (b - t), out.image.shape[1] / (r - left)
    ys, xs = np.nonzero(out.mask == 1)
    assert abs(ys.min() - (200 - t) * sy) <= 1.5 and abs(xs.max() + 1 - (420 - left) * sx) <= 1.5
    # Spacing scales by the resize factor of each axis.
    assert m["pixel_spacing_mm"] == pytest.approx([0.1 / sy, 0.2 / sx], rel=1e-6)
    assert m["orig_size"] == [600, 800] and m["size"] == list(out.image.shape)
    assert m["text_outside_field"] is True
    assert m["source"] == "syn" and m["path"] == "x.png"
    json.dumps(m)  # serialisable as the shard's json


def test_never_upsamples_and_blanks_outside_field() -> None:
    img, _ = _screen(h=200, w=260)
    out = preprocess(Record(img, None, {"path": "small.png"}), max_side=512)
    assert out.image.shape == tuple(np.subtract(out.meta["crop"][2:], out.meta["crop"][:2]))
    assert out.mask is None
    assert (out.image[~out.field_mask] == 0).all()


def test_mask_is_never_cropped_away() -> None:
    img, _ = _screen()
    mask = np.zeros(img.shape, np.uint8)
    mask[550:580, 100:150] = 1  # outside the drawn field (odd, but must survive)
    out = preprocess(Record(img, mask, {"path": "m.png"}), max_side=800)
    assert out.mask is not None and (out.mask == 1).sum() == 30 * 50
    assert out.meta["field"]["grown_for_mask"] is True


def test_bad_input_names_the_file() -> None:
    rec = Record(np.zeros((20, 20), np.uint8), None, {"path": "bad.png"})
    with pytest.raises(ValueError, match="bad.png"):
        preprocess(rec, max_side=2)


def test_grayscale_tint_is_not_colour_but_marks_are() -> None:
    rng = np.random.default_rng(0)
    gray = np.clip(rng.rayleigh(60, (200, 200)), 0, 255).astype(np.uint8)
    g, info = to_grayscale(gray)
    assert g is gray and not info.is_colour and info.colour_fraction == 0.0
    # A purple-tinted export (hue follows brightness): a tint, not colour.
    tint = np.stack([gray * 0.95, gray * 0.85, gray * 1.0], axis=-1).clip(0, 255).astype(np.uint8)
    g, info = to_grayscale(tint)
    assert not info.is_colour and abs(int(g.astype(int).mean()) - int(gray.mean() * 0.9)) < 5
    # Yellow calipers on the same image: colour.
    marked = np.repeat(gray[..., None], 3, axis=2)
    marked[100:103, 40:160] = (255, 230, 0)
    _, info = to_grayscale(marked)
    assert info.is_colour and info.colour_fraction > 0.001


# Files inspected by eye: yellow calipers, numbers and a box (benign 6, 234, 240).
BUSI_COLOUR = ["benign/benign (6).png", "benign/benign (234).png", "benign/benign (240).png"]
BUSI_GRAY = ["benign/benign (326).png", "malignant/malignant (163).png", "normal/normal (10).png"]


def test_busi_colour_marks_are_reported(shared_data: Path) -> None:
    root = shared_data / "busi" / "Dataset_BUSI_with_GT"
    for name in BUSI_COLOUR + BUSI_GRAY:
        if not (root / name).is_file():
            pytest.skip(f"{root / name} not present")
    for name in BUSI_COLOUR:
        rgb = np.asarray(Image.open(root / name).convert("RGB"))
        out = preprocess(Record(rgb, None, {"path": name}))
        assert out.meta["colour"]["is_colour"], name
    for name in BUSI_GRAY:
        rgb = np.asarray(Image.open(root / name).convert("RGB"))  # gray stored as RGB: still gray
        out = preprocess(Record(rgb, None, {"path": name}))
        assert not out.meta["colour"]["is_colour"], name
