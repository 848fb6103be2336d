"""The Accelerate set-up both loops share: one :class:`~accelerate.Accelerator` per run.

- ``precision`` is Accelerate's ``mixed_precision`` (``no``, ``bf16``, ``fp16``). ``fp16`` uses
  Accelerate's gradient scaler, which Accelerate makes only on CUDA: without one, fp16 autocast
  would not run and the run would silently be fp32, so it is refused instead.
- Without CUDA the Accelerator is built with ``cpu=True``, so processes started by
  ``accelerate launch --multi_gpu`` / ``torchrun`` form a gloo group (Accelerate's MULTI_CPU).
- :func:`cpu_threads` sizes the intra-op thread pool of a CPU process so that the loader workers
  keep a core each; every Accelerator made here keeps torch's threads within ``OMP_THREAD_LIMIT``
  (:func:`within_omp_thread_limit`), above which oneDNN deadlocks.
"""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from sonofm.errors import UserError

__all__ = ["make_accelerator", "cpu_threads", "omp_thread_limit", "uses_fsdp", "within_omp_thread_limit"]


def make_accelerator(precision: str, find_unused_parameters: bool = False, cpu: bool | None = None,
                     require_scaler: bool = True) -> Accelerator:
    """The run's Accelerator for ``precision`` (``no`` | ``bf16`` | ``fp16``); see the module doc.

    ``cpu``: force the CPU (default: when there is no CUDA). ``find_unused_parameters``: DDP for
    models whose steps use some heads only (finetuning). Accelerate keeps one precision per process;
    a single, not launched process that trains at another precision than before (a test suite, a
    notebook) gets its state rebuilt. ``require_scaler=False`` returns an fp16 Accelerator without
    a scaler (for a caller that supplies one, e.g. a CPU emulation in tests) instead of refusing it.
    """
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedDataParallelKwargs

    if precision not in ("no", "bf16", "fp16"):
        raise ValueError(f"precision must be 'no', 'bf16' or 'fp16', got {precision!r}")
    cpu = (not torch.cuda.is_available()) if cpu is None else cpu
    if AcceleratorState._shared_state and PartialState().num_processes == 1:
        state = AcceleratorState()
        if state.mixed_precision != precision or (state.device.type == "cpu") != cpu:
            AcceleratorState._reset_state()
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if find_unused_parameters else []
    accelerator = Accelerator(mixed_precision=precision, cpu=cpu, kwargs_handlers=handlers)
    within_omp_thread_limit()
    if require_scaler and accelerator.mixed_precision == "fp16" and accelerator.scaler is None:
        raise UserError(
            f"precision=fp16 needs a CUDA device: Accelerate makes its gradient scaler only there (this run is on "
            f"{accelerator.device.type}, where fp16 would silently train in fp32); use precision=bf16 or precision=no"
        )
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and not uses_fsdp(accelerator):
        accelerator.print(f"note: --use_fsdp has no effect here: Accelerate shards with FSDP only on accelerator "
                          f"devices, this run is {accelerator.distributed_type.value} on {accelerator.device.type}")
    return accelerator


def uses_fsdp(accelerator: Accelerator) -> bool:
    """Whether Accelerate shards the model with FSDP (``accelerate launch --use_fsdp``).

    Accelerate 1.x activates FSDP only on accelerator devices: on a CPU-only machine
    (``cpu=True``, MULTI_CPU) ``--use_fsdp`` is ignored and the processes run DDP."""
    return accelerator.distributed_type == DistributedType.FSDP


def cpu_threads(accelerator: Accelerator, num_workers: int) -> int | None:
    """On CPU, leave a core to each loader worker: oversubscribed intra-op threads spin and can make a
    step many times slower. An explicit ``OMP_NUM_THREADS`` always wins. Returns the threads set
    (``None`` when nothing was changed)."""
    if accelerator.device.type != "cpu":
        return None
    if os.environ.get("OMP_NUM_THREADS"):
        return within_omp_thread_limit()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))  # processes on this machine
    threads = max(1, (os.cpu_count() or 1) // local - num_workers)
    torch.set_num_threads(min(threads, omp_thread_limit() or threads))
    return torch.get_num_threads()


def omp_thread_limit() -> int | None:
    """``OMP_THREAD_LIMIT`` as a number (``None`` when unset or not a positive integer)."""
    value = os.environ.get("OMP_THREAD_LIMIT", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def within_omp_thread_limit() -> int | None:
    """Lower torch's intra-op threads to ``OMP_THREAD_LIMIT`` when that is smaller. OpenMP then gives a
    parallel region fewer threads than torch asked for, and oneDNN's convolution kernels, which wait for
    every thread they planned with, spin forever (seen with torch 2.14 on CPU: a 1x1 convolution's
    backward under ``OMP_THREAD_LIMIT=1`` never returns). Returns the threads set, ``None`` if unchanged."""
    limit = omp_thread_limit()
    if limit is None or torch.get_num_threads() <= limit:
        return None
    torch.set_num_threads(limit)
    return limit
