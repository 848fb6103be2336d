"""Universal finetuning (``sonofm finetune universal``): one prompt model, several datasets, both tasks.

Each step draws one dataset with probability ``p_i`` (given weights, or ``n_i ** (1/T)`` over the
training-set sizes, UniUSNet's weighted sampling) and takes a batch from it, so every batch has
one task and one head. Samples get a training-time prompt type from their mask
(:func:`sonofm.finetune.prompt_model.sample_type`); evaluation always uses ``whole``. Per-dataset
metrics: Dice / IoU / HD95 at original size for segmentation, accuracy / balanced accuracy / macro
F1 / AUROC for classification; each dataset's headline score (Dice, or balanced accuracy) and their
mean pick the best checkpoint.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sonofm.atomic_io import write_json
from sonofm.datasets.augment import AugmentConfig
from sonofm.datasets.taxonomy import UNLABELLED
from sonofm.evaluation.metrics import classification_metrics
from sonofm.finetune.data import Sample, iterate_batches
from sonofm.finetune.losses import seg_loss
from sonofm.finetune.prompt_model import NATURES, Prompt, PromptModel, apply_type, sample_type
from sonofm.finetune.seg_train import _jsonl, evaluate_segmentation, fit, save_weights

__all__ = [
    "TaskSpec",
    "dataset_probabilities",
    "universal_batches",
    "evaluate_universal",
    "train_universal",
    "run_universal",
    "infer_task_spec",
    "task_specs_from_shards",
]

HEADLINE = {"seg": "dice", "cls": "balanced_accuracy"}


@dataclass
class TaskSpec:
    """One dataset of a universal run.

    ``num_classes``: segmentation classes including background, or the number of labels (``classes``
    names them; samples' ``label`` ids index it, -1 = unlabelled and ignored).
    """

    name: str
    task: str
    train: Sequence[Sample]
    val: Sequence[Sample]
    organ: str
    nature: str
    num_classes: int
    classes: list[str] | None = None
    weight: float | None = None

    def __post_init__(self) -> None:
        if self.task not in HEADLINE:
            raise ValueError(f"{self.name}: task must be 'seg' or 'cls', got {self.task!r}")
        if self.nature not in NATURES:
            raise ValueError(f"{self.name}: nature must be one of {NATURES}, got {self.nature!r}")
        if not self.train:
            raise ValueError(f"{self.name}: no training samples")
        if self.task == "seg" and any(s.mask is None for s in self.train):
            raise ValueError(f"{self.name}: a segmentation dataset needs a mask on every sample")


def dataset_probabilities(sizes: Sequence[int], weights: Sequence[float | None] | None = None,
                          temperature: float = 1.0) -> np.ndarray:
    """Sampling probability per dataset: the stream's mixing rule, ``weights`` only if all are given."""
    from sonofm.datasets.stream import mixing_probabilities

    given = weights is not None and all(w is not None for w in weights)
    return mixing_probabilities(sizes, weights if given else None, temperature)


def _prompt(spec: TaskSpec, kind: str = "whole") -> Prompt:
    return Prompt(spec.organ, spec.task, kind, spec.nature)


def universal_batches(
    specs: Sequence[TaskSpec],
    size: int,
    batch_size: int,
    seed: int = 0,
    probs: np.ndarray | None = None,
    p_whole: float = 0.5,
    aug: AugmentConfig | None = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Endless ``(dataset index, batch)``; batches carry ``prompts`` (one :class:`Prompt` per sample)."""
    from sonofm.finetune.seg_train import sample_batches

    rng = np.random.default_rng(seed)
    probs = dataset_probabilities([len(s.train) for s in specs]) if probs is None else probs
    streams = [sample_batches(s.train, size, batch_size, seed + 1000 * (i + 1), True, aug) for i, s in enumerate(specs)]
    while True:
        i = int(rng.choice(len(specs), p=probs))
        spec, batch = specs[i], next(streams[i])
        images, masks, prompts = [], [], []
        has_mask = "mask" in batch
        for j in range(batch["image"].shape[0]):
            m = batch["mask"][j] if has_mask else None
            kind = sample_type(spec.task, m is not None and bool((m > 0).any()), rng, p_whole)
            img, m2, applied = apply_type(batch["image"][j], m, kind)
            images.append(img)
            masks.append(m2)
            prompts.append(_prompt(spec, applied))
        batch["image"] = torch.stack(images)
        if has_mask:
            batch["mask"] = torch.stack(masks)
        batch["prompts"] = prompts
        yield i, batch


@torch.no_grad()
def evaluate_universal(
    model: PromptModel, specs: Sequence[TaskSpec], size: int, batch_size: int = 16,
    device: str | torch.device = "cpu", overlay_dir: str | os.PathLike | None = None, n_overlays: int = 0,
) -> dict[str, Any]:
    """Per-dataset metrics on ``spec.val`` (prompt type ``whole``), each dataset's ``score`` and their mean."""
    device = torch.device(device)
    model.eval()
    use = model.use_prompts
    out: dict[str, Any] = {"datasets": {}}
    for spec in specs:
        if not spec.val:
            continue

        def predict(x: torch.Tensor, spec: TaskSpec = spec) -> torch.Tensor:
            prompts = [_prompt(spec)] * x.shape[0] if use else None
            return model(x, spec.name, spec.task, prompts)

        if spec.task == "seg":
            res = evaluate_segmentation(
                predict, spec.val, size, spec.num_classes, batch_size, device,
                Path(overlay_dir) / spec.name if overlay_dir is not None else None, n_overlays,
            )
            res.pop("per_sample")
        else:
            labelled = [s for s in spec.val if s.label >= 0]
            if not labelled:
                raise ValueError(f"{spec.name}: no labelled validation sample")
            probs, ys = [], []
            for batch in iterate_batches(labelled, size, batch_size):
                probs.append(F.softmax(predict(batch["image"].to(device)).float(), 1).cpu().numpy())
                ys.append(batch["targets"]["label"].numpy())
            res = classification_metrics(np.concatenate(ys), np.concatenate(probs))
            res["n"] = len(labelled)
        res["score"] = res[HEADLINE[spec.task]]
        out["datasets"][spec.name] = res
    scores = [d["score"] for d in out["datasets"].values() if not math.isnan(d["score"])]
    out["mean_score"] = float(np.mean(scores)) if scores else float("nan")
    return out


def train_universal(
    model: PromptModel,
    specs: Sequence[TaskSpec],
    steps: int,
    img_size: int,
    batch_size: int,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    layer_decay: float = 0.8,
    warmup_steps: int = 0,
    min_lr: float = 0.0,
    ce_weight: float = 1.0,
    dice_weight: float = 1.0,
    clip_grad: float | None = 3.0,
    ema: float = 0.0,
    seed: int = 0,
    probs: np.ndarray | None = None,
    p_whole: float = 0.5,
    device: str | torch.device = "cpu",
    precision: str = "no",
    eval_every: int = 0,
    evaluate=None,
    log=None,
    dice_per_image: bool = True,
    aug: AugmentConfig | dict[str, Any] | None = None,
    betas: Sequence[float] = (0.9, 0.999),
) -> dict[str, Any]:
    """The universal loop: each step draws one dataset's batch (by ``probs``) and trains on its head;
    ``evaluate(module, step)`` as in :func:`~sonofm.finetune.seg_train.fit`."""
    device = torch.device(device)
    batches = universal_batches(specs, img_size, batch_size, seed, probs, p_whole, AugmentConfig.from_any(aug))
    picked: list[str] = []

    def loss_fn(step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        i, batch = next(batches)
        spec = specs[i]
        picked.append(spec.name)
        prompts = batch["prompts"] if model.use_prompts else None
        out = model(batch["image"].to(device), spec.name, spec.task, prompts)
        if spec.task == "seg":
            loss = seg_loss(out.float(), batch["mask"].to(device), ce_weight, dice_weight,
                            per_image_dice=dice_per_image)
        else:
            y = batch["targets"]["label"].to(device)
            loss = F.cross_entropy(out.float(), y, ignore_index=-1) if (y >= 0).any() else out.sum() * 0.0
        return loss, {"dataset": spec.name, "task": spec.task}

    hist = fit(model, steps, loss_fn, lr=lr, weight_decay=weight_decay, layer_decay=layer_decay,
               warmup_steps=warmup_steps, min_lr=min_lr, clip_grad=clip_grad, ema=ema, device=device,
               precision=precision, eval_every=eval_every, evaluate=evaluate, log=log, betas=betas)
    return {**hist, "datasets": picked}


def run_universal(
    encoder: str,
    tasks: Sequence[TaskSpec],
    out_dir: str | os.PathLike,
    organs: Sequence[str] | None = None,
    img_size: int = 128,
    steps: int = 1000,
    batch_size: int = 16,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    layer_decay: float = 0.8,
    warmup_steps: int = 50,
    min_lr: float = 1e-6,
    ce_weight: float = 1.0,
    dice_weight: float = 1.0,
    decoder_channels: int = 128,
    use_prompts: bool = True,
    gate: str = "scalar",
    p_whole: float = 0.5,
    temperature: float = 1.0,
    ema: float = 0.0,
    clip_grad: float | None = 3.0,
    eval_every: int = 100,
    in_chans: int = 1,
    seed: int = 0,
    device: str = "cpu",
    precision: str = "no",
    n_overlays: int = 2,
    dice_per_image: bool = True,
    aug: AugmentConfig | dict[str, Any] | None = None,
    betas: Sequence[float] = (0.9, 0.999),
) -> dict[str, Any]:
    """Train one :class:`PromptModel` on ``tasks``; write ``metrics.jsonl``, ``best/`` (by mean score),
    ``overlays/`` and ``report.json`` in ``out_dir`` and return the report.

    ``organs``: the prompt's position vocabulary (default: the built-in taxonomy's organs, then the
    datasets' own).
    """
    from sonofm.finetune.prompt_model import taxonomy_organs
    from sonofm.models.loading import load_encoder

    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"dataset names must be unique, got {names}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    torch.manual_seed(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if organs is None:  # the built-in organs, then any new organ a dataset's shards bring
        organs = taxonomy_organs()
        organs += [o for o in dict.fromkeys(t.organ for t in tasks) if o not in organs]
    organs = list(organs)
    for t in tasks:
        if t.organ not in organs:
            raise ValueError(f"{t.name}: organ {t.organ!r} is not in the prompt organs {organs}")
    enc, info = load_encoder(encoder, in_chans=in_chans)
    model = PromptModel(
        enc, organs,
        seg_heads={t.name: t.num_classes for t in tasks if t.task == "seg"},
        cls_heads={t.name: t.num_classes for t in tasks if t.task == "cls"},
        decoder_channels=decoder_channels, use_prompts=use_prompts, gate=gate,
    )
    probs = dataset_probabilities([len(t.train) for t in tasks], [t.weight for t in tasks], temperature)
    log = _jsonl(out / "metrics.jsonl")
    best: dict[str, Any] = {"score": -math.inf, "step": 0}

    last: dict[str, Any] = {}

    def evaluate(module: nn.Module, step: int) -> float:
        final_step = step == steps  # the final evaluation: kept for the report, with overlays
        res = evaluate_universal(module, tasks, img_size, device=device,
                                 overlay_dir=out / "overlays" if final_step else None, n_overlays=n_overlays)
        if final_step:
            last["res"] = res
        log({"step": step, "val": res})
        if res["mean_score"] > best["score"]:
            best.update(score=res["mean_score"], step=step, metrics=res)
            save_weights(module.state_dict(), out / "best", {
                "step": step, "val": res, "encoder": info, "organs": organs, "use_prompts": use_prompts,
                "img_size": img_size, "decoder_channels": decoder_channels,
                "tasks": [{"name": t.name, "task": t.task, "organ": t.organ, "nature": t.nature,
                           "num_classes": t.num_classes, "classes": t.classes} for t in tasks],
            })
        return res["mean_score"]

    hist = train_universal(
        model, tasks, steps, img_size, batch_size, lr=lr, weight_decay=weight_decay, layer_decay=layer_decay,
        warmup_steps=warmup_steps, min_lr=min_lr, ce_weight=ce_weight, dice_weight=dice_weight, clip_grad=clip_grad,
        ema=ema, seed=seed, probs=probs, p_whole=p_whole, device=device, precision=precision, eval_every=eval_every,
        evaluate=evaluate, log=log, dice_per_image=dice_per_image, aug=aug, betas=betas,
    )
    final = last["res"]  # train_universal evaluates the final (EMA) weights at the last step
    counts = {n: hist["datasets"].count(n) for n in names}
    report = {
        "encoder": info,
        "use_prompts": use_prompts,
        "sampling_probabilities": dict(zip(names, probs.tolist())),
        "steps_per_dataset": counts,
        "final": final,
        "best": {"step": best["step"], **best.get("metrics", {})},
        "evals": hist["evals"],
        "gates": [float(g.detach().abs().mean()) for g in model.prompt.gates] if model.prompt is not None else None,
        "losses": {n: [loss for loss, d in zip(hist["losses"], hist["datasets"]) if d == n] for n in names},
    }
    write_json(out / "report.json", report)
    return report


def infer_task_spec(
    name: str,
    train: Sequence[Sample],
    val: Sequence[Sample],
    task: str | None = None,
    nature: str | None = None,
    classes: Sequence[str] | None = None,
    weight: float | None = None,
) -> TaskSpec:
    """A :class:`TaskSpec` with what the samples' metadata says filled in.

    ``organ``: the samples' ``meta["organ"]`` (shards carry it from the taxonomy; ``unlabelled`` when
    unknown). ``task``: ``cls`` when samples carry labels, else ``seg``. ``nature``: ``tumour`` for a
    labelled (diagnostic) dataset, else ``organ``. ``classes``: as given (the shard index's label
    vocabulary, see :func:`task_specs_from_shards`), else the built-in taxonomy's list for a source
    it declares, else the sorted labels seen. Segmentation classes: largest mask id + 1 (at least 2).
    """
    from sonofm.finetune.data import encode_labels

    organs = {str(s.meta.get("organ")) for s in train if s.meta.get("organ")} or {UNLABELLED}
    if len(organs) != 1:
        raise ValueError(f"{name}: expected one organ in the samples' metadata, found {sorted(organs)}")
    labelled = any(s.meta.get("label") is not None for s in train)
    task = task or ("cls" if labelled else "seg")
    nature = nature or ("tumour" if labelled else "organ")
    if task == "cls":
        if classes is None:
            classes = _taxonomy_labels(str(train[0].meta.get("source")))
        vocab = encode_labels(list(train) + list(val), classes=classes)
        return TaskSpec(name, "cls", train, val, organs.pop(), nature, len(vocab), vocab, weight)
    n = max(int(s.mask.max()) for s in train if s.mask is not None) + 1 if train else 2
    return TaskSpec(name, "seg", train, val, organs.pop(), nature, max(2, n), None, weight)


def _taxonomy_labels(source: str) -> list[str] | None:
    """The built-in (packaged) taxonomy's vocabulary of ``source``, if it declares one."""
    from sonofm.datasets.taxonomy import Taxonomy

    tax = Taxonomy.load()
    return list(tax.source(source).labels) or None if source in tax else None


def _index_labels(path: str) -> list[str] | None:
    """The label vocabulary a shard set's index stores for its single source (None: not one source)."""
    from sonofm.datasets.stream import shard_indexes

    entries = [i.get("taxonomy", {}).get("source") for i in shard_indexes(path)]
    if len(entries) != 1 or not isinstance(entries[0], dict):
        return None
    return list(entries[0].get("labels") or []) or None


def task_specs_from_shards(
    paths: Sequence[str],
    tasks: Sequence[str | None] | None = None,
    weights: Sequence[float] | None = None,
    train_split: str = "train",
    val_split: str = "val",
) -> list[TaskSpec]:
    """One :class:`TaskSpec` per shard set (named after its single source, else its directory), via
    :func:`infer_task_spec`."""
    from sonofm.finetune.data import samples_from_shards

    specs = []
    for i, p in enumerate(paths):
        train = samples_from_shards(p, train_split)
        val = samples_from_shards(p, val_split)
        task = tasks[i] if tasks is not None else None
        if task == "seg" or (task is None and not any(s.meta.get("label") is not None for s in train)):
            train = [s for s in train if s.mask is not None]
            val = [s for s in val if s.mask is not None]
        sources = {str(s.meta.get("source")) for s in train if s.meta.get("source")}
        name = sources.pop() if len(sources) == 1 else (Path(str(p).rstrip("/")).name or f"dataset{i}")
        specs.append(infer_task_spec(name, train, val, task, classes=_index_labels(str(p)),
                                     weight=weights[i] if weights is not None else None))
    return specs
