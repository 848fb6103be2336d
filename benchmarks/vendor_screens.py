"""Field detection on synthetic vendor screens, through the real adapter -> preprocess path.

Screens from :mod:`sonofm.datasets.synthetic.screens` (text bands, rulers, scale bars, labels,
Doppler boxes, dual views, deep fades) are written as PNG, as mp4 clips and as DICOM (without and
with the Sequence of Ultrasound Regions), read back with the ``folder`` / ``dicom`` adapters and
preprocessed exactly as a shard build does. Per layout it reports the IoU of the kept field (what
preprocessing leaves unblanked, in screen coordinates) against the true field, the share of
UI pixels left in the output, and how many screens kept any UI pixel.

Clips are scored twice: every frame detected on its own (what the build does today), and one
field per clip from :func:`~sonofm.datasets.preprocess.field.detect_clip_field` passed to ``preprocess``.

    OMP_NUM_THREADS=1 python benchmarks/vendor_screens.py --n 20 --sheet docs/vendor_screens_crop.png

``--baseline FILE`` runs the same with another ``field.py`` (e.g. ``git show REV:sonofm/datasets/preprocess/field.py``)
patched into preprocessing, for before/after tables; ``--text keep`` keeps text that touches the kept
image (what preprocessing did before text blanking). Every screen also carries the patient ID and
date printed 1-3 px from the field (``render_screen``), so "UI px kept" counts those lines too.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from sonofm.datasets.build.workers import clip_fields
from sonofm.datasets.preprocess import field as current_field
from sonofm.datasets.preprocess import pipeline as pp
from sonofm.datasets.preprocess.pipeline import preprocess
from sonofm.datasets.sources.adapters import get_adapter
from sonofm.datasets.sources.records import Record
from sonofm.datasets.synthetic.screens import LAYOUTS, Screen, render_screen, score_field

MAX_SIDE = 4096  # no resize: the kept mask is compared pixel for pixel with the truth
CLIP_FRAMES = 8


def kept_mask(out: pp.Processed, shape: tuple[int, int], offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """The pixels a processed sample keeps (inside its crop and field mask), in screen coordinates."""
    t, left, b, r = out.meta["crop"]
    oy, ox = offset
    m = np.zeros(shape, bool)
    m[oy + t : oy + b, ox + left : ox + r] = out.field_mask
    return m


def _screens(n: int, frames: int) -> dict[tuple[str, int], Screen]:
    return {(lay, s): render_screen(lay, s, n_frames=frames) for lay in LAYOUTS for s in range(n)}


def _key(path: str) -> tuple[str, int]:
    stem = Path(path).stem
    lay, seed = stem.rsplit("_s", 1)
    return lay, int(seed)


def _write_video(path: Path, frames: list[np.ndarray], fps: int = 10) -> None:
    import av

    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as c:
        st = c.add_stream("libx264", rate=fps)
        st.width, st.height, st.pix_fmt = w, h, "yuv420p"
        st.options = {"crf": "20"}
        for f in frames:
            for pkt in st.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(pkt)
        for pkt in st.encode():
            c.mux(pkt)


def _score(rows: dict[str, list[dict[str, float]]], lay: str, screen: Screen, kept: np.ndarray) -> None:
    rows[lay].append(score_field(screen, kept))


def run_png(screens: dict[tuple[str, int], Screen], work: Path) -> dict[str, list[dict[str, float]]]:
    root = work / "png"
    for (lay, s), sc in screens.items():
        (root / lay).mkdir(parents=True, exist_ok=True)
        Image.fromarray(sc.image).save(root / lay / f"{lay}_s{s}.png")
    rows: dict[str, list[dict[str, float]]] = defaultdict(list)
    for rec in get_adapter("folder", root, source="vendor_png", labels=None):
        out = preprocess(rec, max_side=MAX_SIDE)
        lay, s = _key(rec.meta["path"])
        _score(rows, lay, screens[(lay, s)], kept_mask(out, rec.image.shape[:2]))
    return rows


def run_video(screens: dict[tuple[str, int], Screen], work: Path) -> tuple[dict, dict]:
    root = work / "mp4"
    root.mkdir(parents=True, exist_ok=True)
    for (lay, s), sc in screens.items():
        _write_video(root / f"{lay}_s{s}.mp4", sc.frames)
    per_frame: dict[str, list[dict[str, float]]] = defaultdict(list)
    per_clip: dict[str, list[dict[str, float]]] = defaultdict(list)
    clips: dict[str, list[Record]] = defaultdict(list)
    ad = get_adapter("folder", root, source="vendor_mp4", labels=None, frames_per_video=CLIP_FRAMES, dedup_threshold=0)
    for rec in ad:
        clips[rec.meta["path"]].append(rec)
    for path, recs in clips.items():
        lay, s = _key(path)
        sc = screens[(lay, s)]
        for rec in recs:
            _score(per_frame, lay, sc, kept_mask(preprocess(rec, max_side=MAX_SIDE), rec.image.shape[:2]))
        # the shard build's own per-clip fields (sonofm.datasets.build.orchestrate.clip_fields)
        for rec, fld in zip(recs, clip_fields(recs)):
            _score(per_clip, lay, sc, kept_mask(preprocess(rec, max_side=MAX_SIDE, field=fld), rec.image.shape[:2]))
    return per_frame, per_clip


def run_dicom(screens: dict[tuple[str, int], Screen], work: Path, regions: bool) -> dict[str, list[dict[str, float]]]:
    from sonofm.datasets.synthetic.dicom_writer import write_us_dicom

    root = work / ("dcm_regions" if regions else "dcm")
    root.mkdir(parents=True, exist_ok=True)
    for (lay, s), sc in screens.items():
        write_us_dicom(root / f"{lay}_s{s}.dcm", sc.image, photometric="RGB",
                       regions=sc.regions if regions else None, patient_id=f"P{s}")
    rows: dict[str, list[dict[str, float]]] = defaultdict(list)
    kept: dict[str, np.ndarray] = {}
    for rec in get_adapter("dicom", root, source="vendor_dcm"):
        path = rec.meta["path"]
        shape = screens[_key(path)].image.shape[:2]
        box = rec.meta.get("us_region_box")
        offset = (int(box[1]), int(box[0])) if box is not None else (0, 0)
        m = kept_mask(preprocess(rec, max_side=MAX_SIDE), shape, offset)
        kept[path] = kept.get(path, np.zeros(shape, bool)) | m  # the views of a dual screen together
    for path, m in kept.items():
        lay, s = _key(path)
        _score(rows, lay, screens[(lay, s)], m)
    return rows


def table(title: str, rows: dict[str, list[dict[str, float]]]) -> str:
    lines = [f"**{title}**", "", "| layout | n | IoU mean | IoU min | UI px kept (share) | screens with UI kept |",
             "|---|---:|---:|---:|---:|---:|"]
    allr: list[dict[str, float]] = []
    for lay in LAYOUTS:
        r = rows.get(lay, [])
        if not r:
            continue
        allr += r
        iou = np.array([x["iou"] for x in r])
        ui = np.array([x["ui_kept"] for x in r])
        anyk = sum(x["ui_kept_px"] > 0 for x in r)
        lines.append(f"| {lay} | {len(r)} | {iou.mean():.3f} | {iou.min():.3f} | {ui.mean():.4%} | {anyk} |")
    iou = np.array([x["iou"] for x in allr])
    lines.append(f"| **all** | {len(allr)} | {iou.mean():.3f} | {iou.min():.3f} | "
                 f"{np.mean([x['ui_kept'] for x in allr]):.4%} | {sum(x['ui_kept_px'] > 0 for x in allr)} |")
    return "\n".join(lines) + "\n"


def contact_sheet(path: Path, seed: int = 0) -> None:
    """Screen with the true field (green) and the kept crop (magenta), and the preprocessed output."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import ndimage as ndi

    fig, axes = plt.subplots(len(LAYOUTS), 2, figsize=(7.2, 2.45 * len(LAYOUTS)), dpi=130,
                             gridspec_kw={"width_ratios": [1.35, 1]})
    for row, lay in zip(axes, LAYOUTS):
        sc = render_screen(lay, seed)
        out = preprocess(Record(sc.image, None, {"path": f"{lay}.png"}), max_side=MAX_SIDE)
        kept = kept_mask(out, sc.image.shape[:2])
        s = score_field(sc, kept)
        im = sc.image.copy()
        th = max(1, sc.image.shape[0] // 240)
        im[sc.field & ~ndi.binary_erosion(sc.field, iterations=th)] = (0, 255, 0)
        im[kept & ~ndi.binary_erosion(kept, iterations=th)] = (255, 0, 255)
        row[0].imshow(im)
        row[0].set_title(f"{lay}: screen (green truth, magenta kept)", fontsize=7)
        row[1].imshow(out.image, cmap="gray", vmin=0, vmax=255)
        row[1].set_title(f"after: {out.meta['field']['kind']}, IoU {s['iou']:.3f}, UI px kept {int(s['ui_kept_px'])}",
                         fontsize=7)
        for a in row:
            a.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20, help="screens per layout")
    ap.add_argument("--formats", default="png,video,dicom,dicom_regions")
    ap.add_argument("--sheet", type=Path, default=None, help="write the before/after contact sheet here")
    ap.add_argument("--baseline", type=Path, default=None, help="another field.py to patch into preprocessing")
    ap.add_argument("--work", type=Path, default=None, help="folder for the written files (default: temporary)")
    ap.add_argument("--text", choices=("blank", "keep"), default="blank",
                    help="text touching the kept image: blank (default) or keep (before text blanking)")
    args = ap.parse_args(argv)
    if args.baseline is not None:
        spec = importlib.util.spec_from_file_location("baseline_field", args.baseline)
        mod = importlib.util.module_from_spec(spec)
        sys.modules["baseline_field"] = mod
        spec.loader.exec_module(mod)
        names = {f.name for f in dataclasses.fields(current_field.Field)}

        def baseline_detect(gray: np.ndarray) -> current_field.Field:  # an older Field lacks newer attributes
            old = mod.detect_field(gray)
            return current_field.Field(**{k: v for k, v in vars(old).items() if k in names})

        pp.detect_field = baseline_detect  # what preprocess calls when no field is given
        print(f"baseline detector: {args.baseline}")
    global preprocess
    preprocess = functools.partial(pp.preprocess, text=args.text)  # every call below
    print(f"text touching the kept image: {args.text}")
    formats = args.formats.split(",")
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        out: list[str] = []
        stills = _screens(args.n, 1)
        if "png" in formats:
            out.append(table("PNG screens (folder adapter)", run_png(stills, work)))
        if "dicom" in formats:
            out.append(table("DICOM, no ultrasound regions (dicom adapter)", run_dicom(stills, work, regions=False)))
        if "dicom_regions" in formats:
            out.append(table("DICOM with ultrasound regions (dicom adapter: crop to each region)",
                             run_dicom(stills, work, regions=True)))
        if "video" in formats:
            clips = _screens(args.n, CLIP_FRAMES)
            per_frame, per_clip = run_video(clips, work)
            out.append(table(f"mp4 clips, {CLIP_FRAMES} frames, each frame detected alone (scored per frame)", per_frame))
            out.append(table("mp4 clips, one field per clip (detect_clip_field, scored per frame)", per_clip))
    print("\n".join(out))
    print(f"({time.time() - t0:.0f} s)")
    if args.sheet is not None:
        contact_sheet(args.sheet)
        print(f"contact sheet: {args.sheet}")


if __name__ == "__main__":
    main()
