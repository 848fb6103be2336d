"""Saving and resuming a training run under Accelerate, with DDP or FSDP, through :mod:`sonofm.checkpoints`.

:mod:`sonofm.checkpoints` owns the directory format (``step-N/`` written atomically, ``last``,
pruning, safe reading); this module gathers what goes into it from a prepared model and optimiser
and puts it back:

- **Weights** are gathered on *every* rank (:func:`gather_model_state`): under FSDP each rank
  holds a shard and building the full state dict is a collective (``get_model_state_dict`` with
  ``full_state_dict=True``, the call :meth:`accelerate.Accelerator.get_state_dict` makes for FSDP2);
  called on the main rank alone it would hang, and ``model.state_dict()`` would hold only shards.
  Without FSDP it is the unwrapped module's ``state_dict`` (no DDP ``module.`` prefix, no
  ``torch.compile`` ``_orig_mod.`` prefix). Weights are loaded into the plain module *before*
  ``accelerator.prepare`` (FSDP then shards the loaded values).
- **Optimiser state** is gathered the same way (``get_optimizer_state_dict``, full, on every rank)
  and saved in the format ``optimizer.state_dict()`` has without FSDP (parameters numbered in
  group order), so a checkpoint resumes with or without FSDP; it is loaded *after* ``prepare``
  (:func:`load_optimizer_state`), when the optimiser holds the parameters it will step.
- The **gradient scaler** (fp16) goes into ``state.json``; every rank's RNG into ``rng-rank{r}.pt``.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import extract_model_from_parallel
from torch import nn

from sonofm.checkpoints import checkpoints_dir, save_checkpoint, save_rank_rng, set_rng_state, step_dir_name

__all__ = ["is_fsdp_model", "sharded_submodules", "gather_model_state", "gather_optimizer_state", "load_optimizer_state",
           "save_training_checkpoint", "restore_training_state"]


def is_fsdp_model(model: nn.Module) -> bool:
    """Whether ``model`` is sharded by FSDP (FSDP1's wrapper or a module FSDP2's ``fully_shard`` made)."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch < 2.6
        return isinstance(model, FullyShardedDataParallel)
    return isinstance(model, (FullyShardedDataParallel, FSDPModule))


def sharded_submodules(model: nn.Module) -> list[str]:
    """Names of the modules below ``model`` that FSDP wrapped as units of their own (``[]`` when the
    whole model is one unit, e.g. ``--fsdp_auto_wrap_policy NO_WRAP``)."""
    return [name for name, module in model.named_modules() if name and is_fsdp_model(module)]


def _full_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # cpu_offload: the full tensors are built on the CPU of rank 0 only (other ranks get {}), so a
    # model larger than one device still gathers
    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def gather_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full weights of a prepared (or plain) model, with the plain module's key names.

    Call on every rank: under FSDP this is a collective; the main rank gets the full tensors
    (on the CPU), the others an empty dict."""
    if is_fsdp_model(model):
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(model, options=_full_options())
    return extract_model_from_parallel(model, keep_torch_compile=False).state_dict()


def _plain_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    return getattr(optimizer, "optimizer", optimizer)  # Accelerate's AcceleratedOptimizer wraps it


def gather_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimiser's full state in ``optimizer.state_dict()``'s format; call on every rank (see
    :func:`gather_model_state`; under FSDP only the main rank gets it, the others ``{}``).

    As with ``optimizer.state_dict()``, on the CPU its tensors may be the live ones: save it
    before the next step."""
    if not is_fsdp_model(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    full = get_optimizer_state_dict(model, _plain_optimizer(optimizer), options=_full_options())
    if not full:
        return {}
    ids: dict[str, int] = {}  # parameter name -> number, in group order (what state_dict() does)
    groups = []
    for group in full["param_groups"]:
        groups.append({**group, "params": [ids.setdefault(name, len(ids)) for name in group["params"]]})
    return {"state": {ids[name]: value for name, value in full["state"].items()}, "param_groups": groups}


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a state saved by :func:`gather_optimizer_state` into the optimiser of a *prepared* model.

    Under FSDP every rank passes the full state and keeps its shard; this needs the parameter
    names of each group (``names``, as :func:`sonofm.train.optim.param_groups` records them). Each
    state tensor then takes its parameter's memory layout (a run saved without channels_last may
    resume with it). ``state`` is copied first: optimisers (FSDP's loader and torch's own, on the
    CPU) keep the tensors they are given, which would tie the caller's dict to the live state."""
    state = copy.deepcopy(state)
    plain = _plain_optimizer(optimizer)
    if is_fsdp_model(model):  # sharded state: FSDP places it
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        names = [name for group in plain.param_groups for name in group.get("names", ())]
        if len(names) != sum(len(group["params"]) for group in plain.param_groups):
            raise ValueError("resuming under FSDP needs the parameter names of every optimiser group ('names', as "
                             "sonofm.train.optim.param_groups records them)")
        by_name = {
            "state": {names[int(i)]: value for i, value in state["state"].items()},
            "param_groups": [{**group, "params": [names[int(i)] for i in group["params"]]}
                             for group in state["param_groups"]],
        }
        set_optimizer_state_dict(model, plain, by_name, options=StateDictOptions(full_state_dict=True))
        return
    optimizer.load_state_dict(state)
    for param, values in plain.state.items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor) and value.shape == param.shape and value.stride() != param.stride():
                values[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def save_training_checkpoint(
    accelerator: Accelerator,
    run_dir: str | os.PathLike,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    *,
    ema: Any = None,
    keep_last: int = 3,
) -> None:
    """Write ``run_dir/checkpoints/step-N/`` from every rank's part: call on **every** rank.

    ``model`` and ``optimizer`` are the prepared ones; ``state`` (JSON) goes into ``state.json``
    with the fp16 gradient scaler's state added; ``ema`` (a :class:`~sonofm.train.ema.ModelEMA`)
    into ``ema.safetensors``. The main rank writes the directory, then every other rank adds its
    RNG state to it."""
    accelerator.wait_for_everyone()
    weights = gather_model_state(model)  # collectives under FSDP: every rank takes part
    optim_state = gather_optimizer_state(model, optimizer)
    if accelerator.scaler is not None:
        state = {**state, "scaler": accelerator.scaler.state_dict()}
    if accelerator.is_main_process:
        save_checkpoint(run_dir, step, weights, optim_state, state,
                        ema_state=ema.state_dict() if ema is not None else None, keep_last=keep_last)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        save_rank_rng(checkpoints_dir(run_dir) / step_dir_name(step), accelerator.process_index)
    accelerator.wait_for_everyone()


def restore_training_state(accelerator: Accelerator, model: nn.Module, optimizer: torch.optim.Optimizer,
                           loaded: dict[str, Any], ema: Any = None) -> None:
    """After ``prepare``: the optimiser, gradient scaler, EMA and this rank's RNG from ``loaded``
    (:func:`sonofm.checkpoints.load_checkpoint`); the weights were loaded before ``prepare``."""
    if "optimizer" in loaded:
        load_optimizer_state(model, optimizer, loaded["optimizer"])
    scaler_state = loaded.get("state", {}).get("scaler")
    if accelerator.scaler is not None and scaler_state:
        accelerator.scaler.load_state_dict(scaler_state)
    if ema is not None and "ema" in loaded:
        ema.load_state_dict(loaded["ema"])
    if "rng" in loaded:
        set_rng_state(loaded["rng"])
