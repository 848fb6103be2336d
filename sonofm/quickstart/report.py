"""The end of a quickstart run: the table, the pretrained-vs-random wins, the comparison figure and
the footnote saying what was trained and evaluated on which split."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Score:
    """One headline number of a quickstart run: where it comes from, its table column, which way is better."""

    task: str
    method: str  # "linear" or "knn" (probes), "seg"
    metric: str  # "balanced_accuracy", "auroc", "dice", "hd95"
    column: str  # e.g. "probe bal. acc" (the task is prefixed when a run has several tasks)
    higher_is_better: bool = True
    digits: int = 3

    @property
    def key(self) -> str:
        """Its name in ``summary.json``, e.g. ``synthetic linear balanced_accuracy``, ``synthetic lesion dice``."""
        return f"{self.task} {self.metric}" if self.method == "seg" else f"{self.task} {self.method} {self.metric}"


_PROBE_SCORES = (("linear", "balanced_accuracy", "probe bal. acc"), ("linear", "auroc", "probe AUROC"),
                 ("knn", "balanced_accuracy", "kNN bal. acc"))


def scores(probes: dict[str, dict], segs: dict[str, dict]) -> dict[Score, dict[str, float]]:
    """The headline numbers of one seed, ``{score: {encoder: value}}`` (probes: the mean over folds)."""
    single = len(probes) + len(segs) <= 2
    out: dict[Score, dict[str, float]] = {}
    for task, reps in probes.items():
        p = "" if single else f"{task} "
        for method, metric, column in _PROBE_SCORES:
            out[Score(task, method, metric, p + column)] = {
                e: float("nan") if (v := r["methods"][method]["summary"][metric]["mean"]) is None else float(v)
                for e, r in reps.items()}
    for task, reps in segs.items():
        p = "" if single else f"{task} "
        unit = next(iter(reps.values()))["hd95_unit"]
        out[Score(task, "seg", "dice", f"{p}seg Dice")] = {e: float(r["final"]["dice"]) for e, r in reps.items()}
        out[Score(task, "seg", "hd95", f"{p}seg HD95 ({unit})", higher_is_better=False, digits=1)] = {
            e: hd95(r) for e, r in reps.items()}
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for one value), NaNs left out."""
    v = [x for x in values if not math.isnan(x)]
    if not v:
        return float("nan"), float("nan")
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)


def _render(headers: list[str], cells: dict[str, list[str]]) -> str:
    encoders = list(cells)
    width = max(len(e) for e in encoders)
    cols = [max(len(h), *(len(cells[e][i]) for e in encoders)) for i, h in enumerate(headers)]
    lines = [f"| {'encoder':<{width}} | " + " | ".join(h.ljust(w) for h, w in zip(headers, cols)) + " |",
             f"|{'-' * (width + 2)}|" + "|".join("-" * (w + 2) for w in cols) + "|"]
    for enc in encoders:
        lines.append(f"| {enc:<{width}} | " + " | ".join(c.rjust(w) for c, w in zip(cells[enc], cols)) + " |")
    return "\n".join(lines)


def table(probes: dict[str, dict], segs: dict[str, dict], encoders: dict[str, str]) -> tuple[str, dict]:
    """Markdown table of one seed (rows: encoders; probes: mean ± std over folds) and the same numbers as
    results records for the model card (:data:`sonofm.model_card.RESULTS_FORMAT`: each number with its
    task, data, split and protocol)."""
    from sonofm.model_card import RESULTS_FORMAT, result_record

    headers = [s.column for s in scores(probes, segs)]
    cells: dict[str, list[str]] = {e: [] for e in encoders}
    records: list[dict[str, Any]] = []
    for task, reps in probes.items():
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
        unit = next(iter(reps.values()))["hd95_unit"]
        for enc in encoders:
            f = reps[enc]["final"]
            cells[enc] += [f"{f['dice']:.3f}", f"{hd95(reps[enc]):.1f}"]
            protocol = f"UPerNet finetuned {reps[enc].get('steps', '?')} steps on the train split"
            for metric, value in (("dice", f["dice"]), ("iou", f["iou"]), (f"hd95_{unit}", hd95(reps[enc]))):
                records.append(result_record("segmentation", task, "test", protocol, enc, metric, value,
                                             f.get("n")))
    return _render(headers, cells), {"format": RESULTS_FORMAT, "results": records}


