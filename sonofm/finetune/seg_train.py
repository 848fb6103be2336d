"""UPerNet segmentation finetuning (``sonofm finetune seg``) and full-resolution evaluation.

Training reads any iterator of batches ``{"image": [B,1,S,S], "mask": [B,S,S]}`` (the stream's
training loader, or :func:`sample_batches` over in-memory samples). AdamW with layer-wise lr decay
(:mod:`sonofm.finetune.lr_decay`), linear warm-up then per-step cosine, gradient clipping,
optional EMA (evaluated and saved instead of the raw weights when enabled).

Evaluation is done on :class:`~sonofm.finetune.data.Sample` objects: each image is letterboxed to
``S``, the logits are cropped to the letterbox window and resized back to the sample's original
``(H, W)`` before the argmax, and Dice / IoU / HD95 are computed against the original mask (HD95 in
mm too when ``meta["pixel_spacing_mm"]`` is known). Figures are means over images. For shard data
the "original" size is the stored (preprocessed) size.

The best checkpoint by validation Dice is written as ``best/model.safetensors`` (the whole
``SegModel`` state dict; encoder keys under ``encoder.``) with ``best/meta.json``, atomically.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sonofm.atomic_io import save_safetensors, temp_dir, write_json
from sonofm.datasets.augment import AugmentConfig
from sonofm.evaluation.metrics import segmentation_metrics
from sonofm.evaluation.plots import save_overlay
from sonofm.finetune.data import Sample, iterate_batches, logits_to_original
from sonofm.finetune.losses import seg_loss
from sonofm.finetune.lr_decay import layer_decay_groups
from sonofm.finetune.upernet import SegModel
from sonofm.train.ema import ModelEMA
from sonofm.train.schedule import apply_lr, lr_at

__all__ = [
    "sample_batches",
    "make_optimizer",
    "evaluate_segmentation",
    "fit",
    "train_segmentation",
    "save_weights",
    "run_seg_finetune",
]


def sample_batches(
    samples: Sequence[Sample],
    size: int,
    batch_size: int,
    seed: int = 0,
    augment: bool = True,
    aug: AugmentConfig | None = None,
) -> Iterator[dict[str, Any]]:
    """Endless batches: a fresh permutation each epoch, augmented (field-aware crop, flip, gamma, gain)."""
    if not samples:
        raise ValueError("sample_batches: no samples")
    rng = np.random.default_rng(seed)
    bs = min(batch_size, len(samples))
    while True:
        order = rng.permutation(len(samples))
        for start in range(0, len(order) - bs + 1, bs):
            idx = order[start : start + bs].tolist()
            yield next(iterate_batches(samples, size, bs, idx, rng if augment else None, aug))


def make_optimizer(
    model: nn.Module, lr: float, weight_decay: float = 0.05, layer_decay: float = 1.0, betas=(0.9, 0.999)
) -> torch.optim.AdamW:
    """AdamW over layer-decayed groups; the rate itself is set each step by :func:`apply_lr`."""
    groups = layer_decay_groups(model, weight_decay, layer_decay)
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))


def _autocast(device: torch.device, precision: str):
    if precision == "no":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None:
        raise ValueError(f"precision must be 'no', 'bf16' or 'fp16', got {precision!r}")
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate_segmentation(
    predict: Callable[[Tensor], Tensor],
    samples: Sequence[Sample],
    size: int,
    num_classes: int,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    overlay_dir: str | os.PathLike | None = None,
    n_overlays: int = 4,
) -> dict[str, Any]:
    """Mean Dice / IoU / HD95 at each sample's original size (see the module docstring).

    ``predict`` maps a ``[B,1,S,S]`` batch to ``[B,C,S,S]`` logits (a ``SegModel`` in eval mode, or a
    closure around a prompt model). Returns the means (``missed``: share of images with a foreground
    where nothing was predicted) plus ``per_sample`` entries.
    """
    device = torch.device(device)
    per_sample: list[dict[str, Any]] = []
    for batch in iterate_batches(samples, size, batch_size):
        logits = predict(batch["image"].to(device)).float().cpu()
        for j, i in enumerate(batch["index"].tolist()):
            s = samples[i]
            if s.mask is None:
                raise ValueError(f"{s.key}: no mask: cannot evaluate segmentation")
            pred = logits_to_original(logits[j], s.image.shape).argmax(0).numpy()
            spacing = s.meta.get("pixel_spacing_mm")
            m = segmentation_metrics(pred, s.mask, num_classes, spacing if spacing else None)
            # a lesion present but nothing predicted: Dice 0 and HD95 = the image diagonal
            missed = float(bool((s.mask > 0).any()) and not bool((pred > 0).any()))
            per_sample.append({"key": s.key, "hw": list(pred.shape), **m, "missed": missed})
            if overlay_dir is not None and len(per_sample) <= n_overlays:
                name = f"{len(per_sample):03d}.png"
                save_overlay(s.image, s.mask, pred, Path(overlay_dir) / name, title=f"{s.key}  Dice {m['dice']:.3f}")
    if not per_sample:
        raise ValueError("evaluate_segmentation: no samples")
    keys = [k for k in per_sample[0] if k not in ("key", "hw")]
    out: dict[str, Any] = {k: float(np.mean([p[k] for p in per_sample])) for k in keys}
    out["n"] = len(per_sample)
    out["per_sample"] = per_sample
    return out


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


def fit(
    model: nn.Module,
    steps: int,
    loss_fn: Callable[[int], tuple[Tensor, dict[str, Any]]],
    *,
    lr: float,
    weight_decay: float,
    layer_decay: float,
    warmup_steps: int,
    min_lr: float,
    clip_grad: float | None,
    ema: float,
    device: torch.device,
    precision: str,
    eval_every: int,
    evaluate: Callable[[nn.Module, int], float] | None,
    log: Callable[[dict[str, Any]], None] | None,
    betas: Sequence[float],
) -> dict[str, Any]:
    """The finetuning loop shared by segmentation and universal training.

    ``loss_fn(step) -> (loss, fields)`` draws a batch and runs the forward pass (under autocast here);
    ``fields`` go into the step's log row. AdamW with layer decay, per-step warm-up + cosine LR,
    gradient clipping, optional EMA; ``evaluate(module, step)`` every ``eval_every`` steps and at the
    last step, with the EMA module when EMA is on. A non-finite loss stops before the weights change.
    """
    model.to(device).train()
    opt = make_optimizer(model, lr, weight_decay, layer_decay, betas)
    ema_model = ModelEMA(model, ema) if ema > 0 else None
    losses: list[float] = []
    evals: list[dict[str, Any]] = []
    t0 = time.time()
    for step in range(steps):
        apply_lr(opt, lr_at(step, steps, lr, warmup_steps, min_lr))
        with _autocast(device, precision):
            loss, fields = loss_fn(step)
        if not torch.isfinite(loss):
            where = f" ({fields['dataset']})" if "dataset" in fields else ""
            raise FloatingPointError(f"step {step}{where}: loss is {loss.item()}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        opt.step()
        if ema_model is not None:
            ema_model.update(model)
        losses.append(float(loss.item()))
        if log is not None:
            log({"step": step + 1, **fields, "loss": losses[-1], "lr": opt.param_groups[-1]["lr"],
                 "time": time.time() - t0})
        if evaluate is not None and ((eval_every and (step + 1) % eval_every == 0) or step + 1 == steps):
            evals.append({"step": step + 1, "score": evaluate(ema_model.module if ema_model else model, step + 1)})
            model.train()
    return {"losses": losses, "evals": evals, "ema": ema_model}


def train_segmentation(
    model: nn.Module,
    batches: Iterable[dict[str, Any]],
    steps: int,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    layer_decay: float = 0.8,
    warmup_steps: int = 0,
    min_lr: float = 0.0,
    ce_weight: float = 1.0,
    dice_weight: float = 1.0,
    clip_grad: float | None = 3.0,
    ema: float = 0.0,
    device: str | torch.device = "cpu",
    precision: str = "no",
    eval_every: int = 0,
    evaluate: Callable[[nn.Module, int], float] | None = None,
    log: Callable[[dict[str, Any]], None] | None = None,
    dice_per_image: bool = True,
    betas: Sequence[float] = (0.9, 0.999),
) -> dict[str, Any]:
    """Train ``model`` (logits at input size) for ``steps`` on ``batches``; returns losses and evals.

    ``evaluate(module, step) -> score`` is called every ``eval_every`` steps and at the end with the
    EMA module when EMA is on, else with ``model`` (see :func:`fit`).
    """
    device = torch.device(device)
    it = iter(batches)

    def loss_fn(step: int) -> tuple[Tensor, dict[str, Any]]:
        batch = next(it)
        x = batch["image"].to(device, non_blocking=True)
        y = batch["mask"].to(device, non_blocking=True)
        return seg_loss(model(x).float(), y, ce_weight, dice_weight, per_image_dice=dice_per_image), {}

    return fit(model, steps, loss_fn, lr=lr, weight_decay=weight_decay, layer_decay=layer_decay,
               warmup_steps=warmup_steps, min_lr=min_lr, clip_grad=clip_grad, ema=ema, device=device,
               precision=precision, eval_every=eval_every, evaluate=evaluate, log=log, betas=betas)


def _jsonl(path: Path) -> Callable[[dict[str, Any]], None]:
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(rec: dict[str, Any]) -> None:
        with open(path, "a") as f:
            f.write(json.dumps(rec) + "\n")

    return write


def run_seg_finetune(
    encoder: str,
    train: Sequence[Sample] | Iterable[dict[str, Any]],
    val: Sequence[Sample],
    out_dir: str | os.PathLike,
    num_classes: int = 2,
    img_size: int = 128,
    steps: int = 500,
    batch_size: int = 16,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    layer_decay: float = 0.8,
    warmup_steps: int = 50,
    min_lr: float = 1e-6,
    ce_weight: float = 1.0,
    dice_weight: float = 1.0,
    decoder_channels: int = 128,
    ema: float = 0.0,
    clip_grad: float | None = 3.0,
    eval_every: int = 100,
    label_fraction: float = 1.0,
    in_chans: int = 1,
    seed: int = 0,
    device: str = "cpu",
    precision: str = "no",
    n_overlays: int = 4,
    augment: bool = True,
    dice_per_image: bool = True,
    aug: AugmentConfig | dict[str, Any] | None = None,
    betas: Sequence[float] = (0.9, 0.999),
    progress: str | None = None,
) -> dict[str, Any]:
    """``sonofm finetune seg``: UPerNet on ``encoder`` (any :func:`load_encoder` spec).

    ``train``: samples (batched and augmented here; ``label_fraction`` keeps that share of whole
    groups) or an iterator of ready batches (e.g. the stream's training loader; ``label_fraction``
    must then be 1). ``val``: samples, evaluated at their original size. ``progress``: the title
    of a progress bar over the steps (none by default). Writes
    ``out_dir/{metrics.jsonl, best/, overlays/, report.json}`` and returns the report.
    """
    from sonofm.finetune.label_efficiency import select_groups
    from sonofm.models.loading import load_encoder

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    torch.manual_seed(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    enc, info = load_encoder(encoder, in_chans=in_chans)
    model = SegModel(enc, num_classes, decoder_channels)
    if isinstance(train, Sequence):
        chosen = select_groups([s.group for s in train], label_fraction, seed) if label_fraction < 1 else None
        train_samples = [train[i] for i in chosen] if chosen is not None else list(train)
        batches: Iterable[dict[str, Any]] = sample_batches(train_samples, img_size, batch_size, seed, augment,
                                                                    AugmentConfig.from_any(aug))
        n_train = len(train_samples)
    else:
        if label_fraction != 1.0:
            raise ValueError("label_fraction needs training samples (groups), not a batch iterator")
        batches, n_train = train, -1
    if progress:  # a bar named ``progress`` over the training steps
        from tqdm.auto import tqdm

        batches = tqdm(batches, total=steps, desc=progress, dynamic_ncols=True, leave=False)
    best: dict[str, Any] = {"dice": -math.inf, "step": 0}
    log = _jsonl(out / "metrics.jsonl")

    last: dict[str, Any] = {}

    def evaluate(module: nn.Module, step: int) -> float:
        module.eval()
        final_step = step == steps  # the final evaluation: kept for the report, with overlays
        res = evaluate_segmentation(module, val, img_size, num_classes, device=device,
                                    overlay_dir=out / "overlays" if final_step else None, n_overlays=n_overlays)
        if final_step:
            last["res"] = res
        summary = {k: v for k, v in res.items() if k != "per_sample"}
        log({"step": step, "val": summary})
        if res["dice"] > best["dice"]:
            best.update(dice=res["dice"], step=step, metrics=summary)
            save_weights(module.state_dict(), out / "best", {"step": step, "val": summary, "encoder": info,
                                                              "num_classes": num_classes, "img_size": img_size,
                                                              "decoder_channels": decoder_channels})
        return res["dice"]

    hist = train_segmentation(
        model, batches, steps, lr=lr, weight_decay=weight_decay, layer_decay=layer_decay, warmup_steps=warmup_steps,
        min_lr=min_lr, ce_weight=ce_weight, dice_weight=dice_weight, clip_grad=clip_grad, ema=ema, device=device,
        precision=precision, eval_every=eval_every, evaluate=evaluate, log=log, dice_per_image=dice_per_image,
        betas=betas,
    )
    final = last["res"]  # train_segmentation evaluates the final (EMA) weights at the last step
    report = {
        "encoder": info,
        "n_train": n_train,
        "n_val": len(val),
        "label_fraction": label_fraction,
        "steps": steps,
        "first_loss": hist["losses"][0],
        "last_loss": float(np.mean(hist["losses"][-max(1, min(10, steps // 10)) :])),
        "final": {k: v for k, v in final.items() if k != "per_sample"},
        "best": {"step": best["step"], **best.get("metrics", {})},
        "evals": hist["evals"],
    }
    write_json(out / "report.json", report)
    return report
