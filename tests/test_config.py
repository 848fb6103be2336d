"""Typed recipes: every recipe validates, overrides apply, mistakes name the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sonofm.config import SCHEMAS, ConfigError, PretrainConfig, load_config, save_config
from sonofm.paths import REPO_ROOT

RECIPES = sorted((REPO_ROOT / "configs").rglob("*.yaml"))
SCHEMA_BY_FOLDER = {"pretrain": "pretrain", "finetune": None, "shards": "shards"}


def _schema_for(path: Path) -> type | None:
    folder = path.parent.name
    if folder == "finetune":
        return SCHEMAS["probe"] if path.stem == "probe" else SCHEMAS["finetune"]
    name = SCHEMA_BY_FOLDER.get(folder)
    return SCHEMAS[name] if name else None


@pytest.mark.parametrize("recipe", [p for p in RECIPES if _schema_for(p)], ids=lambda p: p.name)
def test_every_recipe_validates(recipe: Path) -> None:
    cfg = load_config(_schema_for(recipe), recipe)
    assert cfg is not None


def test_overrides_apply_with_types() -> None:
    cfg = load_config(PretrainConfig, "configs/pretrain/quickstart.yaml", ["optim.lr=3e-4", "data.batch_size=64"])
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.data.batch_size == 64
    assert isinstance(cfg, PretrainConfig)


def test_base_recipe_is_merged() -> None:
    cfg = load_config(PretrainConfig, "configs/pretrain/gpu_base.yaml")
    assert cfg.model.name == "convnextv2_base"  # from the child
    assert cfg.data.img_size == 224  # inherited from gpu_tiny_224.yaml
    assert cfg.decoder.kind == "spark"


def test_unknown_key_names_key_and_valid_ones() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(PretrainConfig, None, ["optim.lrr=1"])
    msg = str(err.value)
    assert "optim.lrr" in msg and "base_lr" in msg and "weight_decay" in msg and "optim.lr" in msg


def test_unknown_key_in_yaml(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"data": {"batch_sise": 8}}))
    with pytest.raises(ConfigError, match=r"data\.batch_sise.*bad\.yaml.*batch_size"):
        load_config(PretrainConfig, bad)


def test_wrong_type_names_key() -> None:
    with pytest.raises(ConfigError, match=r"'data\.batch_size'"):
        load_config(PretrainConfig, None, ["data.batch_size=lots"])
    with pytest.raises(ConfigError, match="decoder.kind"):
        load_config(PretrainConfig, None, ["decoder.kind=unet"])


def test_saved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config(PretrainConfig, "configs/pretrain/cpu_atto.yaml", ["steps=7"])
    path = save_config(cfg, tmp_path / "run")
    again = load_config(PretrainConfig, path)
    assert again == cfg
    assert not list((tmp_path / "run").glob(".*tmp"))


def test_cli_lists_commands_and_rejects_bad_key() -> None:
    out = subprocess.run([sys.executable, "-m", "sonofm", "--help"], capture_output=True, text=True, check=True)
    for cmd in ("demo-data", "shards", "pretrain", "probe", "finetune", "export", "quickstart"):
        assert cmd in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "sonofm", "pretrain", "--config", "configs/pretrain/cpu_atto.yaml", "optim.lrr=1"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    assert bad.returncode != 0
    assert "optim.lrr" in bad.stderr and "base_lr" in bad.stderr
