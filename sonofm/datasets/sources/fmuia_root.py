"""A challenge-layout (FM_UIA 2026) data root made from the shared real data and the synthetic corpus.

The challenge's own data cannot ship with sonofm, yet tests and benchmarks need a root in its
exact layout with all four task kinds, so this writes one (with :class:`~sonofm.datasets.sources.fmuia.RootWriter`):

========== ============== ======== ==============================================================
task_id    kind           classes  from
========== ============== ======== ==============================================================
BUSI_cls   classification 3        BUSI benign / malignant / normal (0, 1, 2)
BUSI_seg   segmentation   2        BUSI lesion masks (benign and malignant images)
BUSI_det   detection      1        the box of BUSI's largest lesion
BUSI_kp    keypoints      2        the two ends of that lesion's long axis
CCA_seg    segmentation   2        CCA lumen masks
POCUS_cls  classification 4        POCUS stills and a frame per clip: COVID-19, pneumonia, healthy, viral
SYN_seg    segmentation   3        synthetic lesions: 1 cyst or benign, 2 malignant
SYN_det    detection      1        the synthetic lesion's box
SYN_kp     keypoints      2        the ends of the synthetic lesion's long axis
========== ============== ======== ==============================================================

Every third synthetic detection and keypoint image is a *screen*: the B-mode image pasted into
a larger frame with burnt-in text, a grey and a colour bar, as a scanner export shows it, so the
build's field crop shrinks the image and the targets must survive the crop. Images are written
as 3-channel files. ``ROOT/train`` and ``ROOT/val`` hold disjoint images, split by the adapters'
groups over all subtasks of a dataset: a CCA recording, a POCUS file, a BUSI image (in all four of its
subtasks) lies wholly in one of them (the validation CSVs
without labels with ``val_labelled=False``). Real-data tasks are left out when ``../shared/data``
is absent. ``python -m sonofm.datasets.sources.fmuia_root OUT --n 200`` makes a bigger set.
"""

from __future__ import annotations

import argparse
import os
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage as ndi

from sonofm.datasets.sources.fmuia import RootWriter, as_rgb

#: What a task draws from, in the order they are written.
ALL_SOURCES = ("busi", "cca", "pocus", "synthetic")
_SYN_SOURCES = ("synth_breast_linear_a", "synth_thyroid_linear_b", "synth_liver_convex_a", "synth_breast_linear_b")


@dataclass
class Example:
    """One image of a task with its target (the one its kind needs)."""

    name: str
    image: np.ndarray
    mask: np.ndarray | None = None
    label: int | None = None
    box: tuple[float, float, float, float] | None = None
    points: list[tuple[float, float]] | None = None
    screen: bool = False


@dataclass
class TaskPlan:
    """One subtask: how many candidates it has and how to make example ``i`` of them."""

    task_id: str
    kind: str
    num_classes: int
    dataset: str
    n_candidates: int
    make: Callable[[int], Example | None]
    shuffle: bool = True  # synthetic candidates are random already: in order, every third a screen
    # the group of each candidate (a CCA recording, a BUSI image shared by its four subtasks): a group is
    # in train/ or in val/ for every subtask of the dataset, never both. None: each candidate its own.
    groups: list[str] | None = None


# ------------------------------------------------------------------------------- target geometry


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected foreground component of a mask (bool)."""
    lab, n = ndi.label(mask > 0, structure=np.ones((3, 3), bool))
    if n == 0:
        return np.zeros(mask.shape, bool)
    sizes = ndi.sum(np.ones_like(lab), lab, index=np.arange(1, n + 1))
    return lab == int(np.argmax(sizes)) + 1


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """``(x_min, y_min, x_max, y_max)`` covering the mask's pixels (continuous coordinates)."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return None
    return float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)


def long_axis_ends(mask: np.ndarray) -> list[tuple[float, float]] | None:
    """The two ends of a region's long axis: the pixel centres furthest apart along its first
    principal direction, ordered left to right (then top to bottom)."""
    rows, cols = np.nonzero(mask)
    if rows.size < 2:
        return None
    xy = np.stack([cols + 0.5, rows + 0.5], axis=1).astype(np.float64)
    centred = xy - xy.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    proj = centred @ vt[0]
    a, b = xy[int(np.argmin(proj))], xy[int(np.argmax(proj))]
    ends = sorted([(float(a[0]), float(a[1])), (float(b[0]), float(b[1]))])
    return ends if ends[0] != ends[1] else None


