"""The encoder: a plain timm ConvNeXt (V1 or V2) and its masked forward pass.

The encoder stays an unmodified timm module so its ``state_dict`` loads into
``timm.create_model(name, in_chans=1, num_classes=0)`` strictly and the published backbone needs no
sonofm code. Masked image modelling needs sparse convolution (FCMAE / SparK); we emulate it densely
by running timm's own submodules ourselves and multiplying by a binary mask wherever information
could cross from a masked position to a visible one:

- the input pixels of masked patches (only matters for overlapping stems),
- between stacked stem convolutions (overlapping stems) and after the stem,
- at the input of each block's depthwise convolution (the block input: the previous block's output,
  the stem or the downsample, all zeroed) and at each block's output,
- inside GRN (ConvNeXt-V2), on its input, so its spatial L2 statistics sum over visible positions only,
- after each downsample.

Zeroing the block output instead of right after the depthwise convolution is equivalent for visible
positions: everything between the two is per position except GRN, whose input is zeroed separately;
it saves one multiplication per block. Masked positions of every returned feature map are exactly 0,
as in a sparse tensor. Only multiplications are used (no ``nonzero``/gather), so the pass has static
shapes and works under ``torch.compile``.

Mask convention everywhere in sonofm: ``1 = visible``, ``0 = masked``, one value per 32x32 patch,
shape ``[B, H/32, W/32]``.
"""

from __future__ import annotations

from typing import NamedTuple

import timm
import torch
from timm.layers.mlp import GlobalResponseNormMlp, Mlp
from timm.models.convnext import ConvNeXt, ConvNeXtBlock
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

#: Side of a mask patch in pixels: the total stride of a ConvNeXt.
PATCH = 32


def create_encoder(
    name: str = "convnextv2_atto",
    in_chans: int = 1,
    drop_path_rate: float = 0.0,
    pretrained: bool = False,
    **kwargs,
) -> ConvNeXt:
    """A headless timm ConvNeXt (``num_classes=0``) with timm's own parameter names.

    Extra ``kwargs`` go to ``timm.create_model`` (e.g. ``conv_mlp=False``).
    """
    if not name.startswith(("convnext", "convnextv2")):
        raise ValueError(f"encoder {name!r} is not a timm convnext*/convnextv2* model")
    model = timm.create_model(
        name, pretrained=pretrained, in_chans=in_chans, num_classes=0, drop_path_rate=drop_path_rate, **kwargs
    )
    check_encoder(model)
    return model


def check_encoder(model: nn.Module) -> None:
    """Fail early on a model the masked forward cannot emulate exactly."""
    if not isinstance(model, ConvNeXt):
        raise TypeError(f"masked forward needs a timm ConvNeXt, got {type(model).__name__}")
    reductions = [f["reduction"] for f in model.feature_info]
    if reductions != [4, 8, 16, 32]:
        raise ValueError(f"masked forward needs output_stride 32 (stage reductions 4, 8, 16, 32), got {reductions}")
    for s, stage in enumerate(model.stages):
        for b, blk in enumerate(stage.blocks):
            if not isinstance(blk, ConvNeXtBlock) or not isinstance(blk.mlp, (Mlp, GlobalResponseNormMlp)):
                raise TypeError(f"stages.{s}.blocks.{b}: unsupported block/mlp type {type(blk.mlp).__name__}")
            if not isinstance(blk.shortcut, nn.Identity):
                raise ValueError(f"stages.{s}.blocks.{b}: strided/dilated blocks are not supported")


def expand_mask(mask: Tensor, size: tuple[int, int], dtype: torch.dtype) -> Tensor:
    """Patch mask ``[B, h, w]`` -> pixel mask ``[B, 1, H, W]`` by nearest-neighbour repetition."""
    b, h, w = mask.shape
    big_h, big_w = size
    fh, fw = big_h // h, big_w // w
    if fh * h != big_h or fw * w != big_w or fh < 1 or fw < 1:
        raise ValueError(f"feature size {size} is not a multiple of the mask grid {(h, w)}")
    m = mask.to(dtype)
    if fh == 1 and fw == 1:
        return m[:, None]
    return m[:, None, :, None, :, None].expand(b, 1, h, fh, w, fw).reshape(b, 1, big_h, big_w)


