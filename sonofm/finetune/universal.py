"""Universal finetuning (``sonofm finetune universal``): one prompt model, several datasets, every task kind.

Each optimiser step (all its micro-batches, on every rank) comes from one dataset, taken with share
``p_i`` (given weights, or ``n_i ** (1/T)`` over the training-set sizes: the stream's mixing rule,
UniUSNet's weighted sampling), from that dataset's own stream, so every batch has one task and one head. Which dataset is planned like the
stream's rounds (:class:`MixingSchedule`): per round of ``K`` steps (``K`` datasets) each dataset earns
``p_i * K`` credits, the largest credits win the round's draws, overdrawn credit carries over and the
round's order is shuffled by ``(seed, round)``; long-run shares are exactly ``p_i`` and no dataset
waits much longer than ``1 / p_i`` steps. The schedule is the same on every rank (a step's global
batch is one task) and a function of the step number (resume replays it by arithmetic); each rank
reads its own shards of that dataset. Samples get a training-time prompt type from their mask
(:func:`sonofm.finetune.prompt_types.sample_type` over the kind's prompt types, seeded by ``(seed, rank, draw)``, applied in the
training process to the stream's augmented tensors); evaluation always uses ``whole``.

Each dataset has a task kind (:mod:`sonofm.finetune.tasks`: segmentation, classification, detection,
keypoints) that owns its head, loss, targets and metrics; this module never asks which kind it
holds. Per-dataset metrics are the kind's, over the whole validation split (every rank scores its
share, results gathered); each dataset's score (the kind's higher-is-better number: Dice, balanced
accuracy, box IoU, keypoint PCK) and their mean pick the best checkpoint. Datasets are shard sets (:func:`task_specs_from_shards`, read
from their indexes without loading any image) or in-memory samples (:func:`infer_task_spec`).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sonofm.atomic_io import write_json
from sonofm.datasets.stream.augment import AugmentConfig
from sonofm.datasets.taxonomy import UNLABELLED
from sonofm.finetune.data import Sample, SampleBatches, sample_eval_batches
from sonofm.finetune.engine import LoopSettings, make_accelerator, run_loop
from sonofm.finetune.prompt_types import apply_type, sample_type
from sonofm.finetune.seg_train import loss_summary
from sonofm.finetune.tasks import TaskKind, get_task_kind, guess_task_kind
from sonofm.models.prompt_model import NATURES, Prompt, PromptModel

__all__ = [
    "TaskSpec",
    "dataset_probabilities",
    "MixingSchedule",
    "UniversalBatches",
    "evaluate_universal",
    "finetune_universal",
    "run_universal",
    "infer_task_spec",
    "task_specs_from_shards",
]



@dataclass
class TaskSpec:
    """One dataset of a universal run: in-memory samples (``train`` / ``val``) or a shard set (``shards``).

    ``task``: a task kind's name or alias (:data:`sonofm.finetune.tasks.TASK_KINDS`). ``num_classes``: the
    head's outputs: segmentation classes including background, the number of labels (``classes``
    names them; samples' ``label`` ids index it, -1 = unlabelled and ignored), box classes, or
    points. For a shard set, ``n_train`` / ``n_val`` are its index's split sizes (``n_train`` sets
    the mixing share). ``head_mode``: a head variant where the kind has several (keypoints).
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
    shards: str | None = None
    n_train: int | None = None
    n_val: int | None = None
    head_mode: str | None = None

    def __post_init__(self) -> None:
        self.task = self.kind.name  # canonical name (an alias such as 'segmentation' is accepted)
        if self.nature not in NATURES:
            raise ValueError(f"{self.name}: nature must be one of {NATURES}, got {self.nature!r}")
        if self.shards is None:
            if not self.train:
                raise ValueError(f"{self.name}: no training samples")
            unusable = [s.key for s in self.train if not self.kind.usable(s.meta, s.mask is not None)]
            if unusable:
                raise ValueError(f"{self.name}: {len(unusable)} training samples cannot train {self.kind.title} "
                                 f"(e.g. {unusable[0]}: no mask, boxes or points it needs)")
            self.n_train, self.n_val = len(self.train), len(self.val)
        elif self.n_train == 0:
            raise ValueError(f"{self.name}: no training samples in {self.shards}")

    @property
    def kind(self) -> TaskKind:
        return get_task_kind(self.task)

    @property
    def binary(self) -> bool:
        """Masks of a two-class segmentation: every foreground id counts as class 1."""
        return self.kind.needs_mask and self.num_classes == 2


