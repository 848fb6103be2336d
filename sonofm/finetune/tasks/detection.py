"""Detection: CenterNet-style boxes with scores on the shared stride-4 map; mean IoU of the top box
(FM_UIA's one box per image) and mAP@0.5 (several boxes per image: nodules, lesions).

Targets: each box (stored pixels, through the stream's crop and flip) puts a Gaussian peak at its
centre cell of a per-class heatmap (penalty-reduced focal loss, CenterNet), and its log width, log
height and sub-cell offset at that cell (L1). Decoding keeps the 3x3 local maxima of the heatmap, best first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sonofm.datasets.preprocess.geometry import clip_boxes, original_from_stored
from sonofm.evaluation.plots import save_geometry_overlay
from sonofm.finetune.engine import gather_results
from sonofm.finetune.tasks.base import TaskKind, register_task, to_original, views
from sonofm.models.heads import CenterNetHead

MAX_DETECTIONS = 20
#: the largest log box side (in cells) decoding believes: e**7 cells is far beyond any input
LOG_SIZE_MAX = 7.0


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (N,4) with every box in ``b`` (M,4), boxes ``[x0, y0, x1, y1]``."""
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    area = lambda x: (x[:, 2] - x[:, 0]).clip(0) * (x[:, 3] - x[:, 1]).clip(0)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def average_precision(scores: np.ndarray, hits: np.ndarray, n_true: int) -> float:
    """All-point interpolated AP (VOC 2010+) of detections ranked by ``scores`` (``hits``: matched a box)."""
    if n_true == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(hits[order])
    precision = tp / np.arange(1, len(order) + 1)
    recall = tp / n_true
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    idx = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


def _gaussian_peak(heat: Tensor, cx: float, cy: float, sx: float, sy: float) -> None:
    """Max-merge a Gaussian centred on cell ``(int(cx), int(cy))`` (value 1 there) into ``heat`` [h, w]."""
    h, w = heat.shape
    ix, iy = int(cx), int(cy)
    ys = torch.arange(h, dtype=heat.dtype, device=heat.device)[:, None] - iy
    xs = torch.arange(w, dtype=heat.dtype, device=heat.device)[None, :] - ix
    g = torch.exp(-(xs**2) / (2 * sx**2) - (ys**2) / (2 * sy**2))
    torch.maximum(heat, g, out=heat)


@torch.no_grad()
def decode(out: Mapping[str, Tensor], size: tuple[int, int], k: int = MAX_DETECTIONS) -> list[dict[str, np.ndarray]]:
    """Per image: ``boxes`` (k,4) in input pixels, ``scores`` and ``labels``, best first."""
    heat = torch.sigmoid(out["heatmap"].float())
    b, c, h, w = heat.shape
    peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
    k = min(k, c * h * w)
    scores, idx = peaks.flatten(1).topk(k, dim=1)
    labels, cell = idx // (h * w), idx % (h * w)
    ys, xs = (cell // w).float(), (cell % w).float()
    stride_y, stride_x = size[0] / h, size[1] / w
    size_map, off = out["size"].float().flatten(2), out["offset"].float().flatten(2)
    bw = size_map[:, 0].gather(1, cell).clamp(max=LOG_SIZE_MAX).exp() * stride_x  # log size in cells
    bh = size_map[:, 1].gather(1, cell).clamp(max=LOG_SIZE_MAX).exp() * stride_y
    cx = (xs + off[:, 0].gather(1, cell)) * stride_x
    cy = (ys + off[:, 1].gather(1, cell)) * stride_y
    boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1)
    return [{"boxes": boxes[i].cpu().numpy(), "scores": scores[i].cpu().numpy(), "labels": labels[i].cpu().numpy()}
            for i in range(b)]


