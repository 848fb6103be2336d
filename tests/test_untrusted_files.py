"""Untrusted files: checkpoints, exported models and shard indexes can never run code.

A pickle can execute anything on load, and checkpoints and models are exactly the files people
download and share. Each test plants a payload whose ``__reduce__`` would create a marker file,
first shows that an unsafe load really does create it (so the test can fail), then loads the same
bytes through sonofm's loaders: they must refuse with an error and the marker must not exist. A
source scan checks that every ``torch.load`` in the package passes ``weights_only=True`` and that
nothing calls ``pickle``. Shard indexes are data too: one that names a ``pipe:`` command, a URL or
a path outside its folder is refused, while ``pipe:`` URLs the user passes explicitly still work.
See docs/security.md.
"""

from __future__ import annotations

import ast
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from sonofm.checkpoints import STATE_FILE, load_checkpoint
from sonofm.datasets.stream.loader import StreamSpec, discover_shards, make_eval_loader
from sonofm.models.loading import load_encoder

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "sonofm"


class Payload:
    """Unpickling this object runs ``exec`` and creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def payload_bytes(marker: Path, fmt: str) -> bytes:
    """The payload as a plain pickle or as a ``torch.save`` zip (both formats torch.load reads)."""
    if fmt == "pickle":
        return pickle.dumps({"state": Payload(marker)}, protocol=2)
    buf = io.BytesIO()
    torch.save({"state": {0: {"exp_avg": Payload(marker)}}, "param_groups": []}, buf)
    return buf.getvalue()


@pytest.fixture(params=["pickle", "torch_zip"])
def evil(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[bytes, Path]:
    """Payload bytes and their marker path; proven live: an unsafe load creates the marker."""
    marker = tmp_path / "PWNED"
    data = payload_bytes(marker, request.param)
    probe = tmp_path / "probe.pt"
    probe.write_bytes(data)
    try:
        torch.load(probe, weights_only=False)  # the unsafe way, on purpose
    except RuntimeError:  # a plain pickle runs, then fails torch's magic-number check
        pass
    assert marker.is_file(), "the payload must be live, or the test below proves nothing"
    marker.unlink()
    probe.unlink()
    return data, marker


def _tiny_state() -> dict[str, torch.Tensor]:
    return {"encoder.stem.weight": torch.zeros(2, 2)}


def _checkpoint_dir(root: Path) -> Path:
    step = root / "checkpoints" / "step-00000004"
    step.mkdir(parents=True)
    save_file(_tiny_state(), str(step / "model.safetensors"))
    torch.save({"state": {}, "param_groups": []}, step / "optimizer.pt")
    torch.save({"torch": torch.get_rng_state()}, step / "rng-rank0.pt")
    (step / STATE_FILE).write_text(json.dumps({"step": 4, "samples_per_rank": 16}))
    os.symlink(step.name, root / "checkpoints" / "last")
    (root / "config.yaml").write_text(yaml.safe_dump({"model": {"name": "convnextv2_atto", "in_chans": 1}}))
    return step


@pytest.mark.parametrize("victim", ["optimizer.pt", "rng-rank0.pt", "model.safetensors", "ema.safetensors"])
def test_load_checkpoint_refuses_a_pickle(evil: tuple[bytes, Path], tmp_path: Path, victim: str) -> None:
    data, marker = evil
    step = _checkpoint_dir(tmp_path / "run")
    load_checkpoint(step)  # the untouched checkpoint loads
    (step / victim).write_bytes(data)
    with pytest.raises(ValueError, match=rf"{victim}: refused or unreadable checkpoint file"):
        load_checkpoint(step)
    assert not marker.exists(), f"unpickling {victim} ran code"


@pytest.mark.parametrize("layout", ["run_dir", "step_dir", "exported_safetensors", "exported_bin_only"])
def test_load_encoder_refuses_a_pickle(evil: tuple[bytes, Path], tmp_path: Path, layout: str) -> None:
    data, marker = evil
    if layout in ("run_dir", "step_dir"):
        step = _checkpoint_dir(tmp_path / "run")
        (step / "model.safetensors").write_bytes(data)
        spec = tmp_path / "run" if layout == "run_dir" else step
    else:  # a fake exported model folder
        spec = tmp_path / "export"
        spec.mkdir()
        (spec / "config.json").write_text(json.dumps({"architecture": "convnextv2_atto", "in_chans": 1}))
        (spec / ("model.safetensors" if layout == "exported_safetensors" else "pytorch_model.bin")).write_bytes(data)
    # a pickle named model.safetensors is refused naming it; a folder with only pytorch_model.bin is
    # neither an export nor a run (it is never unpickled to find out)
    message = "no complete checkpoint" if layout == "exported_bin_only" else "model.safetensors: not a readable"
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_encoder(str(spec))
    assert not marker.exists(), f"loading the encoder from {layout} ran code"


def test_cli_resume_refuses_a_pickled_optimizer(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    run = tmp_path / "run"
    step = _checkpoint_dir(run)
    (step / "optimizer.pt").write_bytes(payload_bytes(marker, "torch_zip"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    env.pop("SONOFM_FAULT", None)
    proc = subprocess.run(
        [sys.executable, "-m", "sonofm", "pretrain", "--config", str(REPO / "configs/pretrain/quickstart.yaml"),
         f"run_dir={run}", "steps=8", "hierarchy.weight=0", "--resume", "auto"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert not marker.exists(), "resuming unpickled the optimizer state"
    assert "optimizer.pt: refused or unreadable checkpoint file" in proc.stderr, proc.stderr[-3000:]


# ------------------------------------------------------------------------------------ source scan


def _calls(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            out.append((ast.unparse(node.func), node))
    return out


def test_package_never_unpickles() -> None:
    torch_loads, problems = 0, []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        where = path.relative_to(REPO)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                if any(n and n.split(".")[0] in ("pickle", "cPickle", "dill", "joblib", "cloudpickle")
                       for n in names):
                    problems.append(f"{where}:{node.lineno}: imports a pickle module")
        for func, call in _calls(tree):
            kw = {k.arg: k.value for k in call.keywords}
            if func == "torch.load":
                torch_loads += 1
                wo = kw.get("weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    problems.append(f"{where}:{call.lineno}: {ast.unparse(call)} lacks weights_only=True")
            if func.endswith("np.load") or func == "numpy.load":
                ap = kw.get("allow_pickle")
                if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
                    problems.append(f"{where}:{call.lineno}: {ast.unparse(call)} may allow pickles")
            if func in ("yaml.load", "yaml.unsafe_load", "yaml.full_load"):
                problems.append(f"{where}:{call.lineno}: {ast.unparse(call)}: use yaml.safe_load")
            if func.endswith("extractall") or func.endswith(".extract"):
                problems.append(f"{where}:{call.lineno}: {ast.unparse(call)} writes tar members to disk")
    assert not problems, "\n".join(problems)
    assert torch_loads >= 2, "the scan should see the checkpoint loader's torch.load calls"


# ------------------------------------------------------------------------------------ shard indexes


def _shard(d: Path, name: str = "busbra-train-000000.tar") -> Path:
    import numpy as np
    from PIL import Image

    d.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16), 120, np.uint8)).save(buf, format="PNG")
    with tarfile.open(d / name, "w") as tar:
        for key in ("busbra-a", "busbra-b"):
            for ext, data in (("png", buf.getvalue()), ("json", b'{"source": "busbra", "label": "benign"}')):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return d / name


@pytest.mark.parametrize("entry", [
    "pipe:touch {marker}",
    "pipe:touch {marker}; cat busbra-train-000000.tar",
    "../outside/busbra-train-000000.tar",
    "{outside}",  # absolute path
    "https://example.invalid/x.tar",
    "sub/busbra-train-000000.tar",
    ".busbra-train-000000.tar.tmp",
])
def test_index_cannot_name_commands_urls_or_outside_paths(tmp_path: Path, entry: str) -> None:
    marker = tmp_path / "PWNED"
    outside = _shard(tmp_path / "outside")
    d = tmp_path / "shards"
    _shard(d)
    (d / "sub").mkdir()
    shutil.copy(outside, d / "sub" / outside.name)
    file = entry.format(marker=marker, outside=outside)
    (d / "busbra.index.json").write_text(json.dumps(
        {"source": "busbra", "shards": [{"file": file, "split": "train", "count": 2}]}))
    with pytest.raises(ValueError, match=r"busbra\.index\.json: refusing shard entry"):
        discover_shards(str(d), "train")
    with pytest.raises(ValueError, match="refusing shard entry"):
        make_eval_loader(StreamSpec([str(d / "busbra.index.json")]), batch_size=2, img_size=16, num_workers=0)
    assert not marker.exists()


def test_pipe_urls_given_by_the_user_are_read(tmp_path: Path) -> None:
    tar = _shard(tmp_path / "s")
    url = f"pipe:cat {tar}"
    assert discover_shards(url, "train") == [(url, -1)]
    loader = make_eval_loader(StreamSpec([url]), batch_size=4, img_size=16, num_workers=0)
    assert sorted(k for b in loader for k in b["key"]) == ["busbra-a", "busbra-b"]
