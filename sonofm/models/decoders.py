"""Light decoders that predict the pixels of masked 32x32 patches.

- ``"fcmae"`` (ConvNeXt-V2): 1x1 projection of the last stage, a learnable mask token at masked
  positions, one ConvNeXt-V2 block, a 1x1 prediction of the 32x32xC pixels of every patch. Cheap.
- ``"spark"`` (SparK): uses all four stages, so the shallow stages also learn to carry detail that
  dense downstream tasks (segmentation) need. Each stage is normalised, its masked positions filled
  with a mask token of that scale, projected to the decoder width of that scale and added to the
  upsampled coarser path; up-blocks (transposed convolution x2, then two 3x3 convolutions) go from
  stride 32 to ``out_stride`` (4 by default, SparK's 1 allowed), the width halving at each step; a
  1x1 convolution predicts the pixels of each position (pixel shuffle).

Both return predictions ``[B, L, 32*32*C]`` in the patch layout of :func:`sonofm.models.targets.patchify`.
Masks follow the sonofm convention (1 visible, 0 masked) on the 32-pixel grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d, trunc_normal_
from timm.models.convnext import ConvNeXtBlock
from torch import Tensor, nn

from sonofm.models.encoder import PATCH, expand_mask
from sonofm.models.targets import patchify

DECODER_KINDS = ("fcmae", "spark")


class FCMAEDecoder(nn.Module):
    """FCMAE's decoder on the last stage ``[B, enc_dim, H/32, W/32]``."""

    def __init__(self, enc_dim: int, dec_dim: int = 512, depth: int = 1, in_chans: int = 1) -> None:
        super().__init__()
        self.in_chans = in_chans
        self.proj = nn.Conv2d(enc_dim, dec_dim, kernel_size=1)
        self.mask_token = nn.Parameter(torch.zeros(1, dec_dim, 1, 1))
        self.blocks = nn.Sequential(
            *[ConvNeXtBlock(dec_dim, conv_mlp=True, use_grn=True, ls_init_value=None) for _ in range(depth)]
        )
        self.pred = nn.Conv2d(dec_dim, PATCH * PATCH * in_chans, kernel_size=1)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, stages: list[Tensor], mask: Tensor) -> Tensor:
        x = self.proj(stages[-1])
        m = mask.to(x.dtype)[:, None]
        x = x * m + self.mask_token.to(x.dtype) * (1.0 - m)
        x = self.pred(self.blocks(x))
        return x.flatten(2).transpose(1, 2)


class _UpBlock(nn.Module):
    """x2 transposed convolution, then two 3x3 convolutions with per-pixel LayerNorm and GELU.

    LayerNorm instead of SparK's BatchNorm: no cross-sample statistics, so no SyncBN under DDP."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cin, kernel_size=4, stride=2, padding=1)
        self.conv = nn.Sequential(
            nn.Conv2d(cin, cin, 3, padding=1, bias=False),
            LayerNorm2d(cin),
            nn.GELU(),
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            LayerNorm2d(cout),
            nn.GELU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.up(x))


class SparKDecoder(nn.Module):
    """SparK-style hierarchical decoder over the four stages (strides 4, 8, 16, 32).

    ``out_stride`` (4, 2 or 1): after the stride-4 fusion, ``log2(4 / out_stride)`` more up-blocks, a
    3x3 refinement and a 1x1 convolution predicting ``out_stride**2 * C`` pixels per position
    (pixel shuffle). SparK goes to stride 1; stride 4 (default) drops the two full-resolution blocks
    that would cost more than the whole atto encoder on CPU.
    """

    def __init__(
        self, enc_dims: list[int] | tuple[int, ...], dec_dim: int = 512, in_chans: int = 1, out_stride: int = 4
    ) -> None:
        super().__init__()
        if len(enc_dims) != 4:
            raise ValueError(f"SparK decoder needs four stage widths, got {list(enc_dims)}")
        if out_stride not in (1, 2, 4):
            raise ValueError(f"SparK decoder out_stride must be 1, 2 or 4, got {out_stride}")
        self.in_chans = in_chans
        self.out_stride = out_stride
        n_extra = {4: 0, 2: 1, 1: 2}[out_stride]
        # width at stride 32, 16, 8, 4, then 2, 1: halving, at least 16
        widths = [max(16, dec_dim // 2**i) for i in range(4 + n_extra)]
        deep_first = list(enc_dims)[::-1]
        self.norms = nn.ModuleList([LayerNorm2d(c) for c in deep_first])
        self.mask_tokens = nn.ParameterList([nn.Parameter(torch.zeros(1, c, 1, 1)) for c in deep_first])
        self.projs = nn.ModuleList(
            [nn.Conv2d(c, widths[i], kernel_size=1 if i == 0 else 3, padding=0 if i == 0 else 1)
             for i, c in enumerate(deep_first)]
        )
        self.ups = nn.ModuleList([_UpBlock(widths[i], widths[i + 1]) for i in range(3 + n_extra)])
        self.refine = nn.Sequential(
            nn.Conv2d(widths[-1], widths[-1], 3, padding=1, bias=False), LayerNorm2d(widths[-1]), nn.GELU()
        )
        self.pred = nn.Conv2d(widths[-1], out_stride * out_stride * in_chans, kernel_size=1)
        for t in self.mask_tokens:
            trunc_normal_(t, std=0.02)

    def forward(self, stages: list[Tensor], mask: Tensor) -> Tensor:
        x: Tensor | None = None
        for i, feat in enumerate(stages[::-1]):
            m = expand_mask(mask, feat.shape[-2:], feat.dtype)
            f = self.norms[i](feat)
            f = f * m + self.mask_tokens[i].to(f.dtype) * (1.0 - m)
            f = self.projs[i](f)
            x = f if x is None else x + f
            if i < 3:
                x = self.ups[i](x)
        for up in self.ups[3:]:
            x = up(x)
        x = self.pred(self.refine(x))
        if self.out_stride > 1:
            x = F.pixel_shuffle(x, self.out_stride)
        return patchify(x, PATCH)


def create_decoder(
    kind: str, enc_dims: list[int], dec_dim: int = 512, in_chans: int = 1, depth: int = 1, out_stride: int = 4
) -> nn.Module:
    """``"fcmae"`` (``depth`` blocks) or ``"spark"`` (prediction at ``out_stride``) decoder for an
    encoder with stage widths ``enc_dims``."""
    if kind == "fcmae":
        return FCMAEDecoder(enc_dims[-1], dec_dim, depth=depth, in_chans=in_chans)
    if kind == "spark":
        return SparKDecoder(enc_dims, dec_dim, in_chans=in_chans, out_stride=out_stride)
    raise ValueError(f"unknown decoder {kind!r}; choose one of {', '.join(DECODER_KINDS)}")
