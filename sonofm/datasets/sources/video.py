"""Frame sampling from cine loops (gif, mp4, avi, mov, mpeg, ...) with PyAV.

Consecutive ultrasound frames are nearly identical, so storing every frame of a clip wastes shard
space and biases training towards long clips. We keep a few frames per clip, either evenly spread
(``frames_per_video``) or at a fixed rate in video time (``fps``), and drop a kept frame when it
is a near-duplicate of the previous kept one (mean absolute difference of 32x32 thumbnails).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sonofm.datasets.sources.imageio import AdapterError

VIDEO_EXTENSIONS = frozenset(
    {".gif", ".mp4", ".avi", ".mov", ".mpeg", ".mpg", ".m4v", ".mkv", ".webm", ".wmv"}
)

#: Default near-duplicate threshold: mean |difference| (0..255) between 32x32 gray thumbnails.
DEDUP_THRESHOLD = 1.0


@dataclass
class Frame:
    """One decoded frame: its index in the clip, its time in seconds (or None) and its pixels."""

    index: int
    time: float | None
    image: np.ndarray


@dataclass
class SampledVideo:
    """The frames kept from one clip and what happened to the others (for build reports)."""

    frames: list[Frame]
    n_frames: int  # frames decoded (or known to exist when decoding stopped early)
    n_duplicates: int  # sampled frames dropped as near-duplicates
    fps: float | None


def even_indices(n: int, count: int) -> list[int]:
    """``count`` frame indices spread evenly over ``n`` frames (centres of equal segments)."""
    if n <= 0 or count <= 0:
        return []
    if count >= n:
        return list(range(n))
    return sorted({int((i + 0.5) * n / count) for i in range(count)})


def thumbnail(image: np.ndarray, size: int = 32) -> np.ndarray:
    """Small gray float thumbnail used to compare frames cheaply."""
    gray = image if image.ndim == 2 else image.mean(axis=2)
    im = Image.fromarray(np.asarray(gray, dtype=np.float32), mode="F")
    return np.asarray(im.resize((size, size), Image.BILINEAR), dtype=np.float32)


class Deduper:
    """Drops a frame whose thumbnail differs from the last kept frame's by less than ``threshold``."""

    def __init__(self, threshold: float = DEDUP_THRESHOLD) -> None:
        self.threshold = threshold
        self.last: np.ndarray | None = None
        self.dropped = 0

    def keep(self, image: np.ndarray) -> bool:
        if self.threshold <= 0:
            return True
        t = thumbnail(image)
        if self.last is not None and float(np.abs(t - self.last).mean()) < self.threshold:
            self.dropped += 1
            return False
        self.last = t
        return True


def _to_array(frame) -> np.ndarray:  # av.VideoFrame -> uint8 array
    """Gray codecs stay (H, W); everything else becomes RGB (H, W, 3)."""
    fmt = frame.format.name
    if fmt in ("gray", "gray8"):
        return frame.to_ndarray()
    return frame.to_ndarray(format="rgb24")


def _count_frames(container, stream) -> int:
    """Frame count from the header, or by demuxing (reads packets, decodes nothing)."""
    if stream.frames and stream.frames > 0:
        return int(stream.frames)
    n = sum(1 for pkt in container.demux(stream) if pkt.size > 0)
    container.seek(0)
    return n


def sample_video(
    path: str | os.PathLike,
    frames_per_video: int | None = 8,
    fps: float | None = None,
    dedup_threshold: float = DEDUP_THRESHOLD,
    decode_limit: int | None = None,
    threads: int = 1,
) -> SampledVideo:
    """Decode ``path`` and keep frames evenly (``frames_per_video``) or at ``fps`` (video time).

    ``fps`` wins when both are given; ``frames_per_video=None`` and ``fps=None`` keeps every frame.
    ``decode_limit`` decodes only the first N frames (quick tests, previews); sampling then spreads
    over those. ``threads`` is the codec's thread count (1: the shard writer already runs one
    process per core). Near-duplicates among the kept frames are dropped and counted. Raises
    :class:`AdapterError` naming the file when it cannot be opened or yields no frame.
    """
    import av  # local import: PyAV loads FFmpeg, which only video sources need

    p = Path(path)
    if not p.is_file():
        raise AdapterError(f"{p}: file not found")
    if p.stat().st_size == 0:
        raise AdapterError(f"{p}: empty file (0 bytes)")
    dedup = Deduper(dedup_threshold)
    kept: list[Frame] = []
    try:
        with av.open(str(p)) as container:
            if not container.streams.video:
                raise AdapterError(f"{p}: no video stream")
            stream = container.streams.video[0]
            stream.thread_count = max(1, int(threads))
            rate = float(stream.average_rate) if stream.average_rate else None
            targets: set[int] | None = None
            n_total = None
            if fps is None and frames_per_video is not None:
                n_total = _count_frames(container, stream)
                if decode_limit is not None:
                    n_total = min(n_total, decode_limit)
                targets = set(even_indices(n_total, frames_per_video))
            next_time = 0.0
            index = -1
            last = None
            for index, frame in enumerate(_decode(container, stream)):
                if decode_limit is not None and index >= decode_limit:
                    index -= 1
                    break
                t = _frame_time(frame, index, rate)
                if fps is not None:
                    take = t is None or t + 1e-6 >= next_time
                    if take and t is not None:
                        next_time = max(next_time + 1.0 / fps, t + 0.5 / fps)
                else:
                    take = targets is None or index in targets
                if take:
                    image = _to_array(frame)
                    if dedup.keep(image):
                        kept.append(Frame(index, t, image))
                    if targets is not None and index >= max(targets):
                        break
                last = (index, t, frame)
            if not kept and last is not None:
                # The header promised more frames than the stream holds: keep the last one decoded.
                kept.append(Frame(last[0], last[1], _to_array(last[2])))
    except AdapterError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, EOFError) as e:
        raise AdapterError(f"{p}: cannot decode video ({e})") from e
    if not kept:
        raise AdapterError(f"{p}: video holds no decodable frame")
    n_seen = index + 1 if n_total is None else max(n_total, index + 1)
    return SampledVideo(kept, n_seen, dedup.dropped, rate)


def _decode(container, stream) -> Iterator:
    """Decoded frames of ``stream``; a corrupt packet after the first frames ends the clip early."""
    produced = False
    try:
        for frame in container.decode(stream):
            produced = True
            yield frame
    except Exception as e:  # noqa: BLE001 - FFmpeg raises many types for broken tails
        import av

        if not produced or not isinstance(e, av.error.FFmpegError | EOFError):
            raise
        return


def _frame_time(frame, index: int, rate: float | None) -> float | None:
    if frame.pts is not None and frame.time_base is not None:
        return float(frame.pts * frame.time_base)
    if rate:
        return index / rate
    return None