def seeds_table(per_seed: list[tuple[dict[str, dict], dict[str, dict]]], encoders: dict[str, str]) -> tuple[str, dict]:
    """Markdown table over seeds (each cell: mean ± sample sd over the seeds of that seed's headline number)
    and the results records for the model card: seed 0's own (the exported backbone), then each of them
    averaged over the seeds (encoder ``"pretrained, N seeds"``); ``per_seed``: ``(probes, segs)`` of each seed."""
    from sonofm.model_card import RESULTS_FORMAT

    n = len(per_seed)
    by_seed = [scores(p, s) for p, s in per_seed]
    cells: dict[str, list[str]] = {e: [] for e in encoders}
    for score in by_seed[0]:
        for enc in encoders:
            mean, std = _mean_std([s[score][enc] for s in by_seed])
            cells[enc].append(f"{mean:.{score.digits}f} ± {std:.{score.digits}f}")
    own = [table(p, s, encoders)[1]["results"] for p, s in per_seed]
    records = list(own[0])
    for recs in zip(*own):
        mean, std = _mean_std([r["mean"] for r in recs])
        mean_of = " (its mean)" if recs[0]["std"] is not None else ""
        records.append({**recs[0], "encoder": f"{recs[0]['encoder']}, {n} seeds", "mean": mean, "std": std,
                        "protocol": f"{recs[0]['protocol']}{mean_of}; mean ± sd over {n} seeds"})
    return _render([s.column for s in by_seed[0]], cells), {"format": RESULTS_FORMAT, "results": records}


def gaps(per_seed: list[dict[Score, dict[str, float]]], baseline: str = "random") -> dict[Score, list[float]]:
    """Per score, pretrained minus ``baseline`` in each seed, signed so that a positive gap favours pretrained."""
    return {score: [(s[score]["pretrained"] - s[score][baseline]) * (1 if score.higher_is_better else -1)
                    for s in per_seed] for score in per_seed[0]}


def other_baselines(per_seed: list[dict[Score, dict[str, float]]]) -> list[str]:
    """The baseline rows besides random (e.g. the ImageNet one), in table order."""
    first = next(iter(per_seed[0].values()), {})
    return [e for e in first if e not in ("pretrained", "random")]


def baseline_lines(per_seed: list[dict[Score, dict[str, float]]]) -> str:
    """One line per further baseline: on how many scores pretrained is ahead of it, with the gaps."""
    lines = []
    for base in other_baselines(per_seed):
        g = gaps(per_seed, base)
        ahead = sum(_mean_std(v)[0] > 0 for v in g.values())
        listed = ", ".join(f"{s.column} {_mean_std(v)[0]:+.{s.digits}f}" for s, v in g.items())
        lines.append(f"vs {base}: pretrained ahead on {ahead} of {len(g)} scores"
                     + (" (mean over seeds)" if len(per_seed) > 1 else "") + f" (gaps, + favours pretrained: {listed})")
    return "\n".join(lines)


def clear_gap(values: list[float]) -> bool:
    """Pretrained ahead beyond the seed spread: ahead in every seed, and the mean gap more than twice its
    sample standard deviation over the seeds (a new seed, or another machine, then lands ahead too in
    about 98 runs of 100 if the gaps are roughly normal). Never true for one seed: one run cannot tell."""
    mean, std = _mean_std(values)
    return len(values) > 1 and all(v > 0 for v in values) and mean - 2 * std > 0


def conclusion(per_seed: list[dict[Score, dict[str, float]]]) -> tuple[str, dict[str, bool]]:
    """The closing sentence (what the comparison does and does not show) and, per score, whether the
    pretrained encoder is ahead (one seed) or ahead beyond the seed spread (several)."""
    g = gaps(per_seed)
    n = len(per_seed)

    def fmt(score: Score, values: list[float]) -> str:
        mean, std = _mean_std(values)
        return f"{score.column} {mean:+.{score.digits}f}" + (f" ± {std:.{score.digits}f}" if n > 1 else "")

    extra = baseline_lines(per_seed)
    extra = f"\n{extra}" if extra else ""
    if n == 1:
        ahead = {s.key: v[0] > 0 for s, v in g.items()}
        listed = ", ".join(fmt(s, v) for s, v in g.items())
        return (f"one seed: pretrained ahead of random on {sum(ahead.values())} of {len(ahead)} scores (gaps, + favours "
                f"pretrained: {listed});\na single seed cannot tell a gap from seed-to-seed variation (another machine "
                "or seed moves these numbers): `sonofm quickstart --seeds 3` reports mean ± std over seeds and which "
                "gaps exceed that spread" + extra, ahead)
    clear = {s.key: clear_gap(v) for s, v in g.items()}
    beyond = [fmt(s, v) for s, v in g.items() if clear[s.key]]
    within = [fmt(s, v) for s, v in g.items() if not clear[s.key]]
    text = (f"over {n} seeds, pretrained beats random beyond the seed spread (ahead in every seed, mean gap > 2 sd) on "
            f"{len(beyond)} of {len(clear)} scores" + (f": {', '.join(beyond)}" if beyond else ""))
    if within:
        text += f";\nnot beyond the spread (gap, + favours pretrained, ± sd over seeds): {', '.join(within)}"
    return text + extra, clear


