"""The pretraining loop (``sonofm pretrain``): short, per-step, resumable, under Accelerate.

One optimiser step = ``accum_steps`` micro-batches. Everything that decides what the run does at
step ``s`` (learning rate, the masks drawn, the data position) is a function of ``s`` and the seed,
so ``--resume auto`` continues exactly where the last complete checkpoint stopped. The data loader
is deliberately not passed through ``accelerator.prepare`` (that would read every sample on every
rank): each rank streams its own shards and batches are moved to the device here.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from sonofm.checkpoints import (
    MODEL_FILE,
    fallback_hint,
    load_checkpoint,
    read_state,
    resolve_checkpoint,
)
from sonofm.config import PretrainConfig, save_config
from sonofm.config.schema import DataConfig, ModelConfig, OptimConfig
from sonofm.datasets.shards import write_json_atomic
from sonofm.errors import UnreadableFileError, UserError
from sonofm.faults import maybe_kill
from sonofm.models.loading import IncompatibleCheckpointError
from sonofm.models.pretrain_model import PretrainModel, count_params
from sonofm.pretrain.visualize import plot_loss_curve, save_reconstruction_grid
from sonofm.train.accel import cpu_threads, make_accelerator, uses_fsdp
from sonofm.train.checkpointing import restore_training_state, save_training_checkpoint, sharded_submodules
from sonofm.train.ema import ModelEMA
from sonofm.train.fast import FastPath, compile_model, conv_weights_channels_last, plan_fast_path, to_device
from sonofm.train.guard import NonFiniteGuard, NonFiniteLossError
from sonofm.train.loggers import MetricsLogger
from sonofm.train.optim import adamw, param_groups
from sonofm.train.schedule import apply_lr, lr_at, scaled_lr

#: The hierarchical classifier's tree (names, sizes, parents), saved in the run directory.
TREE_FILE = "taxonomy_tree.json"


def build_model(cfg: PretrainConfig, tree: dict[str, Any] | None) -> PretrainModel:
    """Map the typed config onto the model's plain arguments."""
    return PretrainModel(
        encoder=cfg.model.name,
        in_chans=cfg.model.in_chans,
        img_size=cfg.data.img_size,
        mask_ratio=cfg.masking.ratio,
        decoder=cfg.decoder.kind,
        dec_dim=cfg.decoder.dim,
        dec_depth=cfg.decoder.depth,
        target=cfg.target.kind,
        target_kwargs={"sigma": cfg.target.lowpass_sigma} if cfg.target.kind == "lowpass" else None,
        field_pixels=cfg.target.field_pixels,
        hier_weight=cfg.hierarchy.weight,
        levels=cfg.hierarchy.levels,
        tree=tree,
        drop_path_rate=cfg.model.drop_path_rate,
        mask_patch=cfg.masking.patch_size,
    )


