"""UPerNet segmentation head on the four stages of a timm ConvNeXt.

Pyramid pooling (scales 1, 2, 3, 6) on the last stage, an FPN top-down path over the four stages,
all levels upsampled to stride 4 and fused by a 3x3 convolution, then a 1x1 classifier; logits are
upsampled to the input size. Normalisation defaults to GroupNorm rather than the original BatchNorm:
finetuning batches here are small (and a 1x1 pooled map with batch 1 breaks BatchNorm in training);
``norm="bn"`` gives the original layout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sonofm.models.input_norm import InputNorm

__all__ = ["ConvNormAct", "UPerNetHead", "SegModel", "encoder_pyramid", "pyramid_channels"]


def _norm(kind: str, channels: int, groups: int | None = None) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        return nn.GroupNorm(groups or math.gcd(32, channels), channels)
    raise ValueError(f"norm must be 'bn' or 'gn', got {kind!r}")


class ConvNormAct(nn.Sequential):
    """Conv + norm + ReLU; ``groups`` overrides the GroupNorm group count."""

    def __init__(self, cin: int, cout: int, k: int, norm: str = "gn", groups: int | None = None) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), _norm(norm, cout, groups), nn.ReLU(inplace=True)
        )


def pyramid_channels(encoder: nn.Module) -> list[int]:
    """Channels of the four stages of a timm model (from ``feature_info``)."""
    info = getattr(encoder, "feature_info", None)
    if not info:
        raise TypeError(f"{type(encoder).__name__} has no timm feature_info: cannot build a pyramid head")
    chans = [int(f["num_chs"]) for f in info]
    if len(chans) != 4:
        raise ValueError(f"expected 4 encoder stages, got {len(chans)} ({chans})")
    return chans


def encoder_pyramid(encoder: nn.Module, x: Tensor) -> list[Tensor]:
    """The four stage outputs (strides 4, 8, 16, 32) of a timm ConvNeXt, via ``forward_intermediates``."""
    if x.shape[-1] % 32 or x.shape[-2] % 32:
        raise ValueError(f"input sides must be multiples of 32, got {tuple(x.shape[-2:])}")
    return list(encoder.forward_intermediates(x, intermediates_only=True))


class UPerNetHead(nn.Module):
    """PPM + FPN decoder: ``forward(features) -> logits`` at stride 4 of the input (``num_classes=0``:
    the fused feature map)."""

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: int = 128,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        norm: str = "gn",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        in_channels = list(in_channels)
        self.pool_scales = tuple(pool_scales)
        # one GroupNorm group in the pooled branches: at scale 1 a map is 1x1, and small groups would
        # normalise each value to zero
        self.ppm = nn.ModuleList(ConvNormAct(in_channels[-1], channels, 1, norm, 1) for _ in self.pool_scales)
        self.ppm_bottleneck = ConvNormAct(in_channels[-1] + len(self.pool_scales) * channels, channels, 3, norm)
        self.lateral = nn.ModuleList(ConvNormAct(c, channels, 1, norm) for c in in_channels[:-1])
        self.fpn = nn.ModuleList(ConvNormAct(channels, channels, 3, norm) for _ in in_channels[:-1])
        self.fuse = ConvNormAct(len(in_channels) * channels, channels, 3, norm)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        # num_classes=0: no classifier (a caller with several heads, e.g. the prompt model, adds its own)
        self.classifier = nn.Conv2d(channels, num_classes, 1) if num_classes > 0 else nn.Identity()
        self.channels = channels

    def _ppm(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        outs = [x]
        for scale, conv in zip(self.pool_scales, self.ppm):
            y = conv(F.adaptive_avg_pool2d(x, scale))
            outs.append(F.interpolate(y, size=size, mode="bilinear", align_corners=False))
        return self.ppm_bottleneck(torch.cat(outs, 1))

    def fused(self, feats: Sequence[Tensor]) -> Tensor:
        """The fused stride-4 feature map ``[B, channels, H/4, W/4]`` (before the classifier)."""
        lats = [conv(f) for conv, f in zip(self.lateral, feats[:-1])] + [self._ppm(feats[-1])]
        for i in range(len(lats) - 1, 0, -1):  # top-down
            lats[i - 1] = lats[i - 1] + F.interpolate(
                lats[i], size=lats[i - 1].shape[-2:], mode="bilinear", align_corners=False
            )
        outs = [conv(lat) for conv, lat in zip(self.fpn, lats[:-1])] + [lats[-1]]
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [F.interpolate(o, size=size, mode="bilinear", align_corners=False) for o in outs[1:]]
        return self.fuse(torch.cat(outs, 1))

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        return self.classifier(self.dropout(self.fused(feats)))


class SegModel(nn.Module):
    """Encoder + UPerNet: ``forward(x [B,C,H,W]) -> logits [B, num_classes, H, W]``."""

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        channels: int = 128,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        norm: str = "gn",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background included), got {num_classes}")
        self.input_norm = InputNorm(encoder)  # the encoder's own mean / std: images come in [0, 1]
        self.encoder = encoder
        self.num_classes = num_classes
        self.decoder = UPerNetHead(pyramid_channels(encoder), num_classes, channels, pool_scales, norm, dropout)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: images in [0, 1]; normalised here with the encoder's recorded input statistics."""
        logits = self.decoder(encoder_pyramid(self.encoder, self.input_norm(x)))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
