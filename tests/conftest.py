"""Shared fixtures: the real-data location and quiet, offline defaults for every test."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The suite never reads the user's Hugging Face cache: a test that needs published weights writes its own
# cache (fake_hub), so results do not depend on what happens to be downloaded (e.g. the quickstart's ImageNet row).
_EMPTY_HF_CACHE = tempfile.mkdtemp(prefix="sonofm-tests-hf-")
atexit.register(shutil.rmtree, _EMPTY_HF_CACHE, True)
os.environ["HF_HUB_CACHE"] = _EMPTY_HF_CACHE

import torch  # noqa: E402

from sonofm.paths import shared_data_dir  # noqa: E402

# One thread per test process: the suite runs on 2 shared cores, where oversubscribed intra-op
# threads make small models many times slower, and results stay reproducible.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ``../shared/data`` (or ``$SONOFM_SHARED_DATA``); skips the test when it is absent."""
    root = shared_data_dir()
    if not root.is_dir():
        pytest.skip(f"real data not found at {root} (set SONOFM_SHARED_DATA)")
    return root


def synthetic_shards(root: Path, n: int, seed: int, size: int, splits: dict[str, float] | None = None,
                     samples_per_shard: int = 16) -> Path:
    """Shards of ``n`` built-in synthetic images (``size`` px) under ``root/shards``, built the way
    ``sonofm shards build`` does (one worker, no dedup, no progress bar)."""
    from sonofm.datasets.build.orchestrate import build_shards
    from sonofm.datasets.sources.specs import SourceSpec
    from sonofm.datasets.synthetic import generate_corpus

    generate_corpus(root / "corpus", n=n, seed=seed, size=size, progress=False)
    out = root / "shards"
    extra = {"split_fractions": splits} if splits is not None else {}
    build_shards([SourceSpec(adapter="synthetic", root=root / "corpus")], out, max_side=size,
                 samples_per_shard=samples_per_shard, workers=1, dedup=False, progress=False, **extra)
    return out


def two_cpu_processes(port: int) -> list[str]:
    """``accelerate launch`` of 2 processes on this machine, ending in ``-m`` (the module follows).

    ``--multi_gpu`` makes accelerate start them with torchrun; without CUDA the engines build their
    Accelerator with ``cpu=True``, so they form a gloo group (MULTI_CPU). ``--cpu`` alone would start a
    single process unless MPI is installed. ``port``: distinct per test, so two launches never collide."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(port), "-m"]


#: The published name the fake Hugging Face cache holds (``fake_hub``): timm's ImageNet-finetuned FCMAE atto.
HUB_NAME = "convnextv2_atto.fcmae_ft_in1k"


def write_fake_hub_cache(cache: Path, name: str = HUB_NAME, seed: int = 0) -> torch.nn.Module:
    """A Hugging Face cache under ``cache`` holding ``timm/<name>`` the way a download leaves it
    (``models--timm--<name>/snapshots/<rev>/{config.json,model.safetensors}`` + ``refs/main``), written by
    timm's own ``save_for_hf`` from a randomly initialised 3-channel model with ImageNet's classifier;
    returns that model (eval mode). Nothing is downloaded."""
    import timm
    from timm.models import save_for_hf

    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False).eval()
    repo = cache / f"models--timm--{name}"
    rev = "0123456789abcdef0123456789abcdef01234567"
    snap = repo / "snapshots" / rev
    snap.mkdir(parents=True, exist_ok=True)
    save_for_hf(model, str(snap), safe_serialization=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(rev)
    return model


@pytest.fixture
def fake_hub(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, torch.nn.Module]:
    """An offline Hugging Face cache holding :data:`HUB_NAME` (see :func:`write_fake_hub_cache`), active for
    this test and its subprocesses (``HF_HUB_CACHE``, ``HF_HUB_OFFLINE=1``); returns (cache, 3-channel model)."""
    from huggingface_hub import constants

    cache = tmp_path_factory.mktemp("hf") / "hub"
    model = write_fake_hub_cache(cache)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache, model
