"""Typed recipes: schemas, YAML loading with overrides, saving into run directories."""

from sonofm.config.loader import ConfigError, check_config, load_config, save_config, to_yaml, valid_keys
from sonofm.config.schema import (
    SCHEMAS,
    DataConfig,
    FinetuneConfig,
    ModelConfig,
    PretrainConfig,
    ProbeConfig,
    ShardsConfig,
)

__all__ = [
    "ConfigError",
    "check_config",
    "load_config",
    "save_config",
    "to_yaml",
    "valid_keys",
    "SCHEMAS",
    "DataConfig",
    "FinetuneConfig",
    "ModelConfig",
    "PretrainConfig",
    "ProbeConfig",
    "ShardsConfig",
]
