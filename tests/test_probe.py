"""Probes: group-aware folds, kNN and linear probe on known data, and the full run on real BUSI images."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sonofm.datasets.build.splits import stratified_group_kfold
from sonofm.evaluation.probe import cross_validate, knn_probe, linear_probe, run_probe


def test_group_kfold_never_splits_a_group():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 30, size=200).astype(str)
    labels = rng.integers(0, 3, size=200)
    splits = stratified_group_kfold(labels, groups, folds=5, seed=1)
    assert len(splits) == 5
    seen = np.concatenate([te for _, te in splits])
    assert sorted(seen.tolist()) == list(range(200))  # every sample tested exactly once
    for tr, te in splits:
        assert not set(groups[tr]) & set(groups[te])
    with pytest.raises(ValueError, match="groups"):
        stratified_group_kfold(labels[:4], ["a", "a", "b", "b"], folds=3)


def test_knn_hand_values():
    x_train = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
    y_train = np.array([0, 1, 1])
    x_test = np.array([[1.0, 0.0]])
    # cosine sims: 1.0, 0.0, 0.995; k=2 -> neighbours 0 (class 0) and 2 (class 1)
    p = knn_probe(x_train, y_train, x_test, 2, k=2, temperature=0.5)
    s2 = 1.0 / np.sqrt(1.01)
    w0, w1 = np.exp(1.0 / 0.5), np.exp(s2 / 0.5)
    assert p[0, 0] == pytest.approx(w0 / (w0 + w1))
    assert p[0, 1] == pytest.approx(w1 / (w0 + w1))
    # k larger than the training set falls back to all of it
    assert knn_probe(x_train, y_train, x_test, 2, k=50).shape == (1, 2)


def test_linear_probe_separable_and_cv_report():
    rng = np.random.default_rng(0)
    n = 90
    y = np.repeat(np.arange(3), n // 3)
    x = rng.normal(size=(n, 8)) + 4.0 * np.eye(3, 8)[y]
    groups = np.arange(n) // 2  # pairs of samples share a group
    tr, te = np.arange(n)[groups % 3 != 0], np.arange(n)[groups % 3 == 0]
    proba, info = linear_probe(x[tr], y[tr], x[te], 3, groups[tr])
    assert (proba.argmax(1) == y[te]).mean() > 0.9 and info["C"] in (1e-3, 1e-2, 1e-1, 1.0, 10.0)
    rep = cross_validate(x, y, groups, folds=3, knn_k=5)
    for method in ("linear", "knn"):
        s = rep["methods"][method]["summary"]
        assert s["balanced_accuracy"]["mean"] > 0.9 and s["auroc"]["mean"] > 0.95
        assert np.asarray(rep["methods"][method]["confusion_matrix"]).sum() == n
    # label noise: random labels cannot be predicted (the probe is not leaking test labels)
    y_rand = rng.permutation(y)
    rep = cross_validate(rng.normal(size=(n, 8)), y_rand, groups, folds=3, methods=["linear"])
    assert rep["methods"]["linear"]["summary"]["balanced_accuracy"]["mean"] < 0.6


@pytest.mark.realdata
def test_probe_on_busi(shared_data, tmp_path):
    from sonofm.datasets.sources.adapters import get_adapter
    from sonofm.finetune.data import iterate_batches, load_samples

    adapter = get_adapter("busi", shared_data / "busi")
    items = adapter.items()
    chosen = []
    for cls in ("benign", "malignant", "normal"):
        chosen += [it for it in items if it.meta["label"] == cls][:20]
    samples = load_samples(r for it in chosen for r in adapter.load(it))
    assert len(samples) == 60

    def batches():
        return iterate_batches(samples, size=64, batch_size=16)

    rep = run_probe("random:convnextv2_atto", batches(), tmp_path / "probe", folds=5, knn_k=10, print_table=False)
    assert rep["n_samples"] == 60 and rep["classes"] == ["benign", "malignant", "normal"]
    test_groups = [set(f["test_groups"]) for f in rep["folds"]]
    assert sum(len(g) for g in test_groups) == len({s.group for s in samples})  # each group tested once
    for i in range(5):
        for j in range(i + 1, 5):
            assert not test_groups[i] & test_groups[j]
    for method in ("linear", "knn"):
        s = rep["methods"][method]["summary"]
        assert 0.0 <= s["balanced_accuracy"]["mean"] <= 1.0 and 0.0 <= s["auroc"]["mean"] <= 1.0
        assert len(rep["methods"][method]["per_fold"]) == 5
        assert (tmp_path / "probe" / f"confusion_{method}.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert saved["methods"]["linear"]["summary"]["auroc"]["mean"] == pytest.approx(
        rep["methods"]["linear"]["summary"]["auroc"]["mean"]
    )
    # second run: features come from the cache (no batches needed), identical figures
    rep2 = run_probe("random:convnextv2_atto", [], tmp_path / "probe", folds=5, knn_k=10, print_table=False)
    assert rep2["methods"]["knn"]["summary"] == rep["methods"]["knn"]["summary"]
