"""Load an encoder for downstream work or pretraining init from any spec (:mod:`sonofm.models.encoder_spec`).

``spec`` forms:

- ``random:<timm name>``: random initialisation (baseline for every comparison).
- ``timm:<name>.<tag>`` and ``hf-hub:<org>/<repo>``: published weights through
  ``timm.create_model(..., pretrained=True)`` (timm's download, the Hugging Face cache,
  ``HF_HUB_OFFLINE``, timm's stem adaptation); weights missing offline give one line naming the cache
  folder and the download command.
- a sonofm pretraining run dir (``<run>/config.yaml`` + ``<run>/checkpoints/``) or one checkpoint
  dir (``<run>/checkpoints/step-N/``): ``model.safetensors`` holds the PretrainModel state dict,
  encoder weights under the prefix ``encoder.``; ``ema.safetensors`` (same layout) is used when
  ``weights="ema"``. :func:`sonofm.checkpoints.locate_checkpoint` finds the step (``last``, else the
  highest complete ``step-N``).
- a timm-format folder (``local-dir:`` prefix optional; e.g. an export): ``config.json``
  (``architecture``, ``in_chans`` also looked up in ``model_args`` and ``pretrained_cfg``) +
  ``model.safetensors`` with timm key names; ``<arch>@<file>.safetensors``: one weights file.

3-channel weights go into a 1-channel encoder through timm's ``adapt_input_conv`` (the RGB kernels
summed). The returned encoder carries its input mean / std in ``pretrained_cfg`` (see
:mod:`sonofm.models.input_norm`): sonofm's own (0.5, 0.25) for random encoders, the ones a
pretraining run recorded in its checkpoint, the weights' ``pretrained_cfg`` ones for timm formats
(reduced to grey by :func:`~sonofm.models.input_norm.adapt_stats` when the stem was adapted).
Downstream models normalise with them.

Loading is always strict: any missing, unexpected or shape-mismatched key raises
:class:`IncompatibleCheckpointError` listing them, because a silently half-loaded encoder makes
every downstream number meaningless. Only safetensors files are read (no pickle), except where
timm itself loads a published checkpoint that has no safetensors file.
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

from sonofm.checkpoints import locate_checkpoint, read_state
from sonofm.errors import UserError
from sonofm.models.encoder_spec import (
    EncoderSpec,
    hub_offline,
    hub_repo,
    not_cached_error,
    parse_spec,
    weights_cached,
)
from sonofm.models.input_norm import INPUT_MEAN, INPUT_STD, adapt_stats, set_input_stats

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


def _stem_conv(model: nn.Module) -> str:
    return str((getattr(model, "pretrained_cfg", None) or {}).get("first_conv") or "stem.0")


def _adapt_stem(model: nn.Module, state: dict[str, torch.Tensor], from_chans: int, in_chans: int,
                where: str) -> dict[str, torch.Tensor]:
    """3-channel weights for a 1-channel encoder (or back): timm's own ``adapt_input_conv`` on the stem."""
    if from_chans == in_chans:
        return state
    from timm.models._manipulate import adapt_input_conv

    key = _stem_conv(model) + ".weight"
    if key not in state:
        raise IncompatibleCheckpointError(f"{where}: no stem weight {key!r} to adapt from {from_chans} to "
                                          f"{in_chans} input channel(s)")
    return {**state, key: adapt_input_conv(in_chans, state[key])}


def _weights_chans(model: nn.Module, state: dict[str, torch.Tensor]) -> int | None:
    w = state.get(_stem_conv(model) + ".weight")
    return int(w.shape[1]) if w is not None and w.ndim == 4 else None