def dataset_probabilities(sizes: Sequence[int], weights: Sequence[float | None] | None = None,
                          temperature: float = 1.0) -> np.ndarray:
    """Sampling probability per dataset: the stream's mixing rule, ``weights`` only if all are given."""
    from sonofm.datasets.stream.loader import mixing_probabilities

    given = weights is not None and all(w is not None for w in weights)
    return mixing_probabilities(sizes, weights if given else None, temperature)


def _prompt(spec: TaskSpec, kind: str = "whole") -> Prompt:
    return Prompt(spec.organ, spec.task, kind, spec.nature)


class MixingSchedule:
    """Which dataset draw ``d`` takes (see the module docstring): exact shares ``probs``, seeded order."""

    def __init__(self, probs: Sequence[float], seed: int = 0) -> None:
        self.probs, self.seed = np.asarray(probs, dtype=np.float64), seed
        self.k = len(self.probs)
        self._reset()

    def _reset(self) -> None:
        self._round, self._credit, self._order = -1, np.zeros(self.k), np.zeros(0, dtype=np.int64)

    def _next_round(self) -> None:
        self._round += 1
        self._credit += self.probs * self.k
        counts = np.floor(self._credit + 1e-9).astype(np.int64)
        left = self.k - int(counts.sum())
        if left > 0:  # the largest remaining credits take the rest of the round
            counts[np.argsort(-(self._credit - counts), kind="stable")[:left]] += 1
        elif left < 0:  # rounding gave too many: the smallest remaining credits give one back
            counts[np.argsort(self._credit - counts, kind="stable")[:-left]] -= 1
        self._credit -= counts
        rng = np.random.default_rng([self.seed, self._round, 5])
        self._order = rng.permutation(np.repeat(np.arange(self.k), counts))

    def at(self, d: int) -> int:
        r, i = divmod(d, self.k)
        if r < self._round:
            self._reset()
        while self._round < r:
            self._next_round()
        return int(self._order[i])