def comparison_figure(per_seed: list[tuple[dict[str, dict], dict[str, dict]]], path: Path) -> Path:
    """Grouped bars, pretrained vs random, for every score in [0, 1]: one seed's numbers with the fold
    spread of its probes, or the mean over seeds with the seed spread and each seed as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    n = len(per_seed)
    by_seed = [scores(p, s) for p, s in per_seed]
    shown = [s for s in by_seed[0] if s.higher_is_better]  # HD95 is not in [0, 1]
    probes = per_seed[0][0]
    fold_std = {(s.key, e): probes[s.task][e]["methods"][s.method]["summary"][s.metric]["std"] or 0.0
                for s in shown if s.method != "seg" for e in probes[s.task]}
    label = {"probe bal. acc": "linear bal. acc", "probe AUROC": "linear AUROC"}
    names = [f"{s.task}\n{label.get(s.column.removeprefix(s.task + ' '), s.column.removeprefix(s.task + ' '))}"
             for s in shown]
    x = np.arange(len(shown))
    width = max(5.0, 1.3 * len(shown) + 1.5)
    if n > 1:  # second panel: the gap of every seed, the thing the conclusion is about
        fig, (ax, gx) = plt.subplots(1, 2, figsize=(2 * width, 3.9), gridspec_kw={"width_ratios": [1, 1]})
    else:
        fig, ax = plt.subplots(figsize=(width, 3.8))
    encoders = list(by_seed[0][shown[0]]) if shown else ["pretrained", "random"]
    colours = {"pretrained": "tab:blue", "random": "tab:gray"}
    others = iter(("tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:olive"))
    bar = 0.76 / len(encoders)
    for i, enc in enumerate(encoders):
        values = [[s[score][enc] for s in by_seed] for score in shown]
        stats = [_mean_std(v) for v in values]
        err = [st[1] for st in stats] if n > 1 else [fold_std.get((score.key, enc), 0.0) for score in shown]
        pos = x + (i - (len(encoders) - 1) / 2) * bar
        ax.bar(pos, [st[0] for st in stats], bar, yerr=err, capsize=3,
               color=colours.get(enc) or next(others, None), label=enc if ":" in enc else f"{enc} encoder")
        if n > 1:
            for xi, v in zip(pos, values):
                ax.scatter(np.full(len(v), xi), v, s=9, color="black", zorder=3)
    ax.set_xticks(x, names, fontsize=8)
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("score (higher is better)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper right", ncol=2)
    spread = (f"bars: mean over {n} seeds, error bars: sd over seeds, dots: each seed" if n > 1
              else "one seed; probe error bars: sd over folds")
    vs = " vs ".join(encoders[1:]) if len(encoders) > 2 else "random"
    ax.set_title(f"quickstart: pretrained vs {vs} convnextv2_atto on held-out test groups\n{spread}", fontsize=9)
    if n > 1:
        g = gaps(by_seed)
        for xi, score in zip(x, shown):
            mean, std = _mean_std(g[score])
            colour = "tab:green" if clear_gap(g[score]) else "tab:orange"
            gx.errorbar([xi], [mean], yerr=[2 * std], fmt="s", color=colour, capsize=5, markersize=6)
            gx.scatter(np.full(len(g[score]), xi + 0.15), g[score], s=12, color="black", zorder=3)
        gx.axhline(0.0, color="black", lw=0.8)
        gx.set_xticks(x, names, fontsize=8)
        gx.set_xlim(-0.5, len(shown) - 0.5)
        gx.set_ylabel("pretrained - random")
        gx.grid(axis="y", alpha=0.3)
        gx.set_title("gap per seed (dots); mean ± 2 sd over seeds: green = beyond the spread,\n"
                     "orange = not (HD95, lower is better, is in the table)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def footnote(cfg: Any, shard_sets: list[Path], data_desc: str, plan: Plan, seeds: int = 1,
             baselines: list[str] | tuple[str, ...] = ()) -> str:
    """What pretraining saw (train split counts from the shard indexes), how evaluation used the test split,
    and what the ± means."""
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
        f"group-aware {plan.probe_folds}-fold CV (fewer if fewer groups) over the TEST split"
        + (", mean ± std over folds;" if seeds == 1 else ", each seed's mean over folds;"),
        f"segmentation = UPerNet finetuned {plan.seg_steps} steps on the TRAIN split's masks, Dice / HD95 on the TEST "
        "split's images with a foreground, at their stored size. random = the same architecture, random init."
        + "".join(f" {b} = those published weights, stem adapted to grey by timm, same protocol." for b in baselines
                  if b.startswith("timm:") or b.startswith("hf-hub:")),
    ]
    if seeds > 1:
        lines.append(f"Every cell: mean ± sample sd over {seeds} seeds (0..{seeds - 1}); a seed sets the pretraining "
                     "(init, data order, masks), the random encoder's init, the probes' folds and the finetuning.")
    return "\n".join(lines)
