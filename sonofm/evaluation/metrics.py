"""Segmentation and classification metrics on numpy arrays.

Written out by hand (no torchmetrics/medpy) so that each convention is visible and tested on tiny
arrays. Conventions for empty masks, chosen so that a per-image mean stays finite and meaningful:

- Dice / IoU: prediction and target both empty -> 1.0 (nothing to find, nothing found); exactly one
  empty -> 0.0.
- HD95: both empty -> 0.0; exactly one empty -> the image diagonal (in pixels, or in mm when a
  spacing is given), i.e. the largest distance possible inside the image: a finite worst case
  instead of ``inf``, so that means over images remain defined.
- HD95 is the symmetric 95th-percentile Hausdorff distance: the maximum of the two directed 95th
  percentiles of the distances from each boundary pixel of one mask to the nearest boundary pixel
  of the other (boundary = foreground pixels with a 4-connected background neighbour; the image
  border counts as background). Percentiles use numpy's linear interpolation.

Classification: ``proba`` is ``(N, C)`` class probabilities (or scores); AUROC is one-vs-rest
macro over the classes present in ``y_true`` with both positives and negatives (classes absent
from a fold are skipped, NaN when fewer than two classes remain).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "dice_score",
    "iou_score",
    "hd95",
    "segmentation_metrics",
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "confusion_matrix",
    "binary_auroc",
    "auroc_ovr",
    "classification_metrics",
]


def _as_bool(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D mask, got shape {a.shape}")
    return a.astype(bool)


def _check_same(pred: np.ndarray, target: np.ndarray) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from target shape {target.shape}")


def dice_score(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice = 2|P∩T| / (|P|+|T|) of two binary masks; 1.0 when both are empty."""
    p, t = _as_bool(pred, "pred"), _as_bool(target, "target")
    _check_same(p, t)
    denom = p.sum() + t.sum()
    if denom == 0:
        return 1.0
    return float(2.0 * np.logical_and(p, t).sum() / denom)


def iou_score(pred: np.ndarray, target: np.ndarray) -> float:
    """IoU = |P∩T| / |P∪T| of two binary masks; 1.0 when both are empty."""
    p, t = _as_bool(pred, "pred"), _as_bool(target, "target")
    _check_same(p, t)
    union = np.logical_or(p, t).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(p, t).sum() / union)


_CROSS = ndimage.generate_binary_structure(2, 1)


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Foreground pixels with a 4-connected background neighbour (outside the image = background)."""
    eroded = ndimage.binary_erosion(mask, structure=_CROSS, border_value=0)
    return mask & ~eroded


def _directed_distances(src: np.ndarray, dst: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Distance from every boundary pixel of ``src`` to the nearest boundary pixel of ``dst``."""
    dist_to_dst = ndimage.distance_transform_edt(~_boundary(dst), sampling=spacing)
    return dist_to_dst[_boundary(src)]