class UniversalBatches:
    """Endless batches for one rank: optimiser step ``d // per_step`` takes the dataset of a
    :class:`MixingSchedule` (the same on every rank) for all its micro-batches, each the dataset's
    next batch, and every sample gets a prompt type.

    ``sources``: one batch source per dataset (:class:`~sonofm.finetune.data.StreamBatches` or
    :class:`~sonofm.finetune.data.SampleBatches`). Batches carry ``dataset`` (its index) and
    ``prompts``. ``position()``: the draws made and each source's own position.
    """

    def __init__(self, specs: Sequence[TaskSpec], sources: Sequence[Any], probs: np.ndarray, seed: int = 0,
                 rank: int = 0, p_whole: float = 0.5, per_step: int = 1) -> None:
        self.specs, self.sources, self.probs = list(specs), list(sources), np.asarray(probs, dtype=np.float64)
        self.seed, self.rank, self.p_whole = seed, rank, p_whole
        self.schedule = MixingSchedule(self.probs, seed)
        self.per_step = per_step  # micro-batches per optimiser step: all from the step's dataset
        self.draws = 0

    def position(self) -> dict[str, Any]:
        return {"draws": self.draws, "sources": [s.position() for s in self.sources]}

    def seek(self, position: dict[str, Any]) -> None:
        self.draws = int(position["draws"])
        for s, p in zip(self.sources, position["sources"]):
            s.seek(p)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        its = [iter(s) for s in self.sources]  # every loader starts now (and draws its torch seed)
        return self._batches(its)

    def _batches(self, its: list[Iterator[dict[str, Any]]]) -> Iterator[dict[str, Any]]:
        while True:
            d = self.draws
            i = self.schedule.at(d // self.per_step)
            rng = np.random.default_rng([self.seed, self.rank, d, 1])
            spec, batch = self.specs[i], next(its[i])
            self.draws += 1
            has_mask = batch.get("has_mask")
            images, masks, prompts = [], [], []
            for j in range(batch["image"].shape[0]):
                m = batch["mask"][j] if "mask" in batch and (has_mask is None or bool(has_mask[j])) else None
                kind = sample_type(spec.kind.prompt_types, m is not None and bool((m > 0).any()), rng, self.p_whole)
                img, m2, applied = apply_type(batch["image"][j], m, kind)
                images.append(img)
                masks.append(m2 if m2 is not None else (batch["mask"][j] if "mask" in batch else None))
                prompts.append(_prompt(spec, applied))
            batch["image"] = torch.stack(images)
            if "mask" in batch:
                batch["mask"] = torch.stack(masks)
            batch["prompts"] = prompts
            batch["dataset"] = i
            yield batch


def _loss_fn(specs: Sequence[TaskSpec], settings: Any):
    def loss_fn(model: nn.Module, batch: dict[str, Any], step: int, micro: int) -> tuple[torch.Tensor, dict[str, Any]]:
        spec = specs[batch["dataset"]]
        device = next(model.parameters()).device
        use_prompts = getattr(model, "use_prompts", None)
        if use_prompts is None:  # DDP wraps the model
            use_prompts = model.module.use_prompts
        prompts = batch["prompts"] if use_prompts else None
        out = model(batch["image"].to(device), spec.name, spec.task, prompts)
        if "mask" in batch:
            batch = {**batch, "mask": batch["mask"].to(device)}
        return spec.kind.loss(out, batch, spec, settings), {"dataset": spec.name, "task": spec.task}

    return loss_fn


# --------------------------------------------------------------------------- evaluation


def _eval_batches(spec: TaskSpec, size: int, batch_size: int, rank: int, world: int, num_workers: int):
    from sonofm.finetune.data import shard_eval_loader

    if spec.shards is not None:
        return shard_eval_loader([spec.shards], "val", size=size, batch_size=batch_size, rank=rank, world_size=world,
                                 num_workers=num_workers, binary_mask=spec.binary, need_mask=spec.kind.needs_mask,
                                 classes=spec.classes if spec.kind.uses_labels else None)
    return sample_eval_batches(spec.val, size, batch_size, rank, world, need_mask=spec.kind.needs_mask)


@torch.no_grad()
def evaluate_universal(
    model: PromptModel, specs: Sequence[TaskSpec], size: int, batch_size: int = 16,
    device: str | torch.device = "cpu", overlay_dir: str | os.PathLike | None = None, n_overlays: int = 0,
    accelerator: Any | None = None, num_workers: int = 0,
) -> dict[str, Any]:
    """Per-dataset metrics on each validation split (prompt type ``whole``), each dataset's ``score``
    and their mean. With an ``accelerator`` every rank scores its share and the results are gathered."""
    device = torch.device(device)
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    model.eval()
    use = model.use_prompts
    out: dict[str, Any] = {"datasets": {}}
    for spec in specs:
        if not spec.n_val:
            continue

        def predict(x: torch.Tensor, spec: TaskSpec = spec) -> torch.Tensor:
            prompts = [_prompt(spec)] * x.shape[0] if use else None
            return model(x, spec.name, spec.task, prompts)

        batches = _eval_batches(spec, size, batch_size, rank, world, num_workers)
        res = spec.kind.evaluate(predict, batches, spec, device=device, accelerator=accelerator,
                                 overlay_dir=Path(overlay_dir) / spec.name if overlay_dir is not None else None,
                                 n_overlays=n_overlays)
        res["score"] = spec.kind.score(res)
        out["datasets"][spec.name] = res
    scores = [d["score"] for d in out["datasets"].values() if not math.isnan(d["score"])]
    out["mean_score"] = float(np.mean(scores)) if scores else float("nan")
    return out


# --------------------------------------------------------------------------- training


def finetune_universal(
    cfg: Any,
    tasks: Sequence[TaskSpec] | None = None,
    *,
    organs: Sequence[str] | None = None,
    resume: str | None = None,
    n_overlays: int = 2,
    progress: str | None = None,
    checkpoints: bool = True,
    accelerator: Any | None = None,
) -> dict[str, Any]:
    """Train one :class:`PromptModel` on ``tasks`` (default: one per shard set of ``cfg.datasets``);
    write ``metrics.jsonl``, ``best/`` (by mean score), ``overlays/``, ``checkpoints/`` and
    ``report.json`` in ``cfg.out_dir`` and return the report.

    ``organs``: the prompt's position vocabulary (default: the built-in taxonomy's organs, then the
    datasets' own). ``cfg.label_fraction`` keeps that share of each dataset's training groups.
    """
    from accelerate.utils import set_seed

    from sonofm.finetune.data import StreamBatches, split_groups
    from sonofm.finetune.label_efficiency import select_groups
    from sonofm.finetune.prompt_types import taxonomy_organs
    from sonofm.models.loading import load_encoder

    if tasks is None:
        if not cfg.datasets:
            raise ValueError("finetune universal: 'datasets' is empty; list one shard folder per dataset")
        tasks = task_specs_from_shards(list(cfg.datasets), weights=cfg.dataset_weights,
                                       num_classes=cfg.seg.num_classes)
    for t in tasks:  # a kind with head variants (keypoints) takes the configured one
        t.head_mode = t.head_mode or cfg.keypoint_head
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"dataset names must be unique, got {names}")
    accelerator = accelerator if accelerator is not None else make_accelerator(cfg.precision,
                                                                               find_unused_parameters=True)
    rank, world = accelerator.process_index, accelerator.num_processes
    settings = LoopSettings.from_config(cfg, world, progress, checkpoints)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if organs is None:  # the built-in organs, then any new organ a dataset's shards bring
        organs = taxonomy_organs()
        organs += [o for o in dict.fromkeys(t.organ for t in tasks) if o not in organs]
    organs = list(organs)
    for t in tasks:
        if t.organ not in organs:
            raise ValueError(f"{t.name}: organ {t.organ!r} is not in the prompt organs {organs}")
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    enc, info = load_encoder(cfg.encoder, in_chans=cfg.in_chans)
    pc = cfg.prompt
    channels, dropout = cfg.seg.decoder_channels, 0.1
    heads = {t.name: t.kind.make_head(t, channels, int(enc.num_features), dropout) for t in tasks}
    model = PromptModel(enc, organs, heads=heads, decoder_channels=channels, use_prompts=pc.enabled, gate=pc.gate,
                        dropout=dropout)
    set_seed(cfg.seed + rank)
    size, bs = cfg.data.img_size, cfg.data.batch_size
    aug = asdict(cfg.data.augment)
    sources, n_train = [], {}
    for i, t in enumerate(tasks):
        seed = cfg.seed + 1000 * (i + 1)
        if t.shards is not None:
            groups = None
            n_train[t.name] = t.n_train
            if cfg.label_fraction < 1.0:
                counts = split_groups([t.shards], "train", need_mask=t.kind.needs_mask)
                gnames = list(counts)
                groups = frozenset(gnames[k] for k in select_groups(gnames, cfg.label_fraction, cfg.seed))
                n_train[t.name] = sum(counts[g] for g in groups)
            sources.append(StreamBatches(
                [t.shards], batch_size=bs, img_size=size, seed=seed, rank=rank, world_size=world,
                num_workers=cfg.data.num_workers, shuffle_buffer=cfg.data.shuffle_buffer, aug=t.kind.augment(aug),
                classes=t.classes if t.kind.uses_labels else None, groups=groups, need_mask=t.kind.needs_mask,
                binary_mask=t.binary, geometry=t.kind.geometry))
        else:
            train = list(t.train)
            if cfg.label_fraction < 1.0:
                train = [train[k] for k in select_groups([s.group for s in train], cfg.label_fraction, cfg.seed)]
            n_train[t.name] = len(train)
            sources.append(SampleBatches(train, size, bs, seed, True, AugmentConfig.from_any(t.kind.augment(aug)), rank,
                                         world))
    probs = dataset_probabilities([n_train[t.name] if n_train[t.name] is not None else -1 for t in tasks],
                                  [t.weight for t in tasks], cfg.data.temperature)
    batches = UniversalBatches(tasks, sources, probs, cfg.seed, rank, pc.p_whole, cfg.optim.accum_steps)

    validated = any(t.n_val for t in tasks)
    if not validated and accelerator.is_main_process:
        accelerator.print("note: no dataset has a validation split; best/ will hold the last evaluated weights")

    def evaluate(module: nn.Module, step: int, final: bool) -> dict[str, Any]:
        res = evaluate_universal(module, tasks, size, bs, accelerator.device,
                                 overlay_dir=out / "overlays" if final and accelerator.is_main_process else None,
                                 n_overlays=n_overlays, accelerator=accelerator, num_workers=cfg.data.num_workers)
        res["score"] = res["mean_score"]
        if not validated:  # no dataset has a validation split: best/ follows the latest weights, so predict has a model
            res["score"] = step / cfg.steps
            res["note"] = "no validation split in any dataset: best/ holds the latest evaluated weights"
        return res

    best_meta = {
        "encoder": info, "organs": organs, "use_prompts": pc.enabled, "img_size": size,
        "decoder_channels": cfg.seg.decoder_channels,
        "tasks": [{"name": t.name, "task": t.task, "organ": t.organ, "nature": t.nature,
                   "num_classes": t.num_classes, "classes": t.classes, "head_mode": t.head_mode,
                   "build": _build_settings(t)} for t in tasks],
    }
    identity = {"task": "universal", "encoder": cfg.encoder, "in_chans": cfg.in_chans, "datasets": names}
    res = run_loop(model, batches, _loss_fn(tasks, cfg), settings, accelerator=accelerator, out_dir=out,
                   evaluate=evaluate, best_meta=best_meta, identity=identity, resume=resume)
    picked = [f.get("dataset") for f in res.fields]
    final = {k: v for k, v in res.final.items() if k != "score"}
    prompt = accelerator.unwrap_model(model).prompt
    report = {
        "encoder": info,
        "use_prompts": pc.enabled,
        "sampling_probabilities": dict(zip(names, probs.tolist())),
        "n_train": n_train,
        "steps_per_dataset": {n: picked.count(n) for n in names},
        **loss_summary(res.losses, cfg.steps),
        "final": final,
        "best": {"step": res.best["step"], **{k: v for k, v in res.best.items() if k not in ("step", "score")}},
        "evals": res.evals,
        "gates": [float(g.detach().abs().mean()) for g in prompt.gates] if prompt is not None else None,
        "losses": {n: [loss for loss, d in zip(res.losses, picked) if d == n] for n in names},
        "processes": res.world_size,
        "resumed_from": res.resumed_from,
    }
    if any(isinstance(s, StreamBatches) for s in sources):
        from sonofm.finetune.seg_train import _sum_counts

        total: Counter[str] = Counter()
        for s in sources:
            if isinstance(s, StreamBatches):
                total.update(s.corrupt_counts())
        report["corrupt"] = _sum_counts(dict(total), accelerator)
    if accelerator.is_main_process:
        write_json(out / "report.json", report)
    return report