def mask_generator(seed: int, rank: int, step: int, micro: int) -> torch.Generator:
    """The masks of a micro-batch depend only on (seed, rank, step, micro): resumable without state."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + rank * 10_007 + step * 101 + micro) % (2**63 - 1))
    return g


class _Window:
    """Averages of logged scalars between two log rows.

    Values stay (detached) tensors until a row is logged, so the training step never waits for the
    device to hand a number back to Python.
    """

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor | float] = {}
        self.counts: dict[str, torch.Tensor | float] = {}

    def add(self, key: str, value: torch.Tensor | float, weight: torch.Tensor | float = 1.0) -> None:
        if isinstance(value, torch.Tensor):
            value = value.detach()
        self.sums[key] = self.sums.get(key, 0.0) + value * weight
        self.counts[key] = self.counts.get(key, 0.0) + weight

    def means(self) -> dict[str, float]:
        out = {}
        for key, total in self.sums.items():
            count = float(self.counts[key])
            if count > 0:
                out[key] = float(total) / count
        return out


def taxonomy_for(cfg: PretrainConfig) -> Any:
    """The classifier's tree, from the entries the shard indexes store (never from the working directory).

    Shard sets without an index (remote URL lists) fall back to the built-in taxonomy extended by
    ``hierarchy.taxonomy``.
    """
    from sonofm.datasets.stream.loader import shard_indexes
    from sonofm.datasets.taxonomy import Taxonomy

    indexes = shard_indexes(list(cfg.data.shards))
    if not indexes:
        return Taxonomy.with_user_files(cfg.hierarchy.taxonomy)
    return Taxonomy.from_indexes(indexes, cfg.hierarchy.taxonomy)


def _check_tree(run_dir: Path, tree: dict[str, Any], main: bool, resuming: bool) -> None:
    """Record the tree in the run (export and model card read it); a resumed run must train the same one."""
    path = run_dir / TREE_FILE
    if resuming and path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved != tree:
            changed = sorted(lv for lv in tree["names"] if saved.get("names", {}).get(lv) != tree["names"][lv])
            from sonofm.datasets.taxonomy import TaxonomyError

            raise TaxonomyError(
                f"{run_dir}: the shards' taxonomy differs from the one this run was started with (levels "
                f"{changed} changed, see {path}); resume with the same data.shards or start a new run_dir"
            )
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, tree)


def _make_loader(data: DataConfig, seed: int, rank: int, world: int, resume_samples: int, target_fn,
                 fast: FastPath):
    from sonofm.datasets.stream.loader import StreamSpec, make_train_loader

    if not data.shards:
        raise ValueError("data.shards is empty: give shard folders, e.g. data.shards=[shards/shared]")
    spec = StreamSpec(paths=list(data.shards), weights=data.weights, temperature=data.temperature, split=data.split)
    return make_train_loader(
        spec,
        batch_size=data.batch_size,
        img_size=data.img_size,
        seed=seed,
        rank=rank,
        world_size=world,
        num_workers=data.num_workers,
        resume_samples=resume_samples,
        shuffle_buffer=data.shuffle_buffer,
        aug=asdict(data.augment),
        target_fn=target_fn,
        pin_memory=fast.pin_memory,
    )


def _load_for_resume(ckpt: Path, model_cfg: ModelConfig, data: DataConfig, rank: int,
                     accelerator: Accelerator) -> dict[str, Any]:
    """Read the checkpoint to resume, refusing (before any weights are read) one made for another
    encoder, and naming the file of a truncated or corrupt one with the checkpoint to fall back to.

    A corrupt checkpoint is reported rather than skipped: checkpoints are written atomically, so a
    bad file means a damaged disk or copy, which the user should see before steps are trained again.
    """
    try:
        state = read_state(ckpt)
    except ValueError as e:
        raise UnreadableFileError(f"{e}; {fallback_hint(ckpt)}") from e
    for key, mine in (("model", model_cfg.name), ("in_chans", model_cfg.in_chans)):
        theirs = state.get(key)
        if theirs is not None and theirs != mine:
            name = "model.name" if key == "model" else "model.in_chans"
            raise IncompatibleCheckpointError(
                f"--resume: checkpoint {ckpt} was trained with {name}={theirs}, this config has {name}={mine}; "
                f"resume with {name}={theirs} or start a new run_dir"
            )
    if state.get("img_size") not in (None, data.img_size):
        accelerator.print(f"note: resuming at data.img_size={data.img_size}; {ckpt} was trained at "
                          f"{state['img_size']} (the weights do not depend on it)")
    try:
        return load_checkpoint(ckpt, rank=rank)
    except ValueError as e:  # load_checkpoint names the file that is truncated, corrupt or refused
        raise UnreadableFileError(f"{e}; {fallback_hint(ckpt)}") from e


def _load_weights(model: PretrainModel, loaded: dict[str, Any], ckpt: Path, run_dir: Path) -> None:
    """The checkpoint's weights into the plain model (before ``prepare``: FSDP shards the loaded values)."""
    try:
        model.load_state_dict(loaded["model"], strict=True)
    except RuntimeError as e:  # torch's key / size mismatch report
        detail = " ".join(str(e).split())
        raise IncompatibleCheckpointError(
            f"{ckpt / MODEL_FILE}: the checkpoint's weights do not fit the model this config builds "
            f"({detail[:300]}{'...' if len(detail) > 300 else ''}); resume with the config the run was started "
            f"with ({run_dir / 'config.yaml'}), or start a new run_dir"
        ) from e


