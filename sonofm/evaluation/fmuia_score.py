"""Score an FM_UIA 2026 prediction folder against a labelled challenge root.

Definitions (per subtask, i.e. per ``task_id``; each kind's numbers are then the plain mean over its
subtasks, giving the nine numbers of :data:`AVERAGES`):

- **Segmentation.** For each image and each non-background class ``c`` (1 .. num_classes-1):
  Dice ``2|P∩T| / (|P|+|T|)`` of the pixels equal to ``c``, 1.0 when both are empty; and the full
  Hausdorff distance in pixels (not HD95) between the two sets of pixels of class ``c`` (all of them,
  interior included, not only their boundaries): ``max(h(P, T), h(T, P))`` with
  ``h(A, B) = max_{a∈A} min_{b∈B} |a - b|``. It is the image diagonal ``sqrt(H² + W²)`` when exactly
  one of the two is empty and 0 when both are (nothing to find and nothing found, as Dice's 1.0).
  ``h(A, B)`` is read off an exact Euclidean distance transform to ``B`` (scipy's
  ``distance_transform_edt``) at the pixels of ``A``, which equals the brute-force maximum over all
  pixel pairs (tests/test_fmuia_score.py checks it) in linear rather than quadratic time. An image's
  score is the mean over its classes; the subtask's is the mean over its images (the same number as
  the challenge's per-class mean over images then over classes, since every image scores every class).
- **Classification.** Accuracy of ``predicted_class``; AUC from ``predicted_probs`` (binary tasks: the
  probability of class 1; otherwise the macro mean of the one-vs-rest AUCs, over the classes that the
  truth holds, as scikit-learn's ``multi_class='ovr'``; undefined, shown ``n/a`` and left out of the
  average, when the truth holds one class only); F1 macro and weighted and MCC from scikit-learn
  (labels: those in truth or prediction; a class never predicted scores F1 0).
- **Detection.** Mean over images of the IoU of the one predicted box with the true box, boxes as
  continuous ``[x_min, y_min, x_max, y_max]`` in original pixels (area ``(x_max-x_min)·(y_max-y_min)``,
  0 when the union is empty).
- **Regression.** MRE: per image the mean Euclidean distance in pixels between predicted and true
  points (in order), then the mean over images.

Unlike the challenge's own scorer, which silently skips what it cannot find, a labelled image
without a prediction is an error that names it (:class:`MissingPredictionsError`), and so is a
prediction that cannot be scored (a mask of the wrong size or with an unknown class index, a wrong
number of probabilities or points, a duplicate). Predictions for images the root does not list are
reported (they would be ignored) without failing.

The root is read by the data side's :func:`sonofm.datasets.sources.fmuia.read_root`, the reader the
shard build uses: rows it rejects (a missing file, an unknown ``task_name``, ...) and rows without a
label are left out of the scores and listed in the report; a root with no label at all is an error.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from sonofm.atomic_io import to_jsonable, write_json
from sonofm.errors import UserError
from sonofm.evaluation.fmuia_predictions import (
    JSON_FILES,
    PredictionFolder,
    PredictionFormatError,
    read_class_map,
    read_predictions,
    segmentation_relpath,
)

KINDS: tuple[str, ...] = ("segmentation", "classification", "detection", "keypoints")
#: The nine numbers, in order: (key, kind, per-subtask metric, label in the table).
AVERAGES: tuple[tuple[str, str, str, str], ...] = (
    ("seg_dice", "segmentation", "dice", "seg Dice"),
    ("seg_hd", "segmentation", "hd", "seg HD (px)"),
    ("cls_accuracy", "classification", "accuracy", "cls accuracy"),
    ("cls_auc", "classification", "auc", "cls AUC"),
    ("cls_f1_macro", "classification", "f1_macro", "cls F1 macro"),
    ("cls_f1_weighted", "classification", "f1_weighted", "cls F1 weighted"),
    ("cls_mcc", "classification", "mcc", "cls MCC"),
    ("det_iou", "detection", "iou", "det IoU"),
    ("reg_mre", "keypoints", "mre", "reg MRE (px)"),
)
#: How many names an error message or the printed report lists before saying "and N more".
SHOW = 10


class MissingPredictionsError(UserError, ValueError):
    """Labelled images without a (usable) prediction; ``missing`` and ``invalid`` list them all."""

    def __init__(self, message: str, missing: Sequence[str] = (), invalid: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.missing = list(missing)
        self.invalid = list(invalid)


class GroundTruthError(UserError, ValueError):
    """The labelled root cannot be scored against (no CSVs, a row without its label, ...)."""


def _listing(items: Sequence[str], n: int = SHOW) -> str:
    more = f" ... and {len(items) - n} more" if len(items) > n else ""
    return "; ".join(items[:n]) + more


# --- ground truth ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TruthRow:
    """One labelled row of a challenge root, in the scorer's terms.

    ``kind`` is one of :data:`KINDS`; ``mask_file`` the true mask's path on disk (segmentation);
    ``label`` the class (classification); ``box`` ``(x_min, y_min, x_max, y_max)`` (detection);
    ``points`` the K ``(x, y)`` (keypoints, the challenge's Regression), all in original pixels.
    ``where`` names the CSV row."""

    kind: str
    task_id: str
    image_path: str
    num_classes: int
    mask_path: str | None = None
    mask_file: Path | None = None
    label: int | None = None
    box: tuple[float, float, float, float] | None = None
    points: tuple[tuple[float, float], ...] | None = None
    where: str = ""


@dataclass
class Truth:
    """What a root gives the scorer: its labelled rows, the rows left out (each ``"where: why"``), and
    every ``(task_id, image_path)`` and mask its CSVs name (so a prediction for a left-out row is
    not called one for an unknown image)."""

    rows: list[TruthRow]
    left_out: list[str] = field(default_factory=list)
    known_images: set[tuple[str, str]] = field(default_factory=set)
    known_masks: set[PurePosixPath] = field(default_factory=set)


def read_truth(root: str | os.PathLike) -> Truth:
    """The labelled rows of ``root/csv_files/*.csv``, read by the data side's
    :func:`sonofm.datasets.sources.fmuia.read_root` (the same rows, kinds and bad-row checks as the
    build). Rows it rejects, and rows without a label, are left out and listed; a root without any
    label is an error (a validation or test root cannot be scored)."""
    from sonofm.datasets.sources.fmuia import read_csv_rows, read_root

    try:
        table = read_root(root)
        raw = read_csv_rows(root)
    except ValueError as exc:  # a CSV that does not parse
        raise GroundTruthError(str(exc)) from exc
    truth = Truth(rows=[], left_out=[f"{p.where}: {p.reason}" for p in table.problems])
    for row in table.rows:
        if not row.labelled:
            truth.left_out.append(f"{row.where}: no label (task {row.task_id})")
            continue
        truth.rows.append(TruthRow(
            kind=row.kind, task_id=row.task_id, image_path=row.image_path, num_classes=row.num_classes,
            mask_path=row.mask_path, mask_file=table.root / row.mask if row.mask else None,
            label=row.label, box=row.box, points=row.points, where=row.where))
    if not truth.rows:
        raise GroundTruthError(
            f"{root}: none of its {table.n_rows} CSV rows carries a label (a validation or test root?); "
            "scoring needs a labelled root" + (f"; problems: {_listing(truth.left_out)}" if truth.left_out else ""))
    for _, cells in raw:
        truth.known_images.add((cells.get("task_id", ""), cells.get("image_path", "")))
        if cells.get("mask_path"):
            try:
                truth.known_masks.add(segmentation_relpath(cells["mask_path"]))
            except PredictionFormatError:
                pass  # a mask path leaving the root: the reader already left that row out
    return truth


# --- metrics -----------------------------------------------------------------------------------------------


def directed_hausdorff(a: np.ndarray, b: np.ndarray) -> float:
    """``max_{p∈a} min_{q∈b} |p - q|`` over the True pixels of two non-empty same-shape masks."""
    rows = np.flatnonzero((a | b).any(axis=1))
    cols = np.flatnonzero((a | b).any(axis=0))
    window = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))  # every pixel of both lies inside
    dist_to_b = ndimage.distance_transform_edt(~b[window])  # exact distance to the nearest pixel of b
    return float(dist_to_b[a[window]].max())


def hausdorff(pred: np.ndarray, truth: np.ndarray) -> float:
    """Full symmetric Hausdorff distance in pixels between two binary masks (see the module's definition)."""
    p, t = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    has_p, has_t = bool(p.any()), bool(t.any())
    if not has_p and not has_t:
        return 0.0
    if not has_p or not has_t:
        return float(math.hypot(*t.shape))
    return max(directed_hausdorff(p, t), directed_hausdorff(t, p))


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two binary masks, 1.0 when both are empty."""
    p, t = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    total = int(p.sum()) + int(t.sum())
    return 1.0 if total == 0 else 2.0 * int((p & t).sum()) / total


def segmentation_scores(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> tuple[list[float], list[float]]:
    """Per non-background class (1 .. num_classes-1): Dice and full Hausdorff distance."""
    dices, hds = [], []
    for c in range(1, num_classes):
        p, t = pred == c, truth == c
        dices.append(dice(p, t))
        hds.append(hausdorff(p, t))
    return dices, hds


def box_iou(pred: Sequence[float], truth: Sequence[float]) -> float:
    """IoU of two ``[x_min, y_min, x_max, y_max]`` boxes (continuous coordinates; 0 for an empty union)."""
    ix = max(0.0, min(pred[2], truth[2]) - max(pred[0], truth[0]))
    iy = max(0.0, min(pred[3], truth[3]) - max(pred[1], truth[1]))
    inter = ix * iy

    def area(b: Sequence[float]) -> float:
        return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])

    union = area(pred) + area(truth) - inter
    return inter / union if union > 0 else 0.0


def mean_radial_error(pred_xy: Sequence[float], truth_xy: Sequence[float]) -> float:
    """Mean Euclidean distance between corresponding points, both flat ``[x1, y1, x2, y2, ...]``."""
    p = np.asarray(pred_xy, dtype=np.float64).reshape(-1, 2)
    t = np.asarray(truth_xy, dtype=np.float64).reshape(-1, 2)
    return float(np.sqrt(((p - t) ** 2).sum(axis=1)).mean())


def classification_scores(y_true: Sequence[int], y_pred: Sequence[int], probs: np.ndarray,
                          num_classes: int) -> dict[str, float]:
    """Accuracy, AUC, F1 macro and weighted, MCC of one subtask (see the module's definitions)."""
    from sklearn.metrics import f1_score, matthews_corrcoef, roc_auc_score

    t, p = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64).reshape(len(t), num_classes)
    present = np.unique(t)
    if len(present) < 2:
        auc = float("nan")
    elif num_classes == 2:
        auc = float(roc_auc_score(t == 1, probs[:, 1]))
    else:
        auc = float(np.mean([roc_auc_score(t == c, probs[:, c]) for c in present]))
    return {
        "accuracy": float((t == p).mean()),
        "auc": auc,
        "f1_macro": float(f1_score(t, p, average="macro", zero_division=0)),
        "f1_weighted": float(f1_score(t, p, average="weighted", zero_division=0)),
        "mcc": float(matthews_corrcoef(t, p)),
    }


# --- scoring a folder --------------------------------------------------------------------------------------


def _label(row: TruthRow) -> str:
    return f"{row.kind} task {row.task_id}: {row.mask_path if row.kind == 'segmentation' else row.image_path}"


def _find_missing(rows: Sequence[TruthRow], preds: PredictionFolder) -> tuple[list[str], str]:
    """Every labelled row without a prediction, and a per-task count (``"T 3/20, U 20/20"``)."""
    missing = []
    per_task: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for row in rows:
        if row.kind == "segmentation":
            found = preds.mask_path(row.mask_path or "").is_file()
        else:
            found = (row.task_id, row.image_path) in preds.entries[row.kind]
        per_task[row.task_id][1] += 1
        if not found:
            missing.append(_label(row))
            per_task[row.task_id][0] += 1
    counts = ", ".join(f"{t} {m}/{n}" for t, (m, n) in sorted(per_task.items()) if m)
    return missing, counts


def _find_extra(truth: Truth, preds: PredictionFolder) -> list[str]:
    extra = [f"{JSON_FILES[kind]}: task {tid} {path}" for kind, entries in preds.entries.items()
             for tid, path in entries if (tid, path) not in truth.known_images]
    extra += [f"{rel}: not a mask_path of the root" for rel in preds.mask_files() if rel not in truth.known_masks]
    return extra


def _mean(values: Iterable[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else float("nan")


def score_folder(pred_dir: str | os.PathLike, root: str | os.PathLike, *, truth: Truth | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Score ``pred_dir`` against the labelled challenge root ``root``; returns the report.

    The report holds ``subtasks`` (per task_id: kind, n and its metrics), ``averages`` (the nine
    numbers; None where a kind has no subtask), ``extra_predictions`` (predictions for images the root
    does not name) and ``truth_left_out`` (rows of the root that cannot be scored: bad rows, rows
    without a label). Raises :class:`MissingPredictionsError` naming every labelled image without a
    usable prediction. ``truth`` replaces reading the root's CSVs (for callers that already hold it)."""
    truth = truth if truth is not None else read_truth(root)
    rows = truth.rows
    preds = read_predictions(pred_dir)
    missing, per_task = _find_missing(rows, preds)
    if missing:
        raise MissingPredictionsError(
            f"{pred_dir}: {len(missing)} of the {len(rows)} labelled images of {root} have no prediction "
            f"(missing/labelled per task: {per_task}): {_listing(missing)}", missing=missing)
    by_task: dict[str, list[TruthRow]] = defaultdict(list)
    for row in rows:
        by_task[row.task_id].append(row)
    invalid: list[str] = [f"duplicate prediction {d}" for d in preds.duplicates]
    subtasks: dict[str, dict[str, Any]] = {}
    n_seg = sum(r.kind == "segmentation" for r in rows)
    bar = tqdm(total=n_seg, desc="scoring masks", unit="mask", disable=not progress or n_seg == 0)
    try:
        for task_id in sorted(by_task):
            task_rows = by_task[task_id]
            kinds = {r.kind for r in task_rows}
            counts = {r.num_classes for r in task_rows}
            if len(kinds) > 1 or len(counts) > 1:
                raise GroundTruthError(f"{root}: task {task_id} mixes kinds {sorted(kinds)} or num_classes "
                                       f"{sorted(counts)} across its rows ({task_rows[0].where}, ...)")
            kind = task_rows[0].kind
            scorer = {"segmentation": _score_segmentation, "classification": _score_classification,
                      "detection": _score_detection, "keypoints": _score_keypoints}[kind]
            metrics = scorer(task_rows, preds, invalid, bar)
            subtasks[task_id] = {"kind": kind, "n": len(task_rows), "num_classes": task_rows[0].num_classes,
                                 **metrics}
    finally:
        bar.close()
    if invalid:
        raise MissingPredictionsError(
            f"{pred_dir}: {len(invalid)} prediction(s) cannot be scored: {_listing(invalid)}", invalid=invalid)
    averages: dict[str, float | None] = {}
    for key, kind, metric, _ in AVERAGES:
        values = [s[metric] for s in subtasks.values() if s["kind"] == kind]
        averages[key] = _mean(values) if values else None
    return {
        "pred_dir": str(pred_dir),
        "root": str(root),
        "subtasks": subtasks,
        "averages": averages,
        "extra_predictions": _find_extra(truth, preds),
        "truth_left_out": list(truth.left_out),
        "definitions": "sonofm.evaluation.fmuia_score (Dice and full HD per non-background class; HD 0 when "
                       "both empty, the image diagonal when one is; AUC n/a when the truth holds one class)",
    }


def _score_segmentation(rows: list[TruthRow], preds: PredictionFolder, invalid: list[str], bar: tqdm) -> dict:
    n = rows[0].num_classes
    image_dice, image_hd = [], []
    per_class_dice: list[list[float]] = [[] for _ in range(1, n)]
    per_class_hd: list[list[float]] = [[] for _ in range(1, n)]
    for row in rows:
        bar.update(1)
        truth = read_class_map(row.mask_file)  # type: ignore[arg-type]
        path = preds.mask_path(row.mask_path or "")
        try:
            pred = read_class_map(path)
        except (UserError, OSError) as exc:
            invalid.append(f"{_label(row)}: {path}: unreadable ({exc})")
            continue
        if pred.shape != truth.shape:
            invalid.append(f"{_label(row)}: {path} is {pred.shape[1]}x{pred.shape[0]}, the true mask "
                           f"{truth.shape[1]}x{truth.shape[0]} (W x H): write masks at the original size")
            continue
        if int(truth.max()) >= n:
            raise GroundTruthError(f"{row.mask_file}: class index {int(truth.max())} >= num_classes {n} "
                                   f"({row.where})")
        if int(pred.max()) >= n:
            invalid.append(f"{_label(row)}: {path} holds class index {int(pred.max())}, num_classes is {n} "
                           "(masks hold class indices 0..num_classes-1, not 0/255)")
            continue
        dices, hds = segmentation_scores(pred, truth, n)
        for c in range(n - 1):
            per_class_dice[c].append(dices[c])
            per_class_hd[c].append(hds[c])
        image_dice.append(float(np.mean(dices)) if dices else float("nan"))
        image_hd.append(float(np.mean(hds)) if hds else float("nan"))
    return {
        "dice": _mean(image_dice),
        "hd": _mean(image_hd),
        "per_class": {str(c + 1): {"dice": _mean(per_class_dice[c]), "hd": _mean(per_class_hd[c])}
                      for c in range(n - 1)},
    }


def _score_classification(rows: list[TruthRow], preds: PredictionFolder, invalid: list[str], bar: tqdm) -> dict:
    n = rows[0].num_classes
    y_true, y_pred, probs = [], [], []
    for row in rows:
        entry = preds.entries["classification"][(row.task_id, row.image_path)]
        c, p = entry["predicted_class"], entry["predicted_probs"]
        if len(p) != n or not 0 <= c < n:
            invalid.append(f"{_label(row)}: predicted_class {c} with {len(p)} probabilities; the task has "
                           f"{n} classes")
            continue
        y_true.append(row.label)
        y_pred.append(c)
        probs.append(p)
    if not y_true:
        return {k: float("nan") for k in ("accuracy", "auc", "f1_macro", "f1_weighted", "mcc")}
    return classification_scores(y_true, y_pred, np.asarray(probs), n)


def _score_detection(rows: list[TruthRow], preds: PredictionFolder, invalid: list[str], bar: tqdm) -> dict:
    ious = [box_iou(preds.entries["detection"][(r.task_id, r.image_path)]["bbox_pixels"], r.box)  # type: ignore[arg-type]
            for r in rows]
    return {"iou": _mean(ious)}


def _score_keypoints(rows: list[TruthRow], preds: PredictionFolder, invalid: list[str], bar: tqdm) -> dict:
    errors = []
    for row in rows:
        xy = preds.entries["keypoints"][(row.task_id, row.image_path)]["predicted_points_pixels"]
        truth = [v for point in row.points or () for v in point]
        if len(xy) != len(truth):
            invalid.append(f"{_label(row)}: {len(xy) // 2} predicted points, the task has {len(truth) // 2}")
            continue
        errors.append(mean_radial_error(xy, truth))
    return {"mre": _mean(errors)}


# --- report ------------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.4f}"


#: Per kind, the metrics its table rows show.
_COLUMNS: dict[str, tuple[str, ...]] = {
    "segmentation": ("dice", "hd"),
    "classification": ("accuracy", "auc", "f1_macro", "f1_weighted", "mcc"),
    "detection": ("iou",),
    "keypoints": ("mre",),
}


def format_report(report: dict[str, Any]) -> str:
    """The per-subtask table (grouped by kind), the nine averages, and any extra predictions."""
    lines: list[str] = []
    subtasks = report["subtasks"]
    width = max([len("task_id"), *map(len, subtasks)])
    for kind in KINDS:
        tasks = [t for t in sorted(subtasks) if subtasks[t]["kind"] == kind]
        if not tasks:
            continue
        cols = _COLUMNS[kind]
        lines.append(f"{kind} ({len(tasks)} subtask{'s' if len(tasks) != 1 else ''})")
        lines.append(f"  {'task_id':<{width}}  {'n':>6}  " + "  ".join(f"{c:>11}" for c in cols))
        for t in tasks:
            s = subtasks[t]
            lines.append(f"  {t:<{width}}  {s['n']:>6}  " + "  ".join(f"{_fmt(s[c]):>11}" for c in cols))
    lines.append("averages over subtasks")
    for key, _, _, label in AVERAGES:
        lines.append(f"  {label:<16} {_fmt(report['averages'][key]):>10}")
    left_out = report.get("truth_left_out") or []
    if left_out:
        lines.append(f"{len(left_out)} row(s) of the root left out (not scored): {_listing(left_out)}")
    extra = report.get("extra_predictions") or []
    if extra:
        lines.append(f"{len(extra)} prediction(s) for images the root does not list (ignored): {_listing(extra)}")
    return "\n".join(lines)


def score_to_files(pred_dir: str | os.PathLike, root: str | os.PathLike, out: str | os.PathLike | None = None,
                   progress: bool = True) -> tuple[dict[str, Any], Path]:
    """Score, print the table, write ``scores.json`` (default: inside ``pred_dir``); returns both."""
    report = score_folder(pred_dir, root, progress=progress)
    print(format_report(report))
    path = Path(out) if out is not None else Path(pred_dir) / "scores.json"
    write_json(path, to_jsonable(report))
    print(f"wrote {path}")
    return report, path


__all__ = [
    "AVERAGES",
    "KINDS",
    "GroundTruthError",
    "MissingPredictionsError",
    "Truth",
    "TruthRow",
    "box_iou",
    "classification_scores",
    "dice",
    "directed_hausdorff",
    "format_report",
    "hausdorff",
    "mean_radial_error",
    "read_truth",
    "score_folder",
    "score_to_files",
    "segmentation_scores",
]
