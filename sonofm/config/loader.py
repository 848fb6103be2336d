"""Load a YAML recipe into a typed schema, apply ``key=value`` overrides, save the result.

Unknown keys and wrong types are caught here with a message that names the key and lists the
valid ones, because a silently ignored typo in a recipe can cost a whole training run.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sonofm.atomic_io import temp_file
from sonofm.config.schema import CHOICES
from sonofm.paths import config_path

T = TypeVar("T")
BASE_KEY = "_base_"


class ConfigError(ValueError):
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


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """Read a recipe, merging any ``_base_`` recipe it names (paths relative to the file)."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: '_base_' chain loops back to itself")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of keys, got {type(data).__name__}")
    base = data.pop(BASE_KEY, None)
    if base is None:
        return data
    merged = _read_yaml((path.parent / base), seen + (path,))
    return OmegaConf.to_container(OmegaConf.merge(merged, data))  # type: ignore[return-value]


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like key=value (e.g. optim.lr=3e-4)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{item}' has an empty key")
    return key, yaml.safe_load(raw) if raw != "" else ""


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


def load_config(schema: type[T], path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> T:
    """Build a typed config: schema defaults ← YAML recipe ← ``key=value`` overrides.

    Raises :class:`ConfigError` naming the offending key (with the valid ones) for unknown keys and
    values of the wrong type.
    """
    cfg = OmegaConf.structured(schema)
    OmegaConf.set_struct(cfg, True)
    layers: list[tuple[str, dict]] = []
    if path is not None:
        p = config_path(path)
        layers.append((str(p), _read_yaml(p)))
    for item in overrides or []:
        key, value = _parse_override(item)
        layers.append((f"override '{item}'", _nest(key, value)))
    for where, data in layers:
        _check_with_root(schema, data, where)
        try:
            cfg = OmegaConf.merge(cfg, data)
        except OmegaConfBaseException as exc:
            key = getattr(exc, "full_key", None) or "?"
            msg = str(getattr(exc, "msg", exc)).splitlines()[0]
            raise ConfigError(f"bad value for config key '{key}' ({where}): {msg}") from None
    try:
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"incomplete config: {exc}") from None
    _check_choices(obj)
    return obj  # type: ignore[return-value]


def _check_choices(obj: Any) -> None:
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
                raise ConfigError(f"bad value {value!r} for config key '{key}': choose from {', '.join(map(str, allowed))}")


def to_yaml(cfg: Any) -> str:
    """The resolved config as YAML text (what gets saved in a run directory)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: Any, run_dir: str | os.PathLike, name: str = "config.yaml") -> Path:
    """Write the resolved config into ``run_dir`` atomically."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    target = run_dir / name
    tmp = temp_file(run_dir, prefix=f".{name}.", suffix=".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(to_yaml(cfg))
    os.replace(tmp, target)
    return target
