"""Checkpoints of a model sharded with FSDP: gathered on every rank, saved, resumed (CPU, gloo).

What can run here and what cannot. Accelerate 1.x turns ``accelerate launch --use_fsdp`` into FSDP
only on accelerator devices: on this CPU-only machine (``cpu=True``, MULTI_CPU) the flag is ignored
and the processes train with DDP (the engine prints a note, checked below). torch's own FSDP2
(``fully_shard``) does run on CPU with gloo, so the checkpoint path the engine uses under FSDP
(:mod:`sonofm.train.checkpointing`: full state dicts gathered with collectives on every rank,
optimiser state renumbered to the plain format, loaded back after sharding) is tested here on a
really sharded :class:`~sonofm.models.PretrainModel` in two processes. Not verified here:
Accelerate's own FSDP wrapping (``prepare`` with an FSDP plugin, FSDP1 or FSDP2) on GPUs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _batch(seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 1, 64, 64, generator=g)


def _step(model, optimizer, seed: int) -> None:
    import torch

    out = model(_batch(seed), None, None, generator=torch.Generator().manual_seed(seed))
    out["loss"].backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _model(seed: int):
    import torch

    from sonofm.models import PretrainModel
    from sonofm.train.fast import conv_weights_channels_last

    torch.manual_seed(seed)
    model = PretrainModel("convnextv2_atto", img_size=64, dec_dim=16, hier_weight=0.0)
    # as the engine prepares it under FSDP: channels_last off (FSDP2 refuses non-contiguous parameters)
    return conv_weights_channels_last(model, same_bytes_only=True)


def _optimizer(model):
    from sonofm.train.optim import adamw, param_groups

    return adamw(param_groups(model, 0.05), 1e-3, (0.9, 0.95))


def _worker(out: Path) -> None:
    """Runs in each of two torchrun processes."""
    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from sonofm.checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
    from sonofm.train.checkpointing import (
        gather_model_state,
        gather_optimizer_state,
        is_fsdp_model,
        load_optimizer_state,
        sharded_submodules,
    )

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()

    # the whole model one FSDP unit (the engine refuses nested units: the masked encoder calls the
    # blocks' layers itself, so a block's own FSDP hooks would never gather its parameters)
    nested = _model(0)
    fully_shard(nested.encoder.stages[1])
    fully_shard(nested)
    assert sharded_submodules(nested) == ["encoder.stages.1"]
    a = _model(0)
    fully_shard(a)
    assert is_fsdp_model(a) and sharded_submodules(a) == []
    shards = [p for p in a.parameters() if p.to_local().numel() < p.numel()]
    assert shards, "nothing was sharded"
    opt_a = _optimizer(a)
    for s in range(2):
        _step(a, opt_a, s)
    weights = gather_model_state(a)  # every rank: collectives
    optim_state = gather_optimizer_state(a, opt_a)
    if rank == 0:
        assert set(weights) == set(_model(0).state_dict()), "full state dict with the plain module's names"
        assert sorted(optim_state["state"]) == list(range(len(optim_state["state"])))
        save_checkpoint(out, 2, weights, optim_state, {"samples_per_rank": 4})
    else:
        assert weights == {} and optim_state == {}, "full tensors are built on rank 0 only"
    dist.barrier()

    loaded = load_checkpoint(latest_checkpoint(out))
    b = _model(1)  # other initial weights: everything must come from the checkpoint
    b.load_state_dict(loaded["model"], strict=True)
    fully_shard(b)
    opt_b = _optimizer(b)
    load_optimizer_state(b, opt_b, loaded["optimizer"])
    _step(a, opt_a, 2)
    _step(b, opt_b, 2)
    after_a, after_b = gather_model_state(a), gather_model_state(b)
    if rank == 0:
        # the same checkpoint resumed without FSDP (one process, the same batch both ranks had)
        c = _model(2)
        c.load_state_dict(loaded["model"], strict=True)
        opt_c = _optimizer(c)
        load_optimizer_state(c, opt_c, loaded["optimizer"])
        _step(c, opt_c, 2)
        after_c = c.state_dict()
        moved = 0
        for k, v in after_a.items():
            torch.testing.assert_close(after_b[k], v, rtol=0, atol=0, msg=f"FSDP resume differs at {k}")
            torch.testing.assert_close(after_c[k], v, rtol=1e-5, atol=1e-7, msg=f"plain resume differs at {k}")
            moved += int(not torch.equal(v, loaded["model"][k]))
        assert moved > len(after_a) // 2, "the third step changed the weights"
        (out / "ok").write_text("ok")
    dist.destroy_process_group()


@pytest.mark.slow
def test_fsdp2_checkpoint_gathers_saves_and_resumes(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29541", __file__, str(tmp_path)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert (tmp_path / "ok").is_file()


def test_use_fsdp_without_accelerator_device_is_reported(tmp_path: Path) -> None:
    """On a CPU-only machine ``--use_fsdp`` (ACCELERATE_USE_FSDP) cannot shard: the run says so."""
    code = ("from sonofm.train.accel import make_accelerator, uses_fsdp\n"
            "a = make_accelerator('no')\nprint('fsdp', uses_fsdp(a))\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_FSDP": "true", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fsdp False" in proc.stdout
    assert "--use_fsdp has no effect here" in proc.stdout


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