def screen_of(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int]]:
    """``image`` pasted into a scanner-like screen (RGB) with text, a grey bar and a colour bar
    around it; returns the screen and the ``(x, y)`` offset of the image in it."""
    h, w = image.shape[:2]
    top, bottom = int(rng.integers(36, 56)), int(rng.integers(30, 48))
    left, right = int(rng.integers(40, 70)), int(rng.integers(50, 80))
    screen = np.full((h + top + bottom, w + left + right, 3), 12, np.uint8)
    screen[top:top + h, left:left + w] = as_rgb(image)
    pil = Image.fromarray(screen)
    draw = ImageDraw.Draw(pil)
    draw.text((6, 6), "ST MARY HOSPITAL  DOE^JANE  12/03/2024", fill=(230, 230, 230))
    draw.text((6, 20), "ID 00412399  14:22:05", fill=(230, 230, 230))
    draw.text((6, top + h + 8), "MI 1.1  TIS 0.4  G 52  DR 60", fill=(200, 200, 200))
    bar_x = left + w + 14
    for y in range(top, top + h):
        v = int(255 * (1 - (y - top) / max(1, h - 1)))
        draw.line([(bar_x, y), (bar_x + 8, y)], fill=(v, v, v))
        draw.line([(bar_x + 16, y), (bar_x + 24, y)], fill=(v, 40, 255 - v))
    out = np.asarray(pil).copy()
    return out, (left, top)


# ----------------------------------------------------------------------------------------- tasks


def _safe(name: str) -> str:
    """A file stem with only ``[A-Za-z0-9_-]`` (``benign (12)`` -> ``benign_12``)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "image"


def _groups(items: list[Any]) -> list[str]:
    """Each item's split group, as its adapter gives it (``meta["group"]``, else its path)."""
    return [str(it.meta.get("group") or it.path) for it in items]


def _busi_tasks(data: Path) -> list[TaskPlan]:
    from sonofm.datasets.sources.adapters.busi import CLASSES, BusiAdapter

    adapter = BusiAdapter(data / "busi")
    items = adapter.list_items()
    lesions = [it for it in items if it.meta["label"] != "normal"]

    def record(it: Any) -> Any:
        return next(iter(adapter.load(it)))

    def name(it: Any) -> str:
        return _safe(Path(it.path).stem)

    def cls(i: int) -> Example:
        it = items[i]
        return Example(name(it), record(it).image, label=CLASSES.index(it.meta["label"]))

    def seg(i: int) -> Example | None:
        r = record(lesions[i])
        return Example(name(lesions[i]), r.image, mask=(r.mask > 0).astype(np.uint8)) if r.mask.any() else None

    def det(i: int) -> Example | None:
        r = record(lesions[i])
        box = mask_box(largest_component(r.mask))
        return Example(name(lesions[i]), r.image, box=box) if box else None

    def kp(i: int) -> Example | None:
        r = record(lesions[i])
        pts = long_axis_ends(largest_component(r.mask))
        return Example(name(lesions[i]), r.image, points=pts) if pts else None

    every, lesion = _groups(items), _groups(lesions)  # one image: one group across its four subtasks
    return [TaskPlan("BUSI_cls", "classification", 3, "BUSI", len(items), cls, groups=every),
            TaskPlan("BUSI_seg", "segmentation", 2, "BUSI", len(lesions), seg, groups=lesion),
            TaskPlan("BUSI_det", "detection", 1, "BUSI", len(lesions), det, groups=lesion),
            TaskPlan("BUSI_kp", "keypoints", 2, "BUSI", len(lesions), kp, groups=lesion)]


def _cca_tasks(data: Path) -> list[TaskPlan]:
    from sonofm.datasets.sources.adapters.cca import CcaAdapter

    adapter = CcaAdapter(data / "cca")
    items = adapter.list_items()

    def seg(i: int) -> Example | None:
        r = next(iter(adapter.load(items[i])))
        return Example(Path(items[i].path).stem, r.image, mask=(r.mask > 0).astype(np.uint8))

    return [TaskPlan("CCA_seg", "segmentation", 2, "CCA", len(items), seg, groups=_groups(items))]  # recordings


def _pocus_tasks(data: Path) -> list[TaskPlan]:
    from sonofm.datasets.sources.adapters.pocus import PocusAdapter

    adapter = PocusAdapter(data / "pocus", frames_per_video=1)  # stills, and one frame of each clip
    order = ("covid", "pneumonia", "healthy", "viral")
    items = [it for it in adapter.list_items() if it.meta.get("label") in order]

    def cls(i: int) -> Example | None:
        r = next(iter(adapter.load(items[i])), None)
        if r is None:
            return None
        return Example(_safe(Path(items[i].path).name), r.image, label=order.index(items[i].meta["label"]))

    return [TaskPlan("POCUS_cls", "classification", len(order), "POCUS", len(items), cls, groups=_groups(items))]


