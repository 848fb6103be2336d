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
import os
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
    load_checkpoint,
    older_checkpoints,
    read_state,
    resolve_checkpoint,
    save_checkpoint,
    save_rank_rng,
    set_rng_state,
)
from sonofm.config import PretrainConfig, save_config
from sonofm.datasets.shards import write_json_atomic
from sonofm.errors import UnreadableFileError, UserError
from sonofm.faults import maybe_kill
from sonofm.models.loading import IncompatibleCheckpointError
from sonofm.models.pretrain_model import PretrainModel, count_params
from sonofm.pretrain.loggers import MetricsLogger
from sonofm.pretrain.visualize import plot_loss_curve, save_reconstruction_grid
from sonofm.train.ema import ModelEMA
from sonofm.train.optim import param_groups
from sonofm.train.schedule import apply_lr, lr_at, scaled_lr

#: The hierarchical classifier's tree (names, sizes, parents), saved in the run directory.
TREE_FILE = "taxonomy_tree.json"


class NonFiniteLossError(UserError, FloatingPointError):
    """The loss became NaN or infinite: training stops instead of corrupting the weights."""


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
    )


def mask_generator(seed: int, rank: int, step: int, micro: int) -> torch.Generator:
    """The masks of a micro-batch depend only on (seed, rank, step, micro): resumable without state."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + rank * 10_007 + step * 101 + micro) % (2**63 - 1))
    return g


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.to(device, non_blocking=True)
        elif isinstance(v, dict):
            out[k] = {kk: vv.to(device, non_blocking=True) for kk, vv in v.items()}
        else:
            out[k] = v
    return out


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
    from sonofm.datasets.stream import shard_indexes
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


def _make_loader(cfg: PretrainConfig, rank: int, world: int, resume_samples: int, target_fn):
    from sonofm.datasets.stream import StreamSpec, make_train_loader

    if not cfg.data.shards:
        raise ValueError("data.shards is empty: give shard folders, e.g. data.shards=[shards/shared]")
    spec = StreamSpec(paths=list(cfg.data.shards), weights=cfg.data.weights, temperature=cfg.data.temperature,
                      split=cfg.data.split)
    return make_train_loader(
        spec,
        batch_size=cfg.data.batch_size,
        img_size=cfg.data.img_size,
        seed=cfg.seed,
        rank=rank,
        world_size=world,
        num_workers=cfg.data.num_workers,
        resume_samples=resume_samples,
        shuffle_buffer=cfg.data.shuffle_buffer,
        aug=asdict(cfg.data.augment),
        target_fn=target_fn,
    )


def _load_for_resume(ckpt: Path, cfg: PretrainConfig, rank: int, accelerator: Accelerator) -> dict[str, Any]:
    """Read the checkpoint to resume, refusing (before any weights are read) one made for another
    encoder, and naming the file of a truncated or corrupt one with the checkpoint to fall back to.

    A corrupt checkpoint is reported rather than skipped: checkpoints are written atomically, so a
    bad file means a damaged disk or copy, which the user should see before steps are trained again.
    """
    try:
        state = read_state(ckpt)
    except ValueError as e:
        raise UnreadableFileError(f"{e}; {_fallback_hint(ckpt)}") from e
    for key, mine in (("model", cfg.model.name), ("in_chans", cfg.model.in_chans)):
        theirs = state.get(key)
        if theirs is not None and theirs != mine:
            name = "model.name" if key == "model" else "model.in_chans"
            raise IncompatibleCheckpointError(
                f"--resume: checkpoint {ckpt} was trained with {name}={theirs}, this config has {name}={mine}; "
                f"resume with {name}={theirs} or start a new run_dir"
            )
    if state.get("img_size") not in (None, cfg.data.img_size):
        accelerator.print(f"note: resuming at data.img_size={cfg.data.img_size}; {ckpt} was trained at "
                          f"{state['img_size']} (the weights do not depend on it)")
    try:
        return load_checkpoint(ckpt, rank=rank)
    except ValueError as e:  # load_checkpoint names the file that is truncated, corrupt or refused
        raise UnreadableFileError(f"{e}; {_fallback_hint(ckpt)}") from e


def _fallback_hint(ckpt: Path) -> str:
    """What to do about a damaged checkpoint: the previous complete one, if there is one."""
    older = older_checkpoints(ckpt)
    if older:
        return (f"delete {ckpt} to resume from the previous complete checkpoint {older[-1]} with --resume auto "
                f"(or pass --resume {older[-1]})")
    return f"delete {ckpt} and start again (there is no earlier complete checkpoint)"


def run_pretraining(cfg: PretrainConfig, resume: str | None = None) -> Path:
    """Train (or continue training) the run described by ``cfg``; returns the run directory."""
    # cpu=True on machines without CUDA lets torchrun/accelerate processes form a gloo group (MULTI_CPU)
    accelerator = Accelerator(mixed_precision=cfg.precision, cpu=not torch.cuda.is_available())
    rank, world = accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process
    threads = _cpu_threads(accelerator, cfg.data.num_workers)
    run_dir = Path(cfg.run_dir)
    set_seed(cfg.seed + rank)

    taxonomy = taxonomy_for(cfg) if cfg.hierarchy.weight > 0 else None
    tree = taxonomy.tree() if taxonomy is not None else None
    if tree is not None:
        _check_tree(run_dir, tree, main, resuming=resume is not None)
    model = build_model(cfg, tree)
    accum = max(1, cfg.optim.accum_steps)
    global_batch = cfg.data.batch_size * world * accum
    peak_lr = scaled_lr(cfg.optim.base_lr, global_batch, cfg.optim.lr)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.optim.weight_decay), lr=peak_lr,
                                  betas=tuple(cfg.optim.betas))

    ckpt = resolve_checkpoint(run_dir, resume)
    start_step, samples_per_rank = 0, 0
    loaded: dict[str, Any] | None = None
    if ckpt is not None:
        loaded = _load_for_resume(ckpt, cfg, rank, accelerator)
        try:
            model.load_state_dict(loaded["model"], strict=True)
        except RuntimeError as e:  # torch's key / size mismatch report
            detail = " ".join(str(e).split())
            raise IncompatibleCheckpointError(
                f"{ckpt / MODEL_FILE}: the checkpoint's weights do not fit the model this config builds "
                f"({detail[:300]}{'...' if len(detail) > 300 else ''}); resume with the config the run was started with ({run_dir / 'config.yaml'}), "
                "or start a new run_dir"
            ) from e
        optimizer.load_state_dict(loaded["optimizer"])
        start_step = int(loaded["state"]["step"])
        samples_per_rank = int(loaded["state"]["samples_per_rank"])
        if int(loaded["state"].get("world_size", world)) != world:
            accelerator.print(f"warning: resuming a {loaded['state']['world_size']}-process run on {world} "
                              "processes: the data order will differ from an uninterrupted run")
    model, optimizer = accelerator.prepare(model, optimizer)
    # after prepare: the average lives on the model's device (made before, it stayed on the CPU)
    ema = ModelEMA(accelerator.unwrap_model(model), cfg.ema) if cfg.ema > 0 else None
    if ema is not None and loaded is not None and "ema" in loaded:
        ema.load_state_dict(loaded["ema"])
    if loaded is not None and "rng" in loaded:
        set_rng_state(loaded["rng"])

    if main:
        save_config(cfg, run_dir)
        n_params = count_params(accelerator.unwrap_model(model).encoder.parameters())
        accelerator.print(f"sonofm pretrain: {cfg.model.name} ({n_params / 1e6:.2f} M encoder params), "
                          f"{world} process(es), global batch {global_batch}, peak lr {peak_lr:.2e}, "
                          f"steps {start_step} -> {cfg.steps}" + (f", resumed from {ckpt}" if ckpt else "")
                          + (f", {threads} CPU thread(s) per process" if threads else ""))
    logger = MetricsLogger(run_dir, enabled=main, wandb=cfg.logging.wandb, wandb_project=cfg.logging.wandb_project,
                           wandb_mode=cfg.logging.wandb_mode, tensorboard=cfg.logging.tensorboard,
                           config=None, resume_step=start_step)
    if start_step >= cfg.steps:
        accelerator.print(f"run already complete at step {start_step} (steps={cfg.steps})")
        logger.close()
        return run_dir

    target_fn = taxonomy.targets if taxonomy is not None else None
    loader = _make_loader(cfg, rank, world, samples_per_rank, target_fn)
    batches = iter(loader)
    unwrapped: PretrainModel = accelerator.unwrap_model(model)
    bar = tqdm(total=cfg.steps, initial=start_step, disable=not (main and cfg.logging.progress),
               desc="pretrain", dynamic_ncols=True)
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
            nonfinite = torch.zeros((), device=accelerator.device)  # micro-batches with a NaN / inf loss
            for micro in range(accum):
                t0 = time.perf_counter()
                batch = next(batches)
                wait_window += time.perf_counter() - t0
                if key_log is not None:
                    key_log.write(f"{step + 1}\t{','.join(batch.get('key', []))}\n")
                batch = _to_device(batch, accelerator.device)
                images = batch["image"]
                images_window += images.shape[0]
                samples_per_rank += images.shape[0]
                sync = contextlib.nullcontext() if micro == accum - 1 else accelerator.no_sync(model)
                with sync, accelerator.autocast():
                    out = model(images, batch.get("field"), batch.get("targets"),
                                generator=mask_generator(cfg.seed, rank, step, micro))
                    loss = out["loss"]
                    nonfinite += (~torch.isfinite(loss.detach())).float()  # no device sync here
                    accelerator.backward(loss / accum)
                for key in ("loss", "loss_rec", "loss_hier"):
                    window.add(key, out[key])
                for key, value in out.items():
                    if key.startswith("acc/"):  # weighted by the samples that know the level
                        window.add(key, value, out.get("count/" + key[4:], 1.0))
            _check_finite(nonfinite, accelerator, step, run_dir)  # one sync per step, before any weight changes
            grad_norm = None
            if cfg.optim.clip_grad:
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
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
                _checkpoint(accelerator, unwrapped, optimizer, ema, run_dir, done, samples_per_rank, cfg)
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


def _cpu_threads(accelerator: Accelerator, num_workers: int) -> int | None:
    """On CPU, leave a core to each loader worker: oversubscribed intra-op threads spin and can make a
    step many times slower. An explicit ``OMP_NUM_THREADS`` always wins."""
    if accelerator.device.type != "cpu" or os.environ.get("OMP_NUM_THREADS"):
        return None
    local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))  # processes on this machine
    threads = max(1, (os.cpu_count() or 1) // local - num_workers)
    torch.set_num_threads(threads)
    return threads


def _check_finite(nonfinite: torch.Tensor, accelerator: Accelerator, step: int, run_dir: Path) -> None:
    """Stop before ``optimizer.step()`` when any rank's micro-batch had a non-finite loss this step."""
    if accelerator.num_processes > 1:
        nonfinite = accelerator.reduce(nonfinite, reduction="sum")
    if float(nonfinite) > 0:
        raise NonFiniteLossError(
            f"non-finite loss in {int(nonfinite)} micro-batch(es) at step {step + 1}: stopping before the weights are "
            f"corrupted. Lower optim.base_lr, check the data, or resume from the last checkpoint in "
            f"{run_dir / 'checkpoints'} with --resume auto."
        )


def _checkpoint(accelerator: Accelerator, model: PretrainModel, optimizer, ema, run_dir: Path, step: int,
                samples_per_rank: int, cfg: PretrainConfig) -> None:
    accelerator.wait_for_everyone()
    state = {"samples_per_rank": samples_per_rank, "world_size": accelerator.num_processes,
             "images_seen": samples_per_rank * accelerator.num_processes, "model": cfg.model.name,
             "in_chans": cfg.model.in_chans, "img_size": cfg.data.img_size}
    if accelerator.is_main_process:
        save_checkpoint(run_dir, step, model.state_dict(), optimizer.state_dict(), state,
                               ema_state=ema.state_dict() if ema is not None else None,
                               keep_last=cfg.checkpoint.keep_last)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        from sonofm.checkpoints import latest_checkpoint

        latest = latest_checkpoint(run_dir)
        if latest is not None:
            save_rank_rng(latest, accelerator.process_index)
    accelerator.wait_for_everyone()


__all__ = ["run_pretraining", "build_model", "NonFiniteLossError"]
