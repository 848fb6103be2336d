"""FM_UIA 2026 data roots: reading the challenge's CSVs, the ``fmuia:ROOT`` adapter's build, bad rows
named and counted, and boxes, points and masks carried through preprocessing and back exactly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sonofm.datasets.build.orchestrate import build_shards
from sonofm.datasets.preprocess.geometry import mask_to_original, original_from_stored
from sonofm.datasets.preprocess.pipeline import preprocess
from sonofm.datasets.shards import decode_sample, iter_tar_samples, read_index
from sonofm.datasets.sources.adapters import get_adapter
from sonofm.datasets.sources.fmuia import PROBLEMS, RootWriter, read_root, row_cells, source_name, write_csv
from sonofm.datasets.sources.fmuia_root import long_axis_ends, make_fmuia_root, mask_box
from sonofm.datasets.sources.records import Record
from sonofm.errors import BadOptionError
from sonofm.paths import shared_data_dir


def _image(h: int, w: int, seed: int) -> np.ndarray:
    """A textured gray image with a dark border (something for field detection to crop)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w), np.uint8)
    img[4:h - 4, 4:w - 4] = rng.integers(60, 200, (h - 8, w - 8), dtype=np.uint8)
    return img


def _samples(out: Path, source: str) -> list:
    """Every decoded sample of one source, all splits."""
    found = []
    for tar in sorted(out.glob(f"{source}-*.tar")):
        found += [decode_sample(raw) for raw in iter_tar_samples(tar)]
    return found


def _build(root: Path, out: Path, **kw) -> dict:
    kw = {"workers": 1, "progress": False, "max_side": 512, **kw}
    return build_shards([f"fmuia:{root}"], out, **kw)


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def _dice(a: np.ndarray, b: np.ndarray, cls: int) -> float:
    x, y = a == cls, b == cls
    return 1.0 if not x.any() and not y.any() else 2.0 * (x & y).sum() / (x.sum() + y.sum())


# ----------------------------------------------------------------------------------- the format


def test_rows_typed_by_kind_and_unlabelled_rows_allowed(tmp_path: Path) -> None:
    w = RootWriter(tmp_path)
    w.add("Seg A", "segmentation", 3, "D", "s0", _image(40, 48, 0), mask=np.full((40, 48), 2, np.uint8))
    w.add("cls", "classification", 4, "D", "c0", _image(40, 48, 1), label=3)
    w.add("det", "detection", 1, "D", "d0", _image(40, 48, 2), box=(1.5, 2, 30, 20.25))
    w.add("kp", "keypoints", 3, "D", "k0", _image(40, 48, 3), points=[(1, 2), (3.5, 4), (47, 39)])
    w.add("kp", "keypoints", 3, "D", "k1", _image(40, 48, 4))  # no labels: a validation row
    w.close()
    t = read_root(tmp_path)
    assert not t.problems and t.n_rows == 5
    kinds = {tid: (task.kind, task.num_classes) for tid, task in t.tasks.items()}
    assert kinds == {"Seg A": ("segmentation", 3), "cls": ("classification", 4), "det": ("detection", 1),
                     "kp": ("keypoints", 3)}
    by_image = {Path(r.image).stem: r for r in t.rows}
    assert by_image["s0"].image_path == "../Segmentation/Three/D/images/s0.png"
    assert by_image["s0"].mask == "Segmentation/Three/D/masks/s0.png"
    assert by_image["c0"].label == 3 and by_image["d0"].box == (1.5, 2.0, 30.0, 20.25)
    assert by_image["k0"].points == ((1.0, 2.0), (3.5, 4.0), (47.0, 39.0))
    assert not by_image["k1"].labelled and by_image["k0"].labelled
    assert t.tasks["kp"].to_index()["task_name"] == "Regression"
    assert t.tasks["cls"].to_index()["classes"] == ["0", "1", "2", "3"]
    assert source_name("Seg A") == "fmuia-Seg_A" and source_name("x/y", "") == "x_y"
    # images are 3-channel files
    assert np.asarray(Image.open(tmp_path / "Classification/D/c0.png")).shape == (40, 48, 3)


