"""The stages of a quickstart run, each calling the library: data and shards, pretraining, probes and
segmentation (each result reused while its inputs are unchanged, see :mod:`sonofm.quickstart.reuse`)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sonofm.atomic_io import write_json
from sonofm.quickstart.discovery import Task, find_datasets, known_layouts, tasks_of
from sonofm.quickstart.plan import IMAGENET_SPEC, RANDOM_SPEC, RECIPE, SEED, SPLITS, Plan
from sonofm.quickstart.report import hd95
from sonofm.quickstart.reuse import read_json, reuse, weights_id


class Stages:
    """Header lines ``[quickstart 3/7] pretraining ... (elapsed 0:41)``."""

    def __init__(self, total: int) -> None:
        self.t0 = time.perf_counter()
        self.total = total
        self.i = 0

    def elapsed(self) -> str:
        """Time since the run started, ``m:ss``."""
        s = int(time.perf_counter() - self.t0)
        return f"{s // 60}:{s % 60:02d}"

    def __call__(self, title: str, number: int | None = None) -> None:
        """Print the header of the next stage, or of stage ``number`` again (the per-seed stages repeat)."""
        self.i = self.i + 1 if number is None else number
        print(f"\n[quickstart {self.i}/{self.total}] {title} (elapsed {self.elapsed()})", flush=True)


def _bar(it: Iterable[Any], total: int, desc: str) -> Iterator[Any]:
    from tqdm.auto import tqdm

    with tqdm(total=total, desc=desc, dynamic_ncols=True, leave=False) as bar:
        for x in it:
            yield x
            bar.update(1)


def safe_name(name: str) -> str:
    """A task name as a folder name."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name.lower())


# ------------------------------------------------------------------------------------- data stage


def _synthetic_corpus(out: Path, plan: Plan, workers: int) -> Path:
    """Generate (or keep) ``out/corpus``; a stamp records the parameters of a complete corpus."""
    from sonofm.datasets.synthetic import generate_corpus

    corpus = out / "corpus"
    stamp = out / ".quickstart" / "corpus.json"
    key = {"n": plan.n_images, "size": plan.corpus_size, "seed": SEED}
    if read_json(stamp) == key and (corpus / "manifest.csv").is_file():
        print(f"  keeping the complete corpus in {corpus} ({plan.n_images} images of {plan.corpus_size} px)")
        return corpus
    stamp.unlink(missing_ok=True)
    print(f"  generating {plan.n_images} synthetic B-mode images of {plan.corpus_size} px "
          f"(6 sources, 3 organs, labels normal/cyst/benign/malignant, lesion masks) into {corpus}")
    generate_corpus(corpus, n=plan.n_images, seed=SEED, size=plan.corpus_size, workers=workers)
    write_json(stamp, key)
    return corpus


def _build(specs: list[Any], out_dir: Path, plan: Plan, workers: int) -> dict[str, Any]:
    from sonofm.datasets.build.orchestrate import build_shards

    # small shards: the stream reads shard after shard, so many small ones (from every source) mix better
    # in its shuffle buffer than one big shard per source, and the pretraining classifier sees mixed batches
    return build_shards(specs, out_dir, max_side=plan.max_side, samples_per_shard=32, split_fractions=SPLITS,
                        workers=workers, dedup=True, progress=True)


def data_stage(out: Path, data: str | None, plan: Plan, workers: int, stage: Stages) -> tuple[list[Path], list[Task], str]:
    """Shard sets to pretrain on, the downstream tasks, and a one-line description of the data."""
    from sonofm.datasets.build.orchestrate import SourceSpec

    if data is None:
        stage("synthetic corpus")
        corpus = _synthetic_corpus(out, plan, workers)
        stage(f"shards: train/val/test = {SPLITS['train']}/{SPLITS['val']}/{SPLITS['test']} by patient")
        shards = out / "shards"
        _build([SourceSpec(adapter="synthetic", root=corpus)], shards, plan, workers)
        tasks = [Task("synthetic", shards, "probe", "patient"), Task("synthetic lesion", shards, "seg", "patient")]
        return [shards], tasks, f"synthetic corpus ({plan.n_images} images of {plan.corpus_size} px)"

    stage(f"looking for known dataset layouts in {data}")
    found = find_datasets(data)
    known = known_layouts()
    for name, root in found.items():
        print(f"  found {known[name].display} at {root}")
    stage(f"shards: train/val/test = {SPLITS['train']}/{SPLITS['val']}/{SPLITS['test']} by group, "
          f"stored at most {plan.max_side} px")
    sets, tasks = [], []
    for name, root in found.items():
        options = dict(plan.pocus_options) if name == "pocus" else {}
        shards = out / "shards" / name
        _build([SourceSpec(adapter=name, root=root, options=options)], shards, plan, workers)
        sets.append(shards)
        tasks += tasks_of(name, shards)
    return sets, tasks, "real data: " + ", ".join(known[n].display for n in found)


