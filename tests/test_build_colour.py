"""Colour flow through the whole build: a Doppler screen written as DICOM with an Ultrasound Region
becomes a grey sample whose coloured pixels are 0 and outside the stored field mask; ``colour_limit``
drops images with more colour and the report counts both.

The pixel-level behaviour of the blanking is tested in test_colour_flow.py; this proves that the
shards a build writes carry it (region crop, field crop, PNG encoding, field.png) and that the
report's counters are the build's own.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from sonofm.datasets.build.orchestrate import build_shards
from sonofm.datasets.shards import iter_tar_samples, load_indexes
from sonofm.datasets.synthetic.dicom_writer import write_us_dicom

H, W = 240, 320
BOX = (40, 30, 279, 219)  # x0, y0, x1, y1 (inclusive) of the tissue region
FLOW = (120, 80, 180, 140)  # x0, y0, x1, y1 (exclusive) of the colour box inside it
KW = {"max_side": 512, "samples_per_shard": 8, "dedup": False, "progress": False, "workers": 1,
      "split_fractions": {"train": 1.0, "val": 0.0, "test": 0.0}}


def _screen(seed: int, flow: tuple[int, int, int, int] = FLOW) -> tuple[np.ndarray, np.ndarray]:
    """RGB screen: grey speckle inside BOX, red/blue flow inside ``flow``; and the flow's mask."""
    rng = np.random.default_rng(seed)
    img = np.zeros((H, W, 3), np.uint8)
    x0, y0, x1, y1 = BOX
    speckle = np.clip(rng.gamma(2.0, 35.0, (y1 - y0 + 1, x1 - x0 + 1)), 20, 255).astype(np.uint8)
    img[y0:y1 + 1, x0:x1 + 1] = speckle[..., None]
    colour = np.zeros((H, W), bool)
    fx0, fy0, fx1, fy1 = flow
    half = (fy0 + fy1) // 2
    img[fy0:half, fx0:fx1] = (220, 30, 20)  # flow towards the probe
    img[half:fy1, fx0:fx1] = (20, 60, 230)  # and away from it
    colour[fy0:fy1, fx0:fx1] = True
    return img, colour


def _regions() -> list[dict]:
    return [{"box": BOX, "spatial_format": 1, "data_type": 1, "delta_x_cm": 0.01, "delta_y_cm": 0.01},
            {"box": FLOW[:2] + (FLOW[2] - 1, FLOW[3] - 1), "spatial_format": 1, "data_type": 2}]


def _png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_doppler_screen_is_grey_with_flow_blanked_and_out_of_the_field(tmp_path: Path) -> None:
    img, colour = _screen(0)
    write_us_dicom(tmp_path / "dcm" / "doppler.dcm", img[None], photometric="RGB", regions=_regions())
    rep = build_shards([f"dicom:{tmp_path / 'dcm'}?source=doppler"], tmp_path / "out", **KW)["sources"]["doppler"]
    assert rep["samples_written"] == 1 and rep["colour_blanked_images"] == 1
    assert rep["adapter_stats"]["us_regions_other_colour_flow"] == 1
    (index,) = load_indexes(tmp_path / "out")
    (sample,) = iter_tar_samples(tmp_path / "out" / index["shards"][0]["file"])
    stored, field = _png(sample["png"]), _png(sample["field.png"]) > 0
    assert stored.ndim == 2  # grey
    meta = json.loads(sample["json"])
    t, left, b, r = meta["crop"]  # inside the region crop; no resize at this size
    assert meta["size"] == [b - t, r - left]
    x0, y0 = BOX[0], BOX[1]
    in_stored = colour[y0 + t:y0 + b, x0 + left:x0 + r]
    assert in_stored.sum() == colour.sum(), "the flow lies inside the stored crop"
    assert (stored[in_stored] == 0).all(), "coloured pixels are blanked"
    assert not field[in_stored].any(), "coloured pixels are outside the stored field mask"
    grey = ~in_stored & field
    assert grey.mean() > 0.5 and stored[grey].mean() > 30, "the tissue around the flow is kept"


def test_colour_limit_drops_and_counts(tmp_path: Path) -> None:
    little, _ = _screen(1, flow=(120, 80, 130, 90))  # ~0.2 % of the field
    much, _ = _screen(2, flow=(60, 40, 260, 200))  # most of it
    for name, img in (("little", little), ("much", much)):
        d = tmp_path / "png"
        d.mkdir(exist_ok=True)
        Image.fromarray(img).save(d / f"{name}.png")
    rep = build_shards([f"folder:{tmp_path / 'png'}?labels=null"], tmp_path / "out", colour_limit=0.2,
                       **KW)["sources"]["png"]
    assert rep["samples_written"] == 1 and rep["colour_limit_dropped"] == 1 and rep["colour_blanked_images"] == 1
    (index,) = load_indexes(tmp_path / "out")
    assert index["build"]["colour_limit"] == 0.2
