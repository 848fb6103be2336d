"""The input normalisation an encoder was trained with, carried on the encoder itself.

Every sonofm pipeline feeds images in [0, 1]. Pretraining normalises them with ``(x - 0.5) / 0.25``
before the encoder, and export writes that mean / std into timm's ``pretrained_cfg``. A downstream
model that fed the same encoder raw [0, 1] images would see inputs shifted by two standard
deviations and shrunk four-fold: the pretrained weights would look worse than random ones. So the
statistics travel *with the encoder*, in timm's own place (``model.pretrained_cfg["mean"/"std"]``,
what ``timm.data.resolve_data_config(model=...)`` reads), and every downstream forward
(:class:`~sonofm.models.upernet.SegModel`, :class:`~sonofm.models.prompt_model.PromptModel`,
:func:`~sonofm.evaluation.features.pooled_features`) normalises through :class:`InputNorm`.
:func:`sonofm.models.loading.load_encoder` sets them for every kind of encoder, the random
baseline included, so both sides of a comparison get identical preprocessing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["INPUT_MEAN", "INPUT_STD", "set_input_stats", "input_stats", "adapt_stats", "InputNorm"]

#: Mean and std of [0, 1] B-mode intensities the pretraining normalises with (one grey channel).
INPUT_MEAN = 0.5
INPUT_STD = 0.25


def _per_channel(values: float | Sequence[float], in_chans: int, what: str) -> tuple[float, ...]:
    vals = (float(values),) if isinstance(values, (int, float)) else tuple(float(v) for v in values)
    if len(vals) == 1:
        vals = vals * in_chans
    if len(vals) != in_chans:
        raise ValueError(f"{what} has {len(vals)} values for a {in_chans}-channel encoder")
    return vals


def _in_chans(encoder: nn.Module) -> int:
    stem = getattr(encoder, "stem", None)
    first = stem[0] if isinstance(stem, nn.Sequential) else None
    if isinstance(first, nn.Conv2d):
        return int(first.in_channels)
    conv = next((m for m in encoder.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise TypeError(f"{type(encoder).__name__}: no Conv2d found to read the number of input channels from")
    return int(conv.in_channels)


def adapt_stats(mean: float | Sequence[float], std: float | Sequence[float], from_chans: int,
                to_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Statistics of ``from_chans``-channel weights for the same weights adapted to ``to_chans`` channels.

    timm's stem adaptation (``adapt_input_conv``) *sums* the RGB kernels for one grey channel, so a grey
    image ``x`` through the adapted stem equals ``[x, x, x]`` through the original one exactly when all
    three channels are normalised alike: the grey mean and std are the means of the per-channel ones
    (ImageNet's (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225) become 0.449 / 0.226). One grey channel
    going to three is repeated. Values for another channel count than ``from_chans`` are an error.
    """
    m, s = _per_channel(mean, from_chans, "mean"), _per_channel(std, from_chans, "std")
    if from_chans == to_chans:
        return m, s
    if to_chans == 1:
        return (sum(m) / len(m),), (sum(s) / len(s),)
    if from_chans == 1:
        return m * to_chans, s * to_chans
    raise ValueError(f"cannot carry {from_chans}-channel statistics to {to_chans} channels")


def set_input_stats(encoder: nn.Module, mean: float | Sequence[float] = INPUT_MEAN,
                    std: float | Sequence[float] = INPUT_STD) -> nn.Module:
    """Record the encoder's input mean / std in its ``pretrained_cfg`` (timm's place); returns it."""
    chans = _in_chans(encoder)
    m, s = _per_channel(mean, chans, "mean"), _per_channel(std, chans, "std")
    if any(v <= 0 for v in s):
        raise ValueError(f"std must be > 0, got {s}")
    cfg = dict(getattr(encoder, "pretrained_cfg", None) or {})
    size = cfg.get("input_size") or (chans, 224, 224)
    cfg.update(mean=m, std=s, input_size=(chans, *tuple(size)[1:]))
    encoder.pretrained_cfg = cfg
    return encoder


def input_stats(encoder: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The ``(mean, std)`` per input channel recorded on ``encoder``.

    Raises ``ValueError`` when none is recorded or it does not fit the encoder's channels (a plain
    ``timm.create_model(..., in_chans=1)`` keeps ImageNet's three-channel statistics): load encoders
    with :func:`sonofm.models.loading.load_encoder` or call :func:`set_input_stats`.
    """
    chans = _in_chans(encoder)
    cfg = getattr(encoder, "pretrained_cfg", None) or {}
    if "mean" not in cfg or "std" not in cfg:
        raise ValueError(f"{type(encoder).__name__} has no input mean/std in pretrained_cfg; "
                         "load it with sonofm.models.loading.load_encoder or call set_input_stats")
    try:
        return _per_channel(cfg["mean"], chans, "mean"), _per_channel(cfg["std"], chans, "std")
    except ValueError as e:
        raise ValueError(
            f"{type(encoder).__name__}: pretrained_cfg {e} (timm's default statistics for another channel count?); "
            "load it with sonofm.models.loading.load_encoder or call sonofm.models.input_norm.set_input_stats"
        ) from None


class InputNorm(nn.Module):
    """``(x - mean) / std`` per channel, with the statistics read from an encoder (not saved in state dicts)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        mean, std = input_stats(encoder)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"