# ------------------------------------------------------------------------------------ pretraining


def seed_root(out: Path, seed: int) -> Path:
    """Where one seed's pretraining, probes and segmentation go: ``out`` itself for seed 0 (the run the
    README's next commands use), ``out/seed-<k>`` for the others."""
    return out if seed == SEED else out / f"seed-{seed}"


def pretrain_config(out: Path, shard_sets: list[Path], plan: Plan, seed: int = SEED) -> Any:
    """The quickstart recipe with the plan's overrides, pretraining on the train split of ``shard_sets``
    into ``seed_root(out, seed)/pretrain`` with that seed."""
    from sonofm.config import PretrainConfig, load_config

    cfg = load_config(PretrainConfig, RECIPE, [f"{k}={v}" for k, v in plan.pretrain.items()])
    cfg.seed = seed
    cfg.run_dir = str(seed_root(out, seed) / "pretrain")
    cfg.data.shards = [str(p) for p in shard_sets]
    cfg.data.split = "train"
    return cfg


def _config_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _config_diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def check_same_recipe(cfg: Any, ignore: tuple[str, ...] = ()) -> None:
    """Refuse to resume a run folder made with another recipe (e.g. ``--small`` then the full run)."""
    from sonofm.checkpoints import latest_checkpoint
    from sonofm.config import PretrainConfig, load_config

    run_dir = Path(cfg.run_dir)
    saved = run_dir / "config.yaml"
    if latest_checkpoint(run_dir) is None or not saved.is_file():
        return
    old = asdict(load_config(PretrainConfig, saved))
    new = asdict(cfg)
    diff = [k for k in _config_diff(old, new) if k not in ("logging.progress", *ignore)]
    if diff:
        raise ValueError(
            f"{run_dir} holds a pretraining run with another recipe (differs in {', '.join(diff)}); "
            "pass another --out (e.g. --out runs/quickstart_small for --small) or remove that folder"
        )


def pretrain_stage(cfg: Any, stage: Stages, suffix: str = "") -> Path:
    """Pretrain (or resume, or find complete) the run in ``cfg.run_dir``; its folder."""
    from sonofm.checkpoints import latest_checkpoint
    from sonofm.pretrain.engine import run_pretraining

    check_same_recipe(cfg)
    stage(f"pretraining {cfg.model.name} on the train split: {cfg.steps} steps of {cfg.data.batch_size} images "
          f"at {cfg.data.img_size} px, mask ratio {cfg.masking.ratio}, hierarchical classifier weight "
          f"{cfg.hierarchy.weight}{suffix} (resumes from {cfg.run_dir}/checkpoints when present)", number=3)
    import torch

    threads = torch.get_num_threads()
    try:
        run_dir = run_pretraining(cfg, resume="auto")
    finally:  # the engine sizes its intra-op threads for its loader workers; the next stages use ours
        torch.set_num_threads(threads)
    if latest_checkpoint(run_dir) is None:
        raise RuntimeError(f"{run_dir}: pretraining finished without a checkpoint")
    return Path(run_dir)


# ------------------------------------------------------------------------------ downstream stages


def _split(shards: Path, split: str, binary_mask: bool = False) -> list[Any]:
    """Samples of one split of a shard set; none (not an error) when the split received no group.

    The shard indexes count every split's samples, so an empty split is known before reading.
    """
    from sonofm.datasets.shards import load_indexes
    from sonofm.finetune.data import samples_from_shards

    if not sum(int(s["count"]) for idx in load_indexes(shards) for s in idx["shards"] if s["split"] == split):
        return []
    return samples_from_shards(shards, split, binary_mask)


def baseline_encoders(baselines: list[str] | None) -> dict[str, str]:
    """The comparison rows besides the pretrained encoder, by row name: ``random`` always (the conclusion
    is about it), then ``baselines`` (specs; ``random`` means the random one) or, when None, the ImageNet
    row if its weights are in the local Hugging Face cache; otherwise one line says it was left out."""
    from sonofm.models.encoder_spec import cache_folder, check_spec, hub_repo, weights_cached

    rows = {"random": RANDOM_SPEC}
    if baselines is None:
        if weights_cached(IMAGENET_SPEC) is not None:
            rows[IMAGENET_SPEC] = IMAGENET_SPEC
        else:
            repo = hub_repo(IMAGENET_SPEC)
            print(f"  ImageNet row left out: {IMAGENET_SPEC} is not in the Hugging Face cache ({cache_folder(repo)}); "
                  f"`hf download {repo}` adds it to the next run")
        return rows
    for spec in baselines:
        if spec.strip() in ("random", RANDOM_SPEC):
            continue
        check_spec(spec)
        rows[spec.strip()] = spec.strip()
    return rows


