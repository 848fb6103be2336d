"""Linear probe and kNN on frozen features with group-aware k-fold cross-validation.

- Folds: :class:`sklearn.model_selection.StratifiedGroupKFold` when every class has at least
  ``folds`` groups, else :class:`GroupKFold`; groups (patient, recording, image) never cross folds,
  and this is asserted for every fold.
- Linear probe: features standardised on the training fold, L-BFGS logistic regression
  (``class_weight="balanced"``, since ultrasound label sets are imbalanced), ``C`` chosen from a
  sweep by balanced accuracy on an inner group-aware validation split of the training fold, then
  refit on the whole training fold.
- kNN: cosine similarity to the training fold, the ``k`` nearest vote with weight
  ``exp(sim / T)`` (DINO-style); class probabilities are the normalised votes.
- Report: per-fold metrics, mean ± std over folds, the out-of-fold confusion matrix, as JSON and a
  printed table.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from sonofm.atomic_io import write_json
from sonofm.datasets.build.splits import stratified_group_kfold
from sonofm.errors import UserError
from sonofm.evaluation.metrics import balanced_accuracy, classification_metrics, confusion_matrix

__all__ = [
    "TooFewGroupsError",
    "linear_probe",
    "knn_probe",
    "cross_validate",
    "format_table",
    "run_probe",
]



class TooFewGroupsError(UserError, ValueError):
    """Fewer groups (patients, recordings) than folds: group-aware cross-validation cannot split them."""


def too_few_groups(n_groups: int, folds: int, where: str) -> TooFewGroupsError:
    """The error, with what to change: fewer folds, or a split that holds more groups."""
    return TooFewGroupsError(
        f"{where}: {n_groups} group(s) cannot fill {folds} folds (no group may sit on both sides of a fold); "
        f"pass folds={max(2, n_groups)} or fewer, or probe a split with more groups (e.g. data.split=train)"
        + (" — with fewer than 2 groups there is nothing to cross-validate" if n_groups < 2 else "")
    )


DEFAULT_CS: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc")


def _inner_split(y: np.ndarray, groups: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
    n_groups = len(set(groups))
    if n_groups < 3:
        return None
    k = min(4, n_groups)
    try:
        return stratified_group_kfold(y, groups, k, seed)[0]
    except ValueError:
        return None


def _fit_logreg(x: np.ndarray, y: np.ndarray, c: float, seed: int) -> LogisticRegression:
    # one BLAS thread: probe problems are small, and on shared CPUs thread start-up and
    # oversubscription made each fit ~10x slower than single-threaded
    clf = LogisticRegression(C=c, solver="lbfgs", max_iter=2000, class_weight="balanced", random_state=seed)
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y)
    return clf


def _proba_all(clf: LogisticRegression, x: np.ndarray, num_classes: int) -> np.ndarray:
    """Probabilities over all ``num_classes`` even if the training fold lacked some class."""
    out = np.zeros((len(x), num_classes))
    out[:, clf.classes_] = clf.predict_proba(x)
    return out


def linear_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    num_classes: int,
    groups_train: Sequence[Any] | None = None,
    cs: Sequence[float] = DEFAULT_CS,
    seed: int = 0,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Test-set class probabilities ``[N, C]`` and ``{"C": chosen, "val_scores": {...}}``."""
    scaler = StandardScaler().fit(x_train)
    xt, xs = scaler.transform(x_train), scaler.transform(x_test)
    g = np.asarray([str(v) for v in groups_train]) if groups_train is not None else np.arange(len(xt)).astype(str)
    inner = _inner_split(y_train, g, seed) if len(cs) > 1 else None
    scores: dict[str, float] = {}
    best_c = float(cs[len(cs) // 2])
    if inner is not None:
        tr, va = inner
        inner_scaler = StandardScaler().fit(x_train[tr])
        a, b = inner_scaler.transform(x_train[tr]), inner_scaler.transform(x_train[va])
        for c in cs:
            clf = _fit_logreg(a, y_train[tr], c, seed)
            scores[str(c)] = balanced_accuracy(y_train[va], clf.predict(b), num_classes)
        best_c = float(max(cs, key=lambda c: (scores[str(c)], -c)))  # ties: the stronger regulariser
    clf = _fit_logreg(xt, y_train, best_c, seed)
    return _proba_all(clf, xs, num_classes), {"C": best_c, "val_scores": scores}


def knn_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
) -> np.ndarray:
    """Temperature-weighted cosine kNN: class probabilities ``[N, C]``."""
    def norm(a: np.ndarray) -> np.ndarray:
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    sims = norm(x_test.astype(np.float64)) @ norm(x_train.astype(np.float64)).T
    k = min(k, len(x_train))
    nn_idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    nn_sim = np.take_along_axis(sims, nn_idx, axis=1)
    weights = np.exp((nn_sim - nn_sim.max(1, keepdims=True)) / temperature)  # shift: no overflow
    votes = np.zeros((len(x_test), num_classes))
    np.add.at(votes, (np.arange(len(x_test))[:, None].repeat(k, 1), y_train[nn_idx]), weights)
    return votes / votes.sum(1, keepdims=True)


def _summary(per_fold: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    out = {}
    for m in METRICS:
        vals = np.array([f[m] for f in per_fold], dtype=float)
        vals = vals[~np.isnan(vals)]
        out[m] = {
            "mean": float(vals.mean()) if vals.size else float("nan"),
            "std": float(vals.std(ddof=0)) if vals.size else float("nan"),
        }
    return out


def cross_validate(
    features: np.ndarray,
    labels: np.ndarray,
    groups: Sequence[Any],
    num_classes: int | None = None,
    folds: int = 5,
    methods: Sequence[str] = ("linear", "knn"),
    knn_k: int = 20,
    knn_temperature: float = 0.07,
    cs: Sequence[float] = DEFAULT_CS,
    seed: int = 0,
    splits: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
) -> dict[str, Any]:
    """Group-aware k-fold evaluation of each probe ``method``; see the module docstring.

    ``splits``: ready-made ``(train_idx, test_idx)`` folds (e.g. folds over one split's groups, each
    trained on everything else) instead of ``folds`` stratified group folds; no group may sit on both
    sides of one. The confusion matrix counts the samples some fold predicted.
    """
    x = np.asarray(features, dtype=np.float32)
    y = np.asarray(labels, dtype=np.int64)
    g = np.asarray([str(v) for v in groups])
    if not (len(x) == len(y) == len(g)):
        raise ValueError(f"features ({len(x)}), labels ({len(y)}) and groups ({len(g)}) differ in length")
    unknown = sorted(set(methods) - {"linear", "knn"})
    if unknown:
        raise ValueError(f"unknown probe method(s) {unknown}; valid: linear, knn")
    n_cls = int(num_classes or y.max() + 1)
    if splits is None:
        if len(set(g)) < max(2, folds):
            raise too_few_groups(len(set(g)), folds, "probe")
        splits = stratified_group_kfold(y, g, folds, seed)
    splits = [(np.asarray(tr), np.asarray(te)) for tr, te in splits]
    for i, (tr, te) in enumerate(splits):
        shared = set(g[tr]) & set(g[te])
        if shared:  # a leak would inflate every number reported
            raise ValueError(f"probe fold {i}: groups on both sides: {sorted(shared)[:5]}")
    report: dict[str, Any] = {
        "n_samples": int(len(y)),
        "n_groups": int(len(set(g))),
        "num_classes": n_cls,
        "feature_dim": int(x.shape[1]),
        "folds": [
            {"n_train": int(len(tr)), "n_test": int(len(te)), "test_groups": sorted(set(g[te].tolist()))}
            for tr, te in splits
        ],
        "methods": {},
    }
    for method in methods:
        per_fold, extras = [], []
        oof_pred = np.full(len(y), -1)
        for fi, (tr, te) in enumerate(splits):
            if method == "linear":
                proba, extra = linear_probe(x[tr], y[tr], x[te], n_cls, g[tr], cs, seed + fi)
            else:
                proba, extra = knn_probe(x[tr], y[tr], x[te], n_cls, knn_k, knn_temperature), {}
            per_fold.append(classification_metrics(y[te], proba))
            extras.append(extra)
            oof_pred[te] = proba.argmax(1)
        report["methods"][method] = {
            "per_fold": per_fold,
            "fold_info": extras,
            "summary": _summary(per_fold),
            "confusion_matrix": confusion_matrix(y[oof_pred >= 0], oof_pred[oof_pred >= 0], n_cls).tolist(),
        }
    return report


def format_table(report: dict[str, Any], title: str = "") -> str:
    """Plain-text table: one row per method, ``mean ± std`` per metric."""
    head = f"{'method':<8}" + "".join(f"{m:>22}" for m in METRICS)
    lines = [title] if title else []
    lines += [head, "-" * len(head)]
    for method, res in report["methods"].items():
        cells = []
        for m in METRICS:
            s = res["summary"][m]
            cells.append("n/a" if math.isnan(s["mean"]) else f"{s['mean']:.4f} ± {s['std']:.4f}")
        lines.append(f"{method:<8}" + "".join(f"{c:>22}" for c in cells))
    return "\n".join(lines)


def run_probe(
    encoder: str,
    batches: Iterable[dict[str, Any]],
    out_dir: str | os.PathLike,
    label_key: str = "label",
    group_key: str = "group",
    classes: Sequence[str] | None = None,
    folds: int = 5,
    methods: Sequence[str] = ("linear", "knn"),
    knn_k: int = 20,
    knn_temperature: float = 0.07,
    concat_prev_stage: bool = False,
    in_chans: int = 1,
    seed: int = 0,
    device: str = "cpu",
    cache: str | os.PathLike | None = None,
    data_id: str = "",
    print_table: bool = True,
    data_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``sonofm probe``: load ``encoder`` (see :func:`sonofm.models.loading.load_encoder`), extract
    features of ``batches`` once (cached in ``cache`` or ``out_dir/features.npz``), cross-validate the
    probes and write ``out_dir/probe.json`` and ``out_dir/confusion_<method>.png``.

    ``batches`` carry ``image`` and per-sample ``meta`` dicts (the stream's ``return_meta=True``, or
    :func:`sonofm.finetune.data.iterate_batches`, whose batches carry ``meta`` too) from which
    ``label_key`` and ``group_key`` are read; samples without a label are left out and counted.
    ``data_id`` names the data in the cache fingerprint (e.g. shard paths and split); ``data_info``
    (``{"datasets": [...], "split": ...}``) goes into the report, so a model card can say what was probed.
    """
    import torch

    from sonofm.evaluation.features import cached_features, extract_features, fingerprint
    from sonofm.evaluation.plots import plot_confusion
    from sonofm.models.loading import load_encoder

    torch.manual_seed(seed)
    out = Path(out_dir)
    model, info = load_encoder(encoder, in_chans=in_chans)
    fp = fingerprint(info, concat_prev=concat_prev_stage, label_key=label_key, group_key=group_key, data=data_id)

    def compute() -> dict[str, np.ndarray]:
        def with_fields(it: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
            for b in it:
                if "meta" not in b or b["meta"] is None:
                    raise ValueError("run_probe: batches need per-sample 'meta' (make_eval_loader(return_meta=True))")
                b = dict(b)
                b["_label"] = ["" if m.get(label_key) is None else str(m[label_key]) for m in b["meta"]]
                b["_group"] = [str(m.get(group_key) if m.get(group_key) is not None else k)
                               for m, k in zip(b["meta"], b["key"])]
                yield b

        return extract_features(model, with_fields(batches), concat_prev_stage, device, keep=("key", "_label", "_group"),
                                progress=f"features ({info['spec']})" if print_table else None)

    data = cached_features(cache if cache is not None else out / "features.npz", fp, compute)
    raw_labels = data["_label"].astype(str)
    keep = raw_labels != ""
    names = sorted(set(raw_labels[keep])) if classes is None else list(classes)
    unknown = sorted(set(raw_labels[keep]) - set(names))
    if unknown:
        raise ValueError(f"labels {unknown} are not in the given classes {names}")
    y = np.array([names.index(v) for v in raw_labels[keep]])
    report = cross_validate(
        data["features"][keep], y, data["_group"][keep], len(names), folds, methods, knn_k, knn_temperature,
        seed=seed,
    )
    report.update(
        encoder=info, classes=names, n_unlabelled=int((~keep).sum()), label_key=label_key, group_key=group_key,
        concat_prev_stage=concat_prev_stage, data=data_info or {},
    )
    write_json(out / "probe.json", report)
    for method, res in report["methods"].items():
        plot_confusion(np.asarray(res["confusion_matrix"]), names, out / f"confusion_{method}.png",
                       title=f"{method} probe ({info['spec']})")
    if print_table:
        print(format_table(report, title=f"probe: {info['spec']} ({report['n_samples']} samples, {folds} folds)"))
        figures = ", ".join(f"confusion_{m}.png" for m in report["methods"])
        print(f"wrote {out / 'probe.json'} and {figures} in {out}; features cached in "
              f"{cache if cache is not None else out / 'features.npz'}")
    return report
