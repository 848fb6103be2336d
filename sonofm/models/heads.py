"""Task heads of the universal model: one small module per dataset on shared encoder features.

Every head reads :class:`HeadInputs` (the fused decoder map at stride 4, computed only when a head
asks for it, and the pooled last-stage feature) and returns its raw output. What the output means
(loss, decoding, metrics) belongs to the task kind that made the head (``sonofm.finetune.tasks``);
here are only the layers. Heads register under a short token with :func:`register_head`, the token
the prompt's ``task`` one-hot uses.

- ``seg``: 1x1 classifier on the fused map, logits upsampled to the input size.
- ``cls``: linear classifier on the pooled feature.
- ``det``: CenterNet-style (Zhou et al., 2019) on the fused map: a class heatmap, box width/height
  and a sub-cell offset per cell; several boxes per image, each with a score.
- ``kp``: K keypoints, either heatmaps on the fused map read out by a soft-argmax (integral
  regression: differentiable, sub-pixel) or direct regression from the pooled feature.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "HEADS",
    "HeadInputs",
    "register_head",
    "SegmentationHead",
    "ClassificationHead",
    "CenterNetHead",
    "KeypointHead",
    "soft_argmax",
]

#: head token -> head class
HEADS: dict[str, type[nn.Module]] = {}


def register_head(cls: type[nn.Module]) -> type[nn.Module]:
    """Class decorator: make a head known by its ``task`` token."""
    HEADS[cls.task] = cls
    return cls


@dataclass
class HeadInputs:
    """What a head may read. ``fused`` is computed on first access (classification never pays for it)."""

    size: tuple[int, int]
    pooled: Tensor
    _fuse: Callable[[], Tensor]
    _fused: Tensor | None = field(default=None, repr=False)

    @property
    def fused(self) -> Tensor:
        if self._fused is None:
            self._fused = self._fuse()
        return self._fused


class _Head(nn.Module):
    task: ClassVar[str]
    title: ClassVar[str]
    uses_decoder: ClassVar[bool]


@register_head
class SegmentationHead(_Head):
    task, title, uses_decoder = "seg", "segmentation", True

    def __init__(self, channels: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, inputs: HeadInputs) -> Tensor:
        logits = self.classifier(self.dropout(inputs.fused))
        return F.interpolate(logits, size=inputs.size, mode="bilinear", align_corners=False)


@register_head
class ClassificationHead(_Head):
    task, title, uses_decoder = "cls", "classification", False

    def __init__(self, num_features: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(num_features, num_classes)

    def forward(self, inputs: HeadInputs) -> Tensor:
        return self.fc(self.dropout(inputs.pooled))


def _branch(channels: int, out: int, hidden: int, bias: float = 0.0) -> nn.Sequential:
    conv = nn.Conv2d(hidden, out, 1)
    nn.init.constant_(conv.bias, bias)
    return nn.Sequential(nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(inplace=True), conv)


@register_head
class CenterNetHead(_Head):
    """``heatmap`` [B,C,h,w] logits, ``size`` [B,2,h,w] (log of the box width, height in cells), ``offset``
    [B,2,h,w] (centre's position inside its cell, 0-1), all at the fused map's stride.

    Sizes are predicted in log space from a prior of ``SIZE_PRIOR`` cells, so an untrained head proposes
    boxes of a plausible size (a linear size head starts at 0 px and needs many steps to grow them)."""

    task, title, uses_decoder = "det", "detection", True
    #: the heatmap's initial foreground probability (focal-loss prior, as in CenterNet / RetinaNet)
    PRIOR: ClassVar[float] = 0.01
    #: the box side, in cells of the map (stride 4), that the size branch starts from
    SIZE_PRIOR: ClassVar[float] = 8.0

    def __init__(self, channels: int, num_classes: int = 1, hidden: int = 64) -> None:
        super().__init__()
        prior = float(torch.logit(torch.tensor(self.PRIOR)))
        self.heatmap = _branch(channels, num_classes, hidden, prior)
        self.box_size = _branch(channels, 2, hidden, math.log(self.SIZE_PRIOR))
        self.offset = _branch(channels, 2, hidden)

    def forward(self, inputs: HeadInputs) -> dict[str, Tensor]:
        f = inputs.fused
        return {"heatmap": self.heatmap(f), "size": self.box_size(f), "offset": self.offset(f)}


def soft_argmax(heatmaps: Tensor, size: tuple[int, int]) -> Tensor:
    """Expected ``[x, y]`` in input pixels of each softmax-normalised heatmap: ``[B,K,h,w]`` -> ``[B,K,2]``.

    Cell ``j`` of ``w`` covers input pixels ``[j, j + 1) * W / w``; its centre is the coordinate it votes.
    """
    b, k, h, w = heatmaps.shape
    prob = heatmaps.float().flatten(2).softmax(-1).view(b, k, h, w)
    xs = (torch.arange(w, device=heatmaps.device, dtype=prob.dtype) + 0.5) * (size[1] / w)
    ys = (torch.arange(h, device=heatmaps.device, dtype=prob.dtype) + 0.5) * (size[0] / h)
    return torch.stack([(prob.sum(2) * xs).sum(-1), (prob.sum(3) * ys).sum(-1)], dim=-1)


@register_head
class KeypointHead(_Head):
    """``points`` [B,K,2] in input pixels (and ``heatmap`` [B,K,h,w] in heatmap mode)."""

    task, title, uses_decoder = "kp", "keypoints", True
    MODES: ClassVar[tuple[str, ...]] = ("heatmap", "regression")

    def __init__(self, channels: int, num_points: int, num_features: int, mode: str = "regression",
                 hidden: int = 64) -> None:
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"keypoint head mode must be one of {self.MODES}, got {mode!r}")
        self.mode, self.num_points = mode, num_points
        self.uses_decoder = mode == "heatmap"  # type: ignore[misc]  # regression reads the pooled feature only
        if mode == "heatmap":
            self.heatmap = _branch(channels, num_points, hidden)
        else:
            self.fc = nn.Linear(num_features, 2 * num_points)

    def forward(self, inputs: HeadInputs) -> dict[str, Any]:
        h, w = inputs.size
        if self.mode == "heatmap":
            maps = self.heatmap(inputs.fused)
            return {"points": soft_argmax(maps, (h, w)), "heatmap": maps}
        rel = torch.sigmoid(self.fc(inputs.pooled).float()).view(-1, self.num_points, 2)
        return {"points": rel * rel.new_tensor([w, h])}