def _load_timm_folder(path: Path, in_chans: int, drop_path_rate: float, info: dict[str, Any]) -> nn.Module:
    """A timm-format folder (``config.json`` + ``model.safetensors``, e.g. a sonofm export): strict load,
    the stem adapted by timm's ``adapt_input_conv`` when the weights have another channel count."""
    cfg_file = path / "config.json"
    try:
        cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_file}: not valid JSON: {e}") from e
    name = cfg.get("architecture")
    if not name:
        raise ValueError(f"{cfg_file}: no 'architecture' key")
    name = str(name).partition(".")[0]
    pcfg = cfg.get("pretrained_cfg") or {}
    ck_chans = cfg.get("in_chans", (cfg.get("model_args") or {}).get("in_chans", pcfg.get("in_chans")))
    if ck_chans is None and pcfg.get("input_size"):
        ck_chans = pcfg["input_size"][0]
    model = create_headless(name, in_chans, drop_path_rate)
    state = _safetensors(path / "model.safetensors")
    dropped = [k for k in _CLASSIFIER_KEYS if k in state]
    state = {k: v for k, v in state.items() if k not in _CLASSIFIER_KEYS}
    w_chans = _weights_chans(model, state)
    if ck_chans is not None and w_chans is not None and int(ck_chans) != w_chans:
        raise IncompatibleCheckpointError(f"{cfg_file}: says in_chans={ck_chans}, but the stem weights in "
                                          f"{path / 'model.safetensors'} take {w_chans} channel(s)")
    from_chans = int(ck_chans) if ck_chans is not None else (w_chans or in_chans)
    if from_chans != in_chans and not (from_chans == 3 and in_chans == 1):
        raise IncompatibleCheckpointError(
            f"{cfg_file}: checkpoint has in_chans={from_chans}, requested in_chans={in_chans} (only 3-channel "
            "weights are adapted, to 1 channel)")
    state = _adapt_stem(model, state, from_chans, in_chans, str(path / "model.safetensors"))
    load_strict(model, state, str(path / "model.safetensors"))
    try:
        mean, std = adapt_stats(pcfg.get("mean", INPUT_MEAN), pcfg.get("std", INPUT_STD), from_chans, in_chans)
        set_input_stats(model, mean, std)
    except (TypeError, ValueError) as e:
        raise IncompatibleCheckpointError(f"{cfg_file}: pretrained_cfg mean/std: {e}") from None
    info.update(kind="timm", name=name, source=str(path), dropped_classifier_keys=dropped,
                adapted_from_chans=from_chans if from_chans != in_chans else None)
    return model


def _load_file(arch: str, file: Path, in_chans: int, drop_path_rate: float, info: dict[str, Any]) -> nn.Module:
    """``<arch>@<file>.safetensors``: timm-named weights, strict; a bare file carries no statistics, so the
    architecture's timm defaults are used (what ``timm.data.resolve_data_config`` would), adapted to the channels."""
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such weights file")
    model = create_headless(arch, in_chans, drop_path_rate)
    state = {k: v for k, v in _safetensors(file).items() if k not in _CLASSIFIER_KEYS}
    from_chans = _weights_chans(model, state) or in_chans
    state = _adapt_stem(model, state, from_chans, in_chans, str(file))
    load_strict(model, state, f"{file} (as {arch})")
    default = timm.models.get_pretrained_cfg(arch)
    mean = default.mean if default is not None and from_chans == 3 else INPUT_MEAN
    std = default.std if default is not None and from_chans == 3 else INPUT_STD
    set_input_stats(model, *adapt_stats(mean, std, from_chans if from_chans == 3 else 1, in_chans))
    info.update(kind="file", name=arch, source=str(file), adapted_from_chans=from_chans if from_chans != in_chans else None)
    return model


def _load_published(spec: EncoderSpec, in_chans: int, drop_path_rate: float, info: dict[str, Any]) -> nn.Module:
    """``timm:`` and ``hf-hub:``: ``timm.create_model(..., pretrained=True)``, i.e. timm's own download,
    Hugging Face cache, ``HF_HUB_OFFLINE`` handling and stem adaptation; missing weights: one line."""
    from huggingface_hub.utils import LocalEntryNotFoundError

    if hub_offline() and weights_cached(spec.text) is None:
        raise not_cached_error(spec.text)
    target = spec.name if spec.kind == "timm" else f"hf-hub:{spec.location}"
    try:
        model = timm.create_model(target, pretrained=True, in_chans=in_chans, num_classes=0,
                                  drop_path_rate=drop_path_rate)
    except (LocalEntryNotFoundError, OSError) as e:
        if isinstance(e, (LocalEntryNotFoundError, ConnectionError)) or "connection" in str(e).lower():
            raise not_cached_error(spec.text) from e
        raise
    except RuntimeError as e:  # timm's strict load_state_dict
        raise IncompatibleCheckpointError(f"encoder {spec.text}: the published weights do not fit: "
                                          f"{' '.join(str(e).split())[:400]}") from e
    pcfg = dict(model.pretrained_cfg or {})
    from_chans = int((pcfg.get("input_size") or (3,))[0])
    set_input_stats(model, *adapt_stats(pcfg.get("mean", INPUT_MEAN), pcfg.get("std", INPUT_STD), from_chans, in_chans))
    cached = weights_cached(spec.text)
    info.update(kind=spec.kind, name=str(pcfg.get("architecture") or spec.name or "").partition(".")[0],
                source=hub_repo(spec.text), weights_file=str(cached) if cached else None,
                adapted_from_chans=from_chans if from_chans != in_chans else None)
    return model