def _synthetic_tasks(seed: int, size: int, n: int) -> list[TaskPlan]:
    from sonofm.datasets.synthetic import render_sample

    def lesion(i: int) -> Any:
        """The ``i``-th synthetic image that has a lesion (a few indices are tried per example)."""
        for attempt in range(20):
            index = i * 20 + attempt
            s = render_sample(_SYN_SOURCES[i % len(_SYN_SOURCES)], seed, patient=i, index=index, size=size)
            if s.label != "normal" and (s.mask > 0).sum() >= 12:
                return s
        return None

    def seg(i: int) -> Example | None:
        s = lesion(i)
        if s is None:
            return None
        cls_id = 2 if s.label == "malignant" else 1
        return Example(f"syn_{i:05d}", s.image, mask=((s.mask > 0) * cls_id).astype(np.uint8))

    def targets(i: int, kind: str) -> Example | None:
        s = lesion(i + 100_000)
        if s is None:
            return None
        region = largest_component(s.mask)
        box, pts = mask_box(region), long_axis_ends(region)
        if box is None or pts is None:
            return None
        image, screen = s.image, i % 3 == 1
        if screen:
            image, (dx, dy) = screen_of(s.image, np.random.default_rng([seed, i]))
            box = (box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy)
            pts = [(x + dx, y + dy) for x, y in pts]
        name = f"{'screen' if screen else 'syn'}_{i:05d}"
        if kind == "detection":
            return Example(name, image, box=box, screen=screen)
        return Example(name, image, points=pts, screen=screen)

    return [TaskPlan("SYN_seg", "segmentation", 3, "SYN", n, seg, shuffle=False),
            TaskPlan("SYN_det", "detection", 1, "SYN", n, lambda i: targets(i, "detection"), shuffle=False),
            TaskPlan("SYN_kp", "keypoints", 2, "SYN", n, lambda i: targets(i, "keypoints"), shuffle=False)]


def task_plans(shared: Path | None, sources: tuple[str, ...], seed: int, size: int, n_syn: int) -> list[TaskPlan]:
    """Every subtask the available data allows (real-data tasks need ``shared`` to hold their folder)."""
    plans: list[TaskPlan] = []
    builders = {"busi": _busi_tasks, "cca": _cca_tasks, "pocus": _pocus_tasks}
    for name in sources:
        if name == "synthetic":
            plans += _synthetic_tasks(seed, size, n_syn)
        elif name not in builders:
            raise ValueError(f"unknown source {name!r}; known: {', '.join(ALL_SOURCES)}")
        elif shared is not None and (shared / name).is_dir():
            plans += builders[name](shared)
    return plans


# ------------------------------------------------------------------------------------------ write


def _examples(plan: TaskPlan, order: np.ndarray, want: int) -> Iterator[Example]:
    """``want`` examples of a task, in the given candidate order, skipping candidates without a target."""
    made = 0
    for i in order:
        if made >= want:
            return
        ex = plan.make(int(i))
        if ex is not None:
            made += 1
            yield ex


def _val_groups(plans: list[TaskPlan], n: int, n_val: int, seed: int) -> dict[str, set[str]]:
    """Per dataset, the groups whose images go to ``val/`` (a random share ``n_val / (n + n_val)`` of
    the dataset's groups over all its subtasks, at least one and never all), so that no recording and no
    image is in ``train/`` for one subtask and in ``val/`` for another."""
    by_dataset: dict[str, set[str]] = {}
    for plan in plans:
        if plan.groups is not None:
            by_dataset.setdefault(plan.dataset, set()).update(plan.groups)
    held: dict[str, set[str]] = {}
    for dataset, groups in by_dataset.items():
        ordered = sorted(groups)
        rng = np.random.default_rng([seed, zlib.crc32(dataset.encode())])
        ordered = [ordered[i] for i in rng.permutation(len(ordered))]
        k = round(len(ordered) * n_val / max(1, n + n_val)) if n_val > 0 else 0
        k = min(max(k, int(n_val > 0)), len(ordered) - 1)
        held[dataset] = set(ordered[:max(0, k)])
    return held