def test_every_bad_row_is_named_and_counted_and_no_good_row_lost(tmp_path: Path) -> None:
    root = tmp_path / "train"
    w = RootWriter(root)
    good = []
    for i in range(3):
        good.append(w.add("T_seg", "segmentation", 3, "D", f"s{i}", _image(48, 56, i),
                          mask=(np.arange(48 * 56).reshape(48, 56) % 3).astype(np.uint8)))
        good.append(w.add("T_cls", "classification", 3, "D", f"c{i}", _image(48, 56, 10 + i), label=i))
        good.append(w.add("T_det", "detection", 1, "D", f"d{i}", _image(48, 56, 20 + i), box=(5, 6, 30, 40)))
        good.append(w.add("T_kp", "keypoints", 2, "D", f"k{i}", _image(48, 56, 30 + i), points=[(5, 6), (50, 40)]))
    w.close()
    # files the bad rows point at
    Image.fromarray(_image(48, 56, 99)).save(root / "Detection/D/extra.png")
    (root / "Segmentation/Three/D/images").mkdir(parents=True, exist_ok=True)
    Image.fromarray(_image(48, 56, 98)).save(root / "Segmentation/Three/D/images/wrong.png")
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(root / "Segmentation/Three/D/masks/wrong.png")
    Image.fromarray(np.full((48, 56), 7, np.uint8)).save(root / "Segmentation/Three/D/masks/values.png")
    img, det, seg = "../Detection/D/extra.png", "detection", "segmentation"
    bad = [
        (row_cells("T_det", det, 1, "../Detection/D/nothere.png", box=(1, 1, 5, 5)), "row_missing_file"),
        ({**row_cells("T_seg", seg, 3, "../Segmentation/Three/D/images/wrong.png",
                      mask_path="../Segmentation/Three/D/masks/wrong.png")}, "row_mask_wrong_size"),
        (row_cells("T_det", det, 1, img, box=(10, 10, 57, 20)), "row_box_outside_image"),
        ({**row_cells("T_kp", "keypoints", 2, img), "point_1_xy": "[1, 2", "point_2_xy": "[3, 4]"},
         "row_point_not_json"),
        ({**row_cells("T_seg", seg, 3, img), "task_name": "Segmentation"}, "row_unknown_task_name"),
        (row_cells("T_cls", "classification", 3, img, label=5), "row_bad_label"),
        ({**row_cells("T_det", det, 1, img), "x_min": "9", "y_min": "9", "x_max": "3", "y_max": "20"},
         "row_bad_box"),
        ({**row_cells("T_kp", "keypoints", 2, img), "point_1_xy": "[1, 2]", "point_2_xy": '["a", 3]'},
         "row_bad_point"),
        (row_cells("T_kp", "keypoints", 2, img, points=[(1, 2), (3, 99)]), "row_point_outside_image"),
        (row_cells("T_seg", seg, 3, "../Segmentation/Three/D/images/wrong.png",
                   mask_path="../Segmentation/Three/D/masks/values.png"), "row_mask_bad_values"),
        (row_cells("T_det", det, 1, "../../outside.png", box=(1, 1, 5, 5)), "row_path_outside_root"),
        ({**row_cells("T_det", det, 1, img, box=(1, 1, 5, 5)), "task_id": ""}, "row_missing_value"),
        (row_cells("T_cls", "classification", 7, img, label=1), "row_task_inconsistent"),
        (row_cells("T_seg", seg, 3, img, mask_path="../Segmentation/Three/D/masks/gone.png"), "row_missing_file"),
        (row_cells("T_det", det, 1, img, box=(1, 1, 5, 5)) | {"num_classes": "x"}, "row_bad_num_classes"),
        (row_cells("T_ghost", "classification", 2, img, label=9), "row_bad_label"),  # a task with no good row
    ]
    write_csv(root / "csv_files" / "zz_bad.csv", [cells for cells, _ in bad])
    rep = _build(root, tmp_path / "S")
    reports = rep["sources"]
    assert sorted(reports) == ["fmuia-T_cls", "fmuia-T_det", "fmuia-T_kp", "fmuia-T_seg"]
    # no good row lost: every one is written, under its own task's source
    for src in reports:
        tid = src.removeprefix("fmuia-")
        want = sorted(c["image_path"] for c in good if c["task_id"] == tid)
        got = sorted(s.meta["image_path"] for s in _samples(tmp_path / "S", src))
        assert got == want, src
        assert reports[src]["samples_written"] == 3 and reports[src]["decode_errors"] == 0
    # every bad row counted once under its name, and named (CSV file and row) in a report
    counted: dict[str, int] = {}
    named: dict[str, list[str]] = {}
    for r in reports.values():
        for k, n in r["skipped"].items():
            counted[k] = counted.get(k, 0) + n
        for note in r["skipped_files"]:
            named.setdefault(note["counter"], []).append(note["file"])
    expected: dict[str, int] = {}
    for _, counter in bad:
        expected[counter] = expected.get(counter, 0) + 1
    assert counted == expected
    assert set(expected) == set(PROBLEMS)  # every kind of problem the format knows is exercised here
    for counter, files in named.items():
        assert all("zz_bad.csv, row" in f for f in files), (counter, files)
    # a row of a task is reported with that task's source
    assert reports["fmuia-T_kp"]["skipped"]["row_point_not_json"] == 1
    assert reports["fmuia-T_seg"]["skipped"]["row_mask_wrong_size"] == 1
    assert reports["fmuia-T_det"]["skipped"]["row_box_outside_image"] == 1
    assert reports["fmuia-T_seg"]["skipped"]["row_unknown_task_name"] == 1
    ghost = [n for r in reports.values() for n in r["skipped_files"] if "T_ghost" in n["reason"]]
    assert len(ghost) == 1 and "no usable row" in ghost[0]["reason"]


