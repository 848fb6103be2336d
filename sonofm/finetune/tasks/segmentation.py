"""Segmentation: a 1x1 classifier on the shared UPerNet map; cross-entropy + Dice; Dice, IoU, HD95."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
from torch import Tensor, nn

from sonofm.datasets.preprocess.geometry import mask_to_original
from sonofm.finetune.data import logits_to_original
from sonofm.finetune.losses import seg_loss
from sonofm.finetune.tasks.base import TaskKind, register_task
from sonofm.models.heads import SegmentationHead


@register_task
class Segmentation(TaskKind):
    name, title, headline = "seg", "segmentation", "dice"
    prompt_types = ("whole", "local")
    needs_mask = True

    default_for_labelled = False

    def outputs_of(self, samples: Any) -> int:
        ids = [int(s.mask.max()) for s in samples if s.mask is not None]
        return max(2, max(ids) + 1) if ids else 2

    def make_head(self, spec: Any, channels: int, num_features: int, dropout: float) -> nn.Module:
        return SegmentationHead(channels, spec.num_classes, dropout)

    def loss(self, out: Tensor, batch: Mapping[str, Any], spec: Any, settings: Any) -> Tensor:
        seg = settings.seg
        return seg_loss(out.float(), batch["mask"].to(out.device), seg.ce_weight, seg.dice_weight,
                        per_image_dice=seg.dice_per_image)

    def evaluate(self, predict: Callable[[Tensor], Any], batches: Iterable[dict[str, Any]], spec: Any, *,
                 device: Any, accelerator: Any = None, overlay_dir: Any = None, n_overlays: int = 0) -> dict[str, Any]:
        from sonofm.finetune.seg_train import evaluate_segmentation_batches

        res = evaluate_segmentation_batches(predict, batches, spec.num_classes, device=device, accelerator=accelerator,
                                            overlay_dir=overlay_dir, n_overlays=n_overlays)
        res.pop("per_sample")
        return res

    def predict(self, out: Tensor, j: int, stored: Mapping[str, Any], spec: Any) -> np.ndarray:
        stored_hw = stored["stored_image"].shape[:2]
        classes = logits_to_original(out[j].float().cpu(), stored_hw).argmax(0).numpy().astype(np.uint8)
        return mask_to_original(classes, stored["meta"])

    def write(self, writer: Any, row: Mapping[str, Any], prediction: np.ndarray) -> None:
        writer.add_segmentation(row["mask_path"], prediction)