@register_task
class Detection(TaskKind):
    name, title, headline = "det", "detection", "mean_iou"
    geometry = ("boxes", "box_labels")

    def usable(self, meta: Mapping[str, Any], has_mask: bool) -> bool:
        return bool(meta.get("boxes"))

    def num_classes(self, index_task: Mapping[str, Any] | None, labels: Any, default: int) -> int:
        return int((index_task or {}).get("num_classes") or 1)  # box classes (FM_UIA: one)


    def outputs_of(self, samples: Any) -> int:
        return 1 + max((int(v) for s in samples for v in s.meta.get("box_labels") or []), default=0)

    def make_head(self, spec: Any, channels: int, num_features: int, dropout: float) -> nn.Module:
        return CenterNetHead(channels, spec.num_classes)

    def loss(self, out: Mapping[str, Tensor], batch: Mapping[str, Any], spec: Any, settings: Any) -> Tensor:
        heat_logits = out["heatmap"].float()
        b, c, h, w = heat_logits.shape
        size = batch["image"].shape[-2:]
        sy, sx = size[0] / h, size[1] / w
        target = torch.zeros_like(heat_logits)
        cells, wh, offs = [], [], []
        for i, view in enumerate(views(batch)):
            boxes = view.boxes(batch["targets"]["boxes"][i]) if len(batch["targets"]["boxes"][i]) else np.zeros((0, 4))
            labels = batch["targets"].get("box_labels", [[]] * b)[i] or [0] * len(boxes)
            for (x0, y0, x1, y1), lab in zip(boxes, labels):
                cx, cy = (x0 + x1) / 2 / sx, (y0 + y1) / 2 / sy
                bw, bh = (x1 - x0) / sx, (y1 - y0) / sy
                if not (0 <= cx < w and 0 <= cy < h) or bw <= 0 or bh <= 0:
                    continue  # the crop cut this box's centre away
                _gaussian_peak(target[i, int(lab) if 0 <= int(lab) < c else 0], cx, cy, max(bw / 6, 0.5), max(bh / 6, 0.5))
                cells.append((i, int(cy), int(cx)))
                wh.append((bw, bh))
                offs.append((cx - int(cx), cy - int(cy)))
        p = torch.sigmoid(heat_logits).clamp(1e-4, 1 - 1e-4)
        pos = target >= 1.0 - 1e-6
        pos_loss = -(torch.log(p) * (1 - p) ** 2)[pos].sum()
        neg_loss = -(torch.log(1 - p) * p**2 * (1 - target) ** 4)[~pos].sum()
        n = max(len(cells), 1)
        loss = (pos_loss + neg_loss) / n
        if cells:
            bi, yi, xi = (torch.tensor(v, device=heat_logits.device) for v in zip(*cells))
            pred_wh = out["size"].float()[bi, :, yi, xi]
            pred_off = out["offset"].float()[bi, :, yi, xi]
            loss = loss + F.l1_loss(pred_wh, pred_wh.new_tensor(wh).log(), reduction="sum") / n
            loss = loss + F.l1_loss(pred_off, pred_off.new_tensor(offs), reduction="sum") / n
        return loss

    @torch.no_grad()
    def evaluate(self, predict: Callable[[Tensor], Any], batches: Iterable[dict[str, Any]], spec: Any, *,
                 device: Any, accelerator: Any = None, overlay_dir: Any = None, n_overlays: int = 0) -> dict[str, Any]:
        local = []
        for batch in batches:
            images = batch["image"].to(device)
            dets = decode(predict(images), tuple(images.shape[-2:]))
            for j, st in enumerate(batch["stored"]):
                truth = st["meta"].get("boxes") or []
                if not truth:
                    continue
                gt = original_from_stored(st["meta"]).boxes(truth)
                boxes = to_original(st).boxes(dets[j]["boxes"])
                iou = box_iou(boxes, gt)
                top = float(iou[0].max()) if len(boxes) else 0.0
                if overlay_dir is not None and len(local) < n_overlays:  # in the stored image's pixels
                    to_stored = to_original(st).then(original_from_stored(st["meta"]).inverse())
                    save_geometry_overlay(st["stored_image"], Path(overlay_dir) / f"{len(local) + 1:03d}.png",
                                          true_boxes=np.asarray(truth), pred_boxes=to_stored.boxes(dets[j]["boxes"][:1]),
                                          title=f"{st['key']}  top-box IoU {top:.3f}")
                local.append({"order": st["order"], "iou": top, "scores": dets[j]["scores"], "ious": iou,
                              "n_true": len(gt)})
        rows = gather_results(local, accelerator)
        if not rows:
            raise ValueError(f"{spec.name}: no validation sample with a box")
        scores, hits = [], []
        for r in rows:  # greedy matching at IoU 0.5, best score first (each true box matched once)
            taken = np.zeros(r["n_true"], bool)
            for s, ious in zip(r["scores"], r["ious"]):
                free = np.where(~taken & (ious >= 0.5))[0]
                hit = free.size > 0
                if hit:
                    taken[free[np.argmax(ious[free])]] = True
                scores.append(s)
                hits.append(hit)
        return {"mean_iou": float(np.mean([r["iou"] for r in rows])),
                "map50": average_precision(np.array(scores), np.array(hits, float), sum(r["n_true"] for r in rows)),
                "multi_box_images": int(sum(r["n_true"] > 1 for r in rows)), "n": len(rows)}

    def predict(self, out: Mapping[str, Tensor], j: int, stored: Mapping[str, Any], spec: Any) -> dict[str, np.ndarray]:
        det = decode({k: v[j : j + 1] for k, v in out.items()}, (stored["input_size"],) * 2)[0]
        h, w = stored["meta"].get("orig_size") or stored["stored_image"].shape[:2]
        det["boxes"] = clip_boxes(to_original(stored).boxes(det["boxes"]), h, w)
        return det

    def write(self, writer: Any, row: Mapping[str, Any], prediction: Mapping[str, np.ndarray]) -> None:
        writer.add_detection(row["image_path"], row["task_id"], prediction["boxes"][0].tolist(), row["orig_size"])