def _load_run(path: Path, in_chans: int, drop_path_rate: float, weights: str, info: dict[str, Any]) -> nn.Module:
    """A pretraining run or checkpoint: the encoder part of its weights, with the input statistics the
    run trained with (its checkpoint's ``input_mean``/``input_std``; sonofm's when it records none)."""
    run_dir, step_dir = locate_checkpoint(path)
    cfg_file = run_dir / "config.yaml"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{path}: pretraining run has no config.yaml at {cfg_file}")
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
    try:
        ck_state = read_state(step_dir)
    except ValueError:
        ck_state = {}
    set_input_stats(model, ck_state.get("input_mean", INPUT_MEAN), ck_state.get("input_std", INPUT_STD))
    info.update(kind="pretrain", name=name, source=str(wfile), step_dir=str(step_dir),
                init=(ck_state.get("init") or {}).get("spec"))
    return model


def load_encoder(
    spec: str,
    in_chans: int = 1,
    drop_path_rate: float = 0.0,
    weights: str = "model",
) -> tuple[nn.Module, dict[str, Any]]:
    """Build a headless timm encoder from ``spec`` (any form of :mod:`sonofm.models.encoder_spec`) and
    load its weights strictly; the one resolver every stage names its encoder through.

    ``weights`` selects ``model`` or ``ema`` weights of a pretraining checkpoint. Returns the model
    (eval mode) and ``info``: ``spec``, ``kind``, ``name``, ``in_chans``, ``num_features``,
    ``feature_channels``, ``source``, ``input_mean``/``input_std`` (and ``step_dir`` for pretraining
    checkpoints, ``adapted_from_chans`` when a 3-channel stem was adapted).
    """
    if weights not in ("model", "ema"):
        raise ValueError(f"weights must be 'model' or 'ema', got {weights!r}")
    info: dict[str, Any] = {"spec": spec}
    parsed = parse_spec(spec)
    if parsed.kind == "random":
        name = str(parsed.name)
        model = set_input_stats(create_headless(name, in_chans, drop_path_rate))  # same preprocessing as pretrained ones
        info.update(kind="random", name=name, source=None)
    elif parsed.kind in ("timm", "hf-hub"):
        model = _load_published(parsed, in_chans, drop_path_rate, info)
    elif parsed.kind == "file":
        model = _load_file(str(parsed.name), Path(str(parsed.location)), in_chans, drop_path_rate, info)
    else:
        path = Path(str(parsed.location))
        if not path.exists():
            raise FileNotFoundError(f"encoder spec {spec!r}: no such path; give random:<name>, timm:<name>.<tag>, "
                                    "hf-hub:<org>/<repo>, a folder, <arch>@<file>.safetensors or a pretraining run")
        if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
            model = _load_timm_folder(path, in_chans, drop_path_rate, info)
        elif parsed.kind == "local-dir":
            raise FileNotFoundError(f"encoder spec {spec!r}: {path} holds no config.json + model.safetensors "
                                    "(timm's format)")
        else:
            model = _load_run(path, in_chans, drop_path_rate, weights, info)
    info.update(
        in_chans=in_chans,
        num_features=int(getattr(model, "num_features", 0)),
        feature_channels=[int(f["num_chs"]) for f in getattr(model, "feature_info", [])],
        input_mean=list(model.pretrained_cfg["mean"]),
        input_std=list(model.pretrained_cfg["std"]),
    )
    return model.eval(), info
