"""``sonofm predict RUN --source fmuia:ROOT --out DIR``: a finetuned universal model over new images.

Each image goes through the build's own preprocessing (the settings its dataset's shards were built
with, kept in the run's ``best/meta.json``: grayscale, crop to the acoustic field, resize), the
evaluation letterbox, the model head of its task, and back: masks to the original size, boxes and
points to original pixels (:mod:`sonofm.datasets.preprocess.geometry`). Each task kind turns its
output into the challenge's prediction files (:mod:`sonofm.evaluation.fmuia_predictions`).

Labels never shape a prediction: an adapter that can read a root without its labels is asked to
(``labels=false``: a row whose labels are bad still gets its prediction), and masks, boxes and
points are dropped from each record before preprocessing (the build grows the crop to keep a
target; prediction crops to the detected field alone). Prediction streams: images are read one at a time, a batch per task is held at most, and the
writer appends every entry to disk as it comes, so memory does not grow with the number of images.
A row that cannot be read is counted and named in the summary, never fatal; a task the run has no
head for is an error before any work.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from sonofm.datasets.preprocess.pipeline import preprocess
from sonofm.datasets.sources.adapters import ADAPTERS
from sonofm.datasets.sources.imageio import AdapterError
from sonofm.datasets.sources.records import Record
from sonofm.datasets.sources.specs import make_adapter, parse_source_arg
from sonofm.datasets.stream.augment import eval_sample
from sonofm.errors import UserError
from sonofm.evaluation.fmuia_predictions import PredictionWriter
from sonofm.finetune.data import GEOMETRY_KEYS
from sonofm.finetune.tasks import TaskKind, get_task_kind
from sonofm.models.loading import load_encoder
from sonofm.models.prompt_model import Prompt, PromptModel
from sonofm.train.accel import within_omp_thread_limit

__all__ = ["HeadSpec", "load_universal", "predict_source"]

#: the build settings prediction uses when the run does not record them (the build's defaults)
DEFAULT_BUILD = {"max_side": 512, "text": "blank"}


class RunError(UserError, ValueError):
    """A run folder that holds no finetuned universal model."""


@dataclass
class HeadSpec:
    """What a saved run says of one dataset's head (enough to rebuild it and to preprocess like its build)."""

    name: str
    task: str
    num_classes: int
    organ: str = "unlabelled"
    nature: str = "organ"
    classes: list[str] | None = None
    head_mode: str | None = None
    build: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> TaskKind:
        return get_task_kind(self.task)


