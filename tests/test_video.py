"""Frame sampling from generated clips of every container the POCUS set uses."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from sonofm.datasets.sources.imageio import AdapterError
from sonofm.datasets.sources.video import Deduper, even_indices, sample_video

W, H = 64, 48


def frame_pattern(i: int) -> np.ndarray:
    """Frame ``i``: a bright bar whose column encodes the index, on a dark background."""
    img = np.full((H, W, 3), 20, np.uint8)
    x = 2 + 3 * i
    img[:, x : x + 3] = 235
    return img


def write_video(path: Path, frames: list[np.ndarray], rate: int = 25, codec: str | None = None) -> Path:
    """Write ``frames`` with PyAV; the codec is picked from the container unless given."""
    codec = (
        codec or {".mp4": "libx264", ".mov": "libx264", ".avi": "mpeg4", ".mpeg": "mpeg1video"}[path.suffix]
    )
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "10", "preset": "ultrafast"}
        elif codec in ("mpeg4", "mpeg1video"):
            stream.bit_rate = 4_000_000
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_gif(path: Path, frames: list[np.ndarray], duration_ms: int = 40) -> Path:
    ims = [Image.fromarray(f) for f in frames]
    ims[0].save(path, save_all=True, append_images=ims[1:], duration=duration_ms, loop=0)
    return path


def bar_column(image: np.ndarray) -> int:
    """Recover the frame index encoded by :func:`frame_pattern`."""
    gray = image if image.ndim == 2 else image.mean(axis=2)
    x = int(np.argmax(gray.mean(axis=0) > 128))
    return round((x - 2) / 3)


def test_even_indices() -> None:
    assert even_indices(20, 4) == [2, 7, 12, 17]
    assert even_indices(3, 8) == [0, 1, 2]
    assert even_indices(0, 4) == []
    assert even_indices(100, 1) == [50]


@pytest.mark.parametrize("ext", [".mp4", ".avi", ".mov", ".mpeg", ".gif"])
def test_even_sampling_every_container(tmp_path: Path, ext: str) -> None:
    frames = [frame_pattern(i) for i in range(20)]
    path = tmp_path / f"clip{ext}"
    write_gif(path, frames) if ext == ".gif" else write_video(path, frames)
    clip = sample_video(path, frames_per_video=4)
    assert [f.index for f in clip.frames] == [2, 7, 12, 17]
    # The pixels are those of the frame the index names (decoding order is right).
    assert [bar_column(f.image) for f in clip.frames] == [2, 7, 12, 17]
    assert clip.n_frames == 20 and clip.n_duplicates == 0
    assert all(f.image.dtype == np.uint8 and f.image.shape[:2] == (H, W) for f in clip.frames)


def test_fps_sampling_follows_video_time(tmp_path: Path) -> None:
    path = write_video(tmp_path / "clip.mp4", [frame_pattern(i) for i in range(20)], rate=10)  # 2 s
    clip = sample_video(path, fps=2.5, dedup_threshold=0)
    times = [f.time for f in clip.frames]
    assert len(clip.frames) == 5
    assert np.allclose(np.diff(times), 0.4, atol=0.06)
    assert [f.index for f in clip.frames] == [0, 4, 8, 12, 16]


def test_near_duplicates_dropped_and_counted(tmp_path: Path) -> None:
    still = [frame_pattern(3)] * 12 + [frame_pattern(15)] * 12
    path = write_video(tmp_path / "still.avi", still)
    clip = sample_video(path, frames_per_video=6)
    assert [bar_column(f.image) for f in clip.frames] == [3, 15]
    assert clip.n_duplicates == 4
    kept_all = sample_video(path, frames_per_video=6, dedup_threshold=0)
    assert len(kept_all.frames) == 6


def test_decode_limit_and_all_frames(tmp_path: Path) -> None:
    path = write_video(tmp_path / "clip.mpeg", [frame_pattern(i) for i in range(20)])
    assert [f.index for f in sample_video(path, frames_per_video=2, decode_limit=2).frames] == [0, 1]
    assert len(sample_video(path, frames_per_video=None, dedup_threshold=0).frames) == 20


def test_deduper_threshold() -> None:
    d = Deduper(1.0)
    a = frame_pattern(1)
    assert d.keep(a) and not d.keep(a.copy()) and d.keep(frame_pattern(10))
    assert d.dropped == 1


@pytest.mark.parametrize("content", [b"", b"this is not a video at all\n" * 10])
def test_bad_video_names_the_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.mp4"
    path.write_bytes(content)
    with pytest.raises(AdapterError, match="broken.mp4"):
        sample_video(path)


def test_truncated_video_keeps_what_decodes_or_names_file(tmp_path: Path) -> None:
    path = write_video(tmp_path / "cut.avi", [frame_pattern(i) for i in range(20)])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    try:
        clip = sample_video(path, frames_per_video=4)
    except AdapterError as e:
        assert "cut.avi" in str(e)
    else:
        assert 1 <= len(clip.frames) <= 4
