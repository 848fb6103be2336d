"""The ``--source`` / sources-file specs of a shard build, read into :class:`SourceSpec`.

A spec is ``ADAPTER:PATH?option=value&...``, a mapping (``adapter``, ``root``, ``source``,
``organ``, ``region``, ``description``, ``pseudonymise``, ``text``, other keys are adapter options), or a YAML
file listing them. Kept apart from the build so the CLI and recipes read specs without the
worker and writer machinery.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sonofm.errors import UserError


class BadSpecError(UserError, ValueError):
    """A source spec that cannot be read (form, option value, a name given twice)."""


#: Spec keys that describe the source itself (its place in the taxonomy), not options of its adapter.
DESCRIPTION_KEYS = ("organ", "region", "description")
#: What the build does with text touching a source's kept image (``?text=keep`` keeps the annotations).
TEXT_MODES = ("blank", "keep")


@dataclass
class SourceSpec:
    """One source to build: adapter name, dataset root, optional source name, adapter options, and
    what the spec says of the source (``organ``, ``region``, ``description``; all optional)."""

    adapter: str
    root: Path
    source: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    organ: str | None = None
    region: str | None = None
    description: str | None = None
    pseudonymise: bool | None = None  # paths and groups as keyed hashes; None: on for dicom/folder/csv
    text: str | None = None  # "blank" | "keep" text touching the kept image; None: the build's setting

    def __post_init__(self) -> None:
        self.root = Path(self.root).expanduser()


def _scalar(text: str) -> Any:
    """Option values from a query string: YAML scalars (``8`` -> int, ``true`` -> bool, ``null``);
    Python's ``None`` is taken for null too, as users coming from Python write it."""
    if text in ("None", "none"):
        return None
    try:
        v = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return v if isinstance(v, (str, int, float, bool, type(None), list)) else text


def _flag(value: Any, name: str, where: str) -> bool:
    """A yes/no option: a typo (``pseudonymise=ture``) is an error, never silently false."""
    if not isinstance(value, bool):
        raise BadSpecError(f"{where}: {name} must be true or false, got {value!r}")
    return value


def _text_mode(value: Any, where: str) -> str:
    """``text=blank|keep``: a typo is an error, never a silent default (it decides what leaves the hospital)."""
    if value not in TEXT_MODES:
        raise BadSpecError(f"{where}: text must be one of {', '.join(TEXT_MODES)}, got {value!r}")
    return str(value)


def _spec_from_mapping(entry: dict[str, Any], base: Path | None, where: str) -> SourceSpec:
    """A mapping entry; its unknown keys are adapter options, a relative root is relative to ``base``."""
    e = dict(entry)
    adapter = e.pop("adapter", None)
    root = e.pop("root", e.pop("path", None))
    if not adapter or root is None:
        raise ValueError(f"{where}: a source entry needs 'adapter' and 'root' (or 'path'), got {entry}")
    source = e.pop("source", None)
    described = {k: e.pop(k) for k in DESCRIPTION_KEYS if k in e}
    if "pseudonymise" in e:
        described["pseudonymise"] = _flag(e.pop("pseudonymise"), "pseudonymise", where)
    if "text" in e:
        described["text"] = _text_mode(e.pop("text"), where)
    options = dict(e.pop("options", None) or {})
    options.update(e)  # any other key is an adapter option
    root = Path(str(root)).expanduser()
    if base is not None and not root.is_absolute():
        root = base / root
    return SourceSpec(str(adapter), root, source, options, **described)


def parse_source_arg(s: str | dict[str, Any]) -> SourceSpec | list[SourceSpec]:
    """``"busi:PATH"`` or ``"folder:PATH?source=x&mask_pattern=*_mask.png"`` -> :class:`SourceSpec`.

    A path to a YAML file (a list of such strings or of mappings with ``adapter``, ``root``,
    ``source``, ``organ``, ``region``, ``description``, ``options``/other keys; relative roots are
    relative to the file) gives a list of specs; :func:`~sonofm.datasets.build.orchestrate.build_shards`
    accepts such lists inside its ``sources`` and flattens them.
    """
    if isinstance(s, SourceSpec):
        return s
    if isinstance(s, dict):
        return _spec_from_mapping(s, None, "source entry")
    text = str(s).strip()
    if text.lower().endswith((".yaml", ".yml")) and Path(text).expanduser().is_file():
        return load_sources_file(text)
    adapter, sep, rest = text.partition(":")
    if not sep or not adapter or not rest:
        raise BadSpecError(
            f"source {text!r}: expected ADAPTER:PATH (e.g. busi:../shared/data/busi, "
            "folder:DIR?source=name&mask_pattern=*_mask.png) or a YAML list file"
        )
    path, _, query = rest.partition("?")
    options: dict[str, Any] = {}
    described: dict[str, str] = {}
    source = None
    for k, v in urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if k == "source":
            source = v
        elif k in DESCRIPTION_KEYS:
            described[k] = v
        elif k == "pseudonymise":
            described[k] = _flag(_scalar(v), k, text)
        elif k == "text":
            described[k] = _text_mode(v, text)
        else:
            options[k] = _scalar(v)
    return SourceSpec(adapter.strip(), Path(path), source, options, **described)


def load_sources_file(path: str | os.PathLike) -> list[SourceSpec]:
    """Sources listed in a YAML file (a list, or a mapping with a ``sources`` list)."""
    p = Path(path).expanduser()
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{p}: cannot read the source list ({e})") from e
    if isinstance(data, dict) and "sources" in data:
        data = data["sources"]
    if not isinstance(data, list) or not data:
        raise ValueError(f"{p}: expected a non-empty YAML list of sources")
    out: list[SourceSpec] = []
    for i, entry in enumerate(data):
        where = f"{p} entry {i}"
        if isinstance(entry, dict):
            out.append(_spec_from_mapping(entry, p.parent, where))
        elif isinstance(entry, str):
            spec = parse_source_arg(entry)
            if isinstance(spec, list):
                raise ValueError(f"{where}: nested source files are not supported")
            if not spec.root.is_absolute():
                spec.root = p.parent / spec.root
            out.append(spec)
        else:
            raise ValueError(f"{where}: expected 'adapter:PATH' or a mapping, got {entry!r}")
    return out


def parse_sources(args: Iterable[Any]) -> list[SourceSpec]:
    """Flatten strings, YAML files, mappings, specs and lists of them into a list of specs."""
    out: list[SourceSpec] = []
    for a in args:
        if isinstance(a, (list, tuple)):
            out.extend(parse_sources(a))
        else:
            spec = parse_source_arg(a)
            out.extend(spec if isinstance(spec, list) else [spec])
    return out


def make_adapter(spec: SourceSpec) -> Any:
    """The adapter object for ``spec`` (the source override goes to the adapter)."""
    from sonofm.datasets.sources.adapters import get_adapter

    kwargs = dict(spec.options)
    if spec.source is not None:
        kwargs["source"] = spec.source
    return get_adapter(spec.adapter, spec.root, **kwargs)


__all__ = [
    "DESCRIPTION_KEYS",
    "TEXT_MODES",
    "BadSpecError",
    "SourceSpec",
    "load_sources_file",
    "make_adapter",
    "parse_source_arg",
    "parse_sources",
]
