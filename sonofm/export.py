"""``sonofm export``: publish a pretrained encoder in timm's own format, optionally on the Hub.

The output folder holds exactly what ``timm.create_model("local-dir:OUT", pretrained=True)`` (or
``"hf-hub:REPO"``) reads, so users need timm and nothing from sonofm:

- ``config.json``: written by hand in timm's layout (``architecture``, ``num_classes: 0``,
  ``num_features``, ``global_pool``, ``model_args.in_chans``, ``pretrained_cfg`` with input size,
  mean, std, interpolation, crop) rather than through ``timm.models.save_for_hf``, whose output
  changed across timm releases; the layout here is the one every timm >= 1.0.15 parses.
- ``model.safetensors``: the encoder's weights under timm's own key names (the ``encoder.`` prefix of
  the pretraining model stripped), no decoder, no taxonomy heads, no classifier.
- ``features.safetensors``: the same weights under the key names of timm's ``features_only`` model
  (``FeatureListNet``: ``stem_0.weight``, ``stages_0...``; no ``head.norm``), which is what
  segmentation_models_pytorch's ``tu-`` encoders hold in ``model.encoder.model``: it loads there
  (and into ``timm.create_model(..., features_only=True)``) strictly, with no key renaming.
- ``README.md``: the model card (:mod:`sonofm.model_card`).

Nothing is published that has not been checked: the weights are loaded strictly into a fresh timm
model before anything is written, the finished folder is loaded back through timm's own
``local-dir:`` path and compared tensor for tensor, the features file loaded strictly into a fresh
``features_only`` model, and only then do the files replace the old ones. No file records a local
path: the run is named by its folder name only.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from sonofm import __version__
from sonofm.atomic_io import fsync_dir, fsync_tree, save_safetensors
from sonofm.checkpoints import (
    EMA_FILE,
    MODEL_FILE,
    STATE_FILE,
    checkpoints_dir,
    contiguous_state,
    latest_checkpoint,
    read_state,
)
from sonofm.config import PretrainConfig, load_config
from sonofm.errors import UserError
from sonofm.model_card import CardInfo, load_results, model_licence, read_data_summary, render_card
from sonofm.models.input_norm import INPUT_MEAN, INPUT_STD
from sonofm.models.loading import (
    IncompatibleCheckpointError,
    create_headless,
    load_strict,
    pretrain_encoder_weights,
)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FEATURES_NAME = "features.safetensors"
CARD_NAME = "README.md"
#: The files an export consists of (and the only ones a push uploads), in upload order.
EXPORT_FILES: tuple[str, ...] = (CONFIG_NAME, WEIGHTS_NAME, FEATURES_NAME, CARD_NAME)


class ExportError(UserError, RuntimeError):
    """An export that cannot be done as asked (bad results file or repo id, unknown model, failed
    upload); the message says what to fix. Weights that do not fit raise
    :class:`~sonofm.models.loading.IncompatibleCheckpointError` instead, listing the keys."""

__all__ = [
    "EXPORT_FILES",
    "ExportError",
    "export_backbone",
    "features_state",
    "input_normalisation",
    "run_normalisation",
    "timm_config",
    "upload_plan",
]


def input_normalisation() -> tuple[float, float]:
    """The ``(mean, std)`` the pretraining model applies to [0, 1] images before its encoder: the
    constants of :mod:`sonofm.models.input_norm`, which PretrainModel and load_encoder use too."""
    return INPUT_MEAN, INPUT_STD


def run_normalisation(state: dict[str, Any], in_chans: int) -> tuple[list[float], list[float]]:
    """Per-channel ``(mean, std)`` a run trained with: its checkpoint's record (a run continued from
    published weights keeps theirs, e.g. ImageNet's reduced to grey), else sonofm's constants."""
    mean, std = input_normalisation()
    m, s = state.get("input_mean", mean), state.get("input_std", std)
    m = [float(v) for v in (m if isinstance(m, (list, tuple)) else [m])]
    s = [float(v) for v in (s if isinstance(s, (list, tuple)) else [s])]
    return (m * in_chans if len(m) == 1 else m), (s * in_chans if len(s) == 1 else s)


def _global_pool(model: nn.Module) -> str | None:
    pool = getattr(getattr(model, "head", None), "global_pool", None)
    pool_type = getattr(pool, "pool_type", None)
    if isinstance(pool_type, str) and pool_type:
        return pool_type
    gp = getattr(model, "global_pool", None)
    return gp if isinstance(gp, str) and gp else None


def timm_config(
    model: nn.Module,
    architecture: str,
    in_chans: int,
    img_size: int,
    mean: float | list[float],
    std: float | list[float],
    licence: str,
    sonofm_info: dict[str, Any],
) -> dict[str, Any]:
    """timm's ``config.json`` for a headless encoder (see ``timm.models._hub._parse_model_cfg``).

    ``crop_pct`` 1.0 and bilinear resizing match how sonofm feeds images (whole field, bilinear);
    ``fixed_input_size`` is false because a ConvNeXt takes any size divisible by 32.
    """
    default_cfg = getattr(model, "pretrained_cfg", {}) or {}
    cfg: dict[str, Any] = {
        "architecture": architecture,
        "num_classes": 0,
        "num_features": int(model.num_features),
    }
    pool = _global_pool(model)
    if pool:
        cfg["global_pool"] = pool
    cfg["model_args"] = {"in_chans": in_chans}
    cfg["pretrained_cfg"] = {
        "input_size": [in_chans, img_size, img_size],
        "fixed_input_size": False,
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "crop_mode": "center",
        "mean": list(mean) if isinstance(mean, (list, tuple)) else [mean] * in_chans,
        "std": list(std) if isinstance(std, (list, tuple)) else [std] * in_chans,
        "num_classes": 0,
        "pool_size": [img_size // 32, img_size // 32],
        "first_conv": default_cfg.get("first_conv", "stem.0"),
        "classifier": default_cfg.get("classifier", "head.fc"),
        "license": licence,
        "custom_load": False,
    }
    cfg["sonofm"] = sonofm_info
    return cfg


def _recipe(cfg: PretrainConfig, state: dict[str, Any]) -> dict[str, Any]:
    """The key values of the resolved config (flat ``section.key``), for the card and config.json."""
    world = int(state.get("world_size", 1))
    r: dict[str, Any] = {
        "model.name": cfg.model.name,
        "model.in_chans": cfg.model.in_chans,
        "model.drop_path_rate": cfg.model.drop_path_rate,
        "data.img_size": cfg.data.img_size,
        "data.split": cfg.data.split,
        "data.batch_size": cfg.data.batch_size,
        "global_batch": cfg.data.batch_size * world * max(1, cfg.optim.accum_steps),
        "data.weights": cfg.data.weights if cfg.data.weights is not None else f"temperature {cfg.data.temperature}",
        "masking.ratio": cfg.masking.ratio,
        "masking.patch_size": cfg.masking.patch_size,
        "decoder.kind": cfg.decoder.kind,
        "decoder.dim": cfg.decoder.dim,
        "decoder.depth": cfg.decoder.depth,
        "target.kind": cfg.target.kind,
    }
    if cfg.target.kind == "lowpass":
        r["target.lowpass_sigma"] = cfg.target.lowpass_sigma
    r["hierarchy.weight"] = cfg.hierarchy.weight
    if cfg.hierarchy.weight > 0:
        r["hierarchy.levels"] = list(cfg.hierarchy.levels)
    optim = asdict(cfg.optim)
    for key in ("base_lr", "lr", "min_lr", "weight_decay", "betas", "warmup_steps", "clip_grad", "accum_steps"):
        r[f"optim.{key}"] = optim[key]
    r.update({"steps": cfg.steps, "precision": cfg.precision, "ema": cfg.ema, "seed": cfg.seed})
    return r


def _public_init(init: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the run started from, fit to publish: published specs as they are, local paths by name only."""
    if not init:
        return None
    out = {k: init.get(k) for k in ("spec", "kind", "source", "adapted_from_chans")}
    if init.get("kind") not in ("timm", "hf-hub"):
        out["spec"] = Path(str(init.get("spec")).rpartition("@")[2].removeprefix("local-dir:").rstrip("/")).name
        out["source"] = Path(str(init.get("source") or "")).name or None
    return out


