"""FM_UIA 2026 prediction files and scorer.

A small labelled root in the challenge's layout (``csv_files/*.csv``, paths ``../Segmentation/Two/<ds>/...``)
is written here; random predictions go through :class:`PredictionWriter`; the scorer's numbers must
equal an independent implementation written below from the definitions alone (plain loops: Dice by
counting, Hausdorff by brute force over every pixel pair, AUC by comparing every positive with every
negative, F1 and MCC from the confusion matrix), with no code shared with the scorer.
"""

from __future__ import annotations

import csv
import json
import math
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sonofm.cli import main
from sonofm.evaluation.fmuia_predictions import (
    CLASSIFICATION_FILE,
    DETECTION_FILE,
    REGRESSION_FILE,
    PredictionFormatError,
    PredictionWriter,
    read_predictions,
    segmentation_path,
    segmentation_relpath,
)
from sonofm.evaluation.fmuia_score import (
    AVERAGES,
    GroundTruthError,
    MissingPredictionsError,
    classification_scores,
    hausdorff,
    read_truth,
    score_folder,
)

# --- a labelled root in the challenge's layout -------------------------------------------------------------

SEG_TASKS = {"seg_two": ("Two", "DSA", 2, (9, 11)), "seg_three": ("Three", "DSB", 3, (10, 8))}
CLS_TASKS = {"cls_bin": ("DSC", 2, 14), "cls_four": ("DSD", 4, 20)}
DET_TASK, REG_TASK, REG_K = "det_one", "reg_two", 3


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _png(root: Path, rel: str, array: np.ndarray) -> None:
    path = root / "csv_files" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _true_mask(rng: np.random.Generator, hw: tuple[int, int], n: int, i: int) -> np.ndarray:
    """Blobs of each class, with the corner cases: image 0 holds no foreground at all, image 1 a ring
    (its hole makes the largest distance an interior pixel's), image 2 one class only."""
    h, w = hw
    m = np.zeros(hw, np.uint8)
    if i == 0:
        return m
    if i == 1:
        m[1:-1, 1:-1] = 1
        m[3:-3, 3:-3] = 0
        return m
    for c in range(1, n if i != 2 else 2):
        y, x = rng.integers(0, h - 3), rng.integers(0, w - 3)
        m[y : y + rng.integers(2, 5), x : x + rng.integers(2, 6)] = c
    return m


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "train"
    for task, (word, ds, n, hw) in SEG_TASKS.items():
        rows = []
        for i in range(6):
            img, mask = f"../Segmentation/{word}/{ds}/imgs/{i:03d}.png", f"../Segmentation/{word}/{ds}/masks/{i:03d}.png"
            _png(root, img, rng.integers(0, 255, (*hw, 3), dtype=np.uint8))
            _png(root, mask, _true_mask(rng, hw, n, i))
            rows.append({"image_path": img, "mask_path": mask, "task_id": task, "task_name": "segmentation",
                         "num_classes": n})
        _write_csv(root / "csv_files" / f"{task}.csv", rows)
    for task, (ds, n, count) in CLS_TASKS.items():
        rows = []
        for i in range(count):
            img = f"../Classification/{ds}/img {i}.png"  # a space: image_path is matched exactly as written
            _png(root, img, np.zeros((6, 7, 3), np.uint8))
            rows.append({"image_path": img, "task_id": task, "task_name": "classification",
                         "num_classes": f"{n}.0", "mask": f"{i % n}.0"})  # how pandas writes a float column
        _write_csv(root / "csv_files" / f"{task}.csv", rows)
    rows = []
    for i in range(5):
        img = f"../Detection/DSE/{i}.png"
        _png(root, img, np.zeros((40, 50, 3), np.uint8))
        x0, y0 = rng.uniform(0, 25), rng.uniform(0, 20)
        rows.append({"image_path": img, "task_id": DET_TASK, "task_name": "detection", "num_classes": 1,
                     "x_min": x0, "y_min": y0, "x_max": x0 + rng.uniform(3, 20), "y_max": y0 + rng.uniform(3, 15)})
    _write_csv(root / "csv_files" / "det.csv", rows)
    rows = []
    for i in range(5):
        img = f"../Regression/DSF/{i}.png"
        _png(root, img, np.zeros((30, 60, 3), np.uint8))
        row = {"image_path": img, "task_id": REG_TASK, "task_name": "Regression", "num_classes": REG_K}
        for k in range(REG_K):
            row[f"point_{k + 1}_xy"] = json.dumps([round(float(rng.uniform(0, 60)), 2), round(float(rng.uniform(0, 30)), 2)])
        rows.append(row)
    _write_csv(root / "csv_files" / "reg.csv", rows)
    return root


