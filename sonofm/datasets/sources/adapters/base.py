"""The adapter interface shared by every source, and the decoding helpers they have in common.

An adapter is split into a cheap ``items()`` listing and a ``load(item)`` that decodes one item,
so the shard writer can spread items over processes (items are small picklable dataclasses) and
count the :class:`AdapterError` of each bad file without losing the rest.
"""

from __future__ import annotations

import abc
import contextvars
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from sonofm.datasets.sources.imageio import (
    IMAGE_EXTENSIONS,
    AdapterError,
    binarize,
    is_soft_mask,
    read_image,
    read_mask,
)
from sonofm.datasets.sources.records import Record
from sonofm.datasets.sources.video import DEDUP_THRESHOLD, VIDEO_EXTENSIONS, sample_video
from sonofm.errors import BadOptionError

DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})

#: Most skipped files an adapter names in its notes (the counters count them all).
MAX_NOTES = 200

#: ``skip(counter, file, reason)``: how listing and decoding report a file they leave out.
SkipFn = Callable[[str, str, str], None]

#: Values of the ``links`` option: follow symbolic links that stay inside the source's folder (and
#: refuse the others), or follow every link (a folder of links to files elsewhere, built on purpose).
LINK_POLICIES = ("inside", "any")
_LINKS_HINT = "give links=any to follow links out of the source folder"

# The adapter whose listing is running (see :meth:`Adapter.list_items`): :func:`list_files` reports
# the links and special files it refuses to it, and follows its ``links`` policy, so adapters that
# call ``list_files`` plainly count and refuse alike.
_LISTING: contextvars.ContextVar[Adapter | None] = contextvars.ContextVar("sonofm_listing", default=None)


_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_-]+")


def source_name_from_path(path: str | os.PathLike) -> str:
    """A source name for a collection that was given none: its folder name, or a file's stem (a CSV
    manifest, a single DICOM), lower-cased, with anything outside ``[a-z0-9_-]`` turned into ``_``."""
    p = Path(path).expanduser()
    stem = p.stem if p.suffix and not p.is_dir() else p.name
    if not stem:  # "." or "/"
        stem = Path(os.path.abspath(p)).name
    name = _UNSAFE_NAME.sub("_", stem.lower()).strip("_-")
    if not name:
        raise ValueError(f"{path}: cannot derive a source name from this path; give one with ?source=NAME")
    return name


@dataclass
class Item:
    """One file to decode: ``path`` relative to the adapter's ``data_dir``, its mask files and known metadata."""

    path: str
    masks: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)


