"""``sonofm`` turns every failure a user can cause into one line and exit 2, fast (issue 14).

Each example of the issue gives one line on stderr (``sonofm <command>: error: ...``) naming the file
or key, no traceback, exit status 2; a bug (an exception that is not the user's) keeps its
traceback; ``--debug`` / ``SONOFM_DEBUG=1`` show the traceback of user errors too; and the error
path of a config mistake or an unknown adapter never imports torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sonofm.cli import main
from sonofm.errors import UserError, is_user_error, one_line

REPO = Path(__file__).resolve().parents[1]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = main(argv)
    return rc, capsys.readouterr().err


def _one_line(rc: int, err: str, command: str, *needles: str) -> str:
    assert rc == 2, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"sonofm {command}: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# ------------------------------------------------------------------------------------------ the examples


def test_unknown_adapter_suggests_the_close_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _run(["shards", "build", "--source", f"foldr:{tmp_path}", "--out", str(tmp_path / "out")], capsys)
    _one_line(rc, err, "shards build", "unknown adapter 'foldr'", "did you mean folder?")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_unknown_adapter_option_lists_the_valid_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _run(["shards", "build", "--source", f"folder:{tmp_path}?frames_per_vid=3", "--out",
                    str(tmp_path / "out")], capsys)
    _one_line(rc, err, "shards build", "unknown option(s) ['frames_per_vid']", "frames_per_video")


def test_a_source_without_adapter_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _run(["shards", "build", "--source", "nothing"], capsys)
    _one_line(rc, err, "shards build", "'nothing'", "ADAPTER:PATH")


@pytest.mark.parametrize(("override", "key", "text"), [
    ("samples_per_shard=0", "samples_per_shard", ">= 1"),
    ("train=-0.2", "train", ">= 0"),
    ("val=-1", "val", ">= 0"),
])
def test_shard_build_values(override: str, key: str, text: str, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _run(["shards", "build", "--source", f"folder:{tmp_path}", override], capsys)
    _one_line(rc, err, "shards build", f"'{key}'", text, f"override '{override}'")


@pytest.mark.parametrize(("override", "key", "text"), [
    ("masking.ratio=1.5", "masking.ratio", "> 0 and < 1"),
    ("masking.ratio=0", "masking.ratio", "> 0 and < 1"),
    ("data.img_size=100", "data.img_size", "multiple of 32"),
    ("data.batch_size=0", "data.batch_size", ">= 1"),
    ("data.batch_size=-1", "data.batch_size", ">= 1"),
    ("optim.lr=nan", "optim.lr", "> 0"),
    ("steps=0", "steps", ">= 1"),
])
def test_pretrain_values(override: str, key: str, text: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _run(["pretrain", override], capsys)
    _one_line(rc, err, "pretrain", f"'{key}'", text, f"override '{override}'")


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.yaml"
    rc, err = _run(["pretrain", "--config", str(missing)], capsys)
    _one_line(rc, err, "pretrain", "config file not found", str(missing))


def test_empty_shard_list_fails_before_the_stage(capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _run(["pretrain", "--config", "configs/pretrain/gpu_tiny_224.yaml"], capsys)  # ships shards: []
    _one_line(rc, err, "pretrain", "data.shards is empty")
    rc, err = _run(["finetune", "universal", "datasets=[]"], capsys)
    _one_line(rc, err, "finetune universal", "datasets is empty")
    rc, err = _run(["probe", "data.shards=[]"], capsys)
    _one_line(rc, err, "probe", "data.shards is empty")


def test_bad_integer_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["shards", "build", "--source", "folder:/x", "--workers", "0"])
    assert exit_.value.code == 2
    assert "--workers: 0 must be >= 1" in capsys.readouterr().err


def test_os_errors_are_one_line_with_the_path_and_what_to_do() -> None:
    import errno

    full = OSError(errno.ENOSPC, "No space left on device", "/data/run/model.safetensors")
    assert is_user_error(full)
    assert one_line(full) == "/data/run/model.safetensors: No space left on device (free some space or write " \
                             "somewhere else)"
    assert is_user_error(PermissionError(errno.EACCES, "Permission denied", "/root/x"))
    assert not is_user_error(OSError(errno.EBADF, "Bad file descriptor"))  # sonofm's own bug
    assert not is_user_error(ValueError("plain ValueError"))
    assert str(UserError("a\nb")) == "a\nb" and one_line(UserError("a\n  b")) == "a b"


# ------------------------------------------------------------------------------------------ resuming


def _checkpoint(run: Path, step: int, model: str, decoder_dim: int = 32) -> Path:
    """A real checkpoint of a small pretraining model (as the engine writes it), without training."""
    from sonofm.checkpoints import save_checkpoint
    from sonofm.config import PretrainConfig, load_config
    from sonofm.pretrain.engine import build_model

    cfg = load_config(PretrainConfig, None, [f"model.name={model}", f"decoder.dim={decoder_dim}",
                                             "hierarchy.weight=0", "data.img_size=64"])
    net = build_model(cfg, None)
    state = {"samples_per_rank": 4 * step, "world_size": 1, "images_seen": 4 * step, "model": model,
             "in_chans": 1, "img_size": 64}
    return save_checkpoint(run, step, net.state_dict(), None, state, keep_last=5)


def _resume_argv(run: Path, *extra: str) -> list[str]:
    return ["pretrain", "--config", "configs/pretrain/quickstart.yaml", f"run_dir={run}", "hierarchy.weight=0",
            "data.img_size=64", "decoder.dim=32", f"data.shards=[{run / 'no-shards'}]", "logging.progress=false",
            *extra, "--resume", "auto"]


def test_resume_with_another_model_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    ckpt = _checkpoint(run, 4, "convnextv2_femto")
    rc, err = _run(_resume_argv(run), capsys)  # the recipe says convnextv2_atto
    _one_line(rc, err, "pretrain", str(ckpt), "model.name=convnextv2_femto", "model.name=convnextv2_atto")


def test_resume_with_another_decoder_names_the_weights_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    ckpt = _checkpoint(run, 4, "convnextv2_atto", decoder_dim=48)
    rc, err = _run(_resume_argv(run), capsys)
    _one_line(rc, err, "pretrain", str(ckpt / "model.safetensors"), "do not fit", "config.yaml")


def test_resume_from_a_truncated_checkpoint_names_the_file_and_the_previous_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    older = _checkpoint(run, 2, "convnextv2_atto")
    newest = _checkpoint(run, 4, "convnextv2_atto")
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    rc, err = _run(_resume_argv(run), capsys)
    _one_line(rc, err, "pretrain", str(weights), "unreadable", f"--resume {older}")


def test_resume_from_a_truncated_state_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    ckpt = _checkpoint(run, 4, "convnextv2_atto")
    state = ckpt / "state.json"
    state.write_text(json.dumps({"step": 4})[:6])
    rc, err = _run(_resume_argv(run), capsys)
    _one_line(rc, err, "pretrain", str(state), "no earlier complete checkpoint")


# ------------------------------------------------------------------------------------ bugs and --debug


def test_a_planted_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    import sonofm.config.loader as loader

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("planted internal bug")

    monkeypatch.setattr(loader, "check_config", broken)
    with pytest.raises(ValueError, match="planted internal bug") as err:
        main(["pretrain", "steps=5"])
    assert type(err.value) is ValueError  # not turned into a one-line user error


def test_a_planted_bug_in_a_subprocess_prints_a_traceback(tmp_path: Path) -> None:
    code = ("import sys, sonofm.config.loader as l\n"
            "def broken(*a, **k):\n    raise KeyError('planted')\n"
            "l.check_config = broken\n"
            "from sonofm.cli import main\nsys.exit(main(['pretrain']))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr and "KeyError: 'planted'" in proc.stderr


@pytest.mark.parametrize("where", ["before", "after", "env"])
def test_debug_shows_the_traceback_of_a_user_error(where: str, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["pretrain", "masking.ratio=1.5"]
    if where == "before":
        argv = ["--debug", *argv]
    elif where == "after":
        argv = [*argv, "--debug"]
    else:
        monkeypatch.setenv("SONOFM_DEBUG", "1")
    rc, err = _run(argv, capsys)
    assert rc == 2
    assert "Traceback (most recent call last)" in err and "ConfigError" in err
    assert err.strip().splitlines()[-1].startswith("sonofm pretrain: error: bad value 1.5")


def test_without_debug_the_env_zero_means_off(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SONOFM_DEBUG", "0")
    rc, err = _run(["pretrain", "masking.ratio=1.5"], capsys)
    _one_line(rc, err, "pretrain", "masking.ratio")


# ------------------------------------------------------------------------------------ no torch on the way


_PROBE = """
import sys
from sonofm.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as e:
    rc = e.code
