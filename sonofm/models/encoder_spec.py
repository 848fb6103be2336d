"""One encoder spec, everywhere an encoder is named (probe, finetune, quickstart, pretraining init).

A spec is one string in one of these forms:

- ``random:<name>``: a timm architecture, random initialisation (the baseline of every comparison);
- ``timm:<name>[.<tag>]``: timm's published weights (``timm:convnextv2_atto.fcmae_ft_in1k``), loaded
  by timm itself, so the Hugging Face cache and ``HF_HUB_OFFLINE`` are honoured;
- ``hf-hub:<org>/<repo>``: a timm-format repository on the Hub (sonofm exports included);
- ``local-dir:<folder>`` or a plain folder holding ``config.json`` + ``model.safetensors`` (timm's
  format, e.g. a sonofm export);
- ``<architecture>@<file>.safetensors``: timm-named weights in one file, with the architecture they fit;
- a sonofm pretraining run, its ``checkpoints/`` folder or one ``step-N`` checkpoint.

This module only reads the spec (and, for :func:`spec_architecture`, the small config file that names
the architecture); :func:`sonofm.models.loading.load_encoder` builds the encoder. Weights that are not
in the cache while the Hub is unreachable or ``HF_HUB_OFFLINE`` is set give one line
(:class:`WeightsNotCachedError`): the spec, the cache folder searched and the download command.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sonofm.errors import UserError

__all__ = [
    "EncoderSpec",
    "EncoderSpecError",
    "WeightsNotCachedError",
    "baseline_specs",
    "cache_folder",
    "check_spec",
    "hub_repo",
    "is_published",
    "parse_spec",
    "short_name",
    "spec_architecture",
    "weights_cached",
]

PUBLISHED_KINDS = ("timm", "hf-hub")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class EncoderSpecError(UserError, ValueError):
    """A spec that names nothing loadable (unknown form, unknown timm name, another architecture)."""


class WeightsNotCachedError(UserError, FileNotFoundError):
    """Published weights that are neither in the local Hugging Face cache nor downloadable now."""


@dataclass(frozen=True)
class EncoderSpec:
    """A parsed spec: ``kind`` is one of random, timm, hf-hub, local-dir, file, path (a run or an export
    folder, told apart when loading); ``name`` is the timm name (with tag) where the spec gives it;
    ``location`` the repo, folder or file."""

    text: str
    kind: str
    name: str | None = None
    location: str | None = None


def parse_spec(text: str) -> EncoderSpec:
    """Split a spec into its form; no file is read. An empty or malformed spec is an :class:`EncoderSpecError`."""
    if not isinstance(text, str) or not text.strip():
        raise EncoderSpecError(f"encoder spec {text!r}: empty; give random:<name>, timm:<name>.<tag>, "
                               "hf-hub:<org>/<repo>, a folder, <arch>@<file>.safetensors or a pretraining run")
    text = text.strip()
    for prefix, kind in (("random:", "random"), ("timm:", "timm")):
        if text.startswith(prefix):
            name = text[len(prefix):]
            if not re.fullmatch(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)?", name):
                raise EncoderSpecError(f"encoder spec {text!r}: expected {prefix}<timm name>"
                                       + ("[.<tag>]" if kind == "timm" else "") + ", e.g. "
                                       + (f"{prefix}convnextv2_atto" + (".fcmae_ft_in1k" if kind == "timm" else "")))
            if kind == "random" and "." in name:
                raise EncoderSpecError(f"encoder spec {text!r}: random:<name> takes an architecture without a tag "
                                       f"(random:{name.split('.')[0]})")
            return EncoderSpec(text, kind, name=name)
    if text.startswith("hf-hub:"):
        repo = text[len("hf-hub:"):]
        if not re.fullmatch(r"[\w.-]+/[\w.-]+(@[\w./-]+)?", repo):
            raise EncoderSpecError(f"encoder spec {text!r}: expected hf-hub:<org>/<repo>")
        return EncoderSpec(text, "hf-hub", location=repo)
    if text.startswith("local-dir:"):
        return EncoderSpec(text, "local-dir", location=text[len("local-dir:"):])
    if "@" in text and text.endswith(".safetensors"):
        arch, _, file = text.partition("@")
        if not re.fullmatch(r"[A-Za-z0-9_]+", arch):
            raise EncoderSpecError(f"encoder spec {text!r}: expected <architecture>@<file>.safetensors, "
                                   "e.g. convnextv2_atto@weights/encoder.safetensors")
        return EncoderSpec(text, "file", name=arch, location=file)
    if text.endswith(".safetensors"):
        raise EncoderSpecError(f"encoder spec {text!r}: a weights file needs its architecture: "
                               f"<architecture>@{text} (e.g. convnextv2_atto@{text})")
    return EncoderSpec(text, "path", location=text)


def short_name(text: str) -> str:
    """A row and folder name for a spec: ``random``, ``convnextv2_atto.fcmae_ft_in1k``, a repo or folder name."""
    spec = parse_spec(text)
    if spec.kind == "random":
        return "random"
    if spec.kind in ("timm", "file"):
        return spec.name if spec.kind == "timm" else f"{spec.name}@{Path(spec.location or '').stem}"
    loc = (spec.location or "").rstrip("/")
    return loc.split("/")[-1] or loc


def is_published(text: str) -> bool:
    """Whether the spec names weights that come from the Hugging Face Hub (``timm:`` or ``hf-hub:``)."""
    return parse_spec(text).kind in PUBLISHED_KINDS


def _timm_pretrained_cfg(name: str, spec_text: str) -> dict[str, Any]:
    import timm

    arch, _, tag = name.partition(".")
    if arch not in timm.list_models():
        near = timm.list_models(f"*{arch.split('_')[0]}*")[:8]
        raise EncoderSpecError(f"encoder spec {spec_text!r}: timm {timm.__version__} has no model {arch!r}"
                               + (f" (e.g. {', '.join(near)})" if near else ""))
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # timm: "Invalid pretrained tag"
        cfg = None
    if cfg is None or (tag and cfg.tag != tag):
        tags = [n for n in timm.list_pretrained(f"{arch}.*")]
        raise EncoderSpecError(f"encoder spec {spec_text!r}: timm has no published weights {name!r}; "
                               f"published for {arch}: {', '.join(tags) or 'none'}")
    if not cfg.hf_hub_id:
        raise EncoderSpecError(f"encoder spec {spec_text!r}: timm's weights {name!r} are not on the Hugging Face Hub "
                               "(no hf_hub_id), so they cannot be loaded through its cache")
    return cfg.to_dict()


def hub_repo(text: str) -> str:
    """The Hugging Face repo id a published spec loads from (``timm/convnextv2_atto.fcmae_ft_in1k``)."""
    spec = parse_spec(text)
    if spec.kind == "timm":
        return str(_timm_pretrained_cfg(spec.name or "", text)["hf_hub_id"]).split("@")[0]
    if spec.kind == "hf-hub":
        return (spec.location or "").split("@")[0]
    raise EncoderSpecError(f"encoder spec {text!r}: not a published (timm: or hf-hub:) spec")


def cache_folder(repo_id: str) -> Path:
    """The folder of ``repo_id`` in the Hugging Face cache (whether or not it exists)."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    return Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")


