"""Clips in the shard build: the frames of one cine loop share one field, found from all of them.

A still detector sees frame 0 of this clip with the probe half off the skin and cuts the field in
half; the build detects the field once per clip (pixels that never change are UI), so frame 0 is
stored with the whole field, like every other frame of the clip, and no burnt-in text is kept.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sonofm.datasets.build.orchestrate import build_shards
from sonofm.datasets.preprocess.field import detect_field
from sonofm.datasets.shards import iter_tar_samples, load_indexes
from sonofm.datasets.synthetic.dicom_writer import write_us_dicom
from sonofm.datasets.synthetic.screens import render_screen, screen_gray


@pytest.mark.parametrize("buffer", [64, 3])
def test_frames_of_a_clip_share_the_field_found_from_all_of_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, buffer: int
) -> None:
    """``buffer`` 3: only the first three frames are held to find the field; the rest stream through."""
    import sonofm.datasets.build.workers as build_workers

    monkeypatch.setattr(build_workers, "CLIP_BUFFER", buffer)
    sc = render_screen("linear", 2, n_frames=6, hard_first=True)
    write_us_dicom(tmp_path / "cine" / "loop.dcm", np.stack(sc.frames), photometric="RGB", frame_time_ms=40.0)
    build_shards([f"dicom:{tmp_path / 'cine'}?source=cine&frames_per_video=null&dedup_threshold=0"],
                 tmp_path / "out", max_side=1024, samples_per_shard=16, dedup=False, progress=False,
                 split_fractions={"train": 1.0, "val": 0.0, "test": 0.0})
    (index,) = load_indexes(tmp_path / "out")
    samples = [s for sh in index["shards"] for s in iter_tar_samples(tmp_path / "out" / sh["file"])]
    metas = [json.loads(s["json"]) for s in samples]
    assert sorted(m["frame"] for m in metas) == list(range(6))
    assert len({tuple(m["crop"]) for m in metas}) == 1, "one field for the whole clip"
    t, left, b, r = metas[0]["crop"]
    rows, cols = np.flatnonzero(sc.field.any(1)), np.flatnonzero(sc.field.any(0))
    truth = (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1)
    still = detect_field(screen_gray(sc.frames[0])).bbox
    # the still detector loses much of frame 0's field; the clip's crop holds the true field
    assert (still[2] - still[0]) * (still[3] - still[1]) < 0.8 * (truth[2] - truth[0]) * (truth[3] - truth[1])
    assert t <= truth[0] + 3 and left <= truth[1] + 3 and b >= truth[2] - 3 and r >= truth[3] - 3
    assert metas[0]["size"] == [b - t, r - left]  # stored at screen resolution: pixels map one to one
    ui = sc.ui[t:b, left:r]
    for sample in samples:
        field = np.asarray(Image.open(io.BytesIO(sample["field.png"]))) > 0
        assert not (field & ui).any(), "burnt-in UI inside the crop is outside the stored field"
