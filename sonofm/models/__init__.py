"""Models for pretraining: masked timm ConvNeXt encoder, masking, decoders, targets, hierarchical heads.

Mask convention throughout: ``1 = visible``, ``0 = masked``, one value per 32x32 patch.
"""

from __future__ import annotations

from sonofm.models.decoders import DECODER_KINDS, FCMAEDecoder, SparKDecoder, create_decoder
from sonofm.models.encoder import (
    PATCH,
    MaskedConvNeXt,
    MaskedFeatures,
    create_encoder,
    expand_mask,
    masked_forward_features,
)
from sonofm.models.hierarchical import HierarchicalClassifier, masked_mean_pool, validate_tree
from sonofm.models.masking import patch_field_fraction, patches_in_field, random_patch_mask
from sonofm.models.pretrain_model import PretrainModel
from sonofm.models.targets import TARGET_KINDS, make_target, masked_patch_loss, patchify, unpatchify

__all__ = [
    "DECODER_KINDS",
    "PATCH",
    "TARGET_KINDS",
    "FCMAEDecoder",
    "HierarchicalClassifier",
    "MaskedConvNeXt",
    "MaskedFeatures",
    "PretrainModel",
    "SparKDecoder",
    "create_decoder",
    "create_encoder",
    "expand_mask",
    "make_target",
    "masked_forward_features",
    "masked_mean_pool",
    "masked_patch_loss",
    "patch_field_fraction",
    "patches_in_field",
    "patchify",
    "random_patch_mask",
    "unpatchify",
    "validate_tree",
]
