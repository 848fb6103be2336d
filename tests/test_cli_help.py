"""Each sub-command's ``--help`` is its own, and the override examples it shows are keys it accepts.

The README's finetune line puts ``--config`` before the ``key=value`` overrides, after the task:
that order must parse (it failed with 'unrecognized arguments' when the task was a positional).
"""

from __future__ import annotations

import re
import shlex

import pytest

from sonofm.cli import OVERRIDE_EXAMPLES, build_parser
from sonofm.config import FinetuneConfig, PretrainConfig, ProbeConfig, ShardsConfig, load_config

SCHEMAS = {
    "shards build": (ShardsConfig, None),
    "pretrain": (PretrainConfig, "configs/pretrain/quickstart.yaml"),
    "probe": (ProbeConfig, "configs/finetune/probe.yaml"),
    "finetune seg": (FinetuneConfig, "configs/finetune/seg.yaml"),
    "finetune universal": (FinetuneConfig, "configs/finetune/universal.yaml"),
}


def _help(command: str) -> str:
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args([*command.split(), "--help"])
    assert stop.value.code == 0
    return ""


def test_every_config_command_has_examples() -> None:
    assert set(OVERRIDE_EXAMPLES) == set(SCHEMAS)


@pytest.mark.parametrize("command", sorted(SCHEMAS))
def test_help_examples_are_keys_the_command_accepts(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    _help(command)
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert f"usage: sonofm {command} " in text
    examples = re.search(r"config overrides, e\.g\. (.*?)(?: options:| -h|$)", text)
    assert examples is not None, text
    shown = [w for w in examples.group(1).split() if "=" in w]
    assert shown == shlex.split(OVERRIDE_EXAMPLES[command])
    schema, recipe = SCHEMAS[command]
    overrides = ([f"task={command.split()[1]}"] if command.startswith("finetune") else []) + shown
    load_config(schema, recipe, overrides)  # raises ConfigError for a key the command does not know


def test_finetune_task_help_is_its_own(capsys: pytest.CaptureFixture[str]) -> None:
    _help("finetune seg")
    seg = capsys.readouterr().out
    _help("finetune universal")
    universal = capsys.readouterr().out
    assert "UPerNet" in seg and "configs/finetune/seg.yaml" in seg
    assert "prompt-conditioned" in universal and "configs/finetune/universal.yaml" in universal


@pytest.mark.parametrize("task", ["seg", "universal"])
def test_readme_argument_order_parses(task: str) -> None:
    args = build_parser().parse_args(["finetune", task, "--config", f"configs/finetune/{task}.yaml",
                                      "encoder=random:convnextv2_atto", "data.shards=[shards/busi]"])
    assert args.finetune_command == task and args.config == f"configs/finetune/{task}.yaml"
    assert args.overrides == ["encoder=random:convnextv2_atto", "data.shards=[shards/busi]"]