def hd95(pred: np.ndarray, target: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """Symmetric 95th-percentile Hausdorff distance between two binary masks.

    ``spacing`` is ``(row_mm, col_mm)``; without it the result is in pixels. See the module
    docstring for the empty-mask conventions.
    """
    p, t = _as_bool(pred, "pred"), _as_bool(target, "target")
    _check_same(p, t)
    sp = (1.0, 1.0) if spacing is None else tuple(float(s) for s in spacing)
    if len(sp) != 2 or min(sp) <= 0:
        raise ValueError(f"spacing must be two positive numbers (row_mm, col_mm), got {spacing}")
    if not p.any() and not t.any():
        return 0.0
    if not p.any() or not t.any():
        return float(math.hypot(p.shape[0] * sp[0], p.shape[1] * sp[1]))
    d_pt = _directed_distances(p, t, sp)
    d_tp = _directed_distances(t, p, sp)
    return float(max(np.percentile(d_pt, 95), np.percentile(d_tp, 95)))


def segmentation_metrics(
    pred: np.ndarray,
    target: np.ndarray,
    num_classes: int,
    spacing: Sequence[float] | None = None,
) -> dict[str, float]:
    """Dice, IoU and HD95 per foreground class (1..num_classes-1) of label maps, and their means.

    Keys: ``dice_1``, ``iou_1``, ``hd95_1`` ... plus ``dice``, ``iou``, ``hd95`` (means over the
    foreground classes). HD95 is in mm when ``spacing`` is given, in pixels otherwise; the key
    ``hd95_px`` always holds the pixel value of the mean.
    """
    pred = np.asarray(pred)
    target = np.asarray(target)
    _check_same(pred, target)
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (background + at least one class), got {num_classes}")
    out: dict[str, float] = {}
    dices, ious, hds, hds_px = [], [], [], []
    for c in range(1, num_classes):
        p, t = pred == c, target == c
        d, i = dice_score(p, t), iou_score(p, t)
        h_px = hd95(p, t)
        h = hd95(p, t, spacing) if spacing is not None else h_px
        out[f"dice_{c}"], out[f"iou_{c}"], out[f"hd95_{c}"] = d, i, h
        dices.append(d)
        ious.append(i)
        hds.append(h)
        hds_px.append(h_px)
    out["dice"] = float(np.mean(dices))
    out["iou"] = float(np.mean(ious))
    out["hd95"] = float(np.mean(hds))
    out["hd95_px"] = float(np.mean(hds_px))
    return out


# --------------------------------------------------------------------------- classification


def _labels(y: np.ndarray, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D class ids, got shape {y.shape}")
    return y.astype(np.int64)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``(C, C)`` counts, rows = true class, columns = predicted class."""
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.shape[0]} entries, y_pred {p.shape[0]}")
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (t, p), 1)
    return cm


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    return float((t == p).mean()) if t.size else float("nan")


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int | None = None) -> float:
    """Mean per-class recall over the classes present in ``y_true``."""
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    n = num_classes or int(max(t.max(initial=0), p.max(initial=0)) + 1)
    cm = confusion_matrix(t, p, n)
    support = cm.sum(1)
    present = support > 0
    return float(np.mean(np.diag(cm)[present] / support[present])) if present.any() else float("nan")


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int | None = None) -> float:
    """Unweighted mean of per-class F1 over classes present in ``y_true`` or ``y_pred``.

    A class with no true and no predicted sample is left out (its F1 is undefined); a class that
    is predicted but never true, or true but never predicted, scores 0.
    """
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    n = num_classes or int(max(t.max(initial=0), p.max(initial=0)) + 1)
    cm = confusion_matrix(t, p, n)
    tp = np.diag(cm).astype(float)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    used = (tp + fp + fn) > 0
    if not used.any():
        return float("nan")
    f1 = 2 * tp[used] / (2 * tp[used] + fp[used] + fn[used])
    return float(f1.mean())


def binary_auroc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve = P(score_pos > score_neg) + 0.5 P(tie) (Mann-Whitney U)."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(score, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(s: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(len(s), dtype=np.float64)
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def auroc_ovr(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Macro one-vs-rest AUROC over classes with both positives and negatives in ``y_true``."""
    t = _labels(y_true, "y_true")
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape[0] != t.shape[0]:
        raise ValueError(f"proba must be (N, C) with N={t.shape[0]}, got {proba.shape}")
    if proba.shape[1] == 2:
        return binary_auroc(t == 1, proba[:, 1])
    aucs = [binary_auroc(t == c, proba[:, c]) for c in range(proba.shape[1])]
    aucs = [a for a in aucs if not math.isnan(a)]
    return float(np.mean(aucs)) if len(aucs) >= 2 else float("nan")


def classification_metrics(y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro F1 (argmax of ``proba``) and one-vs-rest AUROC."""
    proba = np.asarray(proba, dtype=np.float64)
    t = _labels(y_true, "y_true")
    n = proba.shape[1]
    pred = proba.argmax(1)
    return {
        "accuracy": accuracy(t, pred),
        "balanced_accuracy": balanced_accuracy(t, pred, n),
        "macro_f1": macro_f1(t, pred, n),
        "auroc": auroc_ovr(t, proba),
    }