def _recipe_name(cfg: PretrainConfig) -> str:
    """A short name of the method, e.g. ``fcmae-norm_pix-mask0.6+hier0.1``."""
    name = f"{cfg.decoder.kind}-{cfg.target.kind}-mask{cfg.masking.ratio:g}"
    return name + (f"+hier{cfg.hierarchy.weight:g}" if cfg.hierarchy.weight > 0 else "")


def _load_strict(arch: str, in_chans: int, weights_file: Path, hint: str) -> nn.Module:
    """The run's encoder as a fresh headless timm model, its weights loaded strictly (mismatches list every key)."""
    try:
        model = create_headless(arch, in_chans)
    except ValueError as e:
        raise ExportError(f"config.yaml names model {arch!r}, which timm cannot create: {e}") from e
    try:
        load_strict(model, pretrain_encoder_weights(weights_file, model), f"{weights_file} (as {arch}, in_chans={in_chans})")
    except IncompatibleCheckpointError as e:
        raise IncompatibleCheckpointError(f"{e}{hint}") from None
    return model.eval()


def features_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s weights as timm's ``features_only`` wrapper names them (every feature stage kept),
    built by timm's own ``FeatureListNet`` around the model, so the names follow timm's rule."""
    from timm.models import FeatureListNet

    wrapped = FeatureListNet(model, out_indices=tuple(range(len(model.feature_info))), flatten_sequential=True)
    return contiguous_state(wrapped.state_dict())


def _verify_features(folder: Path, arch: str, in_chans: int, model: nn.Module) -> None:
    """The features file loads strictly into a fresh ``features_only`` model and gives ``model``'s features."""
    from safetensors.torch import load_file

    fresh = timm.create_model(arch, pretrained=False, features_only=True, in_chans=in_chans).eval()
    try:
        fresh.load_state_dict(load_file(str(folder / FEATURES_NAME)), strict=True)
    except RuntimeError as e:
        raise ExportError(f"export check (timm {timm.__version__}): {FEATURES_NAME} does not load into "
                          f"features_only {arch}: {' '.join(str(e).split())[:300]}") from None
    x = torch.linspace(0, 1, in_chans * 64 * 64).reshape(1, in_chans, 64, 64)
    with torch.no_grad():
        want = model.forward_intermediates(x, intermediates_only=True)
        got = fresh(x)
    if len(want) != len(got) or not all(torch.allclose(a, b, atol=1e-5) for a, b in zip(want, got)):
        raise ExportError(f"export check (timm {timm.__version__}): features_only {arch} from {FEATURES_NAME} "
                          "computes other features than the exported model")