print("TORCH" if "torch" in sys.modules else "NO-TORCH", rc)
"""


@pytest.mark.parametrize("argv", [
    ["--help"],
    ["pretrain", "masking.ratio=1.5"],
    ["pretrain", "optim.lrr=1"],
    ["probe", "folds=1"],
    ["finetune", "seg", "layer_decay=0"],
    ["shards", "build", "--source", "foldr:/tmp"],
    ["shards", "build", "--source", "folder:/tmp", "samples_per_shard=0"],
    ["pretrain", "--config", "no/such/recipe.yaml"],
], ids=lambda a: " ".join(a))
def test_the_error_path_does_not_import_torch(argv: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("SONOFM_DEBUG", None)
    proc = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=120)
    verdict, rc = proc.stdout.strip().splitlines()[-1].split()
    assert verdict == "NO-TORCH", proc.stderr
    assert rc == ("0" if argv == ["--help"] else "2"), proc.stderr
    if argv != ["--help"]:
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr


def test_adapter_option_values_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``?labels=None`` means no labels (as null does); a value the adapter does not know is one line."""
    from sonofm.datasets.sources.specs import make_adapter, parse_source_arg

    (tmp_path / "imgs").mkdir()
    adapter = make_adapter(parse_source_arg(f"folder:{tmp_path / 'imgs'}?labels=None"))
    assert adapter.opts["labels"] is None
    rc, err = _run(["shards", "build", "--source", f"folder:{tmp_path / 'imgs'}?labels=tags",
                    "--out", str(tmp_path / "out")], capsys)
    _one_line(rc, err, "shards build", "labels must be 'folder' or null", "'tags'")


def test_missing_tensorboard_stops_before_anything_starts(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """``logging.tensorboard=true`` without TensorBoard: one line with the install command, before the
    stage (and wandb) starts: no run folder is made."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    shards = tmp_path / "shards"
    shards.mkdir()
    rc, err = _run(["pretrain", f"data.shards=[{shards}]", f"run_dir={tmp_path / 'run'}", "logging.tensorboard=true",
                    "logging.wandb=true"], capsys)
    _one_line(rc, err, "pretrain", "needs TensorBoard", 'pip install "sonofm[tensorboard]"')
    assert not (tmp_path / "run").exists()
    from sonofm.errors import UserError
    from sonofm.train.loggers import MetricsLogger

    with pytest.raises(UserError, match="needs TensorBoard"):  # the logger itself checks before wandb.init
        MetricsLogger(tmp_path / "run2", wandb=True, tensorboard=True)
    assert not (tmp_path / "run2" / "wandb").exists()