class _Masks:
    """Pixel masks per (size, dtype), built once per forward pass and reused by every block."""

    def __init__(self, mask: Tensor) -> None:
        self.mask = mask
        self._cache: dict[tuple[int, int, torch.dtype, bool], Tensor] = {}

    def at(self, x: Tensor, channels_last: bool = False) -> Tensor:
        if channels_last:
            key = (x.shape[1], x.shape[2], x.dtype, True)
        else:
            key = (x.shape[-2], x.shape[-1], x.dtype, False)
        m = self._cache.get(key)
        if m is None:
            m = expand_mask(self.mask, key[:2], x.dtype)
            if channels_last:
                m = m.permute(0, 2, 3, 1)
            self._cache[key] = m
        return m


class MaskedFeatures(NamedTuple):
    """Output of the masked forward: the final map (after ``norm_pre``) and the four stage maps."""

    last: Tensor
    stages: list[Tensor]


def _mlp(mlp: nn.Module, x: Tensor, masks: _Masks | None, channels_last: bool) -> Tensor:
    x = mlp.drop1(mlp.act(mlp.fc1(x)))
    if isinstance(mlp, GlobalResponseNormMlp):
        if masks is not None:
            x = x * masks.at(x, channels_last)
        x = mlp.grn(x)
    else:
        x = mlp.norm(x)
    return mlp.drop2(mlp.fc2(x))


def _block(blk: ConvNeXtBlock, x: Tensor, masks: _Masks | None) -> Tensor:
    """timm's ConvNeXtBlock.forward with the mask applied (input ``x`` is already zero where masked)."""
    shortcut = x
    x = blk.conv_dw(x)
    if blk.use_conv_mlp:
        x = _mlp(blk.mlp, blk.norm(x), masks, channels_last=False)
    else:
        x = x.permute(0, 2, 3, 1)
        x = _mlp(blk.mlp, blk.norm(x), masks, channels_last=True)
        x = x.permute(0, 3, 1, 2)
    if blk.gamma is not None:
        x = x.mul(blk.gamma.reshape(1, -1, 1, 1))
    x = blk.drop_path(x) + blk.shortcut(shortcut)
    if masks is not None:
        x = x * masks.at(x)
    return x


def masked_forward_features(model: ConvNeXt, x: Tensor, mask: Tensor | None) -> MaskedFeatures:
    """Run timm ConvNeXt ``model`` on ``x`` ``[B, C, H, W]`` with patch mask ``mask`` ``[B, H/32, W/32]``.

    ``mask`` is 1 where visible, 0 where masked (float or bool); ``None`` runs the plain dense network,
    as does an all-ones mask (the result then equals ``model.forward_features(x)``).
    """
    if mask is not None:
        h, w = x.shape[-2] // PATCH, x.shape[-1] // PATCH
        if mask.shape != (x.shape[0], h, w) or x.shape[-2] % PATCH or x.shape[-1] % PATCH:
            raise ValueError(
                f"mask shape {tuple(mask.shape)} does not fit input {tuple(x.shape)}: expected "
                f"({x.shape[0]}, {h}, {w}) and input sides divisible by {PATCH}"
            )
        masks: _Masks | None = _Masks(mask)
        x = x * masks.at(x)
    else:
        masks = None
    convs = [i for i, layer in enumerate(model.stem) if isinstance(layer, nn.Conv2d)]
    for i, layer in enumerate(model.stem):
        x = layer(x)
        if masks is not None and i in convs[:-1]:  # between stacked (overlapping) stem convs
            x = x * masks.at(x)
    if masks is not None:
        x = x * masks.at(x)
    stages = []
    for stage in model.stages:
        if not isinstance(stage.downsample, nn.Identity):
            x = stage.downsample(x)
            if masks is not None:
                x = x * masks.at(x)
        for blk in stage.blocks:
            if stage.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(_block, blk, x, masks, use_reentrant=False)
            else:
                x = _block(blk, x, masks)
        stages.append(x)
    last = model.norm_pre(x)
    if masks is not None and not isinstance(model.norm_pre, nn.Identity):
        last = last * masks.at(last)
    return MaskedFeatures(last, stages)


class MaskedConvNeXt(nn.Module):
    """Convenience wrapper: ``forward(x, mask)`` -> :class:`MaskedFeatures` around a timm ConvNeXt.

    The timm model is kept as ``self.model``; export ``wrapper.model.state_dict()`` for plain timm.
    """

    def __init__(self, model: ConvNeXt) -> None:
        super().__init__()
        check_encoder(model)
        self.model = model

    def forward(self, x: Tensor, mask: Tensor | None = None) -> MaskedFeatures:
        return masked_forward_features(self.model, x, mask)