def _verify_folder(folder: Path, model: nn.Module, in_chans: int, img_size: int, mean: list[float],
                   std: list[float]) -> None:
    """Load ``folder`` the way users will (``local-dir:``) and compare with what was meant to be saved."""
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True)
    want, got = model.state_dict(), loaded.state_dict()
    if set(want) != set(got):
        raise ExportError(f"export check (timm {timm.__version__}): timm loads keys {sorted(set(got) ^ set(want))[:10]} differently")
    bad = [k for k in want if not torch.equal(want[k], got[k])]
    if bad:
        raise ExportError(f"export check (timm {timm.__version__}): timm's local-dir load changes {len(bad)} tensors, e.g. {bad[:5]}")
    data_cfg = timm.data.resolve_data_config({}, model=loaded)
    expect = {"input_size": (in_chans, img_size, img_size), "mean": tuple(mean), "std": tuple(std)}
    for key, value in expect.items():
        if tuple(data_cfg[key]) != value:
            raise ExportError(f"export check (timm {timm.__version__}): timm resolves {key}={data_cfg[key]}, expected {value}")


def _publish(tmp: Path, out_dir: Path) -> None:
    """Move the checked files into place: the whole folder at once when new, else file by file
    (each ``os.replace`` is atomic, weights before config so a reader never sees a config without them)."""
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        fsync_dir(out_dir.parent)
        return
    if not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir}: exists and is not a folder")
    for name in EXPORT_FILES:
        os.replace(tmp / name, out_dir / name)
    fsync_dir(out_dir)
    tmp.rmdir()


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n} B"  # pragma: no cover