def _rows(root: Path) -> list[dict]:
    out = []
    for f in sorted((root / "csv_files").glob("*.csv")):
        with open(f, newline="") as h:
            out += list(csv.DictReader(h))
    return out


def _random_predictions(root: Path, out: Path, seed: int = 1) -> None:
    """Random (but not hopeless) predictions for every row of ``root``, through the writer."""
    rng = np.random.default_rng(seed)
    with PredictionWriter(out) as w:
        for row in _rows(root):
            kind, n = row["task_name"].lower(), int(float(row["num_classes"]))
            if kind == "segmentation":
                truth = np.array(Image.open(root / "csv_files" / row["mask_path"]))
                pred = truth.copy()
                flip = rng.random(truth.shape) < rng.uniform(0, 0.4)
                pred[flip] = rng.integers(0, n, int(flip.sum()))
                if rng.random() < 0.3:
                    pred[:] = 0  # a prediction with nothing in it
                w.add_segmentation(row["mask_path"], pred)
            elif kind == "classification":
                logits = rng.normal(size=n)
                logits[int(float(row["mask"]))] += rng.uniform(0, 1.5)
                w.add_classification(row["image_path"], row["task_id"], np.exp(logits) / np.exp(logits).sum())
            elif kind == "detection":
                box = [float(row[k]) + rng.normal(0, 3) for k in ("x_min", "y_min", "x_max", "y_max")]
                w.add_detection(row["image_path"], row["task_id"], box, (40, 50))
            else:
                pts = [json.loads(row[f"point_{k + 1}_xy"]) for k in range(REG_K)]
                w.add_keypoints(row["image_path"], row["task_id"], np.array(pts) + rng.normal(0, 2, (REG_K, 2)),
                                (30, 60))


# --- the independent implementation ------------------------------------------------------------------------


def ref_hd(a: np.ndarray, b: np.ndarray) -> float:
    pa, pb = np.argwhere(a), np.argwhere(b)
    if len(pa) == 0 and len(pb) == 0:
        return 0.0
    if len(pa) == 0 or len(pb) == 0:
        return math.sqrt(a.shape[0] ** 2 + a.shape[1] ** 2)

    def directed(src: np.ndarray, dst: np.ndarray) -> float:
        worst = 0.0
        for p in src:
            worst = max(worst, min(math.dist(p, q) for q in dst))
        return worst

    return max(directed(pa, pb), directed(pb, pa))


def ref_dice(a: np.ndarray, b: np.ndarray) -> float:
    inter = sum(1 for x, y in zip(a.ravel(), b.ravel()) if x and y)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2 * inter / total


def ref_auc(pos_scores: list[float], neg_scores: list[float]) -> float:
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos_scores for q in neg_scores)
    return wins / (len(pos_scores) * len(neg_scores))


def ref_classification(t: list[int], p: list[int], probs: list[list[float]], n: int) -> dict[str, float]:
    labels = sorted(set(t) | set(p))
    f1 = {}
    for c in labels:
        tp = sum(1 for a, b in zip(t, p) if a == c and b == c)
        fp = sum(1 for a, b in zip(t, p) if a != c and b == c)
        fn = sum(1 for a, b in zip(t, p) if a == c and b != c)
        f1[c] = 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)
    support = {c: t.count(c) for c in labels}
    if n == 2:
        auc = ref_auc([s[1] for s, y in zip(probs, t) if y == 1], [s[1] for s, y in zip(probs, t) if y != 1])
    else:
        aucs = [ref_auc([s[c] for s, y in zip(probs, t) if y == c], [s[c] for s, y in zip(probs, t) if y != c])
                for c in range(n) if 0 < t.count(c) < len(t)]
        auc = sum(aucs) / len(aucs)
    # MCC from the K x K confusion matrix: (c*s - sum_k p_k t_k) / sqrt((s^2 - sum p_k^2)(s^2 - sum t_k^2))
    cm = [[sum(1 for a, b in zip(t, p) if a == i and b == j) for j in range(n)] for i in range(n)]
    s = len(t)
    c = sum(cm[k][k] for k in range(n))
    t_k = [sum(cm[k]) for k in range(n)]
    p_k = [sum(cm[i][k] for i in range(n)) for k in range(n)]
    den = math.sqrt((s * s - sum(v * v for v in p_k)) * (s * s - sum(v * v for v in t_k)))
    return {
        "accuracy": sum(a == b for a, b in zip(t, p)) / s,
        "auc": auc,
        "f1_macro": sum(f1.values()) / len(f1),
        "f1_weighted": sum(f1[c] * support[c] for c in labels) / s,
        "mcc": 0.0 if den == 0 else (c * s - sum(a * b for a, b in zip(p_k, t_k))) / den,
    }


