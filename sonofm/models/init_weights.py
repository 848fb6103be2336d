"""Continued pretraining (``model.init=<spec>``): the encoder starts from published or earlier weights.

Practitioners with modest compute continue from timm's FCMAE / ImageNet weights or an earlier sonofm
export rather than start from nothing. :func:`check_init` runs before any work (no data read, no model
built): the spec must name weights of the configured architecture, and published weights must be at
hand. :func:`init_encoder` loads them through the one resolver
(:func:`sonofm.models.loading.load_encoder`: timm's loading, stem adaptation, input statistics) into
the pretraining model's encoder, strictly; the decoder and heads stay new. The returned record names
the source; the engine writes it into every checkpoint, and export into ``config.json`` and the card.
"""

from __future__ import annotations

from typing import Any

from sonofm.models.encoder_spec import check_spec, spec_architecture
from sonofm.models.loading import IncompatibleCheckpointError, load_strict

__all__ = ["InitArchitectureError", "check_init", "init_encoder"]


class InitArchitectureError(IncompatibleCheckpointError):
    """``model.init`` holds weights of another architecture than ``model.name``."""


def check_init(spec: str, model_name: str) -> None:
    """Refuse, before any work, an init that cannot start this run: unknown or uncached weights, or
    weights of another architecture than ``model_name``."""
    check_spec(spec)
    arch = spec_architecture(spec)
    if arch != model_name:
        raise InitArchitectureError(
            f"model.init={spec} holds {arch} weights, but model.name={model_name}: set model.name={arch}, "
            f"or give an init of {model_name} (e.g. timm:{model_name}.fcmae)")


def init_encoder(encoder: Any, spec: str, in_chans: int) -> dict[str, Any]:
    """Load the weights ``spec`` names into ``encoder`` (a headless timm model) strictly; returns the
    init record: ``spec``, ``kind``, ``source``, ``input_mean``, ``input_std``, ``adapted_from_chans``."""
    from sonofm.models.loading import load_encoder

    weights, info = load_encoder(spec, in_chans=in_chans)
    load_strict(encoder, weights.state_dict(), f"model.init={spec}")
    return {"spec": spec, "kind": info["kind"], "source": info.get("source"), "name": info["name"],
            "input_mean": info["input_mean"], "input_std": info["input_std"],
            "adapted_from_chans": info.get("adapted_from_chans")}
