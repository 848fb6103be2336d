"""Coordinates through crop, resize and flip: round trips are exact and boxes stay ordered."""

from __future__ import annotations

import numpy as np

from sonofm.datasets.preprocess.geometry import Affine, original_from_stored, stored_from_original


def test_crop_resize_maps_the_corners_of_the_crop_to_the_corners_of_the_sample() -> None:
    a = Affine.crop_resize((10, 20, 110, 220), (50, 100))  # 100 x 200 crop -> 50 x 100
    np.testing.assert_allclose(a.points([[20, 10], [220, 110], [120, 60]]), [[0, 0], [100, 50], [50, 25]])


def test_round_trip_through_build_meta_and_a_flip_is_exact() -> None:
    rng = np.random.default_rng(0)
    meta = {"crop": [7, 13, 301, 419], "size": [147, 203]}
    pts = rng.uniform(0, 400, (20, 2))
    boxes = np.sort(rng.uniform(0, 400, (5, 2, 2)), axis=1).transpose(0, 2, 1).reshape(5, 4)[:, [0, 2, 1, 3]]
    fwd = stored_from_original(meta).then(Affine.hflip(203))
    back = fwd.inverse()
    np.testing.assert_allclose(back.points(fwd.points(pts)), pts, atol=1e-9)
    np.testing.assert_allclose(back.boxes(fwd.boxes(boxes)), boxes, atol=1e-9)
    flipped = fwd.boxes(boxes)
    assert (flipped[:, 2] >= flipped[:, 0]).all() and (flipped[:, 3] >= flipped[:, 1]).all()
    np.testing.assert_allclose(original_from_stored(meta).points(stored_from_original(meta).points(pts)), pts)


def test_missing_points_stay_missing() -> None:
    out = Affine(2, 3, 1, 1).points([[np.nan, np.nan], [1, 1]])
    assert np.isnan(out[0]).all() and out[1].tolist() == [3, 4]
