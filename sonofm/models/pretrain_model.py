"""The pretraining model: masking + masked timm ConvNeXt + decoder + target + hierarchical heads.

Built from plain arguments (the training loop maps the typed config onto them). Inputs are images in
**[0, 1]** (as decoded from the shards); the model normalises them for the encoder with
``(x - input_mean) / input_std`` (export must write the same mean/std into timm's pretrained_cfg)
and computes the reconstruction target from the [0, 1] pixels.

The hierarchical heads pool the final feature map over *visible in-field* patches (masked patches
carry no information; black patches outside the acoustic field would dilute the mean), normalise it
with the timm encoder's own ``head.norm`` (so the exported backbone's pre-logits norm is trained) and
score the taxonomy leaves. With ``hier_weight == 0`` no heads are built and ``head.norm`` is frozen
(unused parameters would break DDP), which makes the model plain FCMAE/SparK.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from sonofm.models.decoders import create_decoder
from sonofm.models.encoder import PATCH, create_encoder, expand_mask, masked_forward_features
from sonofm.models.hierarchical import HierarchicalClassifier, masked_mean_pool
from sonofm.models.input_norm import INPUT_MEAN, INPUT_STD, set_input_stats
from sonofm.models.masking import patches_in_field, random_patch_mask
from sonofm.models.targets import make_target, masked_patch_loss, unpatchify


class PretrainModel(nn.Module):
    """Masked image modelling with an optional hierarchical classifier; see the module doc."""

    def __init__(
        self,
        encoder: str = "convnextv2_atto",
        in_chans: int = 1,
        img_size: int = 128,
        mask_ratio: float = 0.6,
        decoder: str = "fcmae",
        dec_dim: int = 512,
        dec_depth: int = 1,
        dec_out_stride: int = 4,
        target: str = "norm_pix",
        hier_weight: float = 0.0,
        levels: Sequence[str] | None = None,
        tree: dict[str, Any] | None = None,
        drop_path_rate: float = 0.0,
        input_mean: float = INPUT_MEAN,
        input_std: float = INPUT_STD,
        field_min_fraction: float = 0.5,
        target_kwargs: dict[str, float] | None = None,
        field_pixels: bool = False,
        mask_patch: int = PATCH,
    ) -> None:
        super().__init__()
        if mask_patch < PATCH or mask_patch % PATCH:
            raise ValueError(f"mask_patch {mask_patch} must be a multiple of the encoder's stride {PATCH}")
        if img_size % mask_patch:
            raise ValueError(f"img_size {img_size} must be a multiple of {mask_patch} (the mask patch)")
        if hier_weight < 0:
            raise ValueError(f"hier_weight must be >= 0, got {hier_weight}")
        self.in_chans = in_chans
        self.img_size = img_size
        self.mask_ratio = mask_ratio
        self.mask_patch = int(mask_patch)  # side of a masked square; the mask is drawn on this grid
        self.target_kind = target
        self.target_kwargs = dict(target_kwargs or {})
        make_target(torch.zeros(1, in_chans, PATCH, PATCH), target, PATCH, **self.target_kwargs)  # validate early
        self.hier_weight = float(hier_weight)
        self.input_mean = float(input_mean)
        self.input_std = float(input_std)
        self.field_min_fraction = field_min_fraction
        self.field_pixels = bool(field_pixels)
        self.encoder = create_encoder(encoder, in_chans=in_chans, drop_path_rate=drop_path_rate)
        set_input_stats(self.encoder, self.input_mean, self.input_std)  # what timm users and export read
        dims = [f["num_chs"] for f in self.encoder.feature_info]
        self.decoder = create_decoder(decoder, dims, dec_dim=dec_dim, in_chans=in_chans, depth=dec_depth,
                                      out_stride=dec_out_stride)
        self.hier: HierarchicalClassifier | None = None
        if self.hier_weight > 0:
            if tree is None:
                raise ValueError("hier_weight > 0 needs a taxonomy tree")
            self.hier = HierarchicalClassifier(dims[-1], tree, levels, norm=False)
        else:
            self.encoder.head.norm.requires_grad_(False)

    def set_input_norm(self, mean: float | Sequence[float], std: float | Sequence[float]) -> None:
        """Normalise with other statistics (continued pretraining keeps the ones its initial weights were
        trained with); one value per channel, or one for all. Recorded on the encoder too."""
        set_input_stats(self.encoder, mean, std)
        m, s = (tuple(float(v) for v in self.encoder.pretrained_cfg[k]) for k in ("mean", "std"))
        if len(set(m)) == 1 and len(set(s)) == 1:
            self.input_mean, self.input_std = m[0], s[0]
        else:  # per channel: buffers that follow the device, kept out of the state dict
            self.input_mean, self.input_std = m, s
            self.register_buffer("norm_mean", torch.tensor(m).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("norm_std", torch.tensor(s).view(1, -1, 1, 1), persistent=False)

    def _normalise(self, images: Tensor) -> Tensor:
        if isinstance(self.input_mean, float):
            return (images - self.input_mean) / self.input_std
        return (images - self.norm_mean.to(images.dtype)) / self.norm_std.to(images.dtype)

    def _pool_norm(self, last: Tensor, weight: Tensor) -> Tensor:
        pooled = masked_mean_pool(last, weight)
        return self.encoder.head.norm(pooled[:, :, None, None]).flatten(1)

    def forward(
        self,
        images: Tensor,
        field: Tensor | None = None,
        targets: dict[str, Tensor] | None = None,
        mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """One pretraining pass. ``images`` ``[B, C, H, W]`` in [0, 1]; ``field`` ``[B, 1, H, W]`` (> 0.5 is
        field) or ``None`` (whole image); ``targets`` per tree level (LongTensor ``[B]``, -1 unknown);
        ``mask`` ``[B, H/32, W/32]`` (1 visible) or ``None`` to draw one (with ``generator``) in squares of
        ``mask_patch`` pixels.

        Returns ``loss``, ``loss_rec``, ``loss_hier`` (0 without heads), ``pred`` ``[B, L, 32*32*C]``,
        ``target`` (same shape), ``mask`` and ``in_field`` ``[B, H/32, W/32]``; with hierarchical heads
        also ``logits`` (leaves) and, when ``targets`` are given, ``acc/<level>`` (float, 0 when no
        sample knows the level) and ``count/<level>`` (long: samples that know it) per configured level.
        """
        b, c, h, w = images.shape
        if c != self.in_chans or h % PATCH or w % PATCH:
            raise ValueError(
                f"images {tuple(images.shape)}: expected {self.in_chans} channel(s) and sides divisible by {PATCH}"
            )
        if mask is None:
            if h % self.mask_patch or w % self.mask_patch:
                raise ValueError(f"images {tuple(images.shape)}: sides must be multiples of the mask patch "
                                 f"{self.mask_patch} to draw a mask")
            mask = random_patch_mask(field, (h, w), self.mask_patch, self.mask_ratio, generator, batch_size=b,
                                     min_fraction=self.field_min_fraction, device=images.device)
            if self.mask_patch != PATCH:  # each masked square covers (mask_patch / 32)^2 encoder cells
                f = self.mask_patch // PATCH
                mask = mask.repeat_interleave(f, 1).repeat_interleave(f, 2)
        mask = mask.to(images.device, torch.float32)
        if field is not None:
            in_field = patches_in_field(field, PATCH, self.field_min_fraction)
        else:
            in_field = torch.ones_like(mask)
        x = self._normalise(images)
        feats = masked_forward_features(self.encoder, x, mask)
        pred = self.decoder(feats.stages, mask)
        # field_pixels: pixels outside the field (background, blanked colour flow) are neither
        # target nor loss; off, a patch counts whole once half of it is field (see TargetConfig)
        tgt = make_target(images, self.target_kind, PATCH, field=field if self.field_pixels else None,
                          **self.target_kwargs)
        weight = ((1.0 - mask) * in_field).flatten(1) * tgt.weight
        loss_rec = masked_patch_loss(pred, tgt.target, weight, tgt.pixel_weight)
        out: dict[str, Tensor] = {"loss_rec": loss_rec, "pred": pred, "target": tgt.target, "mask": mask,
                                  "in_field": in_field}
        if self.hier is None:
            out["loss_hier"] = loss_rec.new_zeros(())
            out["loss"] = loss_rec
            return out
        logits = self.hier(self._pool_norm(feats.last, mask * in_field))
        if targets is None:
            loss_hier = logits.sum() * 0.0  # keeps the heads in the graph (DDP)
        else:
            loss_hier, metrics = self.hier.loss(logits, targets)
            out.update(metrics)
        out["logits"] = logits
        out["loss_hier"] = loss_hier
        out["loss"] = loss_rec + self.hier_weight * loss_hier
        return out

    def unpatchify(self, patches: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """Patches ``[B, L, 32*32*C]`` -> image ``[B, C, H, W]`` (square ``img_size`` unless ``size``)."""
        h, w = size if size is not None else (self.img_size, self.img_size)
        return unpatchify(patches, PATCH, (h // PATCH, w // PATCH), self.in_chans)

    @torch.no_grad()
    def reconstruction(self, images: Tensor, out: dict[str, Tensor], field: Tensor | None = None) -> dict[str, Tensor]:
        """Images ``[B, C, H, W]`` in [0, 1] for a reconstruction grid: ``masked`` input (masked patches
        black), ``target`` and ``pred`` mapped back to pixels with each patch's own mean/std (for
        ``norm_pix``/``lowpass``; over the ``field`` pixels, as in training), and ``pasted`` (visible
        input, predicted masked patches)."""
        size = images.shape[-2:]
        tgt = make_target(images, self.target_kind, PATCH, field=field if self.field_pixels else None,
                          **self.target_kwargs)
        pred = self.unpatchify(out["pred"].float() * tgt.std + tgt.mean, size).clamp(0, 1)
        target = self.unpatchify(tgt.target * tgt.std + tgt.mean, size).clamp(0, 1)
        m = expand_mask(out["mask"], size, images.dtype)
        return {"masked": images * m, "target": target, "pred": pred, "pasted": images * m + pred * (1 - m)}


def count_params(params: Iterable[nn.Parameter]) -> int:
    """Number of scalars in ``params`` (for logs)."""
    return sum(p.numel() for p in params)