def make_optimizer(model: PretrainModel, optim: OptimConfig, peak_lr: float, fast: FastPath) -> torch.optim.AdamW:
    """AdamW (decay off for norms, biases, GRN, mask tokens); the fused kernel where the fast path allows."""
    return adamw(param_groups(model, optim.weight_decay), peak_lr, optim.betas, fused=fast.fused_adamw)


def _start_weights(model: PretrainModel, cfg: PretrainConfig, loaded: dict[str, Any] | None,
                   ckpt: Path | None) -> dict[str, Any] | None:
    """The initial encoder weights and input statistics: a resumed run's come from its checkpoint (which
    records the init it started from), a new run with ``model.init`` loads them; returns the init record."""
    if loaded is not None:
        state = loaded["state"]
        init = state.get("init")
        started = (init or {}).get("spec")
        if started != cfg.model.init and (started is not None or cfg.model.init is not None):
            raise IncompatibleCheckpointError(
                f"--resume: {ckpt} belongs to a run started from model.init={started}, this config has "
                f"model.init={cfg.model.init}; resume with model.init={started} or start a new run_dir")
        if "input_mean" in state:
            model.set_input_norm(state["input_mean"], state["input_std"])
        return init
    if not cfg.model.init:
        return None
    from sonofm.models.init_weights import init_encoder

    init = init_encoder(model.encoder, cfg.model.init, cfg.model.in_chans)
    model.set_input_norm(init["input_mean"], init["input_std"])
    return init