def load_universal(run: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[PromptModel, dict[str, Any],
                                                                                     dict[str, HeadSpec]]:
    """The best model of a universal finetuning run (``RUN/best``, or ``RUN`` itself), its meta and heads."""
    run = Path(run)
    best = run / "best" if (run / "best" / "meta.json").is_file() else run
    meta_file, weights = best / "meta.json", best / "model.safetensors"
    if not meta_file.is_file() or not weights.is_file():
        raise RunError(f"{run}: no finetuned model here (expected best/meta.json and best/model.safetensors "
                       "written by 'sonofm finetune universal')")
    meta = json.loads(meta_file.read_text())
    if "tasks" not in meta or "encoder" not in meta:
        raise RunError(f"{meta_file}: not a universal finetuning run (no 'tasks'); 'sonofm predict' needs one")
    specs = {t["name"]: HeadSpec(t["name"], t["task"], int(t["num_classes"]), t.get("organ", "unlabelled"),
                                 t.get("nature", "organ"), t.get("classes"), t.get("head_mode"), t.get("build") or {})
             for t in meta["tasks"]}
    enc_info = meta["encoder"]
    enc, _ = load_encoder(f"random:{enc_info['name']}", in_chans=int(enc_info.get("in_chans", 1)))
    channels, dropout = int(meta.get("decoder_channels", 128)), 0.1
    heads = {n: s.kind.make_head(s, channels, int(enc.num_features), dropout) for n, s in specs.items()}
    model = PromptModel(enc, meta["organs"], heads=heads, decoder_channels=channels,
                        use_prompts=bool(meta.get("use_prompts", True)), dropout=dropout)
    model.load_state_dict(load_file(str(weights)), strict=True)
    return model.to(device).eval(), meta, specs


@dataclass
class _Pending:
    """Rows of one task waiting for a full batch."""

    rows: list[dict[str, Any]] = field(default_factory=list)


def _records(adapter: Any, problems: Counter[str], named: list[str]) -> Iterator[tuple[str, Any]]:
    """(source, record) for every row the adapter can read, in its order; what it cannot is counted and
    named (rows the listing rejects are in the adapter's own counts, see :func:`predict_source`)."""
    for item in adapter.list_items():
        try:
            for record in adapter.load(item):
                yield str(record.meta.get("source") or item.meta.get("source")), record
        except (AdapterError, OSError, ValueError) as e:
            problems["unreadable"] += 1
            named.append(f"{item.meta.get('image_path', item.path)}: {e}")


def predict_source(run: str | os.PathLike, source: str, out_dir: str | os.PathLike, *, batch_size: int = 16,
                   device: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Predict every image of ``source`` (e.g. ``fmuia:ROOT``) with the run's model; write the prediction
    files into ``out_dir`` and return a summary (files, counts per task, rows skipped, images/s)."""
    from tqdm import tqdm

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    within_omp_thread_limit()
    model, meta, specs = load_universal(run, dev)
    size = int(meta.get("img_size", 224))
    spec_arg = parse_source_arg(source)
    if isinstance(spec_arg, list):
        raise UserError(f"predict: give one source, got {len(spec_arg)} from {source!r}")
    if "labels" in getattr(ADAPTERS.get(spec_arg.adapter), "options", {}):
        spec_arg.options.setdefault("labels", False)  # read every image row, whatever its labels hold
    adapter = make_adapter(spec_arg)
    missing = sorted(set(adapter.sources()) - set(specs))
    if missing:
        raise RunError(f"{run}: the model has no head for {', '.join(missing)} (heads: {', '.join(sorted(specs))}); "
                       "finetune on shards built from the same challenge root (task ids name the heads)")
    writer = PredictionWriter(Path(out_dir))
    pending: dict[str, _Pending] = {}
    counts: Counter[str] = Counter()
    problems: Counter[str] = Counter()
    named: list[str] = []
    start = time.perf_counter()

    @torch.no_grad()
    def flush(name: str) -> None:
        rows = pending.pop(name).rows
        spec = specs[name]
        x = torch.stack([r["image"] for r in rows]).to(dev)
        prompts = [Prompt(spec.organ, spec.kind.name, "whole", spec.nature)] * len(rows) if model.use_prompts else None
        out = model(x, name, spec.kind.name, prompts)
        for j, r in enumerate(rows):
            spec.kind.write(writer, r["meta"], spec.kind.predict(out, j, r, spec))
            counts[name] += 1

    bar = tqdm(desc="predict", unit="img", disable=not progress)
    try:
        for name, record in _records(adapter, problems, named):
            spec = specs[name]
            build = {**DEFAULT_BUILD, **spec.build}
            unlabelled = Record(record.image, None, {k: v for k, v in record.meta.items() if k not in GEOMETRY_KEYS})
            processed = preprocess(unlabelled, max_side=int(build["max_side"]), text=str(build.get("text") or "blank"))
            t = eval_sample(processed.image, processed.field_mask, None, size, "letterbox")
            pending.setdefault(name, _Pending()).rows.append(
                {"image": t["image"], "view": t["view"], "input_size": size, "stored_image": processed.image,
                 "meta": processed.meta})
            if len(pending[name].rows) >= batch_size:
                flush(name)
            bar.update(1)
        for name in list(pending):
            flush(name)
        files = writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    n = sum(counts.values())
    notes = list(getattr(adapter, "notes", []))  # rows the listing and loading left out, named
    problems.update({c: int(adapter.stats.get(c, 0)) for c in {n["counter"] for n in notes}})
    named += [f"{n['file']}: {n['reason']}" for n in notes]
    return {"out_dir": str(out_dir), "files": [str(f) for f in files], "images": n, "per_task": dict(counts),
            "skipped": dict(problems), "skipped_rows": named, "seconds": seconds,
            "images_per_second": n / seconds if seconds > 0 else float("nan"), "device": str(dev)}
