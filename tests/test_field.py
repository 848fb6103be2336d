"""Acoustic-field detection on drawn scanner screens and on real BUSI / POCUS files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from sonofm.datasets.preprocess.field import detect_field

H, W = 300, 400


def _speckle(rng: np.random.Generator, shape: tuple[int, int], level: float = 90.0) -> np.ndarray:
    """Rayleigh speckle, as B-mode tissue looks (never black over large areas)."""
    return np.clip(rng.rayleigh(level / 1.25, size=shape), 0, 255)


def _text_layer(boxes_at: list[tuple[int, int, str]]) -> np.ndarray:
    """White burnt-in text (PIL default font) at the given (x, y) positions, as a bool map."""
    layer = Image.new("L", (W, H), 0)
    draw = ImageDraw.Draw(layer)
    for x, y, s in boxes_at:
        draw.text((x, y), s, fill=255)
    return np.asarray(layer) > 0


def _screen(kind: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, true field mask, text pixel map) of a synthetic scanner screen."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    if kind == "fan":  # convex probe: apex above the screen, 30 degrees each side
        ax, ay = 200.0, -60.0
        r = np.hypot(xx - ax, yy - ay)
        ang = np.degrees(np.arctan2(xx - ax, yy - ay))
        field = (r >= 90) & (r <= 340) & (np.abs(ang) <= 30)
    else:  # linear probe: rectangle in the middle of the screen
        field = np.zeros((H, W), bool)
        field[30:270, 90:310] = True
    img = np.where(field, _speckle(rng, (H, W)), 0.0)
    text = _text_layer([(5, 5, "PATIENT DOE JOHN"), (5, 18, "2024-05-01 10:42"), (330, 280, "MI 1.1")])
    text &= ~field
    img[text] = 255
    return img.astype(np.uint8), field, text


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


@pytest.mark.parametrize("kind", ["fan", "rect"])
def test_synthetic_screen_is_cropped_to_its_field(kind: str) -> None:
    img, truth, text = _screen(kind)
    f = detect_field(img)
    assert f.kind == kind
    assert np.abs(np.array(f.bbox) - np.array(_bbox(truth))).max() <= 4, (f.bbox, _bbox(truth))
    t, left, b, r = f.bbox
    crop_text = text[t:b, left:r] & f.mask[t:b, left:r]
    assert not crop_text.any(), "text pixels left inside the cropped field"
    assert f.text_outside
    # The field mask agrees with the truth; the hull adds the thin lens above a convex fan's inner
    # arc (IoU ~0.95) but loses no tissue.
    iou = (f.mask & truth).sum() / (f.mask | truth).sum()
    assert iou > 0.92, iou
    assert (f.mask & truth).sum() / truth.sum() > 0.98
    meta = f.to_meta()
    assert meta["kind"] == kind and meta["bbox"] == list(f.bbox)
    if kind == "fan":  # geometry estimated from the side edges
        assert f.apex is not None and abs(f.apex[0] - 200) < 15 and abs(f.apex[1] + 60) < 30
        assert f.angles is not None and abs(f.angles[0] + 30) < 4 and abs(f.angles[1] - 30) < 4


def test_full_frame_image_is_not_cropped() -> None:
    img = _speckle(np.random.default_rng(1), (H, W)).astype(np.uint8)
    f = detect_field(img)
    assert f.kind == "full" and f.bbox == (0, 0, H, W) and f.mask.all()
    assert not f.text_outside


def test_full_frame_with_black_deep_tissue_is_not_cut() -> None:
    """Depth attenuation fades to black at the bottom (many BUSI images): still the field."""
    rng = np.random.default_rng(2)
    gain = np.clip(1.0 - np.linspace(0, 1.6, H), 0, 1)[:, None]
    img = (_speckle(rng, (H, W)) * gain).astype(np.uint8)
    assert (img[-60:] <= 3).mean() > 0.95  # the bottom fifth really is black
    f = detect_field(img)
    assert f.bbox == (0, 0, H, W), f.bbox


def test_black_cyst_inside_the_field_is_kept() -> None:
    img, truth, _ = _screen("rect", seed=3)
    yy, xx = np.mgrid[0:H, 0:W]
    cyst = ((yy - 200) / 65.0) ** 2 + ((xx - 200) / 100.0) ** 2 <= 1  # touches the field's bottom region
    img[cyst] = 0
    f = detect_field(img)
    assert f.kind == "rect"
    assert f.mask[cyst].all()
    assert np.abs(np.array(f.bbox) - np.array(_bbox(truth))).max() <= 4


def test_blank_and_tiny_images_fall_back_to_full() -> None:
    f = detect_field(np.zeros((100, 120), np.uint8))
    assert f.kind == "full" and f.fallback and f.mask.all()
    assert detect_field(np.full((8, 8), 128, np.uint8)).kind == "full"
    with pytest.raises(ValueError, match="uint8"):
        detect_field(np.zeros((10, 10), np.float32))


# --- real data --------------------------------------------------------------------------------

BUSI = "busi/Dataset_BUSI_with_GT"


def _gray(path: Path) -> np.ndarray:
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return np.asarray(Image.open(path).convert("L"))


def _video_frame(path: Path, index: int = 5) -> np.ndarray:
    av = pytest.importorskip("av")
    if not path.is_file():
        pytest.skip(f"{path} not present")
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i == index:
                return frame.to_ndarray(format="gray")
    raise AssertionError(f"{path} has fewer than {index + 1} frames")


def test_busi_black_panel_and_ruler_are_cropped(shared_data: Path) -> None:
    """benign (326): the tissue ends at x~428 (columns 430+ are black below row 100); right of it
    a black panel with a grey bar block at the top right (rows 0-42, x >= ~412) glued to the
    field's corner: both must go, the tissue must stay."""
    g = _gray(shared_data / BUSI / "benign" / "benign (326).png")
    f = detect_field(g)
    assert f.kind == "rect"
    t, left, b, r = f.bbox
    assert 422 <= r <= 436, f.bbox  # black panel cut away
    assert (t, left, b) == (0, 0, g.shape[0])  # tissue on the other three sides kept
    assert f.text_outside and any(bx[1] >= 420 and bx[0] < 45 for bx in f.text_boxes)


