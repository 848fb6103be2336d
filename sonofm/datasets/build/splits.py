"""Splits and cross-validation folds by group, decided by a stable hash of the group id.

A sample's split depends only on ``(salt, group id)``, never on what else is in the data set, so
adding recordings or whole sources later never moves an old sample to another split, and every
frame of one patient/recording/video lands in the same split. ``hashlib`` is used (not Python's
``hash``, which is salted per process) so the assignment is the same on every machine and run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

DEFAULT_FRACTIONS: dict[str, float] = {"train": 0.8, "val": 0.1, "test": 0.1}


def unit_hash(text: str) -> float:
    """Map ``text`` to a float in [0, 1) with SHA-256 (uniform, stable across runs and machines)."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def normalise_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    """Check split fractions (non-negative, positive sum) and scale them to sum to 1."""
    if not fractions:
        raise ValueError("split fractions are empty; give e.g. {'train': 0.8, 'val': 0.1, 'test': 0.1}")
    bad = {k: v for k, v in fractions.items() if not (float(v) >= 0.0)}
    if bad:
        raise ValueError(f"split fractions must be >= 0, got {bad}")
    total = float(sum(fractions.values()))
    if total <= 0:
        raise ValueError(f"split fractions must have a positive sum, got {dict(fractions)}")
    return {str(k): float(v) / total for k, v in fractions.items()}


def assign_split(group_id: str, fractions: Mapping[str, float] | None = None, salt: str = "sonofm") -> str:
    """Split name of ``group_id``: its hash in [0, 1) cut by the cumulative ``fractions`` (dict order)."""
    fr = normalise_fractions(fractions or DEFAULT_FRACTIONS)
    u = unit_hash(f"{salt}\x00split\x00{group_id}")
    cum = 0.0
    names = list(fr)
    for name in names:
        cum += fr[name]
        if u < cum:
            return name
    # Rounding can leave cum a hair below 1: the last split with a positive fraction takes the rest.
    return next(n for n in reversed(names) if fr[n] > 0)


def assign_fold(group_id: str, k: int, salt: str = "sonofm") -> int:
    """Stable fold in ``[0, k)`` of ``group_id``; hashed apart from the split so folds are balanced
    inside every split."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return min(int(unit_hash(f"{salt}\x00fold\x00{group_id}") * k), k - 1)


def group_kfold(
    groups: Sequence[str] | np.ndarray, k: int = 5, salt: str = "sonofm"
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` (train_idx, test_idx) pairs with no group on both sides and balanced sample counts.

    Unlike :func:`assign_fold` (stable under added data, but lumpy with few groups), this is for
    cross-validating a fixed set: groups are placed largest first into the fold with the fewest
    samples (ties broken by the salted hash), so 15 recordings in 5 folds gives 3 per fold.
    """
    g = np.asarray([str(x) for x in groups])
    uniq, inverse, sizes = np.unique(g, return_inverse=True, return_counts=True)
    if k < 2:
        raise ValueError(f"group_kfold needs k >= 2, got {k}")
    if len(uniq) < k:
        raise ValueError(f"group_kfold: {len(uniq)} groups cannot fill {k} folds; use k <= {len(uniq)}")
    order = sorted(range(len(uniq)), key=lambda i: (-int(sizes[i]), unit_hash(f"{salt}\x00kfold\x00{uniq[i]}")))
    fold_of_group = np.empty(len(uniq), dtype=np.int64)
    load = np.zeros(k, dtype=np.int64)
    n_groups = np.zeros(k, dtype=np.int64)
    for i in order:
        f = int(np.lexsort((n_groups, load))[0])  # fewest samples, then fewest groups, then lowest index
        fold_of_group[i] = f
        load[f] += sizes[i]
        n_groups[f] += 1
    fold = fold_of_group[inverse]
    idx = np.arange(len(g))
    return [(idx[fold != f], idx[fold == f]) for f in range(k)]


def stratified_group_kfold(
    labels: np.ndarray, groups: Sequence[Any], folds: int, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``folds`` (train_idx, test_idx) pairs with no group on both sides, stratified by ``labels`` when every
    class spans ``folds`` groups and shuffled by ``seed`` (sklearn); for probes, where class balance per
    fold matters more than the equal fold sizes :func:`group_kfold` gives."""
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold  # heavy: only when cross-validating

    labels = np.asarray(labels)
    groups = np.asarray([str(g) for g in groups])
    n_groups = len(set(groups))
    if folds < 2 or n_groups < folds:
        raise ValueError(f"need at least {max(folds, 2)} groups for {folds}-fold CV, got {n_groups} groups")
    groups_per_class = [len(set(groups[labels == c])) for c in np.unique(labels)]
    if min(groups_per_class) >= folds:
        splitter: Any = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    else:
        splitter = GroupKFold(n_splits=folds)
    splits = [(np.asarray(tr), np.asarray(te)) for tr, te in splitter.split(np.zeros(len(labels)), labels, groups)]
    for i, (tr, te) in enumerate(splits):
        shared = set(groups[tr]) & set(groups[te])
        if shared:  # guard: a bug here would inflate every reported number
            raise AssertionError(f"fold {i}: groups on both sides: {sorted(shared)[:5]}")
    return splits
