"""The end of a quickstart run: the table, the pretrained-vs-random wins, the comparison figure and
the footnote saying what was trained and evaluated on which split."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from sonofm.atomic_io import save_figure
from sonofm.quickstart.plan import Plan


def hd95(rep: dict[str, Any]) -> float:
    """HD95 of a segmentation report in the unit it is shown in (mm when every test image has a spacing)."""
    f = rep["final"]
    return float(f["hd95"] if rep.get("hd95_unit") == "mm" else f.get("hd95_px", f["hd95"]))


def _ms(d: dict[str, Any] | None) -> str:
    if not d or d.get("mean") is None or (isinstance(d["mean"], float) and math.isnan(d["mean"])):
        return "n/a"
    return f"{d['mean']:.3f} ± {d['std']:.3f}"


def table(probes: dict[str, dict], segs: dict[str, dict], encoders: dict[str, str]) -> tuple[str, dict]:
    """Markdown table (rows: encoders) and the same numbers as results records for the model card
    (:data:`sonofm.model_card.RESULTS_FORMAT`: each number with its task, data, split and protocol)."""
    from sonofm.model_card import RESULTS_FORMAT, result_record

    single = len(probes) + len(segs) <= 2
    headers: list[str] = []
    cells: dict[str, list[str]] = {e: [] for e in encoders}
    records: list[dict[str, Any]] = []
    for task, reps in probes.items():
        p = "" if single else f"{task} "
        headers += [f"{p}probe bal. acc", f"{p}probe AUROC", f"{p}kNN bal. acc"]
        for enc in encoders:
            m = reps[enc]["methods"]
            cells[enc] += [_ms(m["linear"]["summary"]["balanced_accuracy"]), _ms(m["linear"]["summary"]["auroc"]),
                           _ms(m["knn"]["summary"]["balanced_accuracy"])]
            folds = len(reps[enc].get("folds") or [])
            for method in ("linear", "knn"):
                protocol = (f"{'linear (logistic regression)' if method == 'linear' else 'kNN'} probe on frozen "
                            f"features, {folds}-fold CV by group")
                for metric in ("balanced_accuracy", "auroc", "accuracy"):
                    records.append(result_record("classification", task, "test", protocol, enc, metric,
                                                 m[method]["summary"][metric], reps[enc].get("n_samples")))
    for task, reps in segs.items():
        p = "" if single else f"{task} "
        unit = next(iter(reps.values()))["hd95_unit"]
        headers += [f"{p}seg Dice", f"{p}seg HD95 ({unit})"]
        for enc in encoders:
            f = reps[enc]["final"]
            cells[enc] += [f"{f['dice']:.3f}", f"{hd95(reps[enc]):.1f}"]
            protocol = f"UPerNet finetuned {reps[enc].get('steps', '?')} steps on the train split"
            for metric, value in (("dice", f["dice"]), ("iou", f["iou"]), (f"hd95_{unit}", hd95(reps[enc]))):
                records.append(result_record("segmentation", task, "test", protocol, enc, metric, value,
                                             f.get("n")))
    width = max(len(e) for e in encoders)
    cols = [max(len(h), *(len(cells[e][i]) for e in encoders)) for i, h in enumerate(headers)]
    lines = [f"| {'encoder':<{width}} | " + " | ".join(h.ljust(w) for h, w in zip(headers, cols)) + " |",
             f"|{'-' * (width + 2)}|" + "|".join("-" * (w + 2) for w in cols) + "|"]
    for enc in encoders:
        lines.append(f"| {enc:<{width}} | " + " | ".join(c.rjust(w) for c, w in zip(cells[enc], cols)) + " |")
    return "\n".join(lines), {"format": RESULTS_FORMAT, "results": records}


def wins(probes: dict[str, dict], segs: dict[str, dict]) -> dict[str, bool]:
    """Per metric: does the pretrained encoder beat the random one?"""
    out = {}
    for task, reps in probes.items():
        for method, metric in (("linear", "balanced_accuracy"), ("linear", "auroc"), ("knn", "balanced_accuracy")):
            a, b = (reps[e]["methods"][method]["summary"][metric]["mean"] for e in ("pretrained", "random"))
            out[f"{task} {method} {metric}"] = a is not None and b is not None and a > b
    for task, reps in segs.items():
        out[f"{task} dice"] = reps["pretrained"]["final"]["dice"] > reps["random"]["final"]["dice"]
        out[f"{task} hd95"] = hd95(reps["pretrained"]) < hd95(reps["random"])
    return out


def comparison_figure(probes: dict[str, dict], segs: dict[str, dict], path: Path) -> Path:
    """Grouped bars, pretrained vs random, for every probe and segmentation score in [0, 1]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names: list[str] = []
    vals: dict[str, list[tuple[float, float]]] = {"pretrained": [], "random": []}
    for task, reps in probes.items():
        for method, metric, label in (("linear", "balanced_accuracy", "linear bal. acc"),
                                      ("linear", "auroc", "linear AUROC"), ("knn", "balanced_accuracy", "kNN bal. acc")):
            names.append(f"{task}\n{label}")
            for enc in vals:
                s = reps[enc]["methods"][method]["summary"][metric]
                vals[enc].append((s["mean"] if s["mean"] is not None else float("nan"), s["std"] or 0.0))
    for task, reps in segs.items():
        names.append(f"{task}\nseg Dice")
        for enc in vals:
            vals[enc].append((reps[enc]["final"]["dice"], 0.0))
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(names) + 1.5), 3.8))
    for i, (enc, colour) in enumerate((("pretrained", "tab:blue"), ("random", "tab:gray"))):
        mean = [v[0] for v in vals[enc]]
        std = [v[1] for v in vals[enc]]
        ax.bar(x + (i - 0.5) * 0.38, mean, 0.38, yerr=std, capsize=3, color=colour, label=f"{enc} encoder")
    ax.set_xticks(x, names, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score (higher is better)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("quickstart: pretrained vs random convnextv2_atto (held-out test groups)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def footnote(cfg: Any, shard_sets: list[Path], data_desc: str, plan: Plan) -> str:
    """What pretraining saw (train split counts from the shard indexes) and how evaluation used the test split."""
    from sonofm.datasets.shards import load_indexes

    n_train = g_train = 0
    for s in shard_sets:
        for idx in load_indexes(s):
            n_train += int(idx["counts"]["split"].get("train", 0))
            g_train += int(idx["counts"].get("groups", {}).get("train", 0))
    lines = [
        f"Data: {data_desc}. Pretraining ({cfg.steps} steps x {cfg.data.batch_size} images at {cfg.data.img_size} px) "
        f"saw only the TRAIN split ({n_train} images of {g_train} groups) - its hierarchical classifier also "
        "trained on their labels;",
        "evaluation uses held-out groups only: probes = linear (logistic regression) and kNN on frozen features, "
        f"group-aware {plan.probe_folds}-fold CV (fewer if fewer groups) over the TEST split, mean ± std over folds;",
        f"segmentation = UPerNet finetuned {plan.seg_steps} steps on the TRAIN split's masks, Dice / HD95 on the TEST "
        "split's images with a foreground, at their stored size. random = the same architecture, random init.",
    ]
    return "\n".join(lines)
