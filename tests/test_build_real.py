"""Acceptance: shards built from the real BUSI, CCA and POCUS folders of ``../shared/data``.

Images are stored small (``max_side`` 64-128) and POCUS videos give two frames each, so the whole
module stays within a couple of minutes on two cores.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sonofm.datasets.build.orchestrate import build_shards
from sonofm.datasets.shards import file_sha256, iter_tar_samples, load_indexes, progress_path
from sonofm.datasets.shards.inspect import inspect_shards
from sonofm.datasets.sources.specs import SourceSpec

pytestmark = pytest.mark.realdata

VIDEO_EXTS = {".gif", ".mp4", ".avi", ".mov", ".mpeg", ".mpg"}


def _read_all(out: Path) -> dict:
    """Every sample of every indexed shard: key -> meta, mask presence, png hash, shard file."""
    samples = {}
    indexes = {i["source"]: i for i in load_indexes(out)}
    for idx in indexes.values():
        for s in idx["shards"]:
            n = 0
            for smp in iter_tar_samples(out / s["file"]):
                meta = json.loads(smp["json"])
                samples[smp["__key__"]] = {
                    "meta": meta,
                    "mask": smp.get("mask.png"),
                    "field": smp.get("field.png"),
                    "png_sha": hashlib.sha256(smp["png"]).hexdigest(),
                    "png": smp["png"],
                    "file": s["file"],
                }
                assert meta["split"] == s["split"], f"{smp['__key__']} in a {s['split']} shard says {meta['split']}"
                n += 1
            assert n == s["count"], f"{s['file']}: index says {s['count']} samples, tar has {n}"
    return {"indexes": indexes, "samples": samples}


@pytest.fixture(scope="module")
def busi(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("busi")
    report = build_shards([f"busi:{shared_data / 'busi'}"], out, max_side=128, samples_per_shard=300,
                          workers=2, dedup=False, progress=False)
    return {"out": out, "report": report, **_read_all(out)}


@pytest.fixture(scope="module")
def cca(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("cca")
    report = build_shards([SourceSpec("cca", shared_data / "cca")], out, max_side=64, samples_per_shard=200,
                          workers=2, dedup=False, progress=False)
    return {"out": out, "report": report, **_read_all(out)}


@pytest.fixture(scope="module")
def pocus(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("pocus")
    src = f"pocus:{shared_data / 'pocus'}?frames_per_video=2&decode_limit=24"  # few frames decoded
    report = build_shards([src], out, max_side=64,
                          samples_per_shard=200, workers=2, dedup=True, progress=False)
    return {"out": out, "report": report, **_read_all(out)}


def test_busi_counts_labels_and_merged_masks(busi, shared_data):
    rep = busi["report"]["sources"]["busi"]
    assert rep["decode_errors"] == 0 and rep["records_read"] == 780 and rep["samples_written"] == 780
    idx = busi["indexes"]["busi"]
    assert idx["counts"]["label"] == {"benign": 437, "malignant": 210, "normal": 133}
    assert idx["counts"]["organ"] == {"breast": 780}
    samples = busi["samples"]
    assert len(samples) == 780
    assert Counter(s["meta"]["label"] for s in samples.values()) == {"benign": 437, "malignant": 210,
                                                                     "normal": 133}
    # Every BUSI image has a mask file, so every sample carries mask.png: lesions for benign and
    # malignant, empty for normal; plus the field mask, at the stored image size.
    for key, s in samples.items():
        assert s["mask"] is not None and s["field"] is not None, key
        img = np.asarray(Image.open(io.BytesIO(s["png"])))
        mask = np.asarray(Image.open(io.BytesIO(s["mask"])))
        assert img.dtype == np.uint8 and img.ndim == 2 and max(img.shape) <= 128
        assert mask.shape == img.shape and set(np.unique(mask)) <= {0, 1}, key
        if s["meta"]["label"] == "normal":
            assert not mask.any(), key
    lesion = [s for s in samples.values() if s["meta"]["label"] != "normal"]
    assert sum(np.asarray(Image.open(io.BytesIO(s["mask"]))).any() for s in lesion) >= 0.98 * len(lesion)
    # Images with several lesion files: the merged mask holds every lesion.
    from scipy import ndimage as ndi

    root = shared_data / "busi" / "Dataset_BUSI_with_GT"
    multi = [s for s in samples.values() if (root / s["meta"]["path"].replace(".png", "_mask_1.png")).is_file()]
    assert len(multi) >= 10
    checked = 0
    for s in multi:
        stem = root / s["meta"]["path"][: -len(".png")]
        files = [Path(f"{stem}_mask.png"), *sorted(stem.parent.glob(f"{stem.name}_mask_*.png"))]
        parts = [np.asarray(Image.open(f).convert("L")) > 127 for f in files]
        big = [p.mean() > 0.01 for p in parts]  # lesions that survive the resize to 128 px
        union = np.logical_or.reduce(parts)
        if not all(big) or ndi.label(union)[1] != len(parts):
            continue  # touching or tiny lesions: components cannot be counted
        stored = np.asarray(Image.open(io.BytesIO(s["mask"]))) > 0
        assert ndi.label(stored)[1] >= len(parts), s["meta"]["path"]
        checked += 1
    assert checked >= 3


def test_busi_groups_and_splits_consistent(busi):
    by_group = defaultdict(set)
    for s in busi["samples"].values():
        by_group[s["meta"]["group"]].add(s["meta"]["split"])
    assert all(len(v) == 1 for v in by_group.values())
    split = busi["indexes"]["busi"]["counts"]["split"]
    assert set(split) == {"train", "val", "test"} and sum(split.values()) == 780
    assert 0.7 < split["train"] / 780 < 0.9


def test_cca_543_samples_15_groups_no_group_in_two_splits(cca):
    rep = cca["report"]["sources"]["cca"]
    assert rep["decode_errors"] == 0 and rep["samples_written"] == 543
    samples = cca["samples"]
    assert len(samples) == 543
    by_group = defaultdict(set)
    for s in samples.values():
        by_group[s["meta"]["group"]].add(s["meta"]["split"])
        assert "_slice_" in s["meta"]["path"] and s["meta"]["group"] in s["meta"]["path"]
        assert s["mask"] is not None
    assert len(by_group) == 15
    assert all(len(v) == 1 for v in by_group.values()), {g: v for g, v in by_group.items() if len(v) > 1}
    groups = cca["indexes"]["cca"]["counts"]["groups"]
    assert sum(groups.values()) == 15
    assert cca["indexes"]["cca"]["counts"]["organ"] == {"carotid": 543}
    assert cca["indexes"]["cca"]["counts"]["region"] == {"head_and_neck": 543}


def test_pocus_files_in_one_split_and_every_video_format_decoded(pocus, shared_data):
    rep = pocus["report"]["sources"]["pocus"]
    present = {p.suffix.lower() for p in (shared_data / "pocus").rglob("*") if p.is_file()} & VIDEO_EXTS
    assert present, "no videos found in the POCUS folder"
    for ext in present:
        fmt = rep["formats"].get(ext)
        assert fmt and fmt.get("records", 0) > 0 and fmt.get("errors", 0) == 0, (ext, fmt, rep["errors"])
    assert rep["decode_errors"] == 0, rep["errors"]
    by_file = defaultdict(set)
    for s in pocus["samples"].values():
        by_file[s["meta"]["path"]].add(s["meta"]["split"])
        assert s["meta"]["group"] == s["meta"]["path"]
    assert all(len(v) == 1 for v in by_file.values())
    root = shared_data / "pocus"
    files = {p.relative_to(root).as_posix() for p in root.rglob("*")
             if p.suffix.lower() in VIDEO_EXTS | {".png", ".jpg", ".jpeg"}}
    assert set(by_file) <= files
    # A file is missing only when all its frames were dropped as duplicates of kept images.
    dropped = {d["dropped"].split("#")[0] for d in rep["duplicates"]}
    assert files - set(by_file) <= dropped
    assert len(pocus["samples"]) == rep["samples_written"]
    assert rep["samples_written"] + rep["duplicates_exact"] + rep["duplicates_near"] == rep["records_read"]
    labels = pocus["indexes"]["pocus"]["counts"]["label"]
    assert {"covid", "pneumonia", "healthy"} <= set(labels) and "unlabelled" in labels  # label_uncertain


def test_inspect_prints_counts_and_saves_contact_sheet(busi, tmp_path):
    text = inspect_shards(busi["out"], contact_sheet_dir=tmp_path)
    assert "busi" in text and "780" in text and "benign 437" in text and "malignant 210" in text
    assert "PROBLEMS" not in text
    sheet = tmp_path / "busi.contact.png"
    im = Image.open(sheet)
    assert im.size[0] >= 128 * 4 and im.mode == "RGB"
    assert np.asarray(im).std() > 10  # images, not a blank canvas


def _link_cca_subset(shared_data: Path, dst: Path, recordings: list[str], every: int = 5) -> Path:
    """A CCA-layout folder of symlinks to every ``every``-th frame of ``recordings`` (no data copied)."""
    src = shared_data / "cca" / "Common Carotid Artery Ultrasound Images"
    chosen: list[str] = []
    for rec in recordings:  # stride inside each recording, so adding recordings keeps old frames
        chosen += sorted(f.name for f in (src / "US images").glob(f"{rec}_slice_*"))[::every]
    for sub in ("US images", "Expert mask images"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
        for name in chosen:
            if (src / sub / name).exists() and not (dst / sub / name).exists():
                (dst / sub / name).symlink_to(src / sub / name)
    return dst


def _recordings(shared_data: Path) -> list[str]:
    src = shared_data / "cca" / "Common Carotid Artery Ultrasound Images" / "US images"
    return sorted({f.name.split("_slice_")[0] for f in src.iterdir()})


def test_splits_stable_when_data_is_added(shared_data, tmp_path):
    recs = _recordings(shared_data)
    assert len(recs) == 15
    root = _link_cca_subset(shared_data, tmp_path / "cca", recs[:3])
    kw = {"max_side": 48, "samples_per_shard": 40, "workers": 1, "dedup": False, "progress": False}
    build_shards([f"cca:{root}?links=any"], tmp_path / "v1", **kw)
    v1 = _read_all(tmp_path / "v1")["samples"]
    _link_cca_subset(shared_data, root, recs[3:7])  # four new recordings arrive
    build_shards([f"cca:{root}?links=any"], tmp_path / "v2", **kw)
    v2 = _read_all(tmp_path / "v2")["samples"]
    assert len(v2) > len(v1) and set(v1) <= set(v2)
    for key, s in v1.items():
        assert v2[key]["meta"]["split"] == s["meta"]["split"], key
        assert v2[key]["png_sha"] == s["png_sha"], key
    assert {s["meta"]["group"] for s in v2.values()} == set(recs[:7])


def test_killed_build_leaves_only_complete_shards_and_resume_matches(shared_data, tmp_path):
    recs = _recordings(shared_data)
    root = _link_cca_subset(shared_data, tmp_path / "cca", recs[:5], every=3)
    kw = {"max_side": 48, "samples_per_shard": 5, "dedup": True, "progress": False}
    build_shards([f"cca:{root}?links=any"], tmp_path / "ref", workers=2, **kw)
    ref_files = {s["file"]: s["sha256"] for s in load_indexes(tmp_path / "ref")[0]["shards"]}
    assert len(ref_files) >= 6

    out = tmp_path / "killed"
    code = (
        "from sonofm.datasets.build.orchestrate import build_shards\n"
        f"build_shards(['cca:{root}?links=any'], {str(out)!r}, workers=1, **{kw!r})\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            log = progress_path(out, "cca")  # kill once a finished shard has been recorded
            if log.is_file() and len(log.read_text().splitlines()) >= 2:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the build finished (or died) before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not list(out.glob("*.index.json")), "a killed build must not leave an index"
    visible = sorted(out.glob("*.tar"))
    assert visible and len(visible) < len(ref_files)
    for f in visible:  # every visible shard is complete: readable, and identical to the reference
        with tarfile.open(f) as t:
            assert t.getnames()
        assert file_sha256(f) == ref_files[f.name], f.name

    rerun = build_shards([f"cca:{root}?links=any"], out, workers=2, **kw)["sources"]["cca"]
    assert rerun["shards_skipped"] >= 1
    got = load_indexes(out)[0]
    assert {s["file"]: s["sha256"] for s in got["shards"]} == ref_files  # byte-identical shards
    a, b = _read_all(tmp_path / "ref")["samples"], _read_all(out)["samples"]
    assert {k: v["png_sha"] for k, v in a.items()} == {k: v["png_sha"] for k, v in b.items()}
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no temp/progress left
    # A third run with nothing changed decodes nothing.
    again = build_shards([f"cca:{root}?links=any"], out, workers=1, **kw)["sources"]["cca"]
    assert again.get("up_to_date") is True
