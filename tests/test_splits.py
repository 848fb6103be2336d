"""Group splits: deterministic, proportional, stable when data is added; folds balanced and disjoint."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from sonofm.datasets.build.splits import (
    assign_fold,
    assign_split,
    group_kfold,
    normalise_fractions,
    unit_hash,
)

FR = {"train": 0.8, "val": 0.1, "test": 0.1}


def test_split_is_deterministic_across_processes():
    """Python's hash() is salted per process; ours must not be."""
    groups = [f"patient{i}" for i in range(50)]
    here = [assign_split(g, FR, "s") for g in groups]
    code = (
        "from sonofm.datasets.build.splits import assign_split;"
        f"print(','.join(assign_split(f'patient{{i}}', {FR!r}, 's') for i in range(50)))"
    )
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert there.stdout.strip().split(",") == here


def test_split_proportions_and_salt():
    groups = [f"g{i}" for i in range(20000)]
    c = Counter(assign_split(g, FR) for g in groups)
    assert abs(c["train"] / 20000 - 0.8) < 0.015
    assert abs(c["val"] / 20000 - 0.1) < 0.01
    assert abs(c["test"] / 20000 - 0.1) < 0.01
    other = [assign_split(g, FR, salt="other") for g in groups[:200]]
    assert other != [assign_split(g, FR) for g in groups[:200]]


def test_adding_groups_never_moves_old_ones():
    old = [f"rec{i}" for i in range(300)]
    before = {g: assign_split(g, FR) for g in old}
    after_groups = [f"new{i}" for i in range(500)] + old[::-1]  # more data, any order
    after = {g: assign_split(g, FR) for g in after_groups}
    assert all(after[g] == before[g] for g in old)


def test_fraction_edge_cases():
    assert {assign_split(f"g{i}", {"train": 1.0, "val": 0.0}) for i in range(200)} == {"train"}
    assert normalise_fractions({"a": 2, "b": 2}) == {"a": 0.5, "b": 0.5}
    with pytest.raises(ValueError, match=">= 0"):
        assign_split("g", {"train": 1.2, "val": -0.2})
    with pytest.raises(ValueError, match="positive sum"):
        assign_split("g", {"train": 0.0})
    assert 0.0 <= unit_hash("x") < 1.0


def test_fold_stable_and_independent_of_split():
    groups = [f"g{i}" for i in range(5000)]
    folds = [assign_fold(g, 5) for g in groups]
    assert folds == [assign_fold(g, 5) for g in groups]
    assert set(folds) == set(range(5))
    train = [f for g, f in zip(groups, folds) if assign_split(g, FR) == "train"]
    counts = Counter(train)
    assert min(counts.values()) > 0.8 * len(train) / 5  # folds balanced inside the train split


def test_group_kfold_disjoint_balanced():
    # 15 recordings of uneven length, as in CCA.
    rng = np.random.default_rng(0)
    groups = np.repeat([f"rec{i}" for i in range(15)], rng.integers(20, 50, size=15))
    folds = group_kfold(groups, k=5)
    assert len(folds) == 5
    seen = np.zeros(len(groups), dtype=int)
    for tr, te in folds:
        assert not set(groups[tr]) & set(groups[te])
        assert len(set(groups[te])) == 3
        seen[te] += 1
    assert (seen == 1).all()
    sizes = [len(te) for _, te in folds]
    assert max(sizes) - min(sizes) <= 50
    again = group_kfold(list(groups), k=5)
    assert all((a[1] == b[1]).all() for a, b in zip(folds, again))
    with pytest.raises(ValueError, match="cannot fill"):
        group_kfold(["a", "b"], k=3)
