"""Prompt-conditioned segmentation and classification (UniUSNet / UltraUPConvNet style).

Four prompts describe what a sample asks for:

- position: the organ, from the taxonomy's organ list (``configs/taxonomy.yaml``),
- task: ``seg`` or ``cls``,
- type: ``whole`` image, ``local`` crop around the mask, ``location`` overlay of the mask,
- nature: ``tumour`` or ``organ``.

Each is one-hot encoded; the concatenation goes through one linear layer per injection point, giving
a channel bias for each of the four encoder pyramid levels and for the pooled classification
feature. Every bias is multiplied by a learnable gate initialised at 0, so at initialisation the
model is exactly the prompt-free model (the pretrained encoder's features are not disturbed) and
the prompts earn their influence during training. ``use_prompts=False`` gives the prompt-free
variant with the same heads.

Heads: one UPerNet decoder shared by all segmentation datasets with a 1x1 classifier per dataset,
and one linear classification head per dataset on the pooled last stage (timm's head pool + norm).

Type augmentation (:func:`apply_type`) is generated from masks during training; evaluation uses
``whole`` only. ``location`` is used for classification only (for segmentation it would hand the
answer to the model); an image with an empty mask falls back to ``whole``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sonofm.finetune.upernet import UPerNetHead, encoder_pyramid, pyramid_channels
from sonofm.models.input_norm import InputNorm

__all__ = [
    "TASKS",
    "TYPES",
    "NATURES",
    "Prompt",
    "PromptVocab",
    "PromptBias",
    "PromptModel",
    "taxonomy_organs",
    "apply_type",
    "sample_type",
]

TASKS: tuple[str, ...] = ("seg", "cls")
TYPES: tuple[str, ...] = ("whole", "local", "location")
NATURES: tuple[str, ...] = ("tumour", "organ")


def taxonomy_organs(path: str | None = None) -> list[str]:
    """The organ list of the taxonomy, in its (stable) order."""
    from sonofm.datasets.taxonomy import Taxonomy

    return list(Taxonomy.load(path).organ_region)


@dataclass(frozen=True)
class Prompt:
    organ: str
    task: str
    type: str = "whole"
    nature: str = "organ"


class PromptVocab:
    """One-hot encoding of :class:`Prompt` (position | task | type | nature, concatenated)."""

    def __init__(self, organs: Sequence[str]) -> None:
        if not organs:
            raise ValueError("PromptVocab needs at least one organ")
        self.organs = list(organs)
        self.parts: list[tuple[str, list[str]]] = [
            ("organ", self.organs),
            ("task", list(TASKS)),
            ("type", list(TYPES)),
            ("nature", list(NATURES)),
        ]
        self.dim = sum(len(v) for _, v in self.parts)

    def encode(self, prompts: Sequence[Prompt]) -> Tensor:
        """``[B, dim]`` float one-hot rows; an unknown value is an error naming the valid ones."""
        out = torch.zeros(len(prompts), self.dim)
        for i, p in enumerate(prompts):
            offset = 0
            for field, values in self.parts:
                v = getattr(p, field)
                if v not in values:
                    raise ValueError(f"prompt {field}={v!r} is not one of {values}")
                out[i, offset + values.index(v)] = 1.0
                offset += len(values)
        return out


class PromptBias(nn.Module):
    """One-hot prompt -> gated channel biases, one per injection point (``channels``)."""

    def __init__(self, prompt_dim: int, channels: Sequence[int], gate: str = "scalar") -> None:
        super().__init__()
        if gate not in ("scalar", "channel"):
            raise ValueError(f"gate must be 'scalar' or 'channel', got {gate!r}")
        self.proj = nn.ModuleList(nn.Linear(prompt_dim, c) for c in channels)
        self.gates = nn.ParameterList(nn.Parameter(torch.zeros(1 if gate == "scalar" else c)) for c in channels)

    def forward(self, onehot: Tensor) -> list[Tensor]:
        return [g * proj(onehot) for proj, g in zip(self.proj, self.gates)]


class PromptModel(nn.Module):
    """Encoder + prompt biases + shared UPerNet decoder + per-dataset seg / cls heads.

    ``seg_heads`` / ``cls_heads`` map dataset name -> number of classes (background included for
    segmentation). ``forward(x, dataset, task, prompts)`` returns segmentation logits at the input
    size (``task="seg"``) or class logits (``task="cls"``).
    """

    def __init__(
        self,
        encoder: nn.Module,
        organs: Sequence[str],
        seg_heads: Mapping[str, int] | None = None,
        cls_heads: Mapping[str, int] | None = None,
        decoder_channels: int = 128,
        use_prompts: bool = True,
        gate: str = "scalar",
        norm: str = "gn",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        seg_heads, cls_heads = dict(seg_heads or {}), dict(cls_heads or {})
        if not seg_heads and not cls_heads:
            raise ValueError("PromptModel needs at least one segmentation or classification head")
        self.input_norm = InputNorm(encoder)  # the encoder's own mean / std: images come in [0, 1]
        self.encoder = encoder
        self.vocab = PromptVocab(organs)
        chans = pyramid_channels(encoder)
        self.num_features = int(getattr(encoder, "num_features", chans[-1]))
        self.use_prompts = use_prompts
        self.prompt = PromptBias(self.vocab.dim, [*chans, self.num_features], gate) if use_prompts else None
        self.decoder = UPerNetHead(chans, 0, decoder_channels, norm=norm, dropout=dropout) if seg_heads else None
        self.seg_heads = nn.ModuleDict({k: nn.Conv2d(decoder_channels, n, 1) for k, n in seg_heads.items()})
        self.cls_heads = nn.ModuleDict({k: nn.Linear(self.num_features, n) for k, n in cls_heads.items()})
        self.cls_dropout = nn.Dropout(dropout)

    def _biases(self, prompts: Sequence[Prompt] | Tensor | None, batch: int, device: torch.device) -> list[Tensor] | None:
        if self.prompt is None:
            return None
        if prompts is None:
            raise ValueError("this PromptModel uses prompts: pass one Prompt per sample (or use_prompts=False)")
        onehot = prompts if isinstance(prompts, Tensor) else self.vocab.encode(prompts)
        if onehot.shape != (batch, self.vocab.dim):
            raise ValueError(f"prompts give shape {tuple(onehot.shape)}, expected ({batch}, {self.vocab.dim})")
        return self.prompt(onehot.to(device))

    def forward(
        self, x: Tensor, dataset: str, task: str, prompts: Sequence[Prompt] | Tensor | None = None
    ) -> Tensor:
        biases = self._biases(prompts, x.shape[0], x.device)
        feats = encoder_pyramid(self.encoder, self.input_norm(x))
        if biases is not None:
            feats = [f + b[:, :, None, None].to(f.dtype) for f, b in zip(feats, biases[:4])]
        if task == "seg":
            if dataset not in self.seg_heads:
                raise KeyError(f"no segmentation head for dataset {dataset!r}; heads: {sorted(self.seg_heads)}")
            logits = self.seg_heads[dataset](self.decoder.dropout(self.decoder.fused(feats)))
            return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        if task == "cls":
            if dataset not in self.cls_heads:
                raise KeyError(f"no classification head for dataset {dataset!r}; heads: {sorted(self.cls_heads)}")
            pooled = self.encoder.forward_head(self.encoder.norm_pre(feats[-1]), pre_logits=True)
            if biases is not None:
                pooled = pooled + biases[4].to(pooled.dtype)
            return self.cls_heads[dataset](self.cls_dropout(pooled))
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")


# --------------------------------------------------------------------------- type augmentation


def sample_type(task: str, has_mask: bool, rng: np.random.Generator, p_whole: float = 0.5) -> str:
    """Training-time prompt type: ``whole`` with probability ``p_whole``, else local (or location for cls)."""
    if not has_mask or rng.random() < p_whole:
        return "whole"
    choices = ("local", "location") if task == "cls" else ("local",)
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
