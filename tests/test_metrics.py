"""Metrics against values worked out by hand on tiny arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from sonofm.evaluation import metrics as M


def test_dice_iou_hand_values():
    pred = np.array([[1, 1, 0], [0, 0, 0]])
    target = np.array([[1, 0, 0], [1, 0, 0]])
    # |P∩T| = 1, |P| = |T| = 2, |P∪T| = 3
    assert M.dice_score(pred, target) == pytest.approx(0.5)
    assert M.iou_score(pred, target) == pytest.approx(1 / 3)
    empty = np.zeros((2, 3))
    assert M.dice_score(empty, empty) == 1.0 and M.iou_score(empty, empty) == 1.0
    assert M.dice_score(pred, empty) == 0.0 and M.iou_score(empty, target) == 0.0
    with pytest.raises(ValueError, match="differs"):
        M.dice_score(pred, np.zeros((3, 3)))


def test_hd95_line_interpolates_percentile_and_uses_spacing():
    pred = np.zeros((3, 5), bool)
    pred[1, 0:3] = True  # a 1-pixel thick line: every pixel is boundary
    target = np.zeros((3, 5), bool)
    target[1, 0] = True
    # pred -> target distances [0, 1, 2]: 95th percentile = 1 + 0.9 * (2 - 1) = 1.9; target -> pred: [0]
    assert M.hd95(pred, target) == pytest.approx(1.9)
    assert M.hd95(target, pred) == pytest.approx(1.9)  # symmetric
    # columns 2 mm apart: distances [0, 2, 4] -> 3.8 mm
    assert M.hd95(pred, target, spacing=(1.0, 2.0)) == pytest.approx(3.8)


def test_hd95_shifted_blocks_and_identity():
    a = np.zeros((5, 5), bool)
    a[1:4, 0:3] = True
    b = np.zeros((5, 5), bool)
    b[1:4, 1:4] = True
    # boundary pixels of a lie at distance 0 or 1 from b's boundary (4 of each): 95th pct = 1
    assert M.hd95(a, b) == pytest.approx(1.0)
    assert M.hd95(a, a) == 0.0
    # far apart: single pixels 4 columns apart, rows 3 mm apart -> 4 px, in mm with (3, 0.5): 2.0
    c = np.zeros((4, 6), bool)
    c[0, 0] = True
    d = np.zeros((4, 6), bool)
    d[0, 4] = True
    assert M.hd95(c, d) == pytest.approx(4.0)
    assert M.hd95(c, d, spacing=(3.0, 0.5)) == pytest.approx(2.0)


def test_hd95_empty_conventions():
    empty = np.zeros((3, 4), bool)
    one = empty.copy()
    one[1, 1] = True
    assert M.hd95(empty, empty) == 0.0
    assert M.hd95(one, empty) == pytest.approx(5.0)  # diagonal of a 3 x 4 image
    assert M.hd95(empty, one, spacing=(2.0, 1.0)) == pytest.approx(math.hypot(6.0, 4.0))


def test_segmentation_metrics_multiclass():
    target = np.array([[0, 1, 1], [0, 2, 2], [0, 0, 0]])
    pred = np.array([[0, 1, 0], [0, 2, 2], [0, 0, 2]])
    m = M.segmentation_metrics(pred, target, num_classes=3)
    assert m["dice_1"] == pytest.approx(2 * 1 / 3)  # |P|=1, |T|=2, inter 1
    assert m["dice_2"] == pytest.approx(2 * 2 / 5)
    assert m["iou_2"] == pytest.approx(2 / 3)
    assert m["dice"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert m["hd95_px"] == m["hd95"]


def test_classification_hand_values():
    y = np.array([0, 0, 0, 1, 1, 2])
    p = np.array([0, 0, 1, 1, 0, 2])
    assert M.accuracy(y, p) == pytest.approx(4 / 6)
    # recalls 2/3, 1/2, 1
    assert M.balanced_accuracy(y, p) == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    # F1: class 0 tp2 fp1 fn1 -> 2/3; class 1 tp1 fp1 fn1 -> 1/2; class 2 -> 1
    assert M.macro_f1(y, p) == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert M.balanced_accuracy(y, p) == pytest.approx(balanced_accuracy_score(y, p))
    assert M.macro_f1(y, p) == pytest.approx(f1_score(y, p, average="macro"))
    cm = M.confusion_matrix(y, p, 3)
    assert cm.tolist() == [[2, 1, 0], [1, 1, 0], [0, 0, 1]]


def test_auroc_hand_values():
    # positives 0.35, 0.8 vs negatives 0.1, 0.4: 3 of 4 pairs ordered correctly
    assert M.binary_auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    # one tie counts half: (0.5 + 1 + 1 + 1) / 4
    assert M.binary_auroc(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.2, 0.9])) == pytest.approx(0.875)
    assert math.isnan(M.binary_auroc(np.array([1, 1]), np.array([0.2, 0.3])))


def test_auroc_ovr_hand_and_sklearn():
    y = np.array([0, 1, 2, 0, 1, 2])
    proba = np.array(
        [
            [0.6, 0.3, 0.1],
            [0.2, 0.5, 0.3],
            [0.1, 0.2, 0.7],
            [0.3, 0.4, 0.3],
            [0.5, 0.1, 0.4],
            [0.2, 0.3, 0.5],
        ]
    )
    # class 0: pos scores {0.6, 0.3} vs neg {0.2, 0.1, 0.5, 0.2}: 0.6 beats 4, 0.3 beats 3 -> 7/8
    # class 1: pos {0.5, 0.1} vs neg {0.3, 0.2, 0.4, 0.3}: 0.5 beats 4, 0.1 beats 0 -> 4/8
    # class 2: pos {0.7, 0.5} vs neg {0.1, 0.3, 0.3, 0.4}: both beat all -> 8/8
    expected = (7 / 8 + 4 / 8 + 8 / 8) / 3
    assert M.auroc_ovr(y, proba) == pytest.approx(expected)
    assert M.auroc_ovr(y, proba) == pytest.approx(roc_auc_score(y, proba, multi_class="ovr"))
    out = M.classification_metrics(y, proba)
    assert set(out) == {"accuracy", "balanced_accuracy", "macro_f1", "auroc"}
    assert out["accuracy"] == pytest.approx(4 / 6)  # argmax: 0,1,2,1,0,2
