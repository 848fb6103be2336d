"""Load a YAML recipe into a typed schema, apply ``key=value`` overrides, save the result.

Unknown keys, wrong types, values out of range and keys that contradict each other are caught here
with a message that names the key, the value, the valid range and where the value came from (which
recipe file, or which override), because a silently ignored typo in a recipe can cost a whole
training run, and a bad value found only after the model is built costs seconds on every try.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sonofm.atomic_io import write_text
from sonofm.config.schema import CHECK, CHOICES, Check
from sonofm.errors import UserError
from sonofm.paths import config_path

T = TypeVar("T")
BASE_KEY = "_base_"
#: Where a key's value came from when no recipe or override set it.
DEFAULT = "the default"


class ConfigError(UserError, ValueError):
    """A recipe or override that does not fit the schema."""


def _fields(schema: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(schema)}


def _nested_schema(f: dataclasses.Field) -> type | None:
    """The dataclass type of a field, if it is a nested section."""
    if dataclasses.is_dataclass(f.type) and isinstance(f.type, type):
        return f.type
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(value):
            return type(value)
    return None


def valid_keys(schema: type, prefix: str = "") -> list[str]:
    """Every dotted key the schema accepts (sections and leaves)."""
    keys = []
    for name, f in _fields(schema).items():
        full = f"{prefix}{name}"
        keys.append(full)
        sub = _nested_schema(f)
        if sub is not None:
            keys.extend(valid_keys(sub, full + "."))
    return keys


def _unknown_key_error(schema: type, key: str, where: str) -> ConfigError:
    parent, _, leaf = key.rpartition(".")
    section = schema
    for part in parent.split(".") if parent else []:
        section = _nested_schema(_fields(section)[part])  # type: ignore[assignment]
    names = list(_fields(section))
    close = difflib.get_close_matches(leaf, names, n=3)
    hint = f" Did you mean {', '.join(repr(f'{parent}.{c}' if parent else c) for c in close)}?" if close else ""
    scope = f"under '{parent}'" if parent else "at the top level"
    return ConfigError(
        f"unknown config key '{key}' ({where}).{hint} Valid keys {scope}: {', '.join(names)}. "
        f"All valid keys: {', '.join(valid_keys(schema))}"
    )


def _recipe_layers(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[str, dict]]:
    """``(where, data)`` for a recipe and the ``_base_`` chain it names, the farthest base first, so
    that every value is reported with the file that really set it (paths relative to the file)."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: '_base_' chain loops back to itself")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        via = f" (the '_base_' of {seen[-1]})" if seen else ""
        raise ConfigError(f"config file not found: {path}{via}") from None
    except (IsADirectoryError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable YAML recipe ({exc})") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of keys, got {type(data).__name__}")
    base = data.pop(BASE_KEY, None)
    own = [(f"recipe {path}", data)]
    if base is None:
        return own
    return _recipe_layers(path.parent / str(base), seen + (path,)) + own


def _read_yaml(path: Path) -> dict:
    """A recipe with its ``_base_`` chain merged into one mapping."""
    merged: Any = {}
    for _, data in _recipe_layers(path):
        merged = OmegaConf.merge(merged, data)
    return OmegaConf.to_container(merged)  # type: ignore[return-value]


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like key=value (e.g. optim.lr=3e-4)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{item}' has an empty key")
    try:
        return key, yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or "not a YAML value"
        raise ConfigError(f"override '{item}': the value {raw!r} does not parse ({problem}); quote it or fix "
                          "the brackets, e.g. data.shards=[a,b]") from None


def _nest(key: str, value: Any) -> dict:
    out: Any = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def _check_with_root(schema: type, data: dict, where: str) -> None:
    """Like _check_keys, but error messages always report full dotted keys from the root schema."""

    def walk(section: type, node: Any, prefix: str) -> None:
        if not isinstance(node, dict):
            return
        fields = _fields(section)
        for key, value in node.items():
            full = f"{prefix}{key}"
            if key not in fields:
                raise _unknown_key_error(schema, full, where)
            sub = _nested_schema(fields[key])
            if sub is not None:
                if value is not None and not isinstance(value, dict):
                    raise ConfigError(
                        f"config key '{full}' ({where}) is a section; got {type(value).__name__} {value!r}"
                    )
                walk(sub, value, full + ".")

    walk(schema, data, "")


def _record_origins(schema: type, data: dict, where: str, origins: dict[str, str], prefix: str = "") -> None:
    """Remember ``where`` as the origin of every leaf key that ``data`` sets (a section's leaves too)."""
    fields = _fields(schema)
    for key, value in data.items():
        full = f"{prefix}{key}"
        sub = _nested_schema(fields[key]) if key in fields else None
        if sub is not None and isinstance(value, dict):
            _record_origins(sub, value, where, origins, full + ".")
        else:
            origins[full] = where