class Adapter(abc.ABC):
    """Base class: option checking, record metadata and the image/video/mask decoding every adapter uses.

    Subclasses set ``name`` (default source name), ``options`` (option name -> default; anything
    else passed to ``__init__`` is an error listing the valid names) and implement :meth:`items`;
    :meth:`load` decodes images, videos and DICOM files by extension and merges the item's masks.
    """

    name: ClassVar[str] = "adapter"
    #: Options every adapter accepts (frame sampling for video items).
    common_options: ClassVar[dict[str, Any]] = {
        "frames_per_video": 8,
        "fps": None,
        "dedup_threshold": DEDUP_THRESHOLD,
        "decode_limit": None,
        "links": "inside",
    }
    options: ClassVar[dict[str, Any]] = {}
    #: Whether the build may drop near-duplicate images of this adapter's sources (``dedup``): off
    #: where every row is a labelled example to keep (a benchmark's rows).
    deduplicate: ClassVar[bool] = True

    def __init__(self, root: str | os.PathLike, source: str | None = None, **options: Any) -> None:
        self.root = Path(root).expanduser()
        if not self.root.exists():
            raise AdapterError(f"{type(self).__name__}: dataset root {self.root} does not exist")
        #: Folder that item paths are relative to (a subclass may point it inside ``root``).
        self.data_dir = self.root
        self.source = source or self.name
        valid = {**self.common_options, **self.options}
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise BadOptionError(
                f"{type(self).__name__}: unknown option(s) {unknown}; valid options: {sorted(valid)}"
            )
        self.opts: dict[str, Any] = {**valid, **options}
        if self.opts["links"] not in LINK_POLICIES:
            raise AdapterError(
                f"{type(self).__name__}: links must be one of {list(LINK_POLICIES)}, got {self.opts['links']!r}"
            )
        #: Counters for the build report (files skipped, near-duplicate frames, ...).
        self.stats: dict[str, int] = {}
        #: The first :data:`MAX_NOTES` files left out, ``{"file", "reason", "counter"}``, for the report.
        self.notes: list[dict[str, str]] = []
        #: The source :meth:`list_items` is listing (``None``: all of them).
        self.listing_source: str | None = None

    def find_layout(self, wrapper: str, required: Iterable[str]) -> Path:
        """``root`` or ``root/wrapper``, whichever holds every ``required`` sub-folder (publishers ship
        both ways); an :class:`AdapterError` naming the expected folders otherwise."""
        required = list(required)
        for cand in (self.root, self.root / wrapper):
            if all((cand / r).is_dir() for r in required):
                return cand
        raise AdapterError(
            f"{self.name}: {self.root} is not the {self.name.upper()} layout: "
            f"expected folders {', '.join(repr(r + '/') for r in required)} in it or in '{self.root / wrapper}'"
        )

    # -- interface ---------------------------------------------------------------------------
    @abc.abstractmethod
    def items(self) -> list[Item]:
        """Every file of the source in a deterministic order, without decoding anything."""

    def list_items(self, source: str | None = None) -> list[Item]:
        """:meth:`items` with fresh counters, and with :func:`list_files` reporting the links it
        refuses to this adapter: what the build calls, so listing-time counts reach the report.

        ``source``: only the items of that one of :meth:`sources` (an adapter that can tell whose
        rows a listing problem concerns counts only that source's, see :attr:`listing_source`).
        """
        self.stats, self.notes = {}, []
        self.listing_source = source
        token = _LISTING.set(self)
        try:
            items = list(self.items())
        finally:
            _LISTING.reset(token)
            self.listing_source = None
        if source is not None:
            items = [it for it in items if getattr(it, "meta", {}).get("source") == source]
        return items

    def allowed_roots(self) -> list[Path]:
        """Folders the files of this source may really live in (after following symbolic links)."""
        return [self.data_dir] if self.root.is_file() else [self.root, self.data_dir]

    def is_inside(self, path: Path) -> bool:
        """Whether ``path``, links followed, lies in one of :meth:`allowed_roots` (or ``links=any``)."""
        if self.opts.get("links") == "any":
            return True
        real = os.path.realpath(path)
        return any(_within(real, os.path.realpath(r)) for r in self.allowed_roots())

    def check_inside(self, path: Path) -> None:
        """Refuse a file that is a symbolic link (or lies under one) leading out of the source's
        folders: the same rule for every adapter as the CSV manifest's rule for ``..`` paths
        (a downloaded archive may hold a link to ``~/.ssh``; its target would end up in the shards)."""
        if not self.is_inside(path):
            raise AdapterError(
                f"{path}: symbolic link to {os.path.realpath(path)}, outside the source folder "
                f"{os.path.realpath(self.allowed_roots()[0])}: refused ({_LINKS_HINT})"
            )

    def load(self, item: Item) -> Iterator[Record]:
        """Decode ``item`` into one record (image) or several (video frames, multi-frame files, the
        tissue regions of a DICOM screen: a mask drawn on the whole screen is cropped with each)."""
        for rel in (item.path, *item.masks):
            p = Path(rel)
            self.check_inside(p if p.is_absolute() else self.data_dir / p)
        full_mask = self.read_masks(item) if item.masks else None
        for frame_index, image, extra in self.decode(item.path):
            mask = full_mask
            box = extra.get("us_region_box")
            if mask is not None and box is not None and list(mask.shape) == extra.get("us_frame_size"):
                x0, y0, x1, y1 = box
                mask = np.ascontiguousarray(mask[y0 : y1 + 1, x0 : x1 + 1])
            if mask is not None and mask.shape != image.shape[:2]:
                raise AdapterError(
                    f"{self.data_dir / item.path}: mask {item.masks[0]} is {mask.shape[1]}x{mask.shape[0]} "
                    f"but the image is {image.shape[1]}x{image.shape[0]}"
                )
            yield Record(image=image, mask=mask, meta=self.meta(item, frame_index, extra))

    def __iter__(self) -> Iterator[Record]:
        for item in self.items():
            yield from self.load(item)

    def sources(self) -> list[str]:
        """Source names this adapter's records carry (several for a manifest with a ``source`` column)."""
        return [self.source]

    def describe_source(self, source: str) -> dict[str, Any]:
        """What the adapter knows of one of its sources beyond the taxonomy, stored at the top of
        that source's index and in its build report (FM_UIA: the task's kind and classes); ``{}``."""
        return {}

    def report(self) -> dict[str, int]:
        """Counters gathered so far (skipped files, dropped duplicate frames) for the build report."""
        return dict(self.stats)

    # -- helpers -----------------------------------------------------------------------------
    def count(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n

    def skip(self, counter: str, file: str, reason: str) -> None:
        """Count a file (or row, or record) left out under ``counter`` and keep its name for the report."""
        self.count(counter)
        if len(self.notes) < MAX_NOTES:
            self.notes.append({"file": str(file), "reason": reason, "counter": counter})

    def meta(
        self, item: Item, frame: int | None = None, extra: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Record metadata: the item's values, then what the file itself says (``extra``), then defaults."""
        meta: dict[str, Any] = {
            "source": self.source,
            "group": None,
            "path": item.path,
            "label": None,
            "probe": None,
            "pixel_spacing_mm": None,
        }
        meta.update({k: v for k, v in item.meta.items() if v is not None or k not in meta})
        for k, v in (extra or {}).items():
            if meta.get(k) is None:
                meta[k] = v
        if meta["group"] is None:
            meta["group"] = item.path
        meta["frame"] = frame
        return meta

    def decode(self, rel: str) -> Iterator[tuple[int | None, np.ndarray, dict[str, Any]]]:
        """``(frame index or None, uint8 image, metadata found in the file)`` for one file, by extension."""
        path = self.data_dir / rel
        ext = path.suffix.lower()
        if ext in VIDEO_EXTENSIONS:
            clip = sample_video(path, **self.frame_options())
            self.count("video_frames_kept", len(clip.frames))
            self.count("video_frames_dropped_duplicate", clip.n_duplicates)
            for f in clip.frames:
                yield f.index, f.image, {}
        elif ext in DICOM_EXTENSIONS:
            from sonofm.datasets.sources.dicom_io import decode_dicom

            yield from decode_dicom(path, self.count, **self.frame_options())
        else:
            yield None, read_image(path), {}

    def frame_options(self) -> dict[str, Any]:
        """The frame-sampling options, as passed to the video and DICOM readers."""
        return {k: self.opts[k] for k in ("frames_per_video", "fps", "dedup_threshold", "decode_limit")}

    def read_masks(self, item: Item) -> np.ndarray:
        """The item's masks merged into one class-id mask (several lesion files: logical OR -> 1)."""
        return merge_masks([self.data_dir / m for m in item.masks], count=self.count)


def merge_masks(
    paths: Iterable[Path], binary: bool = True, count: Callable[[str], None] | None = None
) -> np.ndarray:
    """Merge mask files: ``binary`` ORs their foregrounds into class 1, else keeps the largest id.

    A soft (anti-aliased) mask is cut at half its range, not at ``> 0``; ``count`` is called with
    ``"masks_thresholded"`` for each such file, so the report says how many masks were altered.
    """
    merged: np.ndarray | None = None
    first: Path | None = None
    for p in paths:
        m = read_mask(p)
        if binary:
            if count is not None and is_soft_mask(m):
                count("masks_thresholded")
            m = binarize(m)
        if merged is None:
            merged, first = m, p
        elif m.shape != merged.shape:
            raise AdapterError(f"{p}: mask size {m.shape} differs from {first} ({merged.shape})")
        else:
            merged = np.maximum(merged, m)
    if merged is None:
        raise AdapterError("merge_masks: no mask files given")
    return merged


def relpath(path: Path, root: Path) -> str:
    """POSIX path of ``path`` relative to ``root`` (stable across operating systems)."""
    return path.relative_to(root).as_posix()


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def list_files(
    folder: Path,
    extensions: Iterable[str],
    *,
    root: Path | None = None,
    skip: SkipFn | None = None,
    count_others: bool = False,
    links: str | None = None,
) -> list[Path]:
    """Files under ``folder`` (recursive) with one of ``extensions`` (case-insensitive), sorted, no hidden ones.

    Symbolic links (to files or sub-folders) are followed while they stay inside ``root`` (default
    ``folder``), or wherever they lead with ``links="any"`` (default: the listing adapter's ``links``
    option, else ``"inside"``); what the listing leaves out is reported to ``skip`` (default: the
    adapter whose :meth:`Adapter.list_items` is running) instead of vanishing: dangling links, links
    leading out of ``root``, link loops, a file reached twice (through a link and directly: the first path in sorted
    order is kept, so one image never lands in two splits), sockets/FIFOs with a media name, folders
    that cannot be listed and, with ``count_others``, files of another type.
    """
    exts = {e.lower() for e in extensions}
    folder = Path(folder)
    adapter = _LISTING.get()
    report = skip or (adapter.skip if adapter is not None else (lambda counter, file, reason: None))
    if links is None:
        links = adapter.opts.get("links", "inside") if adapter is not None else "inside"
    bound = os.path.realpath(root if root is not None else folder)
    found: list[tuple[bool, str, Path, str]] = []  # (reached through a link, relative path, path, real path)
    # (folder, its relative path, its real path, real paths of its ancestors (a link to one is a loop),
    # whether it was reached through a link); real paths of plain entries are joined, not resolved
    top = os.path.realpath(folder)
    stack: list[tuple[Path, str, str, frozenset[str], bool]] = [(folder, "", top, frozenset({top}), False)]
    while stack:
        d, drel, dreal, ancestors, linked = stack.pop()
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as e:
            report("unreadable_folders", str(d), f"cannot list the folder ({e.strerror or e})")
            continue
        for e in entries:
            if e.name.startswith("."):
                continue
            p, rel = Path(e.path), f"{drel}{e.name}"
            media = p.suffix.lower() in exts
            try:
                if e.is_symlink():
                    real = os.path.realpath(p)
                    if not os.path.exists(real):
                        if media or not p.suffix:
                            report("symlinks_dangling", str(p),
                                   f"symbolic link to {os.readlink(p)}, which does not exist")
                        continue
                    is_dir = os.path.isdir(real)
                    if links != "any" and not _within(real, bound):
                        if media or is_dir:
                            report("symlinks_outside_root", str(p),
                                   f"symbolic link to {real}, outside the source folder {bound}: refused "
                                   f"({_LINKS_HINT})")
                        continue
                    if is_dir:
                        if real in ancestors:
                            report("symlink_loops", str(p),
                                   f"symbolic link to {real}, a folder above it: not followed")
                        else:
                            stack.append((p, rel + "/", real, ancestors | {real}, True))
                        continue
                    regular, via_link = stat.S_ISREG(os.stat(real).st_mode), True
                elif e.is_dir(follow_symlinks=False):
                    sub = os.path.join(dreal, e.name)
                    stack.append((p, rel + "/", sub, ancestors | {sub}, linked))
                    continue
                else:
                    real, regular, via_link = os.path.join(dreal, e.name), e.is_file(follow_symlinks=False), linked
            except OSError as err:
                report("unreadable_files", str(p), f"cannot inspect the file ({err.strerror or err})")
                continue
            if not media:
                if count_others:
                    report("other_files_ignored", str(p), "not an image, video or DICOM file (by its extension)")
                continue
            if not regular:
                report("special_files", str(p), "not a regular file (a FIFO, socket or device): not read")
                continue
            found.append((via_link, rel, p, real))
    # a file reached twice keeps its own path (not a link's), else the first in sorted order
    first: dict[str, tuple[str, Path]] = {}
    for _, rel, p, real in sorted(found, key=lambda t: (t[0], t[1])):
        if real in first:
            report("files_linked_twice", str(p),
                   f"the same file as {first[real][0]} (through a symbolic link): kept once")
            continue
        first[real] = (rel, p)
    return [p for _, p in sorted(first.values(), key=lambda t: t[0])]


MEDIA_EXTENSIONS = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS | DICOM_EXTENSIONS
