"""Classification: a linear head on the pooled feature; cross-entropy; accuracy, balanced accuracy,
macro F1, AUROC."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sonofm.evaluation.metrics import classification_metrics
from sonofm.finetune.engine import gather_results
from sonofm.finetune.tasks.base import TaskKind, register_task
from sonofm.models.heads import ClassificationHead


@register_task
class Classification(TaskKind):
    name, title, headline = "cls", "classification", "balanced_accuracy"
    prompt_types = ("whole", "local", "location")
    uses_labels = True

    def usable(self, meta: Mapping[str, Any], has_mask: bool) -> bool:
        return True  # unlabelled samples are ignored by the loss (label -1)

    default_for_labelled = True

    def make_head(self, spec: Any, channels: int, num_features: int, dropout: float) -> nn.Module:
        return ClassificationHead(num_features, spec.num_classes, dropout)

    def loss(self, out: Tensor, batch: Mapping[str, Any], spec: Any, settings: Any) -> Tensor:
        y = batch["targets"]["label"].to(out.device)
        return F.cross_entropy(out.float(), y, ignore_index=-1) if (y >= 0).any() else out.sum() * 0.0

    @torch.no_grad()
    def evaluate(self, predict: Callable[[Tensor], Any], batches: Iterable[dict[str, Any]], spec: Any, *,
                 device: Any, accelerator: Any = None, overlay_dir: Any = None, n_overlays: int = 0) -> dict[str, Any]:
        local = []
        for batch in batches:
            probs = F.softmax(predict(batch["image"].to(device)).float(), 1).cpu().numpy()
            for j, st in enumerate(batch["stored"]):
                local.append({"order": st["order"], "label": int(batch["targets"]["label"][j]), "probs": probs[j]})
        rows = [r for r in gather_results(local, accelerator) if r["label"] >= 0]
        if not rows:
            raise ValueError(f"{spec.name}: no labelled validation sample")
        res = classification_metrics(np.array([r["label"] for r in rows]), np.stack([r["probs"] for r in rows]))
        res["n"] = len(rows)
        return res

    def predict(self, out: Tensor, j: int, stored: Mapping[str, Any], spec: Any) -> np.ndarray:
        return F.softmax(out[j].float(), 0).cpu().numpy()

    def write(self, writer: Any, row: Mapping[str, Any], prediction: np.ndarray) -> None:
        writer.add_classification(row["image_path"], row["task_id"], prediction)
