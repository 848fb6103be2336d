"""Field detection on synthetic vendor screens (text bands, rulers, bars, Doppler, dual views, clips)."""

from __future__ import annotations

import numpy as np
import pytest

from sonofm.datasets.preprocess.field import detect_clip_field, detect_field
from sonofm.datasets.preprocess.pipeline import preprocess
from sonofm.datasets.sources.records import Record
from sonofm.datasets.synthetic.screens import LAYOUTS, render_screen, score_field, screen_gray

#: Lowest IoU per layout, a little under the minimum over 20 seeds in
#: benchmarks/RESULTS_vendor_screens.md (PNG path). Fans lose a few points to the hull's lens above
#: a convex inner arc; power Doppler screens whose deep tissue is black down to the text band
#: below it cannot be told from background in a still and stay the weak case (see the results).
MIN_IOU = {
    "linear": 0.93,
    "convex": 0.93,
    "phased": 0.90,
    "dual": 0.89,
    "colour_doppler": 0.90,
    "power_doppler": 0.40,
    "deep_fade": 0.85,
}
SEEDS = (0, 1)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_screen_field_is_kept_and_ui_is_cut(layout: str) -> None:
    """Through preprocess (the shard path): the field is kept, no UI pixel survives."""
    for seed in SEEDS:
        sc = render_screen(layout, seed)
        out = preprocess(Record(sc.image, None, {"path": f"{layout}_{seed}.png"}), max_side=4096)
        t, left, b, r = out.meta["crop"]
        kept = np.zeros(sc.field.shape, bool)
        kept[t:b, left:r] = out.field_mask
        s = score_field(sc, kept)
        assert s["ui_kept_px"] == 0, (layout, seed, s)
        assert s["iou"] >= MIN_IOU[layout], (layout, seed, s)
        assert out.meta["text_outside_field"]  # the build report still counts the burnt-in text


def test_reported_case_linear_power_doppler_is_not_a_fan_to_the_bottom() -> None:
    """The issue's screen: linear probe, power Doppler, text above and below. The crop must not
    run into the bottom text band, and the field must be found as the rectangle it is."""
    sc = render_screen("power_doppler", 3)
    f = detect_field(screen_gray(sc.image))
    rows = np.flatnonzero(sc.field.any(axis=1))
    assert f.kind == "rect"
    assert f.bbox[2] <= rows[-1] + 8  # the bottom text band is cut away
    assert f.bbox[0] >= rows[0] - 8  # and so is the band above
    assert score_field(sc, f.mask)["iou"] > 0.93


def test_dual_view_gives_two_views_without_the_gap() -> None:
    sc = render_screen("dual", 0)
    f = detect_field(screen_gray(sc.image))
    assert len(f.views) == 2 and f.to_meta()["views"]
    x_gap = (sc.views[0].box[2] + sc.views[1].box[0]) // 2  # the black column between the views
    assert not f.mask[:, x_gap].any()


def test_clip_detector_beats_still_detector_on_a_hard_first_frame() -> None:
    """Frame 0 has the probe half off the skin (half the field black): the still detector cuts
    the field in half; across the clip the tissue moves and the UI does not."""
    sc = render_screen("linear", 2, n_frames=6, hard_first=True)
    frames = [screen_gray(f) for f in sc.frames]
    still = score_field(sc, detect_field(frames[0]).mask)
    clip_field = detect_clip_field(frames)
    clip = score_field(sc, clip_field.mask)
    assert still["iou"] < 0.8, still
    assert clip["iou"] > 0.93 and clip["iou"] > still["iou"] + 0.15, (still, clip)
    assert clip_field.text_outside
    # the ID line printed 1-3 px under the image may touch the mask's edge; what the shard path
    # keeps with this field (text touching it blanked) holds no UI pixel
    out = preprocess(Record(sc.frames[0], None, {"path": "clip.mp4", "frame": 0}), max_side=4096, field=clip_field)
    t, left, b, r = out.meta["crop"]
    kept = np.zeros(sc.field.shape, bool)
    kept[t:b, left:r] = out.field_mask
    assert score_field(sc, kept)["ui_kept_px"] == 0


def test_clip_detector_edge_cases() -> None:
    sc = render_screen("convex", 1, n_frames=3)
    frames = [screen_gray(f) for f in sc.frames]
    one = detect_clip_field(frames[:1])
    ref = detect_field(frames[0])
    assert one.bbox == ref.bbox and np.array_equal(one.mask, ref.mask)
    frozen = detect_clip_field([frames[0]] * 4)  # nothing moves: no temporal cue, the still result
    assert np.array_equal(frozen.mask, ref.mask)
    with pytest.raises(ValueError, match="sizes differ"):
        detect_clip_field([frames[0], frames[0][:-2]])
    with pytest.raises(ValueError, match="at least one"):
        detect_clip_field([])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_generator_truth_is_consistent(layout: str) -> None:
    sc = render_screen(layout, 4, n_frames=2)
    field = sc.field
    assert sc.image.shape == (*field.shape, 3) and sc.image.dtype == np.uint8
    assert sc.ui.any() and not (sc.ui & field).any()  # text/UI never on the field
    assert not (sc.overlay & ~field).any() and not (sc.colour & ~field).any()
    assert len(sc.fields) == len(sc.views) == len(sc.regions) == (2 if layout == "dual" else 1)
    for fm, reg in zip(sc.fields, sc.regions):
        ys, xs = np.nonzero(fm)
        assert reg["box"] == (xs.min(), ys.min(), xs.max(), ys.max()) or np.abs(
            np.subtract(reg["box"], (xs.min(), ys.min(), xs.max(), ys.max()))
        ).max() <= 1
    # UI fixed across a clip's frames, tissue not
    a, b = sc.frames
    assert np.array_equal(a[sc.ui], b[sc.ui])
    assert np.abs(a[field].astype(int) - b[field]).mean() > 5
    # deterministic from the seed
    again = render_screen(layout, 4, n_frames=2)
    assert np.array_equal(again.image, sc.image) and np.array_equal(again.ui, sc.ui)
    if layout in ("colour_doppler", "power_doppler"):
        assert sc.overlay.any()
