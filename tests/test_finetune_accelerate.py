"""Finetuning under Accelerate on shards built from the synthetic corpus (CPU, tiny sizes).

What these prove: training batches stream from the shards and resume exactly where they stopped
(label fractions keep whole groups); a finetune killed with SIGKILL and resumed with ``--resume
auto`` ends with the losses, evaluations and weights of an uninterrupted run (EMA, gradient
accumulation, dropout and a label fraction included); ``fp16`` goes through Accelerate's gradient
scaler (emulated on the CPU: an overflowing step is skipped and the scale halves, the scale is
checkpointed and restored) and is refused where Accelerate makes no scaler; universal training
streams two shard sets described by their indexes; two processes under ``accelerate launch`` read
different data and report exactly what one process measures on the same weights and data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from tests.conftest import two_cpu_processes

REPO = Path(__file__).resolve().parents[1]
SIZE = 64


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six synthetic sources, 4 samples per shard; train and val splits (every sample has a mask)."""
    from sonofm.datasets.build.orchestrate import SourceSpec, build_shards
    from sonofm.datasets.synthetic import generate_corpus

    root = tmp_path_factory.mktemp("ft")
    generate_corpus(root / "corpus", n=48, seed=1, size=96, progress=False)
    out = root / "shards"
    build_shards([SourceSpec(adapter="synthetic", root=root / "corpus")], out, max_side=96, samples_per_shard=4,
                 split_fractions={"train": 0.6, "val": 0.4, "test": 0.0}, workers=1, dedup=False, progress=False)
    return out


def _groups_by_key(shard_dir: Path, split: str) -> dict[str, str]:
    from sonofm.datasets.shards.names import base_key
    from sonofm.datasets.shards.reader import iter_tar_samples

    out = {}
    for tar in sorted(shard_dir.glob(f"*-{split}-*.tar")):
        for raw in iter_tar_samples(tar):
            meta = json.loads(raw["json"])
            out[base_key(raw["__key__"])] = meta.get("group") or meta["path"]
    return out


