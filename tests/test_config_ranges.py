"""Range and consistency checks of the typed schemas (issue 14): every checked key of every schema.

``load_config`` must refuse a value outside a key's range, or keys that contradict each other, with
one message naming the key, the value, the valid range and where the value came from (the override
or the recipe file), before any model, data or process starts; ``sonofm <command>`` must turn it
into one line on stderr and exit 2. Every shipped recipe must still load.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from sonofm.cli import main
from sonofm.config import SCHEMAS, ConfigError, PretrainConfig, check_config, load_config
from sonofm.config.schema import CHECK, PATCH, Check
from sonofm.paths import packaged_configs

#: key -> [(bad value as written on the command line, text the message must contain)], for every
#: key that declares a range. Keys of shared sections (data.*, optim.*) are tried in every schema
#: that has them.
BAD: dict[str, list[tuple[str, str]]] = {
    # DataConfig (pretrain, probe, finetune)
    "data.weights": [("[-1]", ">= 0"), ("[]", "at least 1")],
    # ProbeConfig / FinetuneConfig: baseline encoders, each named once
    "baselines": [("[random,random]", "distinct")],
    "data.temperature": [("0", "> 0"), ("-1", "> 0"), ("nan", "> 0")],
    "data.img_size": [("100", "multiple of 32"), ("0", ">= 32"), ("-64", ">= 32")],
    "data.batch_size": [("0", ">= 1"), ("-1", ">= 1")],
    "data.num_workers": [("-1", ">= 0")],
    "data.shuffle_buffer": [("-5", ">= 0")],
    "data.augment.crop_scale": [("[0.5,0.2]", "increasing"), ("[0.2,1.5]", "<= 1"), ("[0,1]", "> 0"),
                                ("[0.5]", "list of 2")],
    "data.augment.crop_ratio": [("[1.3,0.7]", "increasing"), ("[-1,1]", "> 0")],
    "data.augment.min_field_fraction": [("1.5", "<= 1"), ("-0.1", ">= 0")],
    "data.augment.hflip": [("2", "<= 1"), ("-1", ">= 0")],
    "data.augment.gamma": [("[1.2,0.8]", "increasing"), ("[0,1]", "> 0"), ("[1,2,3]", "list of 2")],
    "data.augment.gain": [("[1.1,0.9]", "increasing"), ("[-0.5,1]", "> 0")],
    "data.augment.max_tries": [("0", ">= 1")],
    # PretrainConfig
    "run_dir": [("''", "non-empty")],
    "seed": [("-1", ">= 0"), ("4294967296", "< 2147483648")],
    "steps": [("0", ">= 1"), ("-3", ">= 1")],
    "ema": [("1", "< 1"), ("-0.1", ">= 0"), ("1.5", "< 1")],
    "model.name": [("resnet50", "'convnext'")],
    "model.in_chans": [("0", ">= 1")],
    "model.drop_path_rate": [("1", "< 1"), ("-0.1", ">= 0")],
    "masking.ratio": [("1.5", "> 0 and < 1"), ("0", "> 0 and < 1"), ("1", "> 0 and < 1"), ("nan", "> 0")],
    "masking.patch_size": [("16", ">= 32"), ("48", "a multiple of 32"), ("0", ">= 32")],
    "decoder.dim": [("0", ">= 1")],
    "decoder.depth": [("-1", ">= 0")],
    "target.lowpass_sigma": [("0", "> 0")],
    "hierarchy.weight": [("-0.5", ">= 0"), ("inf", ">= 0")],
    "hierarchy.levels": [("[organ,organ]", "distinct")],
    "optim.base_lr": [("0", "> 0"), ("-1e-3", "> 0"), ("nan", "> 0"), ("inf", "> 0")],
    "optim.lr": [("0", "> 0"), ("-1", "> 0"), ("nan", "> 0")],
    "optim.min_lr": [("-1e-5", ">= 0")],
    "optim.weight_decay": [("-0.05", ">= 0")],
    "optim.betas": [("[0.9,1.0]", "< 1"), ("[0.9]", "list of 2"), ("[-0.1,0.9]", ">= 0")],
    "optim.warmup_steps": [("-1", ">= 0")],
    "optim.clip_grad": [("-1", ">= 0")],
    "optim.accum_steps": [("0", ">= 1")],
    "logging.log_every": [("0", ">= 1")],
    "logging.sample_every": [("-1", ">= 0")],
    "logging.wandb_project": [("''", "non-empty")],
    "checkpoint.every": [("0", ">= 1")],
    "checkpoint.keep_last": [("0", ">= 1")],
    "fast.compile_mode": [("reduce-overhead", "one of default, max-autotune-no-cudagraphs")],
    # ProbeConfig
    "out_dir": [("''", "non-empty")],
    "encoder": [("''", "non-empty")],
    "in_chans": [("0", ">= 1")],
    "label_key": [("''", "non-empty")],
    "group_key": [("''", "non-empty")],
    "folds": [("1", ">= 2")],
    "methods": [("[svm]", "one of linear, knn"), ("[]", "at least 1"), ("[knn,knn]", "distinct")],
    "knn_k": [("0", ">= 1")],
    "knn_temperature": [("0", "> 0")],
    # FinetuneConfig
    "eval_every": [("-1", ">= 0")],
    "prompt.p_whole": [("1.5", "<= 1"), ("-0.1", ">= 0")],
    "layer_decay": [("0", "> 0 and <= 1"), ("1.5", "<= 1")],
    "label_fraction": [("0", "> 0 and <= 1"), ("2", "<= 1")],
    "dataset_weights": [("[-1]", ">= 0")],
    "seg.num_classes": [("1", ">= 2")],
    "seg.ce_weight": [("-1", ">= 0")],
    "seg.dice_weight": [("-1", ">= 0")],
    "seg.decoder_channels": [("0", ">= 1")],
    # ShardsConfig
    "out": [("''", "non-empty")],
    "max_side": [("4", ">= 8")],
    "samples_per_shard": [("0", ">= 1")],
    "train": [("-0.5", ">= 0")],
    "val": [("-0.1", ">= 0")],
    "test": [("-1", ">= 0")],
    "workers": [("0", ">= 1")],
    "colour_limit": [("1.5", "<= 1"), ("-0.1", ">= 0")],
}


def _checked_keys(schema: type, prefix: str = "") -> dict[str, Check]:
    """Every key of ``schema`` that declares a :class:`Check`."""
    out: dict[str, Check] = {}
    for f in dataclasses.fields(schema):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            out.update(_checked_keys(type(default), f"{prefix}{f.name}."))
        elif CHECK in f.metadata:
            out[f"{prefix}{f.name}"] = f.metadata[CHECK]
    return out


CASES = [(name, key, value, text) for name, schema in SCHEMAS.items() for key in _checked_keys(schema)
         for value, text in BAD.get(key, [])]


def test_the_table_covers_every_checked_key_of_every_schema() -> None:
    for name, schema in SCHEMAS.items():
        missing = sorted(set(_checked_keys(schema)) - set(BAD))
        assert not missing, f"{name}: checked keys without a bad value in BAD: {missing}"
    assert len(CASES) > 150


def test_every_table_key_exists_somewhere() -> None:
    every = {k for schema in SCHEMAS.values() for k in _checked_keys(schema)}
    assert set(BAD) <= every, sorted(set(BAD) - every)


@pytest.mark.parametrize(("schema", "key", "value", "text"), CASES, ids=[f"{n}:{k}={v}" for n, k, v, _ in CASES])
def test_bad_value_names_key_value_range_and_override(schema: str, key: str, value: str, text: str) -> None:
    override = f"{key}={value}"
    with pytest.raises(ConfigError) as err:
        load_config(SCHEMAS[schema], None, [override])
    msg = str(err.value)
    assert f"config key '{key}'" in msg, msg
    assert text in msg, f"range text {text!r} missing: {msg}"
    assert f"override '{override}'" in msg, msg
    assert "\n" not in msg


def _cli_argv(schema: str, overrides: list[str]) -> list[str]:
    if schema == "shards":
        return ["shards", "build", "--source", "folder:/nonexistent", *overrides]
    if schema == "finetune":
        return ["finetune", "seg", *overrides]
    return [schema, *overrides]


CLI_CASES = [c for c in CASES if c[0] in ("pretrain", "shards")] + [
    c for c in CASES if c[0] in ("probe", "finetune") and not c[1].startswith(("data.", "optim."))]


@pytest.mark.parametrize(("schema", "key", "value", "text"), CLI_CASES,
                         ids=[f"{n}:{k}={v}" for n, k, v, _ in CLI_CASES])
def test_cli_bad_value_is_one_line_and_exit_2(schema: str, key: str, value: str, text: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(_cli_argv(schema, [f"{key}={value}"]))
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    command = "shards build" if schema == "shards" else "finetune seg" if schema == "finetune" else schema
    assert lines[0].startswith(f"sonofm {command}: error: "), lines[0]
    assert f"'{key}'" in lines[0] and text in lines[0]
    assert "Traceback" not in err


# ------------------------------------------------------------------------------------- cross-key rules

CROSS = [
    ("pretrain", ["optim.lr=1e-3", "optim.min_lr=1e-2"], ("optim.min_lr", "optim.lr"), "<= optim.lr"),
    ("finetune", ["optim.lr=1e-3", "optim.min_lr=1e-2"], ("optim.min_lr", "optim.lr"), "<= optim.lr"),
    ("pretrain", ["data.shards=[a,b]", "data.weights=[1]"], ("data.weights", "data.shards"), "one weight per"),
    ("probe", ["data.shards=[a]", "data.weights=[1,2]"], ("data.weights", "data.shards"), "one weight per"),
    ("pretrain", ["data.weights=[0,0]"], ("data.weights",), "not all be 0"),
    ("pretrain", ["data.img_size=96", "masking.patch_size=64"], ("data.img_size", "masking.patch_size"),
     "whole mask squares"),
    ("pretrain", ["hierarchy.levels=[]", "hierarchy.weight=0.5"], ("hierarchy.levels", "hierarchy.weight"),
     "at least one level"),
    ("finetune", ["datasets=[a,b]", "dataset_weights=[1]"], ("dataset_weights", "datasets"), "one weight per dataset"),
    ("finetune", ["dataset_weights=[0]"], ("dataset_weights",), "not all be 0"),
    ("finetune", ["seg.ce_weight=0", "seg.dice_weight=0"], ("seg.ce_weight", "seg.dice_weight"), "loss weight"),
    ("shards", ["train=0", "val=0", "test=0"], ("train", "val", "test"), "positive sum"),
]


@pytest.mark.parametrize(("schema", "overrides", "keys", "text"), CROSS, ids=[" ".join(c[1]) for c in CROSS])
def test_keys_that_contradict_each_other_are_named_together(schema: str, overrides: list[str], keys: tuple[str, ...],
                                                            text: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(SCHEMAS[schema], None, overrides)
    msg = str(err.value)
    for key in keys:
        assert f"'{key}' = " in msg, msg
    assert text in msg, msg


def test_cross_rule_names_where_each_value_came_from(tmp_path: Path) -> None:
    assert load_config(PretrainConfig, None, ["optim.min_lr=1.0"]).optim.min_lr == 1.0  # lr unset: scaled at run time
    recipe = tmp_path / "lr.yaml"
    recipe.write_text(yaml.safe_dump({"optim": {"lr": 1e-5}}))
    with pytest.raises(ConfigError, match=rf"'optim.min_lr' = 0.0001 \(override 'optim.min_lr=1e-4'\), "
                                          rf"'optim.lr' = 1e-05 \(recipe {recipe}\)"):
        load_config(PretrainConfig, recipe, ["optim.min_lr=1e-4"])
    with pytest.raises(ConfigError, match=r"'optim.min_lr' = 0.5 \(override 'optim.min_lr=0.5'\), "
                                          r"'optim.lr' = 0.1 \(override 'optim.lr=0.1'\)"):
        load_config(SCHEMAS["finetune"], None, ["optim.min_lr=0.5", "optim.lr=0.1"])


# ------------------------------------------------------------------------------------ where values come from


def test_a_bad_value_in_a_recipe_names_the_file(tmp_path: Path) -> None:
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(yaml.safe_dump({"masking": {"ratio": 1.2}}))
    with pytest.raises(ConfigError, match=rf"'masking.ratio' \(recipe {recipe}\): must be a number > 0 and < 1"):
        load_config(PretrainConfig, recipe)
    # an override wins, and a good override fixes the recipe
    assert load_config(PretrainConfig, recipe, ["masking.ratio=0.5"]).masking.ratio == 0.5


def test_a_bad_value_in_a_base_recipe_names_the_base_file(tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"data": {"batch_size": 0}}))
    child = tmp_path / "child.yaml"
    child.write_text(yaml.safe_dump({"_base_": "base.yaml", "steps": 5}))
    with pytest.raises(ConfigError, match=rf"'data.batch_size' \(recipe {base}\)"):
        load_config(PretrainConfig, child)
    missing = tmp_path / "orphan.yaml"
    missing.write_text(yaml.safe_dump({"_base_": "gone.yaml"}))
    with pytest.raises(ConfigError, match=rf"config file not found: .*gone.yaml \(the '_base_' of {missing}\)"):
        load_config(PretrainConfig, missing)


def test_a_whole_section_override_is_checked_too() -> None:
    with pytest.raises(ConfigError, match=r"'data.augment.hflip' \(override 'data.augment=\{hflip: 3\}'\)"):
        load_config(PretrainConfig, None, ["data.augment={hflip: 3}"])


def test_an_override_that_does_not_parse_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"override 'data.shards=\[a'.*does not parse"):
        load_config(PretrainConfig, None, ["data.shards=[a"])


def test_check_config_on_a_config_built_in_python() -> None:
    cfg = PretrainConfig()
    check_config(cfg)  # the defaults are valid
    cfg.masking.ratio = 0.0
    with pytest.raises(ConfigError, match=r"'masking.ratio' \(the default\)"):
        check_config(cfg)


def test_every_schema_default_is_valid() -> None:
    for schema in SCHEMAS.values():
        check_config(load_config(schema, None, []))


# ------------------------------------------------------------------------------------ recipes and truth

RECIPES = sorted(p for p in packaged_configs().rglob("*.yaml") if p.name != "taxonomy.yaml")


def _schema_for(path: Path) -> type:
    folder = path.parent.name
    if folder == "finetune":
        return SCHEMAS["probe"] if path.stem == "probe" else SCHEMAS["finetune"]
    return SCHEMAS[folder]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_recipe_loads(recipe: Path) -> None:
    cfg = load_config(_schema_for(recipe), recipe)
    check_config(cfg)


def test_the_schema_patch_is_the_encoders_stride() -> None:
    from sonofm.models.encoder import PATCH as ENCODER_PATCH

    assert PATCH == ENCODER_PATCH


def test_the_loader_augments_with_the_schemas_config() -> None:
    """One AugmentConfig: the stream's is the schema's, and one built by hand is held to the same ranges."""
    from sonofm.config.schema import AugmentConfig as SchemaAugment
    from sonofm.datasets.stream.augment import AugmentConfig

    assert AugmentConfig is SchemaAugment
    assert AugmentConfig().crop_ratio == [3 / 4, 4 / 3]
    for over in (["data.augment.crop_scale=[1.0,1.0]"], ["data.augment.hflip=0"], ["data.augment.gamma=[1,1]"],
                 ["data.augment.min_field_fraction=1"]):
        cfg = load_config(PretrainConfig, None, over)
        assert AugmentConfig.from_any(dataclasses.asdict(cfg.data.augment)) == cfg.data.augment
    for bad, key in (({"crop_scale": (0.5, 1.2)}, "crop_scale"), ({"gamma": (1.2, 0.8)}, "gamma"),
                     ({"hflip": 1.5}, "hflip"), ({"max_tries": 0}, "max_tries")):
        with pytest.raises(ValueError, match=f"AugmentConfig.{key}"):
            AugmentConfig.from_any(bad)
    with pytest.raises(ValueError, match="unknown augmentation keys"):
        AugmentConfig.from_any({"hflp": 0.5})
