"""Prompt-conditioned universal model (UniUSNet / UltraUPConvNet style): one encoder, one head per dataset.

Four prompts describe what a sample asks for:

- position: the organ, from the taxonomy's organ list (``configs/taxonomy.yaml``),
- task: the head's token (``seg``, ``cls``, ``det``, ``kp``: :data:`sonofm.models.heads.HEADS`),
- type: ``whole`` image, ``local`` crop around the mask, ``location`` overlay of the mask,
- nature: ``tumour`` or ``organ``.

Each is one-hot encoded; the concatenation goes through one linear layer per injection point, giving
a channel bias for each of the four encoder pyramid levels and for the pooled feature. Every bias is
multiplied by a learnable gate initialised at 0, so at initialisation the model is exactly the
prompt-free model (the pretrained encoder's features are not disturbed) and the prompts earn their
influence during training. ``use_prompts=False`` gives the prompt-free variant with the same heads.

Heads (:mod:`sonofm.models.heads`): one per dataset, FM_UIA's multi-head design. The heads that read a
dense map share one UPerNet decoder (PPM + FPN fused at stride 4); classification reads the pooled
last stage (timm's head pool + norm). Which prompt types a task trains with, and how a view is
made, is the finetuning side's (``sonofm.finetune.prompt_types``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from sonofm.models.heads import HEADS, ClassificationHead, HeadInputs, SegmentationHead
from sonofm.models.input_norm import InputNorm
from sonofm.models.upernet import UPerNetHead, encoder_pyramid, pyramid_channels

__all__ = [
    "TASKS",
    "TYPES",
    "NATURES",
    "Prompt",
    "PromptVocab",
    "PromptBias",
    "PromptModel",
]

#: the prompt's task values: every registered head's token, in registration order (the one-hot layout)
TASKS: tuple[str, ...] = tuple(HEADS)
TYPES: tuple[str, ...] = ("whole", "local", "location")
NATURES: tuple[str, ...] = ("tumour", "organ")


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
    """Encoder + prompt biases + shared UPerNet decoder + one head per dataset.

    ``heads`` maps dataset name -> head module (:mod:`sonofm.models.heads`). ``seg_heads`` /
    ``cls_heads`` (dataset name -> number of classes, background included for segmentation) are the
    short form for the two plain heads. ``forward(x, dataset, task, prompts)`` returns that dataset's
    head output: segmentation logits at the input size, class logits, or the dict a detection or
    keypoint head returns. ``task`` (optional) is checked against the head's token.
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
        heads: Mapping[str, nn.Module] | None = None,
    ) -> None:
        super().__init__()
        all_heads: dict[str, nn.Module] = dict(heads or {})
        chans = pyramid_channels(encoder)
        self.num_features = int(getattr(encoder, "num_features", chans[-1]))
        for k, n in (seg_heads or {}).items():
            all_heads[k] = SegmentationHead(decoder_channels, n, dropout)
        for k, n in (cls_heads or {}).items():
            all_heads[k] = ClassificationHead(self.num_features, n, dropout)
        if not all_heads:
            raise ValueError("PromptModel needs at least one head")
        self.input_norm = InputNorm(encoder)  # the encoder's own mean / std: images come in [0, 1]
        self.encoder = encoder
        self.vocab = PromptVocab(organs)
        self.use_prompts = use_prompts
        self.prompt = PromptBias(self.vocab.dim, [*chans, self.num_features], gate) if use_prompts else None
        dense = any(getattr(h, "uses_decoder", False) for h in all_heads.values())
        self.decoder = UPerNetHead(chans, 0, decoder_channels, norm=norm, dropout=0.0) if dense else None
        self.heads = nn.ModuleDict(all_heads)

    def _biases(self, prompts: Sequence[Prompt] | Tensor | None, batch: int, device: torch.device) -> list[Tensor] | None:
        if self.prompt is None:
            return None
        if prompts is None:
            raise ValueError("this PromptModel uses prompts: pass one Prompt per sample (or use_prompts=False)")
        onehot = prompts if isinstance(prompts, Tensor) else self.vocab.encode(prompts)
        if onehot.shape != (batch, self.vocab.dim):
            raise ValueError(f"prompts give shape {tuple(onehot.shape)}, expected ({batch}, {self.vocab.dim})")
        return self.prompt(onehot.to(device))

    def head(self, dataset: str, task: str | None = None) -> nn.Module:
        """The head of ``dataset``; with ``task``, one of that kind, else a KeyError naming the heads there are."""
        head = self.heads[dataset] if dataset in self.heads else None
        if head is None or (task is not None and head.task != task):
            title = f"{HEADS[task].title} " if task in HEADS else ""
            there = sorted(k for k, h in self.heads.items() if task is None or h.task == task)
            raise KeyError(f"no {title}head for dataset {dataset!r}; heads: {there}")
        return head

    def forward(
        self, x: Tensor, dataset: str, task: str | None = None, prompts: Sequence[Prompt] | Tensor | None = None
    ) -> Any:
        head = self.head(dataset, task)
        biases = self._biases(prompts, x.shape[0], x.device)
        feats = encoder_pyramid(self.encoder, self.input_norm(x))
        if biases is not None:
            feats = [f + b[:, :, None, None].to(f.dtype) for f, b in zip(feats, biases[:4])]
        pooled = self.encoder.forward_head(self.encoder.norm_pre(feats[-1]), pre_logits=True)
        if biases is not None:
            pooled = pooled + biases[4].to(pooled.dtype)
        decoder = self.decoder
        return head(HeadInputs(tuple(x.shape[-2:]), pooled, lambda: decoder.fused(feats)))