def load_config(schema: type[T], path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> T:
    """Build a typed config: schema defaults ← YAML recipe ← ``key=value`` overrides.

    Raises :class:`ConfigError` naming the offending key, the value, the valid keys or range and the
    recipe file or override it came from, for unknown keys, wrong types, values out of range and
    keys that contradict each other; nothing else (no model, data or process) is touched first.
    """
    cfg = OmegaConf.structured(schema)
    OmegaConf.set_struct(cfg, True)
    layers: list[tuple[str, dict]] = []
    if path is not None:
        layers.extend(_recipe_layers(config_path(path)))
    for item in overrides or []:
        key, value = _parse_override(item)
        layers.append((f"override '{item}'", _nest(key, value)))
    origins: dict[str, str] = {}
    for where, data in layers:
        _check_with_root(schema, data, where)
        try:
            cfg = OmegaConf.merge(cfg, data)
        except OmegaConfBaseException as exc:
            key = getattr(exc, "full_key", None) or "?"
            msg = str(getattr(exc, "msg", exc)).splitlines()[0]
            raise ConfigError(f"bad value for config key '{key}' ({where}): {msg}") from None
        _record_origins(schema, data, where, origins)
    try:
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"incomplete config: {exc}") from None
    _check_choices(obj, origins)
    check_config(obj, origins)
    return obj  # type: ignore[return-value]


def _origin(origins: dict[str, str], key: str) -> str:
    """Where ``key`` was set: the override or recipe of the key itself or of a section above it."""
    parts = key.split(".")
    for i in range(len(parts), 0, -1):
        found = origins.get(".".join(parts[:i]))
        if found is not None:
            return found
    return DEFAULT


def _lookup(obj: Any, key: str) -> Any:
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


@functools.cache
def _hints(section: type) -> dict[str, Any]:
    return typing.get_type_hints(section)


def _kind(section: type, name: str) -> str:
    """What one value of a key is, for the range text: ``integer``, ``name`` or ``number``."""
    hint = _hints(section).get(name)
    args = set(typing.get_args(hint)) - {type(None)} or {hint}
    for arg in list(args):
        args |= set(typing.get_args(arg))
    if int in args and float not in args:
        return "integer"
    return "name" if str in args else "number"


def check_config(obj: Any, origins: dict[str, str] | None = None) -> None:
    """Check every key's range (its :class:`~sonofm.config.schema.Check`) and each section's
    ``cross_checks``; raise :class:`ConfigError` for the first problem. ``origins`` maps keys to the
    recipe or override that set them (from :func:`load_config`); without it values count as defaults.
    """
    origins = origins or {}

    def walk(node: Any, prefix: str) -> None:
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            key = f"{prefix}{f.name}"
            if dataclasses.is_dataclass(value):
                walk(value, key + ".")
                continue
            check: Check | None = f.metadata.get(CHECK)
            if check is not None and not check.ok(value):
                raise ConfigError(
                    f"bad value {value!r} for config key '{key}' ({_origin(origins, key)}): must be "
                    f"{check.describe(_kind(type(node), f.name))}"
                )
        cross = getattr(node, "cross_checks", None)
        if cross is not None:
            for keys, requirement in cross(prefix):
                given = ", ".join(f"'{k}' = {_lookup(obj, k)!r} ({_origin(origins, k)})" for k in keys)
                noun = "config key" if len(keys) == 1 else "config keys"
                raise ConfigError(f"bad {noun} {given}: {requirement}")

    walk(obj, "")


def _check_choices(obj: Any, origins: dict[str, str] | None = None) -> None:
    """Reject values outside a key's allowed set (see ``CHOICES`` in the schema)."""
    for key, allowed in CHOICES.items():
        node = obj
        for part in key.split("."):
            if not hasattr(node, part):
                node = None
                break
            node = getattr(node, part)
        if node is None:
            continue
        values = node if isinstance(node, list) else [node]
        for value in values:
            if value not in allowed:
                raise ConfigError(f"bad value {value!r} for config key '{key}': choose from {', '.join(map(str, allowed))} "
                                  f"({_origin(origins or {}, key)})")


def to_yaml(cfg: Any) -> str:
    """The resolved config as YAML text (what gets saved in a run directory)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: Any, run_dir: str | os.PathLike, name: str = "config.yaml") -> Path:
    """Write the resolved config into ``run_dir`` atomically."""
    return write_text(Path(run_dir) / name, to_yaml(cfg))