def run_pretraining(cfg: PretrainConfig, resume: str | None = None) -> Path:
    """Train (or continue training) the run described by ``cfg``; returns the run directory.

    With ``model.init`` a new run's encoder starts from those weights (checked before any work)."""
    if cfg.model.init:
        from sonofm.models.init_weights import check_init

        check_init(cfg.model.init, cfg.model.name)
    accelerator = make_accelerator(cfg.precision)
    fsdp = uses_fsdp(accelerator)
    if fsdp and cfg.ema > 0:
        raise UserError("ema > 0 with FSDP is not supported (the average would need the full weights on every "
                        "rank each step): set ema=0, or train with DDP")
    fast = plan_fast_path(cfg.fast, accelerator.device, fsdp=fsdp)
    rank, world = accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process
    threads = cpu_threads(accelerator, cfg.data.num_workers)
    run_dir = Path(cfg.run_dir)
    set_seed(cfg.seed + rank)

    taxonomy = taxonomy_for(cfg) if cfg.hierarchy.weight > 0 else None
    tree = taxonomy.tree() if taxonomy is not None else None
    if tree is not None:
        _check_tree(run_dir, tree, main, resuming=resume is not None)
    model = build_model(cfg, tree)
    n_params = count_params(model.encoder.parameters())
    accum = max(1, cfg.optim.accum_steps)
    global_batch = cfg.data.batch_size * world * accum
    peak_lr = scaled_lr(cfg.optim.base_lr, global_batch, cfg.optim.lr)

    ckpt = resolve_checkpoint(run_dir, resume)
    start_step, samples_per_rank = 0, 0
    loaded: dict[str, Any] | None = None
    if ckpt is not None:
        loaded = _load_for_resume(ckpt, cfg.model, cfg.data, rank, accelerator)
        _load_weights(model, loaded, ckpt, run_dir)
        start_step = int(loaded["state"]["step"])
        samples_per_rank = int(loaded["state"]["samples_per_rank"])
        if int(loaded["state"].get("world_size", world)) != world:
            accelerator.print(f"warning: resuming a {loaded['state']['world_size']}-process run on {world} "
                              "processes: the data order will differ from an uninterrupted run")
    init = _start_weights(model, cfg, loaded, ckpt)
    norm = {"input_mean": list(model.encoder.pretrained_cfg["mean"]), "input_std": list(model.encoder.pretrained_cfg["std"])}
    # the weights' strides must be the ones their gradients arrive with (DDP's bucket views); see train.fast
    conv_weights_channels_last(model, same_bytes_only=not fast.channels_last)
    optimizer = make_optimizer(model, cfg.optim, peak_lr, fast)
    model, optimizer = accelerator.prepare(model, optimizer)
    if fsdp and sharded_submodules(model):
        raise UserError(
            f"FSDP wrapped {', '.join(sharded_submodules(model)[:3])}... as units of their own: the masked encoder "
            "runs the blocks' layers itself, so their parameters would never be gathered. Launch with "
            "--fsdp_auto_wrap_policy NO_WRAP (the whole model one unit)")
    unwrapped: PretrainModel = accelerator.unwrap_model(model)
    # after prepare: the average lives on the model's device (made before, it stayed on the CPU)
    ema = ModelEMA(unwrapped, cfg.ema) if cfg.ema > 0 else None
    if loaded is not None:
        restore_training_state(accelerator, model, optimizer, loaded, ema)
    if fast.compile:  # in place, after the EMA copy: the state dict keeps the model's own names
        compile_model(unwrapped, fast.compile_mode)

    if main:
        save_config(cfg, run_dir)
        accelerator.print(f"sonofm pretrain: {cfg.model.name} ({n_params / 1e6:.2f} M encoder params), "
                          f"{world} process(es) ({accelerator.distributed_type.value}), global batch {global_batch}, peak lr {peak_lr:.2e}, "
                          f"steps {start_step} -> {cfg.steps}" + (f", resumed from {ckpt}" if ckpt else "")
                          + (f", {threads} CPU thread(s) per process" if threads else "")
                          + (f"; encoder initialised from {init['spec']} (input mean {norm['input_mean']}, "
                             f"std {norm['input_std']})" if init else "")
                          + f"; fast path: {fast.describe()}")
    logger = MetricsLogger(run_dir, enabled=main, wandb=cfg.logging.wandb, wandb_project=cfg.logging.wandb_project,
                           wandb_mode=cfg.logging.wandb_mode, tensorboard=cfg.logging.tensorboard,
                           config=None, resume_step=start_step)
    if start_step >= cfg.steps:
        accelerator.print(f"run already complete at step {start_step} (steps={cfg.steps})")
        logger.close()
        return run_dir

    target_fn = taxonomy.targets if taxonomy is not None else None
    loader = _make_loader(cfg.data, cfg.seed, rank, world, samples_per_rank, target_fn, fast)
    batches = iter(loader)
    bar = tqdm(total=cfg.steps, initial=start_step, disable=not (main and cfg.logging.progress),
               desc="pretrain", dynamic_ncols=True)
    guard = NonFiniteGuard(accelerator)
    scaler = accelerator.scaler
    window = _Window()
    t_window, wait_window, images_window = time.perf_counter(), 0.0, 0
    key_log = None
    if cfg.logging.log_keys:
        (run_dir / "keys").mkdir(parents=True, exist_ok=True)
        key_log = open(run_dir / "keys" / f"rank{rank}.txt", "a", buffering=1)  # noqa: SIM115
    model.train()
    step = start_step
    try:
        for step in range(start_step, cfg.steps):
            lr = lr_at(step, cfg.steps, peak_lr, cfg.optim.warmup_steps, cfg.optim.min_lr)
            apply_lr(optimizer, lr)
            for micro in range(accum):
                t0 = time.perf_counter()
                batch = next(batches)
                wait_window += time.perf_counter() - t0
                if key_log is not None:
                    key_log.write(f"{step + 1}\t{','.join(batch.get('key', []))}\n")
                batch = to_device(batch, accelerator.device, channels_last=fast.channels_last)
                images = batch["image"]
                images_window += images.shape[0]
                samples_per_rank += images.shape[0]
                sync = contextlib.nullcontext() if micro == accum - 1 else accelerator.no_sync(model)
                with sync, accelerator.autocast():
                    out = model(images, batch.get("field"), batch.get("targets"),
                                generator=mask_generator(cfg.seed, rank, step, micro))
                    loss = out["loss"]
                    guard.add(loss)  # stays on the device
                    accelerator.backward(loss / accum)
                for key in ("loss", "loss_rec", "loss_hier"):
                    window.add(key, out[key])
                for key, value in out.items():
                    if key.startswith("acc/"):  # weighted by the samples that know the level
                        window.add(key, value, out.get("count/" + key[4:], 1.0))
            guard.check(step, run_dir / "checkpoints")  # the step's one host sync, before any weight changes
            grad_norm = None
            if cfg.optim.clip_grad:
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            # an fp16 step the scaler skipped (overflow) leaves the weights, so the average too
            if ema is not None and not (scaler is not None and optimizer.step_was_skipped):
                ema.update(unwrapped)
            done = step + 1
            bar.update(1)

            if done % cfg.logging.log_every == 0 or done == cfg.steps:
                elapsed = time.perf_counter() - t_window
                row = window.means()
                row.update({"lr": lr, "images_per_s": images_window * world / max(elapsed, 1e-9),
                            "data_wait": wait_window / max(elapsed, 1e-9), "samples_per_rank": samples_per_rank,
                            "images_seen": samples_per_rank * world})
                if grad_norm is not None:
                    row["grad_norm"] = float(grad_norm)
                if scaler is not None:
                    row["loss_scale"] = float(scaler.get_scale())
                logger.log(done, row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['images_per_s']:.1f}",
                                wait=f"{100 * row['data_wait']:.0f}%")
                window = _Window()
                t_window, wait_window, images_window = time.perf_counter(), 0.0, 0
            if main and cfg.logging.sample_every and (done % cfg.logging.sample_every == 0 or done == cfg.steps):
                model.eval()
                with torch.no_grad():
                    rec = unwrapped.reconstruction(images.float(), {k: v.float() for k, v in out.items()
                                                                   if k in ("pred", "mask")}, batch.get("field"))
                save_reconstruction_grid({"input": images, "masked": rec["masked"], "reconstruction": rec["pasted"],
                                          "target": rec["target"]}, run_dir / "samples" / f"step-{done:08d}.png")
                model.train()
            if done % cfg.checkpoint.every == 0 or done == cfg.steps:
                state = {"samples_per_rank": samples_per_rank, "world_size": world, "images_seen": samples_per_rank * world,
                         "model": cfg.model.name, "in_chans": cfg.model.in_chans, "img_size": cfg.data.img_size,
                         **norm, "init": init}
                save_training_checkpoint(accelerator, run_dir, done, model, optimizer, state, ema=ema,
                                         keep_last=cfg.checkpoint.keep_last)
            maybe_kill("after_step", done)  # fault injection for crash-safety tests
    finally:
        bar.close()
        logger.close()
        if key_log is not None:
            key_log.close()
    if main:
        plot_loss_curve(run_dir / "metrics.jsonl", run_dir / "plots" / "loss.png")
        accelerator.print(f"done: {run_dir} (last checkpoint step {cfg.steps}; loss curve plots/loss.png)")
    accelerator.wait_for_everyone()
    return run_dir


__all__ = ["run_pretraining", "build_model", "make_optimizer", "NonFiniteLossError"]
