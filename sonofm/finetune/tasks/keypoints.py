"""Keypoints: K ordered points per image (FM_UIA's regression subtasks, landmarks, the ends of a
measured axis); MRE in original pixels, in millimetres where the spacing is known, and PCK.

The head regresses the K points directly from the pooled feature by default; a heatmap per point on
the decoder's fused map, read out by a soft-argmax (integral regression), is the other mode
(``keypoint_head=heatmap``). Regression was measured better and cheaper on the CPU recipe, in the
universal run and on keypoints alone (benchmarks/RESULTS_fmuia.md §2). The loss is L1 on the
coordinates, divided by the input size. Points keep their order, so training never flips these
images (a flip would swap left and right ends). A point outside the crop is left out of the loss.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sonofm.datasets.preprocess.geometry import original_from_stored
from sonofm.evaluation.plots import save_geometry_overlay
from sonofm.finetune.engine import gather_results
from sonofm.finetune.tasks.base import TaskKind, register_task, to_original, views
from sonofm.models.heads import KeypointHead

#: PCK threshold: a point is correct within this share of the original image's diagonal
PCK_RADIUS = 0.05
#: which head: measured by benchmarks/fmuia.py (stages kp_regression and kp_only), benchmarks/RESULTS_fmuia.md §2
DEFAULT_MODE = "regression"


@register_task
class Keypoints(TaskKind):
    name, title, headline = "kp", "keypoints", "mre_px"
    aliases = ("regression",)  # FM_UIA's name for these subtasks
    higher_is_better = False
    geometry = ("points",)
    flips = False
    mode = DEFAULT_MODE

    def usable(self, meta: Mapping[str, Any], has_mask: bool) -> bool:
        return bool(meta.get("points"))

    def num_classes(self, index_task: Mapping[str, Any] | None, labels: Any, default: int) -> int:
        return int((index_task or {}).get("num_classes") or 2)  # the number of points


    def outputs_of(self, samples: Any) -> int:
        return max((len(s.meta.get("points") or []) for s in samples), default=2)

    def make_head(self, spec: Any, channels: int, num_features: int, dropout: float) -> nn.Module:
        return KeypointHead(channels, spec.num_classes, num_features, mode=getattr(spec, "head_mode", None) or self.mode)

    def loss(self, out: Mapping[str, Tensor], batch: Mapping[str, Any], spec: Any, settings: Any) -> Tensor:
        pred = out["points"].float()
        b, k, _ = pred.shape
        size = batch["image"].shape[-1]
        target = torch.full((b, k, 2), float("nan"), dtype=torch.float64)
        for i, view in enumerate(views(batch)):
            pts = batch["targets"]["points"][i]
            if len(pts):
                mapped = torch.from_numpy(view.points(pts))[:k]
                target[i, : len(mapped)] = mapped
        valid = torch.isfinite(target).all(-1) & (target >= 0).all(-1) & (target < size).all(-1)
        if not valid.any():
            return pred.sum() * 0.0
        target = target.to(pred.device, pred.dtype)
        valid = valid.to(pred.device)
        return (pred - target).abs().sum(-1)[valid].mean() / size

    @torch.no_grad()
    def evaluate(self, predict: Callable[[Tensor], Any], batches: Iterable[dict[str, Any]], spec: Any, *,
                 device: Any, accelerator: Any = None, overlay_dir: Any = None, n_overlays: int = 0) -> dict[str, Any]:
        local = []
        for batch in batches:
            pts = predict(batch["image"].to(device))["points"].float().cpu().numpy()
            for j, st in enumerate(batch["stored"]):
                truth = st["meta"].get("points") or []
                if not truth:
                    continue
                k = min(len(truth), pts.shape[1])
                gt = original_from_stored(st["meta"]).points(truth)[:k]
                got = to_original(st).points(pts[j])[:k]
                err = np.linalg.norm(got - gt, axis=1)
                h, w = st["meta"].get("orig_size") or st["stored_image"].shape[:2]
                row = {"order": st["order"], "err": err.tolist(), "pck": (err <= PCK_RADIUS * np.hypot(h, w)).tolist()}
                if overlay_dir is not None and len(local) < n_overlays:  # in the stored image's pixels
                    to_stored = to_original(st).then(original_from_stored(st["meta"]).inverse())
                    save_geometry_overlay(st["stored_image"], Path(overlay_dir) / f"{len(local) + 1:03d}.png",
                                          true_points=np.asarray(truth)[:k], pred_points=to_stored.points(pts[j])[:k],
                                          title=f"{st['key']}  MRE {err.mean():.1f} px")
                spacing = st["meta"].get("pixel_spacing_mm")  # of the stored image: measure there
                if spacing:
                    stored_err = (to_original(st).then(original_from_stored(st["meta"]).inverse()).points(pts[j])[:k]
                                  - np.asarray(truth, float)[:k])
                    row["err_mm"] = np.hypot(stored_err[:, 0] * spacing[1], stored_err[:, 1] * spacing[0]).tolist()
                local.append(row)
        rows = gather_results(local, accelerator)
        if not rows:
            raise ValueError(f"{spec.name}: no validation sample with points")
        errors = np.concatenate([r["err"] for r in rows])
        res = {"mre_px": float(errors.mean()), "pck05": float(np.mean(np.concatenate([r["pck"] for r in rows]))),
               "n": len(rows)}
        mm = [e for r in rows for e in r.get("err_mm", [])]
        res["mre_mm"] = float(np.mean(mm)) if mm else float("nan")
        return res

    def score(self, metrics: Mapping[str, Any]) -> float:
        return float(metrics["pck05"])

    def predict(self, out: Mapping[str, Tensor], j: int, stored: Mapping[str, Any], spec: Any) -> np.ndarray:
        return to_original(stored).points(out["points"][j].float().cpu().numpy())

    def write(self, writer: Any, row: Mapping[str, Any], prediction: np.ndarray) -> None:
        writer.add_keypoints(row["image_path"], row["task_id"], prediction.tolist(), row["orig_size"])
