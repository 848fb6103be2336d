"""The prompt's vocabulary and type views on the finetuning side: the organ list, and the ``local`` /
``location`` views made from a sample's mask during training.

Type augmentation (:func:`apply_type`) is generated from masks during training; evaluation uses
``whole`` only. Which types a task trains with is its kind's ``prompt_types``: ``location`` only for
classification (for segmentation it would hand the answer to the model), ``whole`` only for boxes
and keypoints (a crop would move their targets). An image with an empty mask stays ``whole``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sonofm.models.prompt_model import TYPES

__all__ = ["taxonomy_organs", "sample_type", "apply_type"]


def taxonomy_organs(path: str | None = None) -> list[str]:
    """The organ list of the taxonomy, in its (stable) order."""
    from sonofm.datasets.taxonomy import Taxonomy

    return list(Taxonomy.load(path).organ_region)




def sample_type(types: Sequence[str], has_mask: bool, rng: np.random.Generator, p_whole: float = 0.5) -> str:
    """Training-time prompt type: ``whole`` with probability ``p_whole`` (always without a mask), else one
    of the other ``types`` the task trains with (its kind's ``prompt_types``)."""
    choices = tuple(t for t in types if t != "whole")
    if not has_mask or not choices or rng.random() < p_whole:
        return "whole"
    return str(rng.choice(choices))


def _bbox(mask: Tensor) -> tuple[int, int, int, int] | None:
    ys, xs = torch.nonzero(mask > 0, as_tuple=True)
    if ys.numel() == 0:
        return None
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def apply_type(
    image: Tensor, mask: Tensor | None, kind: str, margin: float = 0.25, alpha: float = 0.4
) -> tuple[Tensor, Tensor | None, str]:
    """Make the ``kind`` view of one sample: ``image`` [C,S,S] float, ``mask`` [S,S] long or None.

    ``local``: square crop around the mask's bounding box (``margin`` of its size added on each
    side), resized back to ``S`` (image bilinear, mask nearest). ``location``: the mask blended into
    the image with weight ``alpha``. Returns ``(image, mask, kind actually applied)``; without a
    foreground the sample stays ``whole``.
    """
    if kind == "whole":
        return image, mask, "whole"
    if kind not in TYPES:
        raise ValueError(f"type must be one of {TYPES}, got {kind!r}")
    box = _bbox(mask) if mask is not None else None
    if box is None:
        return image, mask, "whole"
    if kind == "location":
        fg = (mask > 0).to(image.dtype)[None]
        return (1 - alpha) * image + alpha * fg, mask, "location"
    size_h, size_w = image.shape[-2:]
    y0, y1, x0, x1 = box
    side = max(y1 - y0, x1 - x0)
    side = min(max(int(round(side * (1 + 2 * margin))), 8), min(size_h, size_w))
    cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
    top = int(np.clip(cy - side // 2, 0, size_h - side))
    left = int(np.clip(cx - side // 2, 0, size_w - side))
    crop = image[:, top : top + side, left : left + side]
    img = F.interpolate(crop[None], size=(size_h, size_w), mode="bilinear", align_corners=False)[0]
    m = mask[top : top + side, left : left + side]
    m = F.interpolate(m[None, None].float(), size=(size_h, size_w), mode="nearest")[0, 0].long()
    return img, m, "local"