def _args(shard_dir: Path, out: Path, **extra: object) -> list[str]:
    base = {"data.shards": f"[{shard_dir}]", "out_dir": str(out), "steps": 6, "eval_every": 3, "data.img_size": SIZE,
            "data.batch_size": 4, "data.num_workers": 0, "data.shuffle_buffer": 8, "seg.decoder_channels": 16,
            "checkpoint.every": 2, "optim.warmup_steps": 1, "seed": 3}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def _finetune(args: list[str], fault: str | None = None, launcher: list[str] | None = None,
              check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    env.pop("SONOFM_FAULT", None)
    if fault:
        env["SONOFM_FAULT"] = fault
    cmd = (launcher or [sys.executable, "-m"]) + ["sonofm", "finetune", "seg", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"finetune failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------- batch sources


def test_stream_batches_resume_exactly_and_keep_whole_groups(shards: Path) -> None:
    from sonofm.finetune.data import StreamBatches, split_groups
    from sonofm.finetune.label_efficiency import select_groups

    counts = split_groups([str(shards)], "train", need_mask=True)
    names = list(counts)
    kept = frozenset(names[i] for i in select_groups(names, 0.5, seed=2))
    assert 0 < len(kept) < len(names)

    def source() -> StreamBatches:
        return StreamBatches([str(shards)], batch_size=3, img_size=32, seed=5, num_workers=0, shuffle_buffer=4,
                             groups=kept, need_mask=True, binary_mask=True)

    full = source()
    it = iter(full)
    keys = []
    for i in range(6):
        batch = next(it)
        assert batch["image"].shape == (3, 1, 32, 32) and batch["has_mask"].all()
        assert set(batch["mask"].unique().tolist()) <= {0, 1}
        keys.append(batch["key"])
        if i == 1:
            position = full.position()
    group = _groups_by_key(shards, "train")
    assert {group[k] for ks in keys for k in ks} <= kept  # only the chosen groups, whole
    resumed = source()
    resumed.seek(position)
    it2 = iter(resumed)
    assert [next(it2)["key"] for _ in range(4)] == keys[2:]  # exactly the batches that came next


def test_sample_batches_split_one_permutation_across_ranks() -> None:
    from sonofm.finetune.data import Sample, SampleBatches

    rng = np.random.default_rng(0)
    samples = [Sample(rng.integers(0, 255, (40, 30), dtype=np.uint8), np.zeros((40, 30), np.uint8),
                      {"path": f"{i}.png"}) for i in range(10)]
    one = iter(SampleBatches(samples, 32, 2, seed=1))
    single = [next(one)["index"].tolist() for _ in range(10)]  # two epochs of five batches
    ranks = [iter(SampleBatches(samples, 32, 2, seed=1, rank=r, world_size=2)) for r in (0, 1)]
    pairs = [[next(ranks[r])["index"].tolist() for r in (0, 1)] for _ in range(5)]
    assert [b for pair in pairs for b in pair] == single
    assert sorted(i for b in single[:5] for i in b) == list(range(10))  # an epoch sees every sample once


# --------------------------------------------------------------------------- fp16 and the scaler


class _Tiny(nn.Module):
    """One convolution; records the dtype it computed in (Accelerate hands the output back in fp32)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.dtypes: list[torch.dtype] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        self.dtypes.append(y.dtype)
        return y


def _emulated_fp16(init_scale: float):
    """Accelerate's fp16 path on the CPU: its Accelerator with a (CPU) GradScaler and native autocast,
    which Accelerate itself only builds on a GPU."""
    from sonofm.finetune.engine import make_accelerator

    acc = make_accelerator("fp16", require_scaler=False)
    if acc.scaler is None:
        acc.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
        acc.native_amp = True
    return acc


def _tiny_run(out: Path | None, init_scale: float, steps: int, resume: str | None = None):
    from sonofm.finetune.data import Sample, SampleBatches
    from sonofm.finetune.engine import LoopSettings, run_loop
    from sonofm.finetune.seg_train import seg_loss_fn
    from sonofm.finetune.settings import finetune_config

    rng = np.random.default_rng(0)
    masks = [np.zeros((32, 32), np.uint8) for _ in range(4)]
    for m in masks:
        m[8:20, 10:24] = 1
    samples = [Sample(rng.integers(0, 255, (32, 32), dtype=np.uint8), m, {"path": f"{i}"}) for i, m in enumerate(masks)]
    cfg = finetune_config(steps=steps, precision="fp16", warmup_steps=0, eval_every=0, layer_decay=1.0,
                          checkpoint_every=1)
    torch.manual_seed(0)
    model = _Tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows: list[dict] = []
    acc = _emulated_fp16(init_scale)
    res = run_loop(model, SampleBatches(samples, 32, 2, seed=0), seg_loss_fn(cfg.seg), LoopSettings.from_config(cfg),
                   accelerator=acc, out_dir=out, resume=resume, log=rows.append)
    return res, rows, before, model, model.dtypes, acc


def test_fp16_goes_through_accelerates_scaler(tmp_path: Path) -> None:
    from sonofm.finetune.engine import make_accelerator

    if not torch.cuda.is_available():  # Accelerate makes no scaler on a CPU: fp16 is refused, not run in fp32
        from sonofm.errors import UserError
        from sonofm.finetune.seg_train import train_segmentation

        assert make_accelerator("fp16", require_scaler=False).scaler is None
        with pytest.raises(UserError, match="fp16 needs a CUDA device"):
            train_segmentation(_Tiny(), [], 1, precision="fp16")
    # an overflowing scale: the step is skipped (weights unchanged, no error) and the scale halves
    res, rows, before, model, dtypes, acc = _tiny_run(None, 2.0**40, steps=1)
    assert dtypes == [torch.float16] and acc.scaler is not None
    assert rows[0]["loss_scale"] == 2.0**39 and np.isfinite(rows[0]["loss"])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # a sane scale: the weights move, the scale is checkpointed and restored on resume
    full, rows_full, before, model, _, _ = _tiny_run(tmp_path / "full", 2.0**8, steps=3)
    assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    state = json.loads((tmp_path / "full" / "checkpoints" / "step-00000003" / "state.json").read_text())
    assert state["scaler"]["scale"] == rows_full[-1]["loss_scale"] == 2.0**8
    _tiny_run(tmp_path / "part", 2.0**40, steps=1)  # its scale after one (skipped) step: 2 ** 39
    _, rows_resumed, *_ = _tiny_run(tmp_path / "part", 2.0**8, steps=3, resume="auto")
    assert [r["step"] for r in rows_resumed] == [2, 3]
    # the saved scale came back (2 ** 39, halved again by this step's overflow), not a fresh 2 ** 8
    assert rows_resumed[0]["loss_scale"] == 2.0**38


# --------------------------------------------------------------------------- resume


def test_kill_and_resume_equals_uninterrupted(shards: Path, tmp_path: Path) -> None:
    extra = {"ema": 0.5, "optim.accum_steps": 2, "label_fraction": 0.6}  # EMA, accumulation, a group subset
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    _finetune(_args(shards, full, **extra))
    proc = _finetune(_args(shards, crashed, **extra), fault="after_step:3", check=False)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert sorted(p.name for p in (crashed / "checkpoints").glob("step-*")) == ["step-00000002"]
    _finetune([*_args(shards, crashed, **extra), "--resume", "auto"])
    a, b = _rows(full), _rows(crashed)
    strip = [{k: v for k, v in r.items() if k != "time"} for r in a], [{k: v for k, v in r.items() if k != "time"}
                                                                       for r in b]
    assert strip[0] == strip[1]  # every step's loss and rate, both evaluations, each once
    ra, rb = (json.loads((run / "report.json").read_text()) for run in (full, crashed))
    assert ra["final"] == rb["final"] and ra["evals"] == rb["evals"] and ra["best"] == rb["best"]
    assert rb["resumed_from"].endswith("step-00000002") and ra["global_batch"] == 8
    wa, wb = load_file(str(full / "best" / "model.safetensors")), load_file(str(crashed / "best" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # resuming the finished run trains nothing and changes no record
    before = (crashed / "metrics.jsonl").read_text()
    _finetune([*_args(shards, crashed, **extra), "--resume", "auto"])
    again = json.loads((crashed / "report.json").read_text())
    assert (crashed / "metrics.jsonl").read_text() == before
    assert again["final"] == rb["final"] and again["evals"] == rb["evals"] and again["best"] == rb["best"]


# --------------------------------------------------------------------------- universal


def test_universal_streams_shard_sets_from_their_indexes(shards: Path, tmp_path: Path) -> None:
    from sonofm.config import FinetuneConfig, load_config
    from sonofm.finetune.universal import finetune_universal, task_specs_from_shards

    cls_set, seg_set = str(shards / "synth_breast_linear_a.index.json"), str(shards / "synth_thyroid_linear_b.index.json")
    specs = task_specs_from_shards([cls_set, seg_set], tasks=[None, "seg"])
    assert [(s.name, s.task, s.organ, s.shards) for s in specs] == [
        ("synth_breast_linear_a", "cls", "synth_breast", cls_set), ("synth_thyroid_linear_b", "seg", "synth_thyroid", seg_set)]
    assert specs[0].classes == ["normal", "cyst", "benign", "malignant"] and specs[0].train == []
    assert (specs[0].n_train, specs[0].n_val, specs[1].n_train, specs[1].n_val) == (5, 4, 20, 4)
    cfg = load_config(FinetuneConfig, None, [
        "task=universal", f"out_dir={tmp_path / 'uni'}", "steps=4", "eval_every=0", f"data.img_size={SIZE}",
        "data.batch_size=2", "data.num_workers=0", "data.shuffle_buffer=4", "seg.decoder_channels=16",
        "optim.accum_steps=2", "optim.betas=[0.8,0.99]", "checkpoint.every=4", "data.temperature=2"])
    rep = finetune_universal(cfg, specs)
    p = np.sqrt([5, 20]) / np.sqrt([5, 20]).sum()  # temperature 2 over the index sizes
    assert list(rep["sampling_probabilities"].values()) == pytest.approx(p.tolist())
    assert sum(rep["steps_per_dataset"].values()) == 4 and all(rep["steps_per_dataset"].values())
    final = rep["final"]["datasets"]
    assert final["synth_breast_linear_a"]["n"] == 4 and "balanced_accuracy" in final["synth_breast_linear_a"]
    assert final["synth_thyroid_linear_b"]["n"] == 4 and "dice" in final["synth_thyroid_linear_b"]
    optim = torch.load(tmp_path / "uni" / "checkpoints" / "step-00000004" / "optimizer.pt", weights_only=True)
    assert {tuple(g["betas"]) for g in optim["param_groups"]} == {(0.8, 0.99)}  # optim.betas reached AdamW
    assert (tmp_path / "uni" / "best" / "model.safetensors").is_file()


# --------------------------------------------------------------------------- processes


@pytest.mark.slow
def test_two_processes_read_different_data_and_report_one_process_metrics(shards: Path, tmp_path: Path) -> None:
    from sonofm.finetune.data import shard_eval_loader
    from sonofm.finetune.seg_train import evaluate_segmentation_batches
    from sonofm.models.loading import load_encoder
    from sonofm.models.upernet import SegModel

    run = tmp_path / "ddp"
    launcher = two_cpu_processes(29533)
    _finetune(_args(shards, run, steps=4, eval_every=0, log_keys="true"), launcher=launcher)
    keys = {r: [line.split("\t")[1].split(",") for line in (run / "keys" / f"rank{r}.txt").read_text().splitlines()]
            for r in (0, 1)}
    assert len(keys[0]) == len(keys[1]) == 4 and keys[0] != keys[1]
    rep = json.loads((run / "report.json").read_text())
    assert rep["processes"] == 2 and rep["global_batch"] == 8
    state = json.loads((run / "checkpoints" / "step-00000004" / "state.json").read_text())
    assert state["world_size"] == 2 and len(state["positions"]) == 2
    assert (run / "checkpoints" / "step-00000004" / "rng-rank1.pt").is_file()
    # the validation split is dealt to the ranks exactly once...
    seen = [[st["key"] for b in shard_eval_loader([str(shards)], "val", size=SIZE, batch_size=3, rank=r, world_size=2,
                                                  need_mask=True) for st in b["stored"]] for r in (0, 1)]
    assert not set(seen[0]) & set(seen[1]) and sorted(seen[0] + seen[1]) == sorted(_groups_by_key(shards, "val"))
    # ...and one process measuring the final weights on the same data gets the 2-process report's figures
    enc, _ = load_encoder("random:convnextv2_atto")
    model = SegModel(enc, 2, 16)
    model.load_state_dict(load_file(str(run / "best" / "model.safetensors")))  # eval_every=0: best = final
    model.eval()
    one = evaluate_segmentation_batches(model, shard_eval_loader([str(shards)], "val", size=SIZE, batch_size=4,
                                                                 binary_mask=True, need_mask=True), 2)
    assert rep["final"]["n"] == one["n"] == 8
    for k in ("dice", "iou", "hd95", "hd95_px", "missed"):
        assert rep["final"][k] == pytest.approx(one[k], abs=1e-6), k