#: Trapezoid (virtual convex) BUSI fields with "LOGIQ E9" burnt into the black top-left corner,
#: straddling the field edge. Measured by eye and by pixel values: x where the label starts in
#: rows 0-4, and x where the tissue (field edge) starts in row 2.
LOGIQ_LABELS = {
    "malignant (163).png": (55, 83),
    "malignant (64).png": (42, 65),
    "malignant (70).png": (37, 59),
}


@pytest.mark.parametrize("name", sorted(LOGIQ_LABELS))
def test_busi_model_name_in_trapezoid_corner_is_outside_field(shared_data: Path, name: str) -> None:
    """The part of the label left of the field edge lies outside the field mask (and is blanked by
    preprocessing), the black corner is not field, and the field keeps almost all the image."""
    label_x, edge_x = LOGIQ_LABELS[name]
    g = _gray(shared_data / BUSI / "malignant" / name)
    f = detect_field(g)
    assert f.kind == "fan"
    assert f.text_outside
    label = np.zeros_like(f.mask)
    label[0:5, label_x : label_x + 10] = True
    assert (g[label] > 140).sum() >= 5  # the label really is there
    assert not f.mask[label].any()
    assert not f.mask[40:60, :10].any()  # black corner below the label
    assert f.mask[2, edge_x + 15 : edge_x + 100].all()  # tissue right of the edge is field
    assert f.mask.mean() > 0.85


def test_busi_large_black_cyst_is_not_cut(shared_data: Path) -> None:
    """benign (188): a cyst darker than the screen background fills the middle: full frame."""
    g = _gray(shared_data / BUSI / "benign" / "benign (188).png")
    f = detect_field(g)
    assert f.kind == "full" and f.bbox == (0, 0, *g.shape)


def test_pocus_linear_black_band_is_cropped(shared_data: Path) -> None:
    """Reg_Image_181206_crop.mp4: linear field with a black band right of x~206 (of 234)."""
    g = _video_frame(shared_data / "pocus/pocus_videos/linear/Reg_Image_181206_crop.mp4")
    dark_cols = np.flatnonzero(g.max(axis=0) < 30)
    f = detect_field(g)
    assert f.kind == "rect"
    t, left, b, r = f.bbox
    assert abs(r - int(dark_cols[dark_cols > g.shape[1] // 2][0])) <= 4, (f.bbox, dark_cols)
    assert left <= 4 and t <= 4 and b >= g.shape[0] - 4


def test_pocus_fan_corners_are_outside_field(shared_data: Path) -> None:
    """Pneu_Avi_Video_006.mp4: convex fan; the black corners beside the top (and the black band
    under the bottom arc) are not field, the fan is."""
    g = _video_frame(shared_data / "pocus/pocus_videos/convex/Pneu_Avi_Video_006.mp4")
    f = detect_field(g)
    h, w = g.shape
    assert f.kind == "fan"
    assert not f.mask[: h // 10, : w // 10].any() and not f.mask[: h // 10, -w // 10 :].any()
    assert f.mask[h // 2, w // 2] and f.mask[h // 10, w // 2]
    assert f.bbox[2] < h - 10  # black band below the arc cropped
    assert f.apex is not None and f.apex[1] < 0  # apex above the screen (convex probe)


def test_small_linear_screen_is_a_rectangle_without_its_id_lines() -> None:
    """Issue 23: a 128-px quickstart screen (linear probe) with its ID, date and time lines 2-3 px
    under and beside the image was taken for a fan that held them. It is a rectangle, and what
    preprocessing keeps of it (the mask less the burnt-in marks its edge covers) holds no mark."""
    from sonofm.datasets.preprocess.overlays import text_area
    from sonofm.datasets.synthetic import plan, render_sample

    checked = 0
    for i, src, patient in plan(160, 0):
        if src != "synth_breast_linear_a" or checked >= 4:
            continue
        s = render_sample(src, 0, patient, i, 128)
        assert any(t.startswith("ID ") for t in s.texts)
        f = detect_field(s.image)
        assert f.kind == "rect", (i, f.kind, f.bbox)
        kept = f.mask & ~text_area(s.image.shape, [], f.ui_marks)
        assert not (kept & s.marks).any(), i
        assert (kept & s.field).sum() >= 0.97 * s.field.sum()
        checked += 1
    assert checked == 4