def ref_iou(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih
    return iw * ih / union


def reference_scores(root: Path, out: Path) -> dict[str, dict[str, float]]:
    """Per task_id, every metric computed from the definitions with plain loops."""
    cls = json.loads((out / CLASSIFICATION_FILE).read_text())
    det = {(e["task_id"], e["image_path"]): e for e in json.loads((out / DETECTION_FILE).read_text())}
    reg = {(e["task_id"], e["image_path"]): e for e in json.loads((out / REGRESSION_FILE).read_text())}
    cls_by = {(e["task_id"], e["image_path"]): e for e in cls}
    per_task: dict[str, list[dict]] = {}
    for row in _rows(root):
        per_task.setdefault(row["task_id"], []).append(row)
    ref: dict[str, dict[str, float]] = {}
    for task, rows in per_task.items():
        kind, n = rows[0]["task_name"].lower(), int(float(rows[0]["num_classes"]))
        if kind == "segmentation":
            img_dice, img_hd = [], []
            for row in rows:
                truth = np.array(Image.open(root / "csv_files" / row["mask_path"]))
                pred = np.array(Image.open(out / row["mask_path"][3:]))
                d = [ref_dice(pred == c, truth == c) for c in range(1, n)]
                h = [ref_hd(pred == c, truth == c) for c in range(1, n)]
                img_dice.append(sum(d) / len(d))
                img_hd.append(sum(h) / len(h))
            ref[task] = {"dice": sum(img_dice) / len(rows), "hd": sum(img_hd) / len(rows)}
        elif kind == "classification":
            entries = [cls_by[(task, r["image_path"])] for r in rows]
            ref[task] = ref_classification([int(float(r["mask"])) for r in rows],
                                           [e["predicted_class"] for e in entries],
                                           [e["predicted_probs"] for e in entries], n)
        elif kind == "detection":
            ious = [ref_iou(det[(task, r["image_path"])]["bbox_pixels"],
                            [float(r[k]) for k in ("x_min", "y_min", "x_max", "y_max")]) for r in rows]
            ref[task] = {"iou": sum(ious) / len(ious)}
        else:
            mres = []
            for r in rows:
                xy = reg[(task, r["image_path"])]["predicted_points_pixels"]
                truth = [json.loads(r[f"point_{k + 1}_xy"]) for k in range(n)]
                mres.append(sum(math.dist(xy[2 * k : 2 * k + 2], truth[k]) for k in range(n)) / n)
            ref[task] = {"mre": sum(mres) / len(mres)}
    return ref


# --- tests -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_scorer_agrees_with_independent_implementation(root: Path, tmp_path: Path, seed: int) -> None:
    out = tmp_path / f"pred{seed}"
    _random_predictions(root, out, seed)
    report = score_folder(out, root, progress=False)
    ref = reference_scores(root, out)
    assert set(report["subtasks"]) == set(ref)
    for task, metrics in ref.items():
        for key, value in metrics.items():
            assert report["subtasks"][task][key] == pytest.approx(value, rel=1e-9, abs=1e-12), (task, key)
    for key, kind, metric, _ in AVERAGES:
        tasks = [t for t in ref if report["subtasks"][t]["kind"] == kind]
        assert report["averages"][key] == pytest.approx(sum(ref[t][metric] for t in tasks) / len(tasks)), key
    assert report["extra_predictions"] == []


def test_full_hausdorff_matches_brute_force_on_all_pixels() -> None:
    rng = np.random.default_rng(5)
    for _ in range(40):
        shape = tuple(rng.integers(3, 12, 2))
        a, b = rng.random(shape) < rng.uniform(0, 0.3), rng.random(shape) < rng.uniform(0, 0.3)
        assert hausdorff(a, b) == pytest.approx(ref_hd(a, b), abs=1e-9)
    # A ring and the square filling its hole: the farthest pixel is the square's centre, 3 px from the
    # ring; an HD over boundaries only would miss it (every boundary pixel of one is within 2.83 of the other's).
    ring = np.zeros((11, 11), bool)
    ring[1:10, 1:10] = True
    ring[3:8, 3:8] = False
    hole = np.zeros_like(ring)
    hole[3:8, 3:8] = True
    assert hausdorff(ring, hole) == pytest.approx(ref_hd(ring, hole)) == 3.0
    assert hausdorff(np.zeros((3, 4)), np.zeros((3, 4))) == 0.0
    assert hausdorff(np.zeros((3, 4)), np.ones((3, 4))) == 5.0  # the diagonal when one side is empty


def test_auc_when_the_truth_lacks_classes() -> None:
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(4), 30)
    t = [int(v) for v in rng.choice([0, 2, 3], 30)]  # class 1 never true: macro over the classes present
    p = [int(v) for v in probs.argmax(1)]
    got = classification_scores(t, p, probs, 4)
    want = ref_classification(t, p, probs.tolist(), 4)
    assert got == pytest.approx(want)
    one_class = classification_scores([1] * 5, [1, 0, 1, 1, 1], rng.dirichlet(np.ones(2), 5), 2)
    assert math.isnan(one_class["auc"]) and one_class["accuracy"] == 0.8


