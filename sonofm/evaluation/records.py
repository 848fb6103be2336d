"""Results records: one reported number with what it was measured on (task, data, split, protocol,
encoder, metric). Probes, finetuning, the quickstart and the model card all speak this format, so a
comparison's rows (the encoder and each baseline) reach the card unchanged."""

from __future__ import annotations

from typing import Any

__all__ = ["RESULTS_FORMAT", "RECORD_KEYS", "METRIC_NAMES", "result_record"]

#: ``{"format": RESULTS_FORMAT, "results": [record, ...]}``: one record per reported number.
RESULTS_FORMAT = "sonofm-results-1"
RECORD_KEYS = ("task", "dataset", "split", "protocol", "encoder", "metric")
METRIC_NAMES = {"balanced_accuracy": "balanced accuracy", "auroc": "AUROC", "macro_f1": "macro F1",
                "accuracy": "accuracy", "dice": "Dice", "iou": "IoU", "hd95": "HD95 (px)", "hd95_mm": "HD95 (mm)"}


def result_record(task: str, dataset: str, split: str, protocol: str, encoder: str, metric: str,
                  value: float | dict[str, Any], n: int | None = None) -> dict[str, Any]:
    """One reported number with what it was measured on: ``value`` a number or ``{"mean", "std"}``."""
    mean = value["mean"] if isinstance(value, dict) else value
    std = value.get("std") if isinstance(value, dict) else None
    return {"task": task, "dataset": dataset, "split": split, "protocol": protocol, "encoder": encoder,
            "metric": METRIC_NAMES.get(metric, metric), "mean": float(mean) if mean is not None else float("nan"),
            "std": float(std) if isinstance(std, (int, float)) else None, "n": n}