def test_cli_build_as_written_records_task_and_geometry(tmp_path: Path) -> None:
    """``sonofm shards build --source fmuia:ROOT/train --out S``, as the README writes it."""
    made = make_fmuia_root(tmp_path / "ROOT", n=3, n_val=2, sources=("synthetic",), size=96)
    assert made["tasks"]["SYN_det"]["screens"] >= 1 and made["tasks"]["SYN_kp"]["screens"] >= 1
    res = subprocess.run([sys.executable, "-m", "sonofm", "shards", "build", "--source", "fmuia:ROOT/train",
                          "--out", "S"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "split by image" in res.stdout
    for tid, kind, k in (("SYN_seg", "segmentation", 3), ("SYN_det", "detection", 1), ("SYN_kp", "keypoints", 2)):
        index = read_index(tmp_path / "S" / f"fmuia-{tid}.index.json")
        assert index["task"]["kind"] == kind and index["task"]["num_classes"] == k
        assert index["task"]["task_id"] == tid and index["task"]["labelled_rows"] == 3
        assert "image" in index["split_by"] and "image" in index["report"]["split_by"]
        assert index["dedup"].startswith("off")
    rows = {r.image_path: r for r in read_root(tmp_path / "ROOT" / "train").rows}
    for s in _samples(tmp_path / "S", "fmuia-SYN_kp") + _samples(tmp_path / "S", "fmuia-SYN_det"):
        row = rows[s.meta["image_path"]]
        assert s.meta["task_id"] == row.task_id and s.meta["csv_row"] == row.where
        assert (s.meta.get("boxes") is not None) == (row.kind == "detection")
        assert (s.meta.get("points") is not None) == (row.kind == "keypoints")


# ----------------------------------------------------------------------------- geometry round trip


@pytest.mark.parametrize("max_side", [512, 40])
def test_targets_back_in_original_pixels_exactly(tmp_path: Path, max_side: int) -> None:
    """Ground truth through preprocessing (field crop, resize) and back: IoU 1, point error < 1 px,
    masks at the original size with Dice 1 when stored unresized; screens whose crop shrinks included."""
    root = tmp_path / "ROOT"
    make_fmuia_root(root, n=3, n_val=1, sources=("synthetic",), size=96)
    _build(root / "train", tmp_path / "S", max_side=max_side)
    rows = {r.image_path: r for r in read_root(root / "train").rows}
    shrunk = {"detection": 0, "keypoints": 0}
    n = {"detection": 0, "keypoints": 0, "segmentation": 0}
    for tid in ("SYN_det", "SYN_kp", "SYN_seg"):
        for s in _samples(tmp_path / "S", f"fmuia-{tid}"):
            row = rows[s.meta["image_path"]]
            back = original_from_stored(s.meta)
            h, w = s.meta["orig_size"]
            t, left, b, r = s.meta["crop"]
            n[row.kind] += 1
            if row.kind in shrunk and (b - t) * (r - left) < 0.8 * h * w:
                shrunk[row.kind] += 1
            if row.kind == "detection":
                (box,) = back.boxes(s.meta["boxes"]).tolist()
                assert _iou(box, row.box) == pytest.approx(1.0, abs=1e-9)
                assert np.abs(np.subtract(box, row.box)).max() < 1e-6
            elif row.kind == "keypoints":
                pts = back.points(s.meta["points"])
                err = np.hypot(*(pts - np.asarray(row.points)).T)
                assert err.max() < 1e-6  # well under the 1 px the challenge's MRE would show
            else:
                truth = np.asarray(Image.open(root / "train" / row.mask))
                full = mask_to_original(s.mask, s.meta)
                assert full.shape == truth.shape == (h, w)
                assert set(np.unique(full)) <= {0, 1, 2}
                if max_side >= max(h, w):
                    assert all(_dice(full, truth, c) == 1.0 for c in (1, 2))
    assert n == {"detection": 3, "keypoints": 3, "segmentation": 3}
    assert shrunk["detection"] >= 1 and shrunk["keypoints"] >= 1  # the screens: the field crop shrank them


def test_crop_grows_to_keep_boxes_and_points() -> None:
    """A target outside the detected field (in the black border) is never cut, and moves exactly."""
    img = np.zeros((120, 160), np.uint8)
    img[30:100, 50:130] = np.random.default_rng(0).integers(60, 200, (70, 80), dtype=np.uint8)
    plain = preprocess(Record(image=img, meta={"path": "a.png"}))
    t, left, b, r = plain.meta["crop"]
    assert left > 20 and t > 10  # the field alone is cropped well inside the image
    box, point = [3.25, 4.0, 20.5, 15.0], [140.5, 112.75]
    rec = Record(image=img, meta={"path": "a.png", "boxes": [box], "points": [point, [60.0, 40.0]]})
    p = preprocess(rec, max_side=64)
    t, left, b, r = p.meta["crop"]
    assert left <= 3 and t <= 4 and r >= 141 and b >= 113
    assert p.meta["field"]["grown_for_targets"] is True
    back = original_from_stored(p.meta)
    assert np.allclose(back.boxes(p.meta["boxes"]), [box], atol=1e-9)
    assert np.allclose(back.points(p.meta["points"]), [point, [60.0, 40.0]], atol=1e-9)
    # stored coordinates lie in the stored image
    sh, sw = p.image.shape
    assert np.all(np.asarray(p.meta["boxes"])[:, [0, 2]] <= sw) and np.all(np.asarray(p.meta["points"])[:, 1] <= sh)
    assert p.field_mask[int(p.meta["boxes"][0][1]) + 1, int(p.meta["boxes"][0][0]) + 1]  # the box is kept, not blanked


def test_mask_to_original() -> None:
    mask = np.zeros((30, 40), np.uint8)
    mask[4:20, 10:30] = 2
    mask[22:26, 2:8] = 1
    meta = {"orig_size": [50, 70], "crop": [10, 20, 40, 60], "size": [30, 40]}
    full = mask_to_original(mask, meta)
    assert full.shape == (50, 70) and full[10:40, 20:60].tolist() == mask.tolist() and full.sum() == mask.sum()
    small = mask[::2, ::2]  # stored at half size: resized back into the crop by nearest neighbour
    back = mask_to_original(small, {**meta, "size": [15, 20]})
    assert back.shape == (50, 70) and set(np.unique(back)) == {0, 1, 2}
    assert _dice(back[10:40, 20:60], mask, 2) == 1.0  # the rectangle's edges fall on even pixels
    with pytest.raises(ValueError, match="stored size"):
        mask_to_original(small, meta)


def test_multiclass_masks_keep_their_ids(tmp_path: Path) -> None:
    w = RootWriter(tmp_path / "r")
    m = np.zeros((48, 56), np.uint8)
    m[10:20, 10:20], m[25:40, 30:50] = 1, 3
    w.add("four", "segmentation", 4, "D", "a", _image(48, 56, 0), mask=m)
    m255 = np.zeros((48, 56), np.uint8)
    m255[10:30, 10:30] = 255
    w.add("two", "segmentation", 2, "D", "b", _image(48, 56, 1), mask=m255)
    w.close()
    rep = _build(tmp_path / "r", tmp_path / "S")
    (s4,) = _samples(tmp_path / "S", "fmuia-four")
    assert set(np.unique(s4.mask)) == {0, 1, 3}
    (s2,) = _samples(tmp_path / "S", "fmuia-two")
    assert set(np.unique(s2.mask)) == {0, 1}  # a binary task stored 0/255 reads as classes 0/1, counted
    assert rep["sources"]["fmuia-two"]["adapter_stats"]["masks_0_255_read_as_0_1"] == 1


# ------------------------------------------------------------------------------------ validation


def test_unlabelled_val_root_builds_with_paths_to_predict(tmp_path: Path) -> None:
    made = make_fmuia_root(tmp_path / "ROOT", n=1, n_val=2, sources=("synthetic",), size=96, val_labelled=False)
    val = made["val"]
    assert not list(val.glob("Segmentation/*/*/masks/*.png"))  # the masks to predict are named, not given
    t = read_root(val)
    assert not t.problems and t.unlabelled_tasks == ("SYN_seg",) and not any(r.labelled for r in t.rows)
    rep = _build(val, tmp_path / "S")
    for r in rep["sources"].values():
        assert r["samples_written"] == 2 and r["adapter_stats"]["rows_unlabelled"] == 2
        assert r["task"]["labelled_rows"] == 0
    for s in _samples(tmp_path / "S", "fmuia-SYN_seg"):
        assert s.mask is None and s.meta["mask_path"].startswith("../Segmentation/Three/SYN/masks/")
        assert (val / "csv_files" / s.meta["mask_path"]).resolve().parent.name == "masks"


def test_group_column_and_options(tmp_path: Path) -> None:
    w = RootWriter(tmp_path / "r")
    for i in range(6):
        w.add("c", "classification", 2, "D", f"i{i}", _image(40, 48, i), label=i % 2)
    paths = w.close()
    rows = list(__import__("csv").DictReader(open(paths[0])))
    for i, row in enumerate(rows):
        row["patient"] = f"p{i // 3}"
    write_csv(paths[0], rows)
    rep = build_shards(["fmuia:" + str(tmp_path / "r") + "?group=patient&prefix=ch"], tmp_path / "S", workers=1,
                       progress=False)
    r = rep["sources"]["ch-c"]
    assert "column 'patient'" in r["split_by"] and r["samples_written"] == 6
    groups = {s.meta["group"] for s in _samples(tmp_path / "S", "ch-c")}
    assert groups == {"patient=p0", "patient=p1"}
    with pytest.raises(Exception, match="group='nosuch'"):
        build_shards([f"fmuia:{tmp_path / 'r'}?group=nosuch"], tmp_path / "S2", workers=1, progress=False)
    with pytest.raises(BadOptionError, match="one source per task_id"):
        get_adapter("fmuia", tmp_path / "r", source="x")
    with pytest.raises(Exception, match="not an FM_UIA data root"):
        get_adapter("fmuia", tmp_path)


def test_duplicate_images_are_both_kept(tmp_path: Path) -> None:
    """Two rows with the same pixels are two labelled examples: the build's dedup leaves both."""
    w = RootWriter(tmp_path / "r")
    w.add("c", "classification", 2, "D", "a", _image(48, 56, 0), label=0)
    w.add("c", "classification", 2, "D", "b", _image(48, 56, 0), label=1)
    w.close()
    rep = _build(tmp_path / "r", tmp_path / "S", dedup=True)
    assert rep["sources"]["fmuia-c"]["samples_written"] == 2
    assert rep["sources"]["fmuia-c"]["duplicates_exact"] == 0


def test_labels_false_gives_every_image_row_for_prediction(tmp_path: Path) -> None:
    """A row whose labels are bad is still an image to predict: ``labels=false`` reads no label."""
    w = RootWriter(tmp_path / "r")
    w.add("d", "detection", 1, "D", "a", _image(48, 56, 0), box=(5, 6, 30, 40))
    w.add("d", "detection", 1, "D", "b", _image(48, 56, 1), box=(5, 6, 300, 40))  # leaves the image
    w.add("k", "keypoints", 1, "D", "c", _image(48, 56, 2), points=[(7.5, 8.5)])
    paths = w.close()
    rows = list(__import__("csv").DictReader(open(paths[1])))
    rows[0]["point_1_xy"] = "[7.5, "  # not JSON
    write_csv(paths[1], rows)
    labelled = get_adapter("fmuia", tmp_path / "r")
    assert len([r for it in labelled.list_items() for r in labelled.load(it)]) == 1
    plain = get_adapter("fmuia", tmp_path / "r", labels=False)
    records = [r for it in plain.list_items() for r in plain.load(it)]
    assert sorted(r.meta["image_path"] for r in records) == sorted(
        ["../Detection/D/a.png", "../Detection/D/b.png", "../Regression/D/c.png"])
    assert all("boxes" not in r.meta and "points" not in r.meta for r in records)
    assert plain.task("fmuia-k").kind == "keypoints" and plain.report()["rows_unlabelled"] == 3
    with pytest.raises(BadOptionError, match="labels must be true or false"):
        get_adapter("fmuia", tmp_path / "r", labels="no")


def test_targets_survive_pseudonymised_builds(tmp_path: Path) -> None:
    w = RootWriter(tmp_path / "r")
    w.add("d", "detection", 1, "D", "a", _image(48, 56, 0), box=(5, 6, 30, 40))
    w.add("k", "keypoints", 1, "D", "b", _image(48, 56, 1), points=[(7.5, 8.5)])
    w.close()
    build_shards([f"fmuia:{tmp_path / 'r'}?pseudonymise=true"], tmp_path / "S", workers=1, progress=False)
    (d,) = _samples(tmp_path / "S", "fmuia-d")
    (k,) = _samples(tmp_path / "S", "fmuia-k")
    assert d.meta["path"].startswith("file-")
    assert np.allclose(original_from_stored(d.meta).boxes(d.meta["boxes"]), [[5, 6, 30, 40]])
    assert np.allclose(original_from_stored(k.meta).points(k.meta["points"]), [[7.5, 8.5]])


# ------------------------------------------------------------------------------ from shared data


def test_target_helpers() -> None:
    m = np.zeros((20, 30), bool)
    m[5:9, 3:25] = True
    assert mask_box(m) == (3.0, 5.0, 25.0, 9.0)
    (x0, y0), (x1, y1) = long_axis_ends(m)
    assert x0 == 3.5 and x1 == 24.5 and 5 <= y0 <= 9 and 5 <= y1 <= 9


@pytest.mark.skipif(not shared_data_dir().is_dir(), reason="needs ../shared/data (set SONOFM_SHARED_DATA)")
def test_root_from_shared_data_builds_and_masks_come_back(tmp_path: Path) -> None:
    made = make_fmuia_root(tmp_path / "ROOT", n=2, n_val=1, size=96)
    assert {"BUSI_cls", "BUSI_seg", "BUSI_det", "BUSI_kp", "CCA_seg", "POCUS_cls"} <= set(made["tasks"])
    rep = _build(made["train"], tmp_path / "S", max_side=1024)
    assert all(r["samples_written"] == 2 for r in rep["sources"].values())
    assert rep["sources"]["fmuia-BUSI_cls"]["task"]["classes"] == ["0", "1", "2"]
    assert rep["sources"]["fmuia-POCUS_cls"]["task"]["num_classes"] == 4
    rows = {r.image_path: r for r in read_root(made["train"]).rows}
    for tid in ("BUSI_seg", "CCA_seg"):
        for s in _samples(tmp_path / "S", f"fmuia-{tid}"):
            truth = np.asarray(Image.open(made["train"] / rows[s.meta["image_path"]].mask))
            assert _dice(mask_to_original(s.mask, s.meta), truth, 1) == 1.0
    for s in _samples(tmp_path / "S", "fmuia-BUSI_det"):
        (box,) = original_from_stored(s.meta).boxes(s.meta["boxes"]).tolist()
        assert _iou(box, rows[s.meta["image_path"]].box) == pytest.approx(1.0, abs=1e-9)
    for s in _samples(tmp_path / "S", "fmuia-POCUS_cls"):
        assert s.meta["label"] in ("0", "1", "2", "3")


@pytest.mark.skipif(not shared_data_dir().is_dir(), reason="needs ../shared/data (set SONOFM_SHARED_DATA)")
def test_root_splits_by_group_across_subtasks(tmp_path: Path) -> None:
    # CCA frames of one recording are near-copies, and a BUSI image's box and points come from the mask
    # its segmentation subtask trains on: neither may be in train/ for one subtask and in val/ for another
    made = make_fmuia_root(tmp_path / "ROOT", n=20, n_val=10, sources=("busi", "cca"))

    def groups(split: str, dataset: str, key) -> set[str]:
        rows = [r for r in read_root(made[split]).rows if r.task_id.startswith(dataset)]
        assert rows, f"no {dataset} rows in {split}/"
        return {key(Path(r.image_path).stem) for r in rows}

    def image(stem: str) -> str:
        return stem

    def recording(stem: str) -> str:
        return stem.split("_slice_")[0]

    assert not groups("train", "BUSI", image) & groups("val", "BUSI", image)
    assert not groups("train", "CCA", recording) & groups("val", "CCA", recording)
    assert all(made["tasks"][t]["val"] == 10 for t in ("BUSI_cls", "BUSI_seg", "BUSI_det", "BUSI_kp", "CCA_seg"))