def _split_size_or_0(path: str, split: str) -> int:
    """Samples of ``split`` in a shard set, 0 when it has none (a small set's validation split may be empty)."""
    from sonofm.datasets.shards.discovery import StreamError
    from sonofm.finetune.data import split_size

    try:
        return split_size([path], split)
    except StreamError:
        return 0


def _build_settings(spec: TaskSpec) -> dict[str, Any]:
    """How a shard set's images were preprocessed (its index's ``build``), so prediction can do the same."""
    if spec.shards is None:
        return {}
    from sonofm.datasets.shards.discovery import shard_indexes

    indexes = shard_indexes(spec.shards)
    build = (indexes[0].get("build") or {}) if indexes else {}
    return {k: build[k] for k in ("max_side", "text") if k in build}


def run_universal(
    encoder: str,
    tasks: Sequence[TaskSpec],
    out_dir: str | os.PathLike,
    organs: Sequence[str] | None = None,
    *,
    n_overlays: int = 2,
    resume: str | None = None,
    progress: str | None = None,
    checkpoints: bool = False,
    **settings: Any,
) -> dict[str, Any]:
    """:func:`finetune_universal` with keyword settings (see :func:`sonofm.finetune.settings.finetune_config`;
    ``steps`` defaults to 1000 here); resumable checkpoints only with ``checkpoints=True``."""
    from sonofm.finetune.settings import finetune_config

    cfg = finetune_config(defaults={"steps": 1000}, encoder=encoder, out_dir=out_dir, **settings)
    return finetune_universal(cfg, tasks, organs=organs, resume=resume, n_overlays=n_overlays, progress=progress,
                              checkpoints=checkpoints)


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
    unknown). ``task``: a kind's name, else classification when samples carry labels and segmentation
    otherwise (:func:`~sonofm.finetune.tasks.base.guess_task_kind`). ``nature``: ``tumour`` for a
    labelled (diagnostic) dataset, else ``organ``. ``classes`` (a kind that reads labels): as given
    (the shard index's label vocabulary, see :func:`task_specs_from_shards`), else the built-in
    taxonomy's list for a source it declares, else the sorted labels seen. Other kinds count their
    outputs from the samples (segmentation: largest mask id + 1, at least 2; keypoints: points).
    """
    from sonofm.finetune.data import encode_labels

    organs = {str(s.meta.get("organ")) for s in train if s.meta.get("organ")} or {UNLABELLED}
    if len(organs) != 1:
        raise ValueError(f"{name}: expected one organ in the samples' metadata, found {sorted(organs)}")
    labelled = any(s.meta.get("label") is not None for s in train)
    kind = get_task_kind(task) if task else guess_task_kind(labelled)
    nature = nature or ("tumour" if labelled else "organ")
    if kind.uses_labels:
        if classes is None:
            classes = _taxonomy_labels(str(train[0].meta.get("source")))
        vocab = encode_labels(list(train) + list(val), classes=classes)
        return TaskSpec(name, kind.name, train, val, organs.pop(), nature, len(vocab), vocab, weight)
    return TaskSpec(name, kind.name, train, val, organs.pop(), nature, kind.outputs_of(train), None, weight)


def _taxonomy_labels(source: str) -> list[str] | None:
    """The built-in (packaged) taxonomy's vocabulary of ``source``, if it declares one."""
    from sonofm.datasets.taxonomy import Taxonomy

    tax = Taxonomy.load()
    return list(tax.source(source).labels) or None if source in tax else None


def _scan(path: str, split: str) -> dict[str, Any]:
    """What a shard set without an index holds: sources, organs, labels, sizes (one metadata pass)."""
    import json

    from sonofm.datasets.shards.discovery import discover_shards
    from sonofm.datasets.shards.reader import CorruptCounter, iter_tar_samples

    out: dict[str, Any] = {"sources": set(), "organs": set(), "labels": Counter(), "n": 0, "masks": 0}
    counter = CorruptCounter()
    for url, _ in discover_shards(path, split):
        for raw in iter_tar_samples(url, counter):
            try:
                meta = json.loads(raw.get("json", b""))
            except (ValueError, UnicodeDecodeError):
                continue
            if not isinstance(meta, dict):
                continue
            out["n"] += 1
            out["masks"] += int("mask.png" in raw)
            for key, name in (("sources", "source"), ("organs", "organ")):
                if meta.get(name):
                    out[key].add(str(meta[name]))
            if meta.get("label") is not None:
                out["labels"][str(meta["label"])] += 1
    return out


def task_specs_from_shards(
    paths: Sequence[str],
    tasks: Sequence[str | None] | None = None,
    weights: Sequence[float] | None = None,
    num_classes: int = 2,
    train_split: str = "train",
    val_split: str = "val",
) -> list[TaskSpec]:
    """One streaming :class:`TaskSpec` per shard set, from its indexes (no image is read).

    Named after the set's single source, else its directory. ``task``: ``cls`` when the training
    split has labels, else ``seg`` (``num_classes`` classes, background included). ``classes``: the
    index's label vocabulary, else the built-in taxonomy's, else the sorted labels seen. ``organ``:
    the index's taxonomy entry (``unlabelled`` when unknown); ``nature``: ``tumour`` for a labelled
    set, else ``organ``. A set without an index is described by one pass over its metadata. A folder
    holding several sources of different organs (e.g. ``shards/shared``) is one dataset per source
    (its ``{source}.index.json``), each with that folder's task and weight.
    """
    from sonofm.datasets.shards.discovery import shard_indexes
    from sonofm.datasets.shards.index import index_files
    from sonofm.finetune.data import split_size

    expanded: list[tuple[str, str | None, float | None]] = []
    for i, p in enumerate(paths):
        task_i = tasks[i] if tasks is not None else None
        weight_i = weights[i] if weights is not None else None
        files = index_files(str(p)) if Path(str(p)).is_dir() else []
        here = shard_indexes(str(p))
        organs_here = {str((x.get("taxonomy", {}).get("source") or {}).get("organ")) for x in here}
        if len(files) > 1 and (len(organs_here) > 1 or any(x.get("task") for x in here)):
            expanded += [(str(f), task_i, weight_i) for f in files]
        else:
            expanded.append((str(p), task_i, weight_i))
    paths = [e[0] for e in expanded]
    tasks = [e[1] for e in expanded]
    weights = [e[2] for e in expanded] if weights is not None else None

    specs = []
    for i, p in enumerate(paths):
        p = str(p)
        indexes = shard_indexes(p)
        if indexes:
            sources = {str(x.get("source")) for x in indexes if x.get("source")}
            entries = [x.get("taxonomy", {}).get("source") or {} for x in indexes]
            organs = {str(e["organ"]) for e in entries if e.get("organ")}
            labels: Counter[str] = Counter()
            for x in indexes:
                labels.update((x.get("counts", {}).get("split_label", {}) or {}).get(train_split, {}) or {})
            vocab = list(entries[0].get("labels") or []) if len(entries) == 1 else []
            index_task = indexes[0].get("task") if len(indexes) == 1 else None
            vocab = [str(c) for c in (index_task or {}).get("classes") or []] or vocab
        else:
            scan = _scan(p, train_split)
            sources, organs, labels, vocab, index_task = scan["sources"], scan["organs"], scan["labels"], [], None
        for missing in (UNLABELLED, "None"):  # how indexes count samples without a label (older ones: "None")
            labels.pop(missing, None)
        organs = organs or {UNLABELLED}
        name = next(iter(sources)) if len(sources) == 1 else (Path(p.rstrip("/")).name or f"dataset{i}")
        if len(organs) != 1:
            raise ValueError(f"{name} ({p}): expected one organ in the shard set, found {sorted(organs)}")
        task = (tasks[i] if tasks is not None else None) or (index_task or {}).get("kind")
        kind = get_task_kind(task) if task else guess_task_kind(bool(labels))
        weight = weights[i] if weights is not None else None
        n_train, n_val = split_size([p], train_split), _split_size_or_0(p, val_split)
        nature = "tumour" if labels else "organ"
        if kind.uses_labels:
            classes = vocab or (_taxonomy_labels(next(iter(sources))) if len(sources) == 1 else None) \
                or sorted(labels)
            unknown = sorted(set(labels) - set(classes))
            if unknown:
                raise ValueError(f"{name}: labels {unknown} are not in the classes {classes}")
            specs.append(TaskSpec(name, kind.name, [], [], organs.pop(), nature, len(classes), list(classes), weight,
                                  shards=p, n_train=n_train, n_val=n_val))
        else:
            specs.append(TaskSpec(name, kind.name, [], [], organs.pop(), nature,
                                  kind.num_classes(index_task, [], num_classes), None, weight, shards=p,
                                  n_train=n_train, n_val=n_val))
    return specs