def upload_plan(out_dir: str | os.PathLike) -> list[tuple[str, int]]:
    """``(file name, size in bytes)`` of every file a push uploads from ``out_dir``."""
    out = Path(out_dir)
    missing = [n for n in EXPORT_FILES if not (out / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{out}: not a complete export (missing {', '.join(missing)})")
    return [(n, (out / n).stat().st_size) for n in EXPORT_FILES]


def _check_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ExportError(f"--push-to-hub {repo_id!r}: not a valid Hub repo id ({e})") from None
    if "/" not in repo_id:
        raise ExportError(f"--push-to-hub {repo_id!r}: give NAMESPACE/NAME (your user or organisation first)")


def _push(out_dir: Path, repo_id: str, message: str) -> str:
    """Create the model repo if needed and upload the export's files in one commit."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        repo_url = api.create_repo(repo_id=repo_id, repo_type="model", exist_ok=True)
        api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(out_dir),
                          allow_patterns=list(EXPORT_FILES), commit_message=message)
    except Exception as e:  # network, auth, offline mode: keep the local export, say what to do
        raise ExportError(
            f"push to the Hub repo {repo_id!r} failed: {e}. The export itself is complete in {out_dir}; "
            "log in (`huggingface-cli login` or HF_TOKEN), check network access and HF_HUB_OFFLINE, and retry."
        ) from e
    return str(repo_url)


def export_backbone(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    use_ema: bool = False,
    results: str | os.PathLike | None = None,
    push_to_hub: str | None = None,
    dry_run: bool = False,
) -> Path:
    """Export the encoder of ``run_dir``'s last checkpoint (its EMA weights with ``use_ema``) into
    ``out_dir`` in timm's format with a model card; optionally upload it to the Hub repo
    ``push_to_hub`` (with ``dry_run``: only print the repo id and the files, no network access).

    Returns ``out_dir``. Raises ``FileNotFoundError`` for a missing run, config, checkpoint, EMA
    weights or results file, :class:`IncompatibleCheckpointError` (listing keys) when the weights do
    not fit the architecture named by the run's ``config.yaml``, and :class:`ExportError` otherwise.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if push_to_hub:
        _check_repo_id(push_to_hub)
    cfg_file = run_dir / "config.yaml"
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder not found: {run_dir}")
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file}: not found (is {run_dir} a sonofm pretraining run?)")
    cfg = load_config(PretrainConfig, cfg_file)
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"{checkpoints_dir(run_dir)}: no complete checkpoint (step-N/{STATE_FILE})")
    try:
        state = read_state(ckpt)
    except ValueError as e:
        raise ExportError(str(e)) from None
    try:
        results_data = load_results(results) if results is not None else None
    except ValueError as e:
        raise ExportError(str(e)) from None

    weights_file = ckpt / (EMA_FILE if use_ema else MODEL_FILE)
    if not weights_file.is_file():
        if use_ema:
            raise FileNotFoundError(
                f"{weights_file}: this run has no EMA weights (config.yaml has ema={cfg.ema}); export the model "
                "weights (without --ema) or pretrain with ema > 0 (e.g. ema=0.999)"
            )
        raise FileNotFoundError(f"{weights_file}: not found; the checkpoint {ckpt} is incomplete")

    arch, in_chans = cfg.model.name, int(cfg.model.in_chans)
    img_size = int(cfg.data.img_size or state.get("img_size"))
    hint = ""
    if state.get("model") not in (None, arch) or int(state.get("in_chans", in_chans)) != in_chans:
        hint = (f"\n  note: {ckpt / STATE_FILE} says model={state.get('model')}, in_chans={state.get('in_chans')}, "
                f"but {cfg_file} says model.name={arch}, model.in_chans={in_chans}")
    model = _load_strict(arch, in_chans, weights_file, hint)

    mean, std = run_normalisation(state, in_chans)
    init = _public_init(state.get("init"))
    data = read_data_summary(list(cfg.data.shards), run_dir)
    licence = model_licence(data.names)
    step = int(state.get("step", 0))
    images_seen = state.get("images_seen")
    recipe = _recipe(cfg, state)
    sonofm_info = {
        "version": __version__,
        "run": Path(cfg.run_dir).name,  # a name, never a local path
        "recipe": _recipe_name(cfg),
        "step": step,
        "images_seen": images_seen,
        "weights": "ema" if use_ema else "model",
        "ema_decay": cfg.ema if use_ema else None,
        "sources": data.names,
        "init": init,
    }
    config = timm_config(model, arch, in_chans, img_size, mean, std, licence, sonofm_info)
    card = render_card(
        CardInfo(
            architecture=arch,
            in_chans=in_chans,
            img_size=img_size,
            num_features=int(model.num_features),
            feature_channels=[int(f["num_chs"]) for f in model.feature_info],
            num_params=sum(p.numel() for p in model.parameters()),
            mean=mean,
            std=std,
            step=step,
            images_seen=int(images_seen) if images_seen is not None else None,
            weights="ema" if use_ema else "model",
            ema_decay=cfg.ema,
            run_name=Path(cfg.run_dir).name,
            recipe=recipe,
            data=data,
            licence=licence,
            title=push_to_hub.split("/")[-1] if push_to_hub else out_dir.resolve().name,
            repo_id=push_to_hub,
            results=results_data,
            results_source=Path(results).name if results is not None else None,
            init=init,
        ),
        local_name=out_dir.name,
    )

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.export-tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        save_safetensors(contiguous_state(model.state_dict()), tmp / WEIGHTS_NAME, metadata={"format": "pt"})
        save_safetensors(features_state(model), tmp / FEATURES_NAME, metadata={"format": "pt"})
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        (tmp / CARD_NAME).write_text(card, encoding="utf-8")
        fsync_tree(tmp)
        _verify_folder(tmp, model, in_chans, img_size, mean, std)
        _verify_features(tmp, arch, in_chans, model)
        _publish(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

    source_text = ", ".join(data.names) if data.names else "sources unknown (no shard index found)"
    print(f"exported {arch} ({'EMA' if use_ema else 'model'} weights, step {step}, in_chans {in_chans}, "
          f"{img_size}px; data: {source_text}; licence {licence}) to {out_dir}")
    print(f'load with: timm.create_model("local-dir:{out_dir}", pretrained=True)')

    if dry_run or push_to_hub:
        plan = upload_plan(out_dir)
        width = max(len(n) for n, _ in plan)
        target = f"Hub repo {push_to_hub} (model repo, created if missing)" if push_to_hub else "no repo"
        print(("dry run: would upload to " if dry_run else "uploading to ") + target)
        for name, size in plan:
            print(f"  {name:<{width}}  {_size(size):>9}")
        print(f"  {'total':<{width}}  {_size(sum(s for _, s in plan)):>9}")
        if dry_run:
            print("nothing uploaded (--dry-run)" if push_to_hub
                  else "nothing uploaded: give --push-to-hub NAMESPACE/NAME to upload")
        else:
            url = _push(out_dir, push_to_hub, f"sonofm export: {arch}, step {step}, {'EMA' if use_ema else 'model'} "
                        "weights")
            print(f"uploaded: {url}")
    return out_dir
