"""UPerNet segmentation finetuning (``sonofm finetune seg``) and evaluation at the stored size.

:func:`finetune_segmentation` takes a typed ``FinetuneConfig``: training batches stream from
``data.shards`` (split ``train``) or come from in-memory samples, through the finetuning loop under
Accelerate (:mod:`sonofm.finetune.engine`: processes, precision, accumulation, EMA, ``--resume``).

Evaluation: each image is letterboxed to ``S``, the logits are cropped to the letterbox window and
resized back to the sample's stored ``(H, W)`` before the argmax, and Dice / IoU / HD95 are computed
against the stored mask (HD95 in mm too when ``meta["pixel_spacing_mm"]`` is known). Figures are
means over images. Every rank scores its share of the split (the stream's exactly-once assignment,
or samples ``rank::W``) and the per-sample results are gathered, so one and several processes give
the same numbers. For shard data the "original" size is the stored (preprocessed) size.

The best checkpoint by validation Dice is ``best/model.safetensors`` (the whole ``SegModel`` state
dict; encoder keys under ``encoder.``) with ``best/meta.json``, written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sonofm.atomic_io import write_json
from sonofm.datasets.stream.augment import AugmentConfig
from sonofm.evaluation.metrics import segmentation_metrics
from sonofm.evaluation.plots import save_overlay
from sonofm.finetune.data import Sample, SampleBatches, logits_to_original, sample_eval_batches
from sonofm.finetune.engine import (
    LoopSettings,
    gather_results,
    make_accelerator,
    make_optimizer,
    run_loop,
    save_weights,
)
from sonofm.finetune.losses import seg_loss
from sonofm.models.upernet import SegModel

__all__ = [
    "sample_batches",
    "make_optimizer",
    "evaluate_segmentation",
    "evaluate_segmentation_batches",
    "seg_loss_fn",
    "train_segmentation",
    "save_weights",
    "finetune_segmentation",
    "run_seg_finetune",
    "loss_summary",
]


def sample_batches(samples: Sequence[Sample], size: int, batch_size: int, seed: int = 0, augment: bool = True,
                   aug: AugmentConfig | None = None) -> Iterator[dict[str, Any]]:
    """Endless batches of one process: a fresh permutation each epoch, augmented (see :class:`SampleBatches`)."""
    return iter(SampleBatches(samples, size, batch_size, seed, augment, aug))


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_segmentation_batches(
    predict: Callable[[Tensor], Tensor],
    batches: Iterable[dict[str, Any]],
    num_classes: int,
    *,
    device: str | torch.device = "cpu",
    accelerator: Any | None = None,
    overlay_dir: str | os.PathLike | None = None,
    n_overlays: int = 0,
) -> dict[str, Any]:
    """Mean Dice / IoU / HD95 at each sample's stored size over evaluation batches (``image`` + ``stored``,
    from :func:`~sonofm.finetune.data.shard_eval_loader` or :func:`~sonofm.finetune.data.sample_eval_batches`).

    With an ``accelerator`` each rank scores its own batches and the per-sample results of all ranks
    are gathered (every rank returns the same figures). ``missed``: share of images with a
    foreground where nothing was predicted. Overlays: this process's first ``n_overlays`` samples.
    """
    device = torch.device(device)
    local: list[dict[str, Any]] = []
    for batch in batches:
        logits = predict(batch["image"].to(device)).float().cpu()
        for j, st in enumerate(batch["stored"]):
            mask = st["stored_mask"]
            if mask is None:
                raise ValueError(f"{st['key']}: no mask: cannot evaluate segmentation")
            pred = logits_to_original(logits[j], st["stored_image"].shape).argmax(0).numpy()
            spacing = st["meta"].get("pixel_spacing_mm")
            m = segmentation_metrics(pred, mask, num_classes, spacing if spacing else None)
            # a lesion present but nothing predicted: Dice 0 and HD95 = the image diagonal
            missed = float(bool((mask > 0).any()) and not bool((pred > 0).any()))
            local.append({"key": st["key"], "order": st["order"], "hw": list(pred.shape), **m, "missed": missed})
            if overlay_dir is not None and len(local) <= n_overlays:
                save_overlay(st["stored_image"], mask, pred, Path(overlay_dir) / f"{len(local):03d}.png",
                             title=f"{st['key']}  Dice {m['dice']:.3f}")
    per_sample = gather_results(local, accelerator)
    if not per_sample:
        raise ValueError("evaluate_segmentation: no samples")
    keys = [k for k in per_sample[0] if k not in ("key", "hw", "order")]
    out: dict[str, Any] = {k: float(np.mean([p[k] for p in per_sample])) for k in keys}
    out["n"] = len(per_sample)
    out["per_sample"] = [{k: v for k, v in p.items() if k != "order"} for p in per_sample]
    return out


def evaluate_segmentation(
    predict: Callable[[Tensor], Tensor],
    samples: Sequence[Sample],
    size: int,
    num_classes: int,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    overlay_dir: str | os.PathLike | None = None,
    n_overlays: int = 4,
    accelerator: Any | None = None,
) -> dict[str, Any]:
    """:func:`evaluate_segmentation_batches` over in-memory samples (rank ``r`` of ``W`` scores ``r::W``).

    ``predict`` maps a ``[B,1,S,S]`` batch to ``[B,C,S,S]`` logits (a ``SegModel`` in eval mode, or a
    closure around a prompt model). Returns the means plus ``per_sample`` entries in sample order.
    """
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    batches = sample_eval_batches(samples, size, batch_size, rank, world, need_mask=True)
    return evaluate_segmentation_batches(predict, batches, num_classes, device=device, accelerator=accelerator,
                                         overlay_dir=overlay_dir, n_overlays=n_overlays)


# --------------------------------------------------------------------------- training


def seg_loss_fn(seg: Any) -> Callable[[nn.Module, dict[str, Any], int, int], tuple[Tensor, dict[str, Any]]]:
    """The loop's loss for segmentation: CE + soft Dice with the weights of a ``SegConfig``."""

    def loss_fn(model: nn.Module, batch: dict[str, Any], step: int, micro: int) -> tuple[Tensor, dict[str, Any]]:
        device = next(model.parameters()).device
        x = batch["image"].to(device, non_blocking=True)
        y = batch["mask"].to(device, non_blocking=True)
        return seg_loss(model(x).float(), y, seg.ce_weight, seg.dice_weight, per_image_dice=seg.dice_per_image), {}

    return loss_fn


