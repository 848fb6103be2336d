"""The finetuning loop under Accelerate, shared by segmentation and universal training.

One optimiser step = ``accum_steps`` micro-batches (gradients synchronised across processes on the
last one only). AdamW over layer-decayed groups (:mod:`sonofm.finetune.lr_decay`), per-step warm-up
+ cosine rate (:mod:`sonofm.train.schedule`), gradient clipping, optional EMA (evaluated and saved
instead of the raw weights when on). Precision is Accelerate's: ``bf16`` autocast, ``fp16`` autocast
with Accelerate's gradient scaler (an overflowing step is skipped by the scaler, not an error);
``fp16`` without a scaler (on a CPU-only machine Accelerate makes none) is refused rather than
silently run in fp32.

Processes: the model goes through ``accelerator.prepare`` (DDP when launched with ``accelerate
launch``); the batches do not: every rank streams its own (see :mod:`sonofm.finetune.data`), as in
pretraining. Evaluation runs on every rank over its share of the validation data and the per-sample
results are gathered, so every rank computes the same numbers and takes the same best-checkpoint
decision; only the main process writes.

Resume (``resume="auto"`` or a checkpoint path) has pretraining's guarantees: every ``checkpoint_every``
steps (and at the last step) ``out_dir/checkpoints/step-N/`` holds the weights, optimiser, EMA, the
scaler's state, every rank's RNG and data position, the best score so far and the evaluation
history, written atomically by :mod:`sonofm.checkpoints`; a resumed run continues with exactly the
batches, dropout masks and learning rates the uninterrupted run would have had, so it ends with the
same weights and metrics. ``metrics.jsonl`` is cut back to the checkpoint's step.

Best checkpoint: :class:`BestCheckpoint` keeps ``out_dir/best/`` (``model.safetensors`` +
``meta.json``) for the highest validation score; it is the one helper both finetuning commands use.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from sonofm.atomic_io import save_safetensors, temp_dir, write_json, write_text
from sonofm.checkpoints import (
    fallback_hint,
    load_checkpoint,
    read_state,
    resolve_checkpoint,
    set_rng_state,
)
from sonofm.errors import UnreadableFileError, UserError
from sonofm.faults import maybe_kill
from sonofm.finetune.lr_decay import layer_decay_groups
from sonofm.train.accel import make_accelerator
from sonofm.train.checkpointing import gather_model_state, restore_training_state, save_training_checkpoint
from sonofm.train.ema import ModelEMA
from sonofm.train.guard import NonFiniteGuard, NonFiniteLossError
from sonofm.train.optim import adamw
from sonofm.train.schedule import apply_lr, lr_at, scaled_lr

__all__ = [
    "LoopSettings",
    "BatchSource",
    "BestCheckpoint",
    "NonFiniteLossError",
    "make_accelerator",
    "make_optimizer",
    "gather_results",
    "run_loop",
    "save_weights",
]

LossFn = Callable[[nn.Module, dict[str, Any], int, int], tuple[Tensor, dict[str, Any]]]
EvalFn = Callable[[nn.Module, int, bool], dict[str, Any]]


@dataclass
class LoopSettings:
    """What the loop needs, built once from a :class:`~sonofm.config.schema.FinetuneConfig`.

    ``lr`` is the peak rate (already scaled); ``checkpoint_every`` 0 writes no resumable checkpoint.
    """

    steps: int
    lr: float
    weight_decay: float = 0.05
    layer_decay: float = 0.8
    warmup_steps: int = 0
    min_lr: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    clip_grad: float | None = 3.0
    accum_steps: int = 1
    ema: float = 0.0
    precision: str = "no"
    eval_every: int = 0
    checkpoint_every: int = 0
    keep_last: int = 2
    seed: int = 0
    log_keys: bool = False
    progress: str | None = None

    @classmethod
    def from_config(cls, cfg: Any, world_size: int = 1, progress: str | None = None,
                    checkpoints: bool = True) -> LoopSettings:
        """The loop's settings of a ``FinetuneConfig``; the peak rate follows the global batch
        (``data.batch_size * processes * optim.accum_steps``) unless ``optim.lr`` is given.
        ``checkpoints=False``: no resumable checkpoints (in-memory runs that are cheap to redo)."""
        accum = cfg.optim.accum_steps
        return cls(
            steps=cfg.steps,
            lr=scaled_lr(cfg.optim.base_lr, cfg.data.batch_size * world_size * accum, cfg.optim.lr),
            weight_decay=cfg.optim.weight_decay, layer_decay=cfg.layer_decay, warmup_steps=cfg.optim.warmup_steps,
            min_lr=cfg.optim.min_lr, betas=(float(cfg.optim.betas[0]), float(cfg.optim.betas[1])),
            clip_grad=cfg.optim.clip_grad or None, accum_steps=accum, ema=cfg.ema, precision=cfg.precision,
            eval_every=cfg.eval_every, checkpoint_every=cfg.checkpoint.every if checkpoints else 0, keep_last=cfg.checkpoint.keep_last,
            seed=cfg.seed, log_keys=cfg.log_keys, progress=progress,
        )


class BatchSource(Protocol):
    """Training batches that can say where they are (JSON) and restart there: what resume needs."""

    def __iter__(self) -> Iterator[Any]: ...

    def position(self) -> dict[str, Any]: ...

    def seek(self, position: dict[str, Any]) -> None: ...


# --------------------------------------------------------------------------- set-up


def make_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.05, layer_decay: float = 1.0,
                   betas: Sequence[float] = (0.9, 0.999)) -> torch.optim.AdamW:
    """AdamW over layer-decayed groups; the rate itself is set each step by :func:`apply_lr`."""
    groups = layer_decay_groups(model, weight_decay, layer_decay)
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    return adamw(groups, lr, betas)


def gather_results(local: list[dict[str, Any]], accelerator: Any | None, order: str = "order") -> list[dict[str, Any]]:
    """Per-sample results of every rank, on every rank, sorted by ``order`` (a sample's place in the data)."""
    if accelerator is not None and accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        local = list(gather_object(local))
    return sorted(local, key=lambda r: r[order])


# --------------------------------------------------------------------------- files


def save_weights(state: dict[str, Tensor], directory: str | os.PathLike, meta: dict[str, Any]) -> Path:
    """Write ``directory/model.safetensors`` + ``meta.json`` atomically (temp dir, then rename)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(directory.parent, prefix=f".{directory.name}.tmp-")
    try:
        save_safetensors({k: v.detach().cpu().contiguous() for k, v in state.items()}, tmp / "model.safetensors")
        write_json(tmp / "meta.json", meta)
        old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
        if directory.exists():
            os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


class BestCheckpoint:
    """``out_dir/best/`` for the highest score seen (strictly higher replaces it); resumable state.

    :meth:`offer` runs on every rank (the weights are gathered through the training core, FSDP
    included); only the rank with ``write`` writes them."""

    def __init__(self, directory: Path | None, meta: dict[str, Any], write: bool = True) -> None:
        self.directory, self.meta, self.write = directory, meta, write
        self.score, self.step, self.metrics = -math.inf, 0, {}

    def offer(self, module: nn.Module, step: int, score: float, metrics: dict[str, Any]) -> bool:
        if not score > self.score:  # NaN never wins
            return False
        self.score, self.step, self.metrics = float(score), step, metrics
        if self.directory is not None:
            weights = gather_model_state(module)  # every rank takes part (FSDP); the main rank gets the full weights
            if self.write:
                save_weights(weights, self.directory, {"step": step, "val": metrics, **self.meta})
        return True

    def state(self) -> dict[str, Any]:
        return {"score": self.score if math.isfinite(self.score) else None, "step": self.step,
                "metrics": self.metrics}

    def load(self, state: dict[str, Any]) -> None:
        self.score = -math.inf if state.get("score") is None else float(state["score"])
        self.step, self.metrics = int(state.get("step", 0)), dict(state.get("metrics") or {})


class _Metrics:
    """``metrics.jsonl`` of the main process (rows also go to ``log``); cut back on resume."""

    def __init__(self, path: Path | None, enabled: bool, log: Callable[[dict[str, Any]], None] | None) -> None:
        self.path, self.enabled, self.log = path, enabled and path is not None, log

    def truncate_after(self, step: int) -> list[dict[str, Any]]:
        """Keep the rows up to ``step`` (a crash may have logged later ones); returns them."""
        if not self.enabled or not self.path.is_file():
            return []
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            if row.get("step", 0) <= step:
                kept.append(row)
        write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        return kept

    def __call__(self, row: dict[str, Any]) -> None:
        if self.log is not None:
            self.log(row)
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")


def _load_for_resume(ckpt: Path, rank: int, identity: dict[str, Any]) -> dict[str, Any]:
    """Read a checkpoint to resume, refusing one made for another encoder / task before reading weights."""
    from sonofm.models.loading import IncompatibleCheckpointError

    try:
        state = read_state(ckpt)
    except ValueError as e:
        raise UnreadableFileError(f"{e}; {fallback_hint(ckpt)}") from e
    for key, mine in identity.items():
        theirs = state.get(key)
        if theirs is not None and theirs != mine:
            raise IncompatibleCheckpointError(
                f"--resume: checkpoint {ckpt} was made with {key}={theirs}, this run has {key}={mine}; "
                "resume with the config the run was started with or use a new out_dir"
            )
    try:
        return load_checkpoint(ckpt, rank=rank)
    except ValueError as e:
        raise UnreadableFileError(f"{e}; {fallback_hint(ckpt)}") from e


# --------------------------------------------------------------------------- the loop


@dataclass
class LoopResult:
    """What :func:`run_loop` hands back: per-step losses and log fields, evaluations, best, EMA."""

    losses: list[float]
    fields: list[dict[str, Any]]
    evals: list[dict[str, Any]]
    final: dict[str, Any]
    best: dict[str, Any]
    ema: ModelEMA | None
    start_step: int = 0
    resumed_from: str | None = None
    world_size: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def as_history(self) -> dict[str, Any]:
        return {"losses": self.losses, "evals": self.evals, "ema": self.ema}


def _is_source(batches: Any) -> bool:
    return all(hasattr(batches, a) for a in ("position", "seek"))


def run_loop(
    model: nn.Module,
    batches: BatchSource | Iterable[Any],
    loss_fn: LossFn,
    settings: LoopSettings,
    *,
    accelerator: Any | None = None,
    out_dir: str | os.PathLike | None = None,
    evaluate: EvalFn | None = None,
    best_meta: dict[str, Any] | None = None,
    identity: dict[str, Any] | None = None,
    resume: str | None = None,
    log: Callable[[dict[str, Any]], None] | None = None,
    find_unused_parameters: bool = False,
    extra_state: Callable[[], dict[str, Any]] | None = None,
) -> LoopResult:
    """Train ``model`` for ``settings.steps`` optimiser steps (see the module docstring).

    ``loss_fn(model, batch, step, micro) -> (loss, fields)`` runs the forward pass (under autocast
    here) on the batch drawn for that micro-batch; ``fields`` go into the step's log row (e.g. the
    dataset). ``batches``: a :class:`BatchSource` (resumable) or any iterable (then no checkpoint).
    ``evaluate(module, step, final) -> {"score": ..., ...}`` every ``eval_every`` steps and at the
    last step, on every rank, with the EMA module when EMA is on; the best score's weights go to
    ``out_dir/best/`` with ``best_meta``. ``identity``: values a resumed checkpoint must match.
    """
    accelerator = accelerator if accelerator is not None else make_accelerator(
        settings.precision, find_unused_parameters, require_scaler=False)  # refused below, with the hint
    if settings.steps < 1:
        raise ValueError(f"steps must be >= 1, got {settings.steps}")
    if settings.accum_steps < 1:
        raise ValueError(f"accum_steps must be >= 1, got {settings.accum_steps}")
    if accelerator.mixed_precision == "fp16" and accelerator.scaler is None:
        raise UserError("precision=fp16 needs a CUDA device: Accelerate makes its gradient scaler only there (without "
                        "one small gradients underflow). On this machine use precision=bf16 or precision=no")
    rank, world, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    out = Path(out_dir) if out_dir is not None else None
    resumable = _is_source(batches)
    checkpointing = out is not None and settings.checkpoint_every > 0
    if checkpointing and not resumable:
        raise ValueError("resumable checkpoints need a batch source that knows its position (a BatchSource)")
    identity = dict(identity or {})

    optimizer = make_optimizer(model, settings.lr, settings.weight_decay, settings.layer_decay, settings.betas)
    ckpt = resolve_checkpoint(out, resume) if out is not None else None
    loaded: dict[str, Any] | None = None
    start_step = 0
    if ckpt is not None:
        loaded = _load_for_resume(ckpt, rank, identity)
        model.load_state_dict(loaded["model"], strict=True)  # weights before prepare; the rest after it
        start_step = int(loaded["state"]["step"])
        saved_world = int(loaded["state"].get("world_size", world))
        if saved_world != world:
            accelerator.print(f"warning: resuming a {saved_world}-process finetune on {world} processes: the data "
                              "order differs from an uninterrupted run")
        positions = loaded["state"].get("positions") or []
        if positions and resumable:
            batches.seek(positions[rank % len(positions)])
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    ema = ModelEMA(unwrapped, settings.ema) if settings.ema > 0 else None  # after prepare: on the model's device
    if loaded is not None:  # optimiser, scaler, EMA: the training core's restore (the RNG after the loaders start)
        restore_training_state(accelerator, model, optimizer, {k: v for k, v in loaded.items() if k != "rng"}, ema)
    scaler = accelerator.scaler

    best = BestCheckpoint(out / "best" if out is not None else None, dict(best_meta or {}), write=main)
    metrics = _Metrics(out / "metrics.jsonl" if out is not None else None, main, log)
    evals: list[dict[str, Any]] = []
    losses: list[float] = []
    fields: list[dict[str, Any]] = []
    if loaded is not None:
        best.load(loaded["state"].get("best") or {})
        evals = list(loaded["state"].get("evals") or [])
        rows = metrics.truncate_after(start_step)
        train_rows = [r for r in rows if "loss" in r]
        losses = [float(r["loss"]) for r in train_rows]
        fields = [{k: r[k] for k in ("dataset", "task") if k in r} for r in train_rows]
        if main and len(losses) != start_step:
            accelerator.print(f"note: {out / 'metrics.jsonl'} holds {len(losses)} of the {start_step} steps "
                              "before the checkpoint; the report's losses cover those")

    it = iter(batches)  # start the loader workers before the RNG is restored: iter() draws a torch seed
    if loaded is not None and "rng" in loaded:
        set_rng_state(loaded["rng"])
    key_log = None
    if settings.log_keys and out is not None:
        (out / "keys").mkdir(parents=True, exist_ok=True)
        key_log = open(out / "keys" / f"rank{rank}.txt", "a", buffering=1)  # noqa: SIM115
    bar = None
    if settings.progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(total=settings.steps, initial=start_step, desc=settings.progress, dynamic_ncols=True, leave=False)

    last_eval: dict[str, Any] = {}

    def run_eval(step: int, record: bool = True) -> None:
        module = ema.module if ema is not None else unwrapped
        final = step == settings.steps
        res = evaluate(module, step, final)
        last_eval["res"] = res
        model.train()
        if not record:  # a finished run resumed: the report's figures again, the history as it was
            return
        summary = {k: v for k, v in res.items() if k != "per_sample"}
        metrics({"step": step, "val": summary})
        best.offer(module, step, float(res["score"]), summary)
        evals.append({"step": step, "score": float(res["score"])})

    t0 = time.time()
    guard = NonFiniteGuard(accelerator)
    accum = settings.accum_steps
    model.train()
    try:
        for step in range(start_step, settings.steps):
            lr = lr_at(step, settings.steps, settings.lr, settings.warmup_steps, settings.min_lr)
            apply_lr(optimizer, lr)
            step_loss = torch.zeros((), device=accelerator.device)
            row_fields: dict[str, Any] = {}
            for micro in range(accum):
                batch = next(it)
                if key_log is not None and "key" in batch:
                    key_log.write(f"{step + 1}\t{','.join(batch['key'])}\n")
                sync = contextlib.nullcontext() if micro == accum - 1 else accelerator.no_sync(model)
                with sync:
                    with accelerator.autocast():
                        loss, f = loss_fn(model, batch, step, micro)
                    guard.add(loss)
                    accelerator.backward(loss / accum)
                step_loss += loss.detach().float() / accum
                row_fields = f if micro == 0 else row_fields
            guard.check(step, out / "checkpoints" if out is not None else "the last checkpoint")
            if settings.clip_grad:
                accelerator.clip_grad_norm_(model.parameters(), settings.clip_grad)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None and not (scaler is not None and optimizer.step_was_skipped):
                ema.update(unwrapped)
            done = step + 1
            losses.append(float(step_loss))
            fields.append(row_fields)
            row = {"step": done, **row_fields, "loss": losses[-1], "lr": optimizer.param_groups[-1]["lr"],
                   "time": time.time() - t0}
            if scaler is not None:
                row["loss_scale"] = float(scaler.get_scale())
            metrics(row)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if evaluate is not None and ((settings.eval_every and done % settings.eval_every == 0)
                                         or done == settings.steps):
                run_eval(done)
            if checkpointing and (done % settings.checkpoint_every == 0 or done == settings.steps):
                _checkpoint(accelerator, model, optimizer, ema, out, done, batches, best, evals, identity,
                            settings, extra_state() if extra_state is not None else {})
            maybe_kill("after_step", done)  # fault injection for the crash tests
        if start_step >= settings.steps and evaluate is not None and not last_eval:
            run_eval(settings.steps, record=False)  # a finished run resumed: its final evaluation, for the report
    finally:
        if bar is not None:
            bar.close()
        if key_log is not None:
            key_log.close()
        del it
    accelerator.wait_for_everyone()
    res = last_eval.get("res", {})
    return LoopResult(losses=losses, fields=fields, evals=evals, final=res,
                      best={"step": best.step, "score": best.score, **best.metrics}, ema=ema,
                      start_step=start_step, resumed_from=str(ckpt) if ckpt is not None else None, world_size=world)


def _checkpoint(accelerator: Any, model: nn.Module, optimizer: Any, ema: ModelEMA | None, out: Path, step: int,
                batches: BatchSource, best: BestCheckpoint, evals: list[dict[str, Any]], identity: dict[str, Any],
                settings: LoopSettings, extra: dict[str, Any]) -> None:
    """``out/checkpoints/step-N/`` through the training core (every rank's part gathered, FSDP-aware,
    atomic): weights, optimiser, EMA, scaler, every rank's data position and RNG; call on every rank."""
    from accelerate.utils import gather_object

    position = batches.position()
    positions = list(gather_object([position])) if accelerator.num_processes > 1 else [position]
    state = {"world_size": accelerator.num_processes, "positions": positions, "best": best.state(),
             "evals": evals, **identity, **extra}
    save_training_checkpoint(accelerator, out, step, model, optimizer, state, ema=ema, keep_last=settings.keep_last)
