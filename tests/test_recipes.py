"""Bad configs, beyond tests/test_config.py: every key of every schema, and the recipes' contents.

``test_config.py`` validates every recipe and checks one wrong type and one unknown key. Here the
same guarantees are checked exhaustively: a value of the wrong type for *every* scalar or list key
of every schema, an unknown key in *every* section, a wrong type inside a YAML file, and a value
outside every key's allowed choices each give a :class:`ConfigError` naming that key. The recipes'
contents are checked too: shard recipes' sources parse and name adapters, options and taxonomy
sources that exist, and pretraining recipes point at a taxonomy that loads with the levels they use.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from sonofm.config import SCHEMAS, ConfigError, PretrainConfig, load_config
from sonofm.config.schema import CHOICES
from sonofm.paths import REPO_ROOT

CONFIGS = REPO_ROOT / "configs"


def _leaves(schema: type, prefix: str = "") -> list[tuple[str, typing.Any]]:
    """``(dotted key, type)`` of every non-section field of ``schema``."""
    out = []
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.extend(_leaves(tp, f"{prefix}{f.name}."))
        else:
            out.append((f"{prefix}{f.name}", tp))
    return out


def _sections(schema: type, prefix: str = "") -> list[tuple[str, str]]:
    """``(section, one of its keys)`` for the top level ('') and every nested section."""
    hints = typing.get_type_hints(schema)
    fields = dataclasses.fields(schema)
    out = [(prefix.rstrip("."), fields[0].name)]
    for f in fields:
        if dataclasses.is_dataclass(hints[f.name]):
            out.extend(_sections(hints[f.name], f"{prefix}{f.name}."))
    return out


def _wrong_value(tp: typing.Any) -> str:
    """A YAML value that cannot be converted to ``tp``."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    base = args[0] if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)) else tp
    origin = typing.get_origin(base) or base
    if origin is bool:
        return "maybe"
    if origin in (int, float):
        return "lots"
    if origin is str:
        return "[a, b]"  # a list is not a string
    if origin is list:
        return "lots"  # a scalar is not a list
    raise AssertionError(f"no wrong value known for {tp}")


WRONG_TYPES = [(name, key, _wrong_value(tp)) for name, schema in SCHEMAS.items() for key, tp in _leaves(schema)]


def test_the_key_table_covers_every_schema() -> None:
    keys = {(n, k) for n, k, _ in WRONG_TYPES}
    assert ("pretrain", "optim.lr") in keys and ("pretrain", "data.augment.hflip") in keys
    assert ("shards", "samples_per_shard") in keys and ("finetune", "seg.num_classes") in keys
    assert len(WRONG_TYPES) > 80


@pytest.mark.parametrize(("schema", "key", "value"), WRONG_TYPES, ids=[f"{n}:{k}" for n, k, _ in WRONG_TYPES])
def test_wrong_type_names_the_key(schema: str, key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=rf"config key '{key}'") as err:
        load_config(SCHEMAS[schema], None, [f"{key}={value}"])
    assert f"{key}={value}" in str(err.value), "the override that caused it is quoted"


SECTIONS = [(name, section, key) for name, schema in SCHEMAS.items() for section, key in _sections(schema)]


@pytest.mark.parametrize(("schema", "section", "valid"), SECTIONS,
                         ids=[f"{n}:{s or 'top'}" for n, s, _ in SECTIONS])
def test_unknown_key_in_every_section_names_it_and_lists_valid_ones(schema: str, section: str, valid: str) -> None:
    bad = f"{section}.no_such_key" if section else "no_such_key"
    with pytest.raises(ConfigError, match=rf"unknown config key '{bad}'") as err:
        load_config(SCHEMAS[schema], None, [f"{bad}=1"])
    assert valid in str(err.value)