def weights_cached(text: str) -> Path | None:
    """The cached weights file of a published spec, or None when the cache does not hold it."""
    from huggingface_hub import try_to_load_from_cache

    repo = hub_repo(text)
    for name in _WEIGHT_FILES:
        hit = try_to_load_from_cache(repo, name)
        if isinstance(hit, str):
            return Path(hit)
    return None


def not_cached_error(text: str) -> WeightsNotCachedError:
    """The one-line error for published weights that cannot be loaded offline."""
    repo = hub_repo(text)
    return WeightsNotCachedError(
        f"encoder {text}: weights not found in the Hugging Face cache {cache_folder(repo)} and the Hub cannot be "
        f"reached (HF_HUB_OFFLINE or no network); download them with: hf download {repo}")


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set (read from huggingface_hub, the way timm's downloads see it)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EncoderSpecError(f"{path}: not readable JSON ({e})") from e
    if not isinstance(data, dict):
        raise EncoderSpecError(f"{path}: expected a JSON object")
    return data


def _hub_config(text: str) -> dict[str, Any]:
    from huggingface_hub import try_to_load_from_cache

    repo = hub_repo(text)
    hit = try_to_load_from_cache(repo, "config.json")
    if not isinstance(hit, str):
        if hub_offline():
            raise not_cached_error(text)
        from huggingface_hub import hf_hub_download

        try:
            hit = hf_hub_download(repo, "config.json")
        except Exception as e:  # noqa: BLE001 - network, auth, missing repo: one line either way
            raise WeightsNotCachedError(f"{not_cached_error(text)} ({type(e).__name__})") from None
    return _read_json(Path(hit))


def spec_architecture(text: str) -> str:
    """The timm architecture a spec's weights fit, read from the spec or its small config file (no weights
    are read): what pretraining checks ``model.init`` against before any work."""
    spec = parse_spec(text)
    if spec.kind in ("random", "file"):
        return str(spec.name)
    if spec.kind == "timm":
        return str(_timm_pretrained_cfg(spec.name or "", text)["architecture"])
    if spec.kind == "hf-hub":
        cfg = _hub_config(text)
    else:
        folder = Path(spec.location or "")
        if (folder / "config.json").is_file():
            cfg = _read_json(folder / "config.json")
        else:
            from sonofm.checkpoints import locate_checkpoint

            if not folder.exists():
                raise FileNotFoundError(f"encoder spec {text!r}: no such folder or file")
            run_dir, _ = locate_checkpoint(folder)
            import yaml

            try:
                model = (yaml.safe_load((run_dir / "config.yaml").read_text()) or {}).get("model") or {}
            except (OSError, yaml.YAMLError) as e:
                raise EncoderSpecError(f"{run_dir / 'config.yaml'}: unreadable ({e})") from e
            if not model.get("name"):
                raise EncoderSpecError(f"{run_dir / 'config.yaml'}: no model.name")
            return str(model["name"])
    arch = cfg.get("architecture")
    if not arch:
        raise EncoderSpecError(f"encoder spec {text!r}: its config.json has no 'architecture'")
    return str(arch).partition(".")[0]


def check_spec(text: str) -> EncoderSpec:
    """Fail fast, before any data is read: the spec parses, a timm name exists, published weights are
    in the cache when the Hub is offline, a path exists. Returns the parsed spec."""
    spec = parse_spec(text)
    if spec.kind in PUBLISHED_KINDS:
        if spec.kind == "timm":
            hub_repo(text)  # unknown names and tags
        if hub_offline() and weights_cached(text) is None:
            raise not_cached_error(text)
    elif spec.kind == "random":
        import timm

        if spec.name not in timm.list_models():
            raise EncoderSpecError(f"encoder spec {text!r}: timm {timm.__version__} has no model {spec.name!r}")
    elif not Path(spec.location or "").exists():
        raise FileNotFoundError(f"encoder spec {text!r}: no such path")
    return spec


def baseline_specs(baselines: list[str], architecture: str) -> list[str]:
    """Baseline specs with the shorthand ``random`` expanded to ``random:<architecture>`` (the same
    architecture as the encoder they are compared with); each is checked to parse, duplicates dropped."""
    out: list[str] = []
    for b in baselines:
        spec = f"random:{architecture}" if b.strip() == "random" else b.strip()
        parse_spec(spec)
        if spec not in out:
            out.append(spec)
    return out