def _split_examples(plan: TaskPlan, order: np.ndarray, n: int, n_val: int,
                    held: set[str]) -> Iterator[tuple[str, Example]]:
    """``(split, example)`` for a subtask: ``n`` for train and ``n_val`` for val, fewer when the task is
    small. With groups, val takes only held-out groups and train only the others; without, the first
    candidates of ``order`` go to train (a small task is shared between the two in proportion)."""
    if plan.groups is None:
        n_train = n
        if plan.n_candidates < n + n_val:
            n_train = min(plan.n_candidates - (n_val > 0), max(1, round(plan.n_candidates * n / (n + n_val))))
        for j, ex in enumerate(_examples(plan, order, n_train + n_val)):
            yield ("train" if j < n_train else "val"), ex
        return
    in_val = np.array([plan.groups[int(i)] in held for i in order], bool)
    yield from (("train", ex) for ex in _examples(plan, order[~in_val], n))
    yield from (("val", ex) for ex in _examples(plan, order[in_val], n_val))


def make_fmuia_root(
    out: str | os.PathLike,
    n: int = 4,
    n_val: int | None = None,
    seed: int = 0,
    shared: str | os.PathLike | None = None,
    sources: tuple[str, ...] = ALL_SOURCES,
    val_labelled: bool = True,
    size: int = 160,
    progress: bool = False,
) -> dict[str, Any]:
    """Write ``out/train`` and ``out/val``: ``n`` (``n_val``, default ``max(1, n // 2)``) images per task.

    ``shared``: the real-data folder (default ``../shared/data`` or ``$SONOFM_SHARED_DATA``; its
    tasks are left out when absent). ``size``: side of the synthetic images. Returns the two roots
    and, per task, its kind, class count and the images written to each.
    """
    from tqdm import tqdm

    from sonofm.paths import shared_data_dir

    n_val = max(1, n // 2) if n_val is None else n_val
    data = Path(shared) if shared is not None else shared_data_dir()
    root = Path(out)
    writers = {"train": RootWriter(root / "train"), "val": RootWriter(root / "val", labelled=val_labelled)}
    plans = task_plans(data if data.is_dir() else None, tuple(sources), seed, size, n_syn=4 * (n + n_val) + 8)
    summary: dict[str, Any] = {"train": root / "train", "val": root / "val", "tasks": {}}
    held_out = _val_groups(plans, n, n_val, seed)
    bar = tqdm(total=len(plans) * (n + n_val), desc="fmuia root", unit="img", disable=not progress)
    for k, plan in enumerate(plans):
        rng = np.random.default_rng([seed, k])
        order = rng.permutation(plan.n_candidates) if plan.shuffle else np.arange(plan.n_candidates)
        counts = {"kind": plan.kind, "num_classes": plan.num_classes, "train": 0, "val": 0, "screens": 0}
        for split, ex in _split_examples(plan, order, n, n_val, held_out.get(plan.dataset, set())):
            writers[split].add(plan.task_id, plan.kind, plan.num_classes, plan.dataset, ex.name, ex.image,
                               mask=ex.mask, label=ex.label, box=ex.box, points=ex.points)
            counts[split] += 1
            counts["screens"] += int(ex.screen)
            bar.update(1)
        summary["tasks"][plan.task_id] = counts
    bar.close()
    for w in writers.values():
        w.close()
    return summary


def main(argv: list[str] | None = None) -> None:
    """``python -m sonofm.datasets.sources.fmuia_root OUT [--n N] ...``: a bigger set for benchmarks."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("out", help="folder to write train/ and val/ into")
    ap.add_argument("--n", type=int, default=50, help="training images per task (default 50)")
    ap.add_argument("--n-val", type=int, default=None, help="validation images per task (default n/2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=160, help="side of the synthetic images (default 160)")
    ap.add_argument("--shared", default=None, help="real-data folder (default ../shared/data)")
    ap.add_argument("--sources", default=",".join(ALL_SOURCES), help=f"comma list of {', '.join(ALL_SOURCES)}")
    ap.add_argument("--unlabelled-val", action="store_true", help="write the validation CSVs without labels")
    a = ap.parse_args(argv)
    s = make_fmuia_root(a.out, n=a.n, n_val=a.n_val, seed=a.seed, shared=a.shared,
                        sources=tuple(x for x in a.sources.split(",") if x), val_labelled=not a.unlabelled_val,
                        size=a.size, progress=True)
    for tid, c in s["tasks"].items():
        print(f"{tid:10s} {c['kind']:14s} classes {c['num_classes']}: train {c['train']}, val {c['val']}"
              + (f", screens {c['screens']}" if c["screens"] else ""))
    print(f"wrote {s['train']} and {s['val']}")


if __name__ == "__main__":
    main()


__all__ = ["ALL_SOURCES", "Example", "TaskPlan", "largest_component", "long_axis_ends", "make_fmuia_root",
           "mask_box", "screen_of", "task_plans"]
