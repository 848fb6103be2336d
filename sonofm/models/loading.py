"""Load an encoder for downstream work from any of the three places it can come from.

``spec`` forms:

- ``random:<timm name>``: random initialisation (baseline for every comparison).
- a sonofm pretraining run dir (``<run>/config.yaml`` + ``<run>/checkpoints/``) or one checkpoint
  dir (``<run>/checkpoints/step-N/``): ``model.safetensors`` holds the PretrainModel state dict,
  encoder weights under the prefix ``encoder.``; ``ema.safetensors`` (same layout) is used when
  ``weights="ema"``. :func:`sonofm.checkpoints.locate_checkpoint` finds the step (``last``, else the
  highest complete ``step-N``).
- an exported timm dir: ``config.json`` (``architecture``, optional ``in_chans``, also looked up in
  ``pretrained_cfg``) + ``model.safetensors`` with timm key names.

The returned encoder carries its input mean / std in ``pretrained_cfg`` (see
:mod:`sonofm.models.input_norm`): sonofm's own (0.5, 0.25) for random and pretraining-run encoders,
the exported ``config.json``'s for a timm dir (sonofm's when it names none). Downstream models
normalise with them.

Loading is always strict: any missing, unexpected or shape-mismatched key raises
:class:`IncompatibleCheckpointError` listing them, because a silently half-loaded encoder makes
every downstream number meaningless. Only safetensors files are read (no pickle).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import timm
import torch
import yaml
from safetensors.torch import load_file
from torch import nn

from sonofm.checkpoints import locate_checkpoint
from sonofm.errors import UserError
from sonofm.models.input_norm import INPUT_MEAN, INPUT_STD, set_input_stats

__all__ = [
    "IncompatibleCheckpointError",
    "check_state_dict",
    "create_headless",
    "load_encoder",
    "load_strict",
    "pretrain_encoder_weights",
]

#: Classifier keys an exported model may carry; the downstream encoder is headless (num_classes=0).
_CLASSIFIER_KEYS = ("head.fc.weight", "head.fc.bias")
_ENCODER_PREFIXES = ("encoder.", "encoder.model.")


class IncompatibleCheckpointError(UserError, ValueError):
    """Weights that do not fit the model exactly."""


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Raise :class:`IncompatibleCheckpointError` unless ``state`` matches ``model`` key for key and shape."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(own[k].shape) != tuple(state[k].shape)
    )
    if missing or unexpected or shapes:
        lines = [f"{where}: checkpoint does not fit the encoder"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if items:
                shown = items[:20] + ([f"... and {len(items) - 20} more"] if len(items) > 20 else [])
                lines.append(f"  {title} ({len(items)}): " + ", ".join(shown))
        raise IncompatibleCheckpointError("\n".join(lines))


def create_headless(name: str, in_chans: int, drop_path_rate: float = 0.0) -> nn.Module:
    """A randomly initialised timm model without classifier (``num_classes=0``); unknown names: ValueError."""
    try:
        return timm.create_model(
            name, pretrained=False, in_chans=in_chans, num_classes=0, drop_path_rate=drop_path_rate
        )
    except RuntimeError as e:  # timm: "Unknown model (...)"
        raise ValueError(f"cannot create timm model {name!r}: {e}") from e


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Load ``state`` into ``model`` only when every key and shape matches (else the error lists them)."""
    check_state_dict(model, state, where)
    model.load_state_dict(state, strict=True)