def train_segmentation(
    model: nn.Module,
    batches: Iterable[dict[str, Any]],
    steps: int,
    *,
    evaluate: Callable[[nn.Module, int], float] | None = None,
    log: Callable[[dict[str, Any]], None] | None = None,
    device: str | torch.device | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Train ``model`` (logits at input size) for ``steps`` on any iterable of batches (no files written).

    ``settings``: keywords of :data:`sonofm.finetune.settings.KEYWORDS` (``lr``, ``warmup_steps``,
    ``ema``, ``dice_per_image``...). ``evaluate(module, step) -> score`` every ``eval_every`` steps
    and at the end, with the EMA module when EMA is on. Returns ``losses``, ``evals`` and ``ema``.
    ``device`` is Accelerate's choice (the GPU when there is one); ``"cpu"`` forces the CPU.
    """
    from sonofm.finetune.settings import finetune_config

    cfg = finetune_config(defaults={"min_lr": 0.0, "warmup_steps": 0, "eval_every": 0}, steps=steps, **settings)
    loop = LoopSettings.from_config(cfg)
    accelerator = make_accelerator(cfg.precision, cpu=True if device is not None and str(device) == "cpu" else None)
    ev = None
    if evaluate is not None:
        def ev(module: nn.Module, step: int, final: bool) -> dict[str, Any]:
            return {"score": float(evaluate(module, step))}
    res = run_loop(model, batches, seg_loss_fn(cfg.seg), loop, accelerator=accelerator, evaluate=ev, log=log)
    return res.as_history()


def loss_summary(losses: Sequence[float], steps: int) -> dict[str, float]:
    """The report's ``first_loss`` and ``last_loss`` (mean of the last tenth, at most 10 steps)."""
    if not losses:
        return {"first_loss": float("nan"), "last_loss": float("nan")}
    return {"first_loss": float(losses[0]), "last_loss": float(np.mean(losses[-max(1, min(10, steps // 10)):]))}


def finetune_segmentation(
    cfg: Any,
    train: Sequence[Sample] | None = None,
    val: Sequence[Sample] | None = None,
    *,
    resume: str | None = None,
    n_overlays: int = 4,
    augment: bool = True,
    progress: str | None = None,
    checkpoints: bool = True,
    accelerator: Any | None = None,
) -> dict[str, Any]:
    """``sonofm finetune seg``: UPerNet on ``cfg.encoder`` (any :func:`load_encoder` spec).

    Without ``train`` / ``val`` the data is ``cfg.data.shards``: training batches from the stream
    (split ``train``, samples with a mask, ``label_fraction`` of the groups), validation on split
    ``val`` at the stored size. With in-memory samples: ``train`` batched and augmented here
    (``label_fraction`` keeps that share of whole groups), ``val`` evaluated at its original size.
    ``progress``: the title of a progress bar. Writes ``out_dir/{metrics.jsonl, best/, overlays/,
    checkpoints/, report.json}`` and returns the report.
    """
    from sonofm.finetune.data import StreamBatches, shard_eval_loader, split_groups, split_size
    from sonofm.finetune.label_efficiency import select_groups
    from sonofm.models.loading import load_encoder

    # the encoder's classifier norm (timm's head) gets no gradient from the pyramid: DDP must be told
    accelerator = accelerator if accelerator is not None else make_accelerator(cfg.precision,
                                                                               find_unused_parameters=True)
    rank, world = accelerator.process_index, accelerator.num_processes
    settings = LoopSettings.from_config(cfg, world, progress, checkpoints)
    seg = cfg.seg
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    enc, info = load_encoder(cfg.encoder, in_chans=cfg.in_chans)
    model = SegModel(enc, seg.num_classes, seg.decoder_channels)
    from accelerate.utils import set_seed

    set_seed(cfg.seed + rank)  # dropout differs across ranks, like their data
    binary = seg.num_classes == 2
    size, bs = cfg.data.img_size, cfg.data.batch_size

    if (train is None) != (val is None):
        raise ValueError("finetune_segmentation: give both train and val samples, or neither (stream the shards)")
    if train is None:
        if not cfg.data.shards:
            raise ValueError("finetune seg: data.shards is empty")
        paths = [str(p) for p in cfg.data.shards]
        groups = None
        if cfg.label_fraction < 1.0:
            counts = split_groups(paths, "train", need_mask=True)
            names = list(counts)
            groups = frozenset(names[i] for i in select_groups(names, cfg.label_fraction, cfg.seed))
            n_train = sum(counts[g] for g in groups)
        else:
            n_train = split_size(paths, "train")
        batches: Any = StreamBatches(
            paths, batch_size=bs, img_size=size, seed=cfg.seed, rank=rank, world_size=world,
            num_workers=cfg.data.num_workers, shuffle_buffer=cfg.data.shuffle_buffer, aug=asdict(cfg.data.augment),
            weights=cfg.data.weights, temperature=cfg.data.temperature, groups=groups, need_mask=True,
            binary_mask=binary)

        def eval_batches() -> Iterable[dict[str, Any]]:
            return shard_eval_loader(paths, "val", size=size, batch_size=bs, rank=rank, world_size=world,
                                     num_workers=cfg.data.num_workers, binary_mask=binary, need_mask=True)
    else:
        chosen = (select_groups([s.group for s in train], cfg.label_fraction, cfg.seed)
                  if cfg.label_fraction < 1 else range(len(train)))
        train_samples = [train[i] for i in chosen]
        n_train = len(train_samples)
        batches = SampleBatches(train_samples, size, bs, cfg.seed, augment,
                                AugmentConfig.from_any(asdict(cfg.data.augment)), rank, world)
        val_samples = list(val)

        def eval_batches() -> Iterable[dict[str, Any]]:
            return sample_eval_batches(val_samples, size, bs, rank, world, need_mask=True)

    def evaluate(module: nn.Module, step: int, final: bool) -> dict[str, Any]:
        module.eval()
        res = evaluate_segmentation_batches(
            module, eval_batches(), seg.num_classes, device=accelerator.device, accelerator=accelerator,
            overlay_dir=out / "overlays" if final and accelerator.is_main_process else None, n_overlays=n_overlays)
        res["score"] = res["dice"]
        return res

    best_meta = {"encoder": info, "num_classes": seg.num_classes, "img_size": size,
                 "decoder_channels": seg.decoder_channels}
    identity = {"task": "seg", "encoder": cfg.encoder, "in_chans": cfg.in_chans, "num_classes": seg.num_classes}
    res = run_loop(model, batches, seg_loss_fn(seg), settings, accelerator=accelerator, out_dir=out,
                   evaluate=evaluate, best_meta=best_meta, identity=identity, resume=resume)
    final = res.final
    report = {
        "encoder": info,
        "n_train": n_train,
        "n_val": final["n"],
        "label_fraction": cfg.label_fraction,
        "steps": cfg.steps,
        **loss_summary(res.losses, cfg.steps),
        "final": {k: v for k, v in final.items() if k not in ("per_sample", "score")},
        "best": {"step": res.best["step"], **{k: v for k, v in res.best.items() if k not in ("step", "score")}},
        "evals": res.evals,
        "processes": res.world_size,
        "global_batch": bs * res.world_size * cfg.optim.accum_steps,
        "resumed_from": res.resumed_from,
    }
    if isinstance(batches, StreamBatches):
        report["corrupt"] = _sum_counts(batches.corrupt_counts(), accelerator)
    if accelerator.is_main_process:
        write_json(out / "report.json", report)
    return report


def _sum_counts(counts: dict[str, int], accelerator: Any) -> dict[str, int]:
    """Corrupt-sample counts of this rank summed over all ranks."""
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        total: dict[str, int] = {}
        for c in gather_object([counts]):
            for k, v in c.items():
                total[k] = total.get(k, 0) + int(v)
        return total
    return dict(counts)


def run_seg_finetune(
    encoder: str,
    train: Sequence[Sample],
    val: Sequence[Sample],
    out_dir: str | os.PathLike,
    *,
    n_overlays: int = 4,
    augment: bool = True,
    progress: str | None = None,
    resume: str | None = None,
    checkpoints: bool = False,
    **settings: Any,
) -> dict[str, Any]:
    """:func:`finetune_segmentation` on in-memory samples with keyword settings (see
    :func:`sonofm.finetune.settings.finetune_config`: ``img_size``, ``steps``, ``lr``, ...);
    resumable checkpoints only with ``checkpoints=True``."""
    from sonofm.finetune.settings import finetune_config

    if not isinstance(train, Sequence):
        raise TypeError("run_seg_finetune takes training samples; to stream shards use finetune_segmentation(cfg)")
    cfg = finetune_config(encoder=encoder, out_dir=out_dir, **settings)
    return finetune_segmentation(cfg, train, val, resume=resume, n_overlays=n_overlays, augment=augment,
                                 progress=progress, checkpoints=checkpoints)