def test_wrong_type_in_a_yaml_recipe_names_key_and_file(tmp_path: Path) -> None:
    bad = tmp_path / "recipe.yaml"
    bad.write_text(yaml.safe_dump({"_base_": str(CONFIGS / "pretrain" / "cpu_atto.yaml"),
                                   "data": {"img_size": "big"}}))
    with pytest.raises(ConfigError, match=r"'data\.img_size' \(.*recipe\.yaml\)"):
        load_config(PretrainConfig, bad)
    bad.write_text(yaml.safe_dump({"optim": 3}))
    with pytest.raises(ConfigError, match=r"'optim'.* is a section"):
        load_config(PretrainConfig, bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match=r"recipe\.yaml: a recipe must be a mapping"):
        load_config(PretrainConfig, bad)
    bad.write_text("data: {img_size: 64\n")
    with pytest.raises(ConfigError, match=r"recipe\.yaml: not valid YAML"):
        load_config(PretrainConfig, bad)


CHOICE_CASES = [(name, key) for name, schema in SCHEMAS.items() for key in CHOICES
                if key in {k for k, _ in _leaves(schema)}]


@pytest.mark.parametrize(("schema", "key"), CHOICE_CASES, ids=[f"{n}:{k}" for n, k in CHOICE_CASES])
def test_value_outside_the_choices_names_key_and_choices(schema: str, key: str) -> None:
    value = "[nope]" if key == "hierarchy.levels" else "nope"
    with pytest.raises(ConfigError, match=rf"config key '{key}': choose from {CHOICES[key][0]}"):
        load_config(SCHEMAS[schema], None, [f"{key}={value}"])


# ------------------------------------------------------------------------------------ recipe contents


SHARD_RECIPES = sorted((CONFIGS / "shards").glob("*.yaml"))
PRETRAIN_RECIPES = sorted((CONFIGS / "pretrain").glob("*.yaml"))


@pytest.mark.parametrize("recipe", SHARD_RECIPES, ids=lambda p: p.name)
def test_shard_recipe_sources_parse_to_known_adapters_options_and_sources(recipe: Path) -> None:
    from sonofm.datasets.sources.adapters import ADAPTERS
    from sonofm.datasets.sources.specs import SourceSpec, parse_source_arg
    from sonofm.datasets.taxonomy import Taxonomy

    cfg = load_config(SCHEMAS["shards"], recipe)
    assert cfg.sources, f"{recipe}: no sources"
    assert abs(cfg.train + cfg.val + cfg.test - 1.0) < 1e-9, f"{recipe}: split fractions do not sum to 1"
    taxonomy = Taxonomy.load()
    for entry in cfg.sources:
        spec = parse_source_arg(entry)
        assert isinstance(spec, SourceSpec), entry
        cls = ADAPTERS.get(spec.adapter)
        assert cls is not None, f"{recipe}: {entry!r} names unknown adapter {spec.adapter!r}"
        unknown = set(spec.options) - set(cls.common_options) - set(cls.options)
        assert not unknown, f"{recipe}: {entry!r} has options {unknown} the {spec.adapter} adapter does not take"
        source = spec.source or cls.name
        assert source in taxonomy.sources, f"{recipe}: source {source!r} is not in configs/taxonomy.yaml"


@pytest.mark.parametrize("recipe", PRETRAIN_RECIPES, ids=lambda p: p.name)
def test_pretrain_recipe_taxonomy_loads_with_its_levels(recipe: Path) -> None:
    from sonofm.datasets.taxonomy import Taxonomy

    cfg = load_config(PretrainConfig, recipe)
    taxonomy = Taxonomy.load(cfg.hierarchy.taxonomy)
    tree = taxonomy.tree()
    assert set(cfg.hierarchy.levels) <= set(tree["names"]), (cfg.hierarchy.levels, sorted(tree["names"]))
    for level in cfg.hierarchy.levels:
        assert tree["names"][level], f"{recipe}: taxonomy level {level!r} is empty"
    assert cfg.masking.patch_size > 0 and cfg.data.img_size % cfg.masking.patch_size == 0, \
        f"{recipe}: img_size {cfg.data.img_size} is not a multiple of the mask patch {cfg.masking.patch_size}"