def pretrain_encoder_weights(weights_file: Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """The encoder part of a pretraining checkpoint's ``model``/``ema.safetensors``, under the key names
    of ``model`` (a timm encoder): the prefix is stripped, nothing is loaded yet."""
    return _encoder_state(_safetensors(weights_file), set(model.state_dict()), weights_file)


def _encoder_state(full: dict[str, torch.Tensor], own_keys: set[str], where: Path) -> dict[str, torch.Tensor]:
    """Pick the encoder's weights out of a PretrainModel state dict (prefix ``encoder.``)."""
    best: dict[str, torch.Tensor] = {}
    for prefix in _ENCODER_PREFIXES:
        sub = {k[len(prefix) :]: v for k, v in full.items() if k.startswith(prefix)}
        # prefer the prefix whose keys are the timm names (``encoder.model.`` when the encoder is wrapped)
        if len(set(sub) & own_keys) > len(set(best) & own_keys):
            best = sub
    if not best:
        some = ", ".join(sorted(full)[:5])
        raise IncompatibleCheckpointError(f"{where}: no keys with prefix 'encoder.' (first keys: {some})")
    return best


def _safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Weights from a safetensors file; a corrupt or disguised file (e.g. a pickle) is an error naming it."""
    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise ValueError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from e


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return data


def load_encoder(
    spec: str,
    in_chans: int = 1,
    drop_path_rate: float = 0.0,
    weights: str = "model",
) -> tuple[nn.Module, dict[str, Any]]:
    """Build a headless timm encoder from ``spec`` and load its weights strictly.

    ``weights`` selects ``model`` or ``ema`` weights of a pretraining checkpoint. Returns the model
    (eval mode) and ``info``: ``kind``, ``name``, ``in_chans``, ``num_features``, ``feature_channels``,
    ``source`` (and ``step_dir`` for pretraining checkpoints).
    """
    if weights not in ("model", "ema"):
        raise ValueError(f"weights must be 'model' or 'ema', got {weights!r}")
    info: dict[str, Any] = {"spec": spec}
    if spec.startswith("random:"):
        name = spec.split(":", 1)[1]
        model = set_input_stats(create_headless(name, in_chans, drop_path_rate))  # same preprocessing as pretrained ones
        info.update(kind="random", name=name, source=None)
    else:
        path = Path(spec)
        if not path.exists():
            raise FileNotFoundError(f"encoder spec {spec!r}: not 'random:<name>' and no such path")
        if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
            cfg_file = path / "config.json"
            try:
                cfg = json.loads(cfg_file.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{cfg_file}: not valid JSON: {e}") from e
            name = cfg.get("architecture")
            if not name:
                raise ValueError(f"{cfg_file}: no 'architecture' key")
            ck_chans = cfg.get("in_chans", cfg.get("pretrained_cfg", {}).get("in_chans"))
            if ck_chans is not None and int(ck_chans) != in_chans:
                raise IncompatibleCheckpointError(
                    f"{cfg_file}: checkpoint has in_chans={ck_chans}, requested in_chans={in_chans}"
                )
            model = create_headless(name, in_chans, drop_path_rate)
            state = _safetensors(path / "model.safetensors")
            dropped = [k for k in _CLASSIFIER_KEYS if k in state]
            state = {k: v for k, v in state.items() if k not in _CLASSIFIER_KEYS}
            load_strict(model, state, str(path / "model.safetensors"))
            pcfg = cfg.get("pretrained_cfg") or {}
            try:
                set_input_stats(model, pcfg.get("mean", INPUT_MEAN), pcfg.get("std", INPUT_STD))
            except (TypeError, ValueError) as e:
                raise IncompatibleCheckpointError(f"{cfg_file}: pretrained_cfg mean/std: {e}") from None
            info.update(kind="timm", name=name, source=str(path), dropped_classifier_keys=dropped)
        else:
            run_dir, step_dir = locate_checkpoint(path)
            cfg_file = run_dir / "config.yaml"
            if not cfg_file.is_file():
                raise FileNotFoundError(f"{spec}: pretraining run has no config.yaml at {cfg_file}")
            mcfg = _read_yaml(cfg_file).get("model") or {}
            name = mcfg.get("name")
            if not name:
                raise ValueError(f"{cfg_file}: no model.name")
            ck_chans = mcfg.get("in_chans")
            if ck_chans is not None and int(ck_chans) != in_chans:
                raise IncompatibleCheckpointError(
                    f"{cfg_file}: checkpoint has in_chans={ck_chans}, requested in_chans={in_chans}"
                )
            model = create_headless(name, in_chans, drop_path_rate)
            wfile = step_dir / f"{weights}.safetensors"
            if not wfile.is_file():
                raise FileNotFoundError(f"{wfile}: not found (weights={weights!r})")
            state = pretrain_encoder_weights(wfile, model)
            load_strict(model, state, str(wfile))
            set_input_stats(model)  # PretrainModel's normalisation (the training loop never changes it)
            info.update(kind="pretrain", name=name, source=str(wfile), step_dir=str(step_dir))
    info.update(
        in_chans=in_chans,
        num_features=int(getattr(model, "num_features", 0)),
        feature_channels=[int(f["num_chs"]) for f in getattr(model, "feature_info", [])],
        input_mean=list(model.pretrained_cfg["mean"]),
        input_std=list(model.pretrained_cfg["std"]),
    )
    return model.eval(), info