def probe(task: Task, encoders: dict[str, str], out: Path, plan: Plan, seed: int = SEED,
          device: str = "cpu") -> dict[str, Any]:
    """Linear + kNN probes of every encoder on the task's test split; returns reports by encoder.

    ``seed`` seeds the random encoder's initialisation, the cross-validation folds and the probes; the
    reports go under ``seed_root(out, seed)/probe``. ``device`` extracts the features (the GPU study)."""
    from sonofm.evaluation.probe import run_probe
    from sonofm.finetune.data import iterate_batches

    samples = [s for s in _split(task.shards, "test") if s.meta.get("label") is not None]
    groups = {s.group for s in samples}
    classes = sorted({str(s.meta["label"]) for s in samples})
    folds = min(plan.probe_folds, len(groups))
    if folds < 2 or len(classes) < 2:
        print(f"  {task.name}: skipped ({len(samples)} labelled test images, {len(groups)} {task.group_desc}s, "
              f"{len(classes)} classes: too few for cross-validation)")
        return {}
    print(f"  {task.name}: {len(samples)} held-out test images of {len(groups)} {task.group_desc}s, "
          f"classes {classes}, {folds}-fold CV by {task.group_desc}")
    reports = {}
    n_batches = math.ceil(len(samples) / 32)
    for enc, spec in encoders.items():
        folder = seed_root(out, seed) / "probe" / safe_name(task.name) / safe_name(enc)
        key = {"weights": weights_id(spec), "size": plan.eval_size, "folds": folds, "n": len(samples),
               "shards": str(task.shards), "seed": seed}

        def compute(spec: str = spec, folder: Path = folder, enc: str = enc) -> dict[str, Any]:
            batches = _bar(iterate_batches(samples, plan.eval_size, 32), n_batches, f"features {enc}")
            return run_probe(spec, batches, folder, classes=classes, folds=folds, seed=seed, device=device,
                             data_id=f"{task.shards}:test:{plan.eval_size}", print_table=False)

        reports[enc] = reuse(folder, "probe.json", key, compute)
    return reports


def seg(task: Task, encoders: dict[str, str], out: Path, plan: Plan, seed: int = SEED) -> dict[str, Any]:
    """UPerNet finetuning per encoder on the train split; metrics on test images with a foreground.

    ``seed`` seeds the initialisation (decoder, and the random encoder), batch order and augmentation;
    the reports go under ``seed_root(out, seed)/seg``."""
    from sonofm.finetune.seg_train import run_seg_finetune

    train = [s for s in _split(task.shards, "train", binary_mask=True) if s.mask is not None]
    test = [s for s in _split(task.shards, "test", binary_mask=True) if s.mask is not None and s.mask.any()]
    if not train or not test:
        print(f"  {task.name}: skipped ({len(train)} train images with masks, {len(test)} test images with a "
              "foreground)")
        return {}
    mm = all(s.meta.get("pixel_spacing_mm") for s in test)
    print(f"  {task.name}: train on {len(train)} images ({len({s.group for s in train})} {task.group_desc}s), "
          f"evaluate on {len(test)} held-out test images with a foreground, at their stored size; "
          f"{plan.seg_steps} steps of {plan.seg_batch} at {plan.eval_size} px; HD95 in {'mm' if mm else 'px'}")
    reports = {}
    for enc, spec in encoders.items():
        folder = seed_root(out, seed) / "seg" / safe_name(task.name) / safe_name(enc)
        key = {"weights": weights_id(spec), "size": plan.eval_size, "steps": plan.seg_steps,
               "batch": plan.seg_batch, "lr": plan.seg_lr, "channels": plan.seg_channels,
               "n_train": len(train), "n_test": len(test), "shards": str(task.shards), "seed": seed,
               "loss": "ce + per-image soft dice"}

        def compute(spec: str = spec, folder: Path = folder, enc: str = enc) -> dict[str, Any]:
            return run_seg_finetune(
                spec, train, test, folder, img_size=plan.eval_size, steps=plan.seg_steps, batch_size=plan.seg_batch,
                lr=plan.seg_lr, warmup_steps=max(1, plan.seg_steps // 10), eval_every=0,
                decoder_channels=plan.seg_channels, seed=seed, n_overlays=plan.n_overlays, progress=f"seg {enc}",
            )

        rep = reuse(folder, "report.json", key, compute)
        rep["hd95_unit"] = "mm" if mm else "px"
        reports[enc] = rep
        f = rep["final"]
        print(f"    {enc}: Dice {f['dice']:.3f}  HD95 {hd95(rep):.1f} {rep['hd95_unit']}  "
              f"(loss {rep['first_loss']:.3f} -> {rep['last_loss']:.3f})")
    return reports
