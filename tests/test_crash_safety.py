"""Crash safety under repeated ``kill -9`` at seeded random points (extends tests/test_pretrain.py).

``test_pretrain.py`` kills a run once at a fixed point. Here one run is killed several times in a
chain, at points drawn by a seeded RNG among every step and every checkpoint write
(``SONOFM_FAULT=after_step:k`` / ``in_checkpoint:k``), each time resumed with ``--resume auto``;
after every kill each visible checkpoint must load, ``last`` must name the newest complete one,
and at the end the model must equal an uninterrupted run's. The shard build gets the same
treatment with the ``in_shard`` point (a finished shard killed just before its rename).
``SONOFM_CRASH_SEED`` changes the drawn points (default 7) to explore other schedules.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from sonofm.checkpoints import latest_checkpoint, load_checkpoint
from sonofm.train.loggers import read_metrics

REPO = Path(__file__).resolve().parents[1]
SEED = int(os.environ.get("SONOFM_CRASH_SEED", "7"))
STEPS, EVERY = 12, 4


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sonofm.datasets.synthetic import generate_corpus

    root = tmp_path_factory.mktemp("crash") / "corpus"
    generate_corpus(root, n=48, seed=1, size=96, progress=False)
    return root


@pytest.fixture(scope="module")
def shards(corpus: Path) -> Path:
    from sonofm.datasets.build.orchestrate import build_shards
    from sonofm.datasets.sources.specs import SourceSpec

    out = corpus.parent / "shards"
    build_shards([SourceSpec(adapter="synthetic", root=corpus)], out, max_side=96, samples_per_shard=8,
                 split_fractions={"train": 1.0, "val": 0.0, "test": 0.0}, workers=1, dedup=False,
                 progress=False)
    return out


def _overrides(shard_dir: Path, run_dir: Path) -> list[str]:
    base = {
        "run_dir": run_dir, "steps": STEPS, "seed": 3, "data.shards": f"[{shard_dir}]", "data.img_size": 64,
        "data.batch_size": 4, "data.num_workers": 0, "data.shuffle_buffer": 16, "decoder.dim": 32,
        "optim.base_lr": 0.02, "optim.warmup_steps": 2, "logging.log_every": 1, "logging.sample_every": 6,
        "logging.progress": False, "checkpoint.every": EVERY, "checkpoint.keep_last": 2,
    }
    return [f"{k}={v}" for k, v in base.items()]


def _pretrain(args: list[str], fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    env.pop("SONOFM_FAULT", None)
    if fault:
        env["SONOFM_FAULT"] = fault
    cmd = [sys.executable, "-m", "sonofm", "pretrain", "--config", str(REPO / "configs/pretrain/quickstart.yaml"),
           *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


def fault_plan(rng: random.Random, kills: int = 3) -> list[tuple[str, int, int]]:
    """``(point, k, step of the last complete checkpoint after the kill)`` for a chain of kills.

    Each kill is, with equal chance, after a step or inside a checkpoint write, drawn among those the
    resumed process will still reach: any step after its start (the last one excluded, so the chain
    goes on) or any checkpoint write after its start.
    """
    plan, start = [], 0
    for _ in range(kills):
        choices = {"after_step": list(range(start + 1, STEPS)),
                   "in_checkpoint": [k for k in range(EVERY, STEPS + 1, EVERY) if k > start]}
        point = rng.choice([p for p, ks in choices.items() if ks])
        k = rng.choice(choices[point])
        start = (k // EVERY) * EVERY if point == "after_step" else k - EVERY
        plan.append((point, k, start))
    return plan


def _check_visible_checkpoints(run: Path, expect_last: int) -> int:
    """Every ``step-*`` loads completely; ``last`` names step ``expect_last``. Returns how many were loaded."""
    root = run / "checkpoints"
    steps = sorted(root.glob("step-*")) if root.is_dir() else []
    for d in steps:
        ck = load_checkpoint(d)  # raises on any missing or unreadable file
        assert ck["state"]["step"] == int(d.name.split("-")[1]), d
        assert {"model", "optimizer", "rng"} <= set(ck), f"{d}: incomplete checkpoint {sorted(ck)}"
        assert ck["model"] and ck["optimizer"]["state"], d
    latest = latest_checkpoint(run)
    if expect_last == 0:
        assert latest is None, f"no checkpoint was complete, yet {latest} is visible"
    else:
        assert latest is not None and latest.name == f"step-{expect_last:08d}", (latest, expect_last)
        assert max(steps).name == latest.name
    return len(steps)


@pytest.mark.slow
def test_repeated_random_kills_resume_to_the_uninterrupted_model(shards: Path, tmp_path: Path) -> None:
    full, run = tmp_path / "full", tmp_path / "crashed"
    ref = _pretrain(_overrides(shards, full))
    assert ref.returncode == 0, ref.stderr[-3000:]
    plan = fault_plan(random.Random(SEED))
    injected = survived = loaded = 0
    for i, (point, k, last) in enumerate(plan):
        args = _overrides(shards, run) + (["--resume", "auto"] if i else [])
        proc = _pretrain(args, fault=f"{point}:{k}")
        injected += 1
        assert proc.returncode == -9, f"{point}:{k} did not fire (rc {proc.returncode}): {proc.stderr[-2000:]}"
        loaded += _check_visible_checkpoints(run, last)
        if point == "in_checkpoint":
            assert list((run / "checkpoints").glob(f".step-{k:08d}.tmp-*")), "half-written checkpoint is hidden"
        survived += 1
    final = _pretrain([*_overrides(shards, run), "--resume", "auto"])
    assert final.returncode == 0, final.stderr[-3000:]
    resumed_from = plan[-1][2]
    if resumed_from:
        assert f"resumed from {run / 'checkpoints' / f'step-{resumed_from:08d}'}" in final.stdout
    _check_visible_checkpoints(run, STEPS)
    assert not list((run / "checkpoints").glob(".step-*")), "stale temporary checkpoints cleaned up"

    a = {r["step"]: r["loss"] for r in read_metrics(full / "metrics.jsonl") if "loss" in r}
    b = {r["step"]: r["loss"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r}
    assert sorted(b) == list(range(1, STEPS + 1)), "every step logged exactly once across the kills"
    for s in a:
        assert b[s] == pytest.approx(a[s], rel=1e-5, abs=1e-6), f"step {s}: {b[s]} vs {a[s]}"
    ma = load_checkpoint(latest_checkpoint(full))["model"]
    mb = load_checkpoint(latest_checkpoint(run))["model"]
    assert ma.keys() == mb.keys()
    for key in ma:
        assert (ma[key] - mb[key]).abs().max() <= 1e-5, key
    print(f"\npretraining faults (seed {SEED}): plan {plan}; injected {injected}, survived {survived}, "
          f"checkpoints loaded after kills {loaded}")


# ------------------------------------------------------------------------------------ shard build


def _build(corpus: Path, out: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    code = (
        "from sonofm.datasets.build.orchestrate import build_shards\n"
        f"build_shards(['synthetic:{corpus}'], {str(out)!r}, max_side=64, samples_per_shard=3, "
        "split_fractions={'train': 0.7, 'val': 0.3}, workers=1, dedup=False, progress=False)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("SONOFM_FAULT", None)
    if fault:
        env["SONOFM_FAULT"] = fault
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def _index_files(out: Path) -> dict[str, dict[str, str]]:
    return {p.name: {s["file"]: s["sha256"] for s in json.loads(p.read_text())["shards"]}
            for p in sorted(out.glob("*.index.json"))}


def test_shard_build_killed_twice_at_random_shards_resumes_byte_identical(corpus: Path, tmp_path: Path) -> None:
    from sonofm.datasets.shards import file_sha256

    ref = _build(corpus, tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr[-3000:]
    ref_index = _index_files(tmp_path / "ref")
    ref_sha = {f: sha for files in ref_index.values() for f, sha in files.items()}
    assert len(ref_sha) >= 12 and len(ref_index) >= 3

    rng = random.Random(SEED)
    out = tmp_path / "killed"
    remaining, injected, points = len(ref_sha), 0, []
    for _ in range(2):  # the in_shard counter restarts in every process: a resumed run writes fewer shards
        k = rng.randint(1, max(1, remaining // 2))
        proc = _build(corpus, out, fault=f"in_shard:{k}")
        injected += 1
        points.append(f"in_shard:{k}")
        assert proc.returncode == -9, f"in_shard:{k} did not fire: {proc.stderr[-2000:]}"
        visible = {p.name for p in out.glob("*.tar")}
        pending = [p.name[1:-4] for p in out.glob(".*.tar.tmp")]  # killed shard + open shards of other splits
        assert pending and not set(pending) & visible, "unfinished shards stay under their hidden names"
        for name in visible:  # every visible shard is complete and identical to the reference
            assert file_sha256(out / name) == ref_sha[name], name
        for idx, files in _index_files(out).items():  # an index exists only for a finished source
            assert files == ref_index[idx], idx
            source = idx[: -len(".index.json")]
            assert not any(p.startswith(source + "-") for p in pending), f"{idx} names an unfinished source"
        remaining = len(ref_sha) - len(visible)
    final = _build(corpus, out)
    assert final.returncode == 0, final.stderr[-3000:]
    assert _index_files(out) == ref_index, "resumed build gives the reference shards, byte for byte"
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(ref_sha)
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [], "no temporary or progress file left"
    print(f"\nshard-build faults (seed {SEED}): {points} of {len(ref_sha)} shards; injected {injected}, "
          f"survived {injected}")
