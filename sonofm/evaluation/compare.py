"""Baseline rows: the same evaluation for the encoder and each baseline (``baselines=[random,
timm:convnextv2_atto.fcmae_ft_in1k, ...]``), one row each in a table, a bar chart and results records
that ``sonofm export --results`` puts on the model card.

The first question asked of a domain foundation model is whether it beats random and ImageNet weights
on the same protocol; a comparison that only ever prints the encoder alone cannot answer it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from sonofm.atomic_io import save_figure, write_json
from sonofm.evaluation.records import RESULTS_FORMAT, result_record

__all__ = ["baselines_for", "baseline_dir", "comparison_table", "comparison_figure", "write_comparison",
           "probe_rows", "finetune_rows"]


def baselines_for(encoder: str, baselines: list[str]) -> list[str]:
    """The baseline specs to run beside ``encoder``: ``random`` expanded to the encoder's architecture,
    the encoder itself and duplicates left out; every spec is checked (name, cache, path) before work."""
    from sonofm.models.encoder_spec import baseline_specs, check_spec, spec_architecture

    if not baselines:
        return []
    specs = [b for b in baseline_specs(list(baselines), spec_architecture(encoder)) if b != encoder]
    for spec in specs:
        check_spec(spec)
    return specs


def baseline_dir(out_dir: str | Path, spec: str) -> Path:
    """Where a baseline's own run goes: ``out_dir/baselines/<short name>``."""
    from sonofm.models.encoder_spec import short_name

    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in short_name(spec))
    return Path(out_dir) / "baselines" / name


def _cell(value: Any, digits: int = 3) -> str:
    if isinstance(value, dict):
        mean, std = value.get("mean"), value.get("std")
        if mean is None or (isinstance(mean, float) and math.isnan(mean)):
            return "n/a"
        return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if isinstance(std, (int, float)) else "")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def comparison_table(rows: dict[str, dict[str, Any]]) -> str:
    """Markdown table, one row per encoder (its spec), one column per metric (``{"mean", "std"}`` or a number)."""
    columns = list(dict.fromkeys(c for r in rows.values() for c in r))
    cells = {e: [_cell(r.get(c)) for c in columns] for e, r in rows.items()}
    width = max(len("encoder"), *(len(e) for e in rows))
    cols = [max(len(c), *(len(cells[e][i]) for e in rows)) for i, c in enumerate(columns)]
    lines = [f"| {'encoder':<{width}} | " + " | ".join(c.ljust(w) for c, w in zip(columns, cols)) + " |",
             f"|{'-' * (width + 2)}|" + "|".join("-" * (w + 2) for w in cols) + "|"]
    lines += [f"| {e:<{width}} | " + " | ".join(c.rjust(w) for c, w in zip(cells[e], cols)) + " |" for e in rows]
    return "\n".join(lines)


def comparison_figure(rows: dict[str, dict[str, Any]], path: Path, title: str) -> Path:
    """Grouped bars per metric in [0, 1], one bar per encoder (error bars: the std where there is one)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    columns = [c for c in dict.fromkeys(c for r in rows.values() for c in r) if "hd95" not in c.lower()]
    encoders = list(rows)
    x = np.arange(len(columns))
    w = 0.8 / max(1, len(encoders))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(columns) + 2), 3.8))
    for i, enc in enumerate(encoders):
        vals = [rows[enc].get(c) for c in columns]
        means = [float(v["mean"] if isinstance(v, dict) else v) if v is not None else float("nan") for v in vals]
        errs = [float(v.get("std") or 0.0) if isinstance(v, dict) else 0.0 for v in vals]
        ax.bar(x + (i - (len(encoders) - 1) / 2) * w, means, w, yerr=errs, capsize=3, label=enc)
    ax.set_xticks(x, columns, fontsize=8)
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("score (higher is better)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def probe_rows(reports: dict[str, dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Table rows and results records of probe reports (``probe.json`` per encoder spec)."""
    rows: dict[str, dict[str, Any]] = {}
    records: list[dict[str, Any]] = []
    for enc, rep in reports.items():
        data = rep.get("data") or {}
        dataset = ", ".join(data.get("datasets") or []) or "—"
        folds = len(rep.get("folds") or [])
        row: dict[str, Any] = {}
        for method, res in rep["methods"].items():
            label = "linear" if method == "linear" else "kNN"
            summary = res.get("summary") or {}
            for metric, column in (("balanced_accuracy", "bal. acc"), ("auroc", "AUROC")):
                if metric in summary:
                    row[f"{label} {column}"] = summary[metric]
            protocol = f"{label} probe, frozen features, {folds}-fold CV by group"
            for metric, value in summary.items():
                if isinstance(value, dict) and value.get("mean") is not None:
                    records.append(result_record("classification", dataset, data.get("split", "—"), protocol, enc,
                                                 metric, value, rep.get("n_samples")))
        rows[enc] = row
    return rows, records


def finetune_rows(reports: dict[str, dict[str, Any]], task: str, dataset: str
                  ) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Table rows and results records of finetuning reports (``report.json`` per encoder spec): the final
    validation figures, per dataset for universal runs."""
    rows: dict[str, dict[str, Any]] = {}
    records: list[dict[str, Any]] = []
    for enc, rep in reports.items():
        protocol = f"finetuned {rep.get('steps', '?')} steps ({task}), validation split"
        row: dict[str, Any] = {}
        for prefix, ds, node in _sections(rep.get("final") or {}, dataset):
            for k, v in node.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("n", "step"):
                    row[f"{prefix}{k}"] = float(v)
                    records.append(result_record(task, ds, "val", protocol, enc, k, float(v), node.get("n")))
        rows[enc] = row
    return rows, records


def _sections(final: dict[str, Any], dataset: str) -> list[tuple[str, str, dict[str, Any]]]:
    """``(column prefix, dataset, figures)``: the top level, then one level of per-dataset sections."""
    out = [("", dataset, final)]
    out += [(f"{k} ", k, v) for k, v in final.items() if isinstance(v, dict)]
    return out


def write_comparison(out_dir: str | Path, rows: dict[str, dict[str, Any]], records: list[dict[str, Any]],
                     title: str) -> dict[str, Any]:
    """``out_dir/comparison.{md,png}`` and ``out_dir/results.json`` (records for ``sonofm export --results``);
    returns what was written and the table."""
    out = Path(out_dir)
    table = comparison_table(rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.md").write_text(f"{title}\n\n{table}\n", encoding="utf-8")
    figure = comparison_figure(rows, out / "comparison.png", title)
    write_json(out / "results.json", {"format": RESULTS_FORMAT, "results": records})
    return {"table": table, "figure": str(figure), "results": str(out / "results.json"),
            "markdown": str(out / "comparison.md")}