def test_perfect_predictions_score_perfectly(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "perfect"
    with PredictionWriter(out) as w:
        for row in _rows(root):
            kind, n = row["task_name"].lower(), int(float(row["num_classes"]))
            if kind == "segmentation":
                w.add_segmentation(row["mask_path"], np.array(Image.open(root / "csv_files" / row["mask_path"])))
            elif kind == "classification":
                w.add_classification(row["image_path"], row["task_id"], np.eye(n)[int(float(row["mask"]))])
            elif kind == "detection":
                w.add_detection(row["image_path"], row["task_id"],
                                [float(row[k]) for k in ("x_min", "y_min", "x_max", "y_max")], (40, 50))
            else:
                w.add_keypoints(row["image_path"], row["task_id"],
                                [json.loads(row[f"point_{k + 1}_xy"]) for k in range(REG_K)], (30, 60))
    avg = score_folder(out, root, progress=False)["averages"]
    assert avg == {"seg_dice": 1.0, "seg_hd": 0.0, "cls_accuracy": 1.0, "cls_auc": 1.0, "cls_f1_macro": 1.0,
                   "cls_f1_weighted": 1.0, "cls_mcc": 1.0, "det_iou": 1.0, "reg_mre": 0.0}


def test_missing_predictions_are_errors_that_name_them(root: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pred"
    _random_predictions(root, out)
    segmentation_path(out, "../Segmentation/Three/DSB/masks/004.png").unlink()
    entries = json.loads((out / CLASSIFICATION_FILE).read_text())
    (out / CLASSIFICATION_FILE).write_text(json.dumps([e for e in entries if e["image_path"] != "../Classification/DSC/img 3.png"]))
    with pytest.raises(MissingPredictionsError) as err:
        score_folder(out, root, progress=False)
    assert "2 of the" in str(err.value) and "cls_bin 1/14, seg_three 1/6)" in str(err.value)
    assert "../Segmentation/Three/DSB/masks/004.png" in str(err.value)
    assert "../Classification/DSC/img 3.png" in str(err.value)
    assert len(err.value.missing) == 2
    assert main(["score", str(out), "--root", str(root)]) == 2
    assert "../Classification/DSC/img 3.png" in capsys.readouterr().err
    assert not (out / "scores.json").exists()
    (out / REGRESSION_FILE).unlink()  # a whole kind's file missing names each of its images
    with pytest.raises(MissingPredictionsError) as err:
        score_folder(out, root, progress=False)
    assert len(err.value.missing) == 2 + 5 and "../Regression/DSF/4.png" in " ".join(err.value.missing)


def test_unscorable_predictions_are_named(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "pred"
    _random_predictions(root, out)
    bad_size = "../Segmentation/Two/DSA/masks/002.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(segmentation_path(out, bad_size))
    bad_value = "../Segmentation/Three/DSB/masks/001.png"
    Image.fromarray(np.full((10, 8), 255, np.uint8)).save(segmentation_path(out, bad_value))
    entries = json.loads((out / REGRESSION_FILE).read_text())
    entries[0]["predicted_points_pixels"] = entries[0]["predicted_points_pixels"][:2]
    entries.append(dict(entries[1]))  # a duplicate
    (out / REGRESSION_FILE).write_text(json.dumps(entries))
    with pytest.raises(MissingPredictionsError) as err:
        score_folder(out, root, progress=False)
    text = " ".join(err.value.invalid)
    assert bad_size in text and "original size" in text
    assert bad_value in text and "255" in text
    assert entries[0]["image_path"] in text and "1 predicted points" in text
    assert "duplicate" in text and entries[1]["image_path"] in text


def test_extra_predictions_are_reported_not_fatal(root: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pred"
    _random_predictions(root, out)
    with PredictionWriter(tmp_path / "more") as w:
        w.add_detection("../Detection/DSE/unknown.png", DET_TASK, [1, 2, 3, 4], (40, 50))
    entries = json.loads((out / DETECTION_FILE).read_text()) + json.loads((tmp_path / "more" / DETECTION_FILE).read_text())
    (out / DETECTION_FILE).write_text(json.dumps(entries))
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(out / "Segmentation" / "Two" / "DSA" / "masks" / "stray.png")
    assert main(["score", str(out), "--root", str(root), "--out", str(tmp_path / "s.json")]) == 0
    printed = capsys.readouterr().out
    assert "2 prediction(s) for images the root does not list" in printed
    assert "../Detection/DSE/unknown.png" in printed and "stray.png" in printed
    for _, _, _, label in AVERAGES:
        assert label in printed
    for task in (*SEG_TASKS, *CLS_TASKS, DET_TASK, REG_TASK):
        assert task in printed
    saved = json.loads((tmp_path / "s.json").read_text())
    assert set(saved["averages"]) == {key for key, *_ in AVERAGES}
    assert len(saved["extra_predictions"]) == 2


def test_rows_that_cannot_be_scored_are_left_out_and_named(root: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pred"
    _random_predictions(root, out)
    for name in ("x", "y"):
        _png(root, f"../Classification/DSC/{name}.png", np.zeros((6, 7, 3), np.uint8))
    with open(root / "csv_files" / "cls_bin.csv", "a", newline="") as f:
        f.write("../Classification/DSC/x.png,cls_bin,classification,2,\n")  # no label
        f.write("../Classification/DSC/y.png,cls_bin,segmentatio,2,1\n")  # unknown task_name
    with PredictionWriter(tmp_path / "more") as w:
        w.add_classification("../Classification/DSC/x.png", "cls_bin", [0.3, 0.7])
    entries = json.loads((out / CLASSIFICATION_FILE).read_text()) + json.loads((tmp_path / "more" / CLASSIFICATION_FILE).read_text())
    (out / CLASSIFICATION_FILE).write_text(json.dumps(entries))
    truth = read_truth(root)
    assert len(truth.rows) == 6 + 6 + 14 + 20 + 5 + 5
    assert len(truth.left_out) == 2
    assert "cls_bin.csv, row 16: no label" in truth.left_out[1] and "segmentatio" in truth.left_out[0]
    assert main(["score", str(out), "--root", str(root)]) == 0
    printed = capsys.readouterr().out
    assert "2 row(s) of the root left out (not scored)" in printed and "cls_bin.csv, row 17" in printed
    report = json.loads((out / "scores.json").read_text())
    assert len(report["truth_left_out"]) == 2
    assert report["extra_predictions"] == []  # x.png is named by the root: not an unknown image


def test_a_root_without_labels_cannot_be_scored(root: Path, tmp_path: Path) -> None:
    for f in (root / "csv_files").glob("*.csv"):
        with open(f, newline="") as h:
            rows = list(csv.DictReader(h))
        for r in rows:
            for k in ("mask", "x_min", "y_min", "x_max", "y_max", *(f"point_{i}_xy" for i in range(1, 4))):
                if k in r:
                    r[k] = ""
        _write_csv(f, rows)
    for mask in root.glob("Segmentation/*/*/masks/*.png"):
        mask.unlink()  # a validation root names the masks to predict but holds none
    with pytest.raises(GroundTruthError, match="carries a label"):
        read_truth(root)
    with pytest.raises(FileNotFoundError, match="no CSV files"):
        read_truth(tmp_path / "nowhere")


def test_writer_reader_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "p"
    odd = "../Classification/Ds/ä b,c.png"  # copied exactly, whatever it holds
    mask = np.arange(30, dtype=np.int64).reshape(5, 6) % 3
    with PredictionWriter(out) as w:
        w.add_classification(odd, "T1", [0.2, 0.5, 0.3])
        w.add_detection("../Detection/D/1.png", "T2", np.array([10.0, 5.0, 30.0, 25.0]), (50, 40))
        w.add_keypoints("../Regression/R/1.png", "T3", [[8.0, 4.0], [20.0, 30.0]], (40, 80))
        written_png = w.add_segmentation("../Segmentation/Three/S/m.png", mask)
    files = w.close()  # a second close writes nothing
    assert files == []
    assert written_png == out / "Segmentation" / "Three" / "S" / "m.png"
    assert np.array_equal(np.array(Image.open(written_png)), mask)
    assert Image.open(written_png).mode == "L" and Image.open(written_png).size == (6, 5)
    back = read_predictions(out)
    assert back.entries["classification"][("T1", odd)] == {
        "image_path": odd, "task_id": "T1", "predicted_class": 1, "predicted_probs": [0.2, 0.5, 0.3]}
    det = back.entries["detection"][("T2", "../Detection/D/1.png")]
    assert det["bbox_pixels"] == [10.0, 5.0, 30.0, 25.0]
    assert det["bbox_normalized"] == pytest.approx([10 / 40, 5 / 50, 30 / 40, 25 / 50])  # x / width, y / height
    reg = back.entries["keypoints"][("T3", "../Regression/R/1.png")]
    assert reg["predicted_points_pixels"] == [8.0, 4.0, 20.0, 30.0]
    assert reg["predicted_points_normalized"] == pytest.approx([8 / 80, 4 / 40, 20 / 80, 30 / 40])
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["Segmentation", CLASSIFICATION_FILE, DETECTION_FILE, REGRESSION_FILE])  # no temporary file left
    assert [str(p) for p in back.mask_files()] == ["Segmentation/Three/S/m.png"]


def test_writer_lists_what_it_wrote_and_refuses_bad_values(tmp_path: Path) -> None:
    w = PredictionWriter(tmp_path / "o")
    w.add_segmentation("../Segmentation/Two/A/1.png", np.zeros((2, 2), bool))
    w.add_classification("a.png", "t", [0.4, 0.6])
    assert w.close() == [tmp_path / "o" / CLASSIFICATION_FILE, tmp_path / "o" / "Segmentation" / "Two" / "A"]
    w = PredictionWriter(tmp_path / "q")
    with pytest.raises(PredictionFormatError, match="4 numbers"):
        w.add_detection("a.png", "t", [1, 2, 3], (4, 4))
    with pytest.raises(PredictionFormatError, match="finite"):
        w.add_classification("a.png", "t", [0.5, float("nan")])
    with pytest.raises(PredictionFormatError, match="0..255"):
        w.add_segmentation("../Segmentation/Two/A/1.png", np.full((2, 2), 300))
    for escape in ("../../etc/x.png", "/abs/x.png", "../Segmentation/../../x.png"):
        with pytest.raises(PredictionFormatError, match="inside the output folder"):
            segmentation_relpath(escape)
    assert str(segmentation_relpath("../Segmentation/Two/A/1.png")) == "Segmentation/Two/A/1.png"


def test_writer_failure_leaves_no_json(tmp_path: Path) -> None:
    out = tmp_path / "o"
    with pytest.raises(RuntimeError), PredictionWriter(out) as w:
        w.add_classification("a.png", "t", [0.4, 0.6])
        raise RuntimeError("model failed")
    assert list(out.iterdir()) == []


def test_writer_memory_stays_flat(tmp_path: Path) -> None:
    """Entries go to disk as they come: the temporary file grows with them while the memory the
    writer holds does not (a list of entries would add about a kilobyte per entry here)."""
    w = PredictionWriter(tmp_path / "o")
    probs = np.full(20, 0.05)

    def add(n: int, start: int) -> None:
        for i in range(start, start + n):
            w.add_classification(f"../Classification/D/{i:06d}.png", "task", probs)

    add(50, 0)
    parts = list((tmp_path / "o").glob(".*.parts"))
    assert len(parts) == 1 and not (tmp_path / "o" / CLASSIFICATION_FILE).exists()
    tracemalloc.start()
    try:
        add(100, 50)
        before_size, before_mem = parts[0].stat().st_size, tracemalloc.get_traced_memory()[0]
        add(4000, 150)
        after_size, after_mem = parts[0].stat().st_size, tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after_size - before_size > 4000 * 200  # every entry (~230 bytes) reached the file: no growing buffer
    assert after_mem - before_mem < 64_000  # 4000 more entries, under 16 bytes each held
    written = w.close()
    assert len(json.loads(written[0].read_text())) == 4150
    assert not parts[0].exists()
