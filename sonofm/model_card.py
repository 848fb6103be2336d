"""The model card (``README.md``) of an exported backbone: data, recipe, results, licences, usage.

A published encoder is only as trustworthy as what its card says about it, so every number here is
read from the run itself: sample counts from the shard indexes the run streamed, the recipe from the
run's resolved ``config.yaml``, steps and images seen from the checkpoint, downstream figures from
a results JSON the user measured. Where something cannot be found, the card says so instead of
guessing.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sonofm.datasets.shards import load_indexes
from sonofm.datasets.taxonomy import Licence, display, source_facts
from sonofm.evaluation.records import RECORD_KEYS, RESULTS_FORMAT, result_record

#: The licence of a source sonofm has no facts about (a user's or a self-describing source).
UNKNOWN_LICENCE = Licence("unknown to sonofm: check this source's terms before publishing", "other", "unknown")


def source_licence(source: str) -> Licence:
    """Licence of one data source, from its facts in the built-in taxonomy (``configs/taxonomy.yaml``)."""
    facts = source_facts(source.lower())
    return facts.licence if facts is not None and facts.licence is not None else UNKNOWN_LICENCE


def model_licence(sources: list[str]) -> str:
    """The most restrictive licence among the data: a non-commercial source makes the weights NC too.

    Synthetic-only data leaves the project's own licence (Apache-2.0). An unknown source gives
    ``other``: the publisher must decide, not sonofm.
    """
    kinds = {source_licence(s).kind for s in sources}
    if "noncommercial" in kinds:
        return "cc-by-nc-4.0"
    if "unknown" in kinds or not sources:
        return "other"
    if "attribution" in kinds:
        return "cc-by-4.0"
    if all(source_licence(s).id == "cc0-1.0" for s in sources):
        return "cc0-1.0"
    return "apache-2.0"


# ------------------------------------------------------------------------------------------ data


@dataclass
class DataSummary:
    """Per-source counts read from the shard indexes of a run, and notes on what could not be read."""

    sources: list[dict[str, Any]] = field(default_factory=list)  # {source, folder, total, split, organ, label}
    notes: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [s["source"] for s in self.sources]


def _candidates(entry: str, run_dir: Path) -> list[Path]:
    """Where a relative shard path from a config may live: the working directory, then the run dir
    and each of its ancestors (a run dir usually sits inside the project the run was launched from)."""
    p = Path(entry)
    if p.is_absolute():
        return [p]
    out = [Path.cwd() / p]
    for base in [run_dir, *run_dir.resolve().parents]:
        out.append(base / p)
    return out


def _source_counts(data: dict[str, Any]) -> dict[str, Any]:
    counts = data.get("counts") if isinstance(data.get("counts"), dict) else {}
    split = {str(k): int(v) for k, v in (counts.get("split") or {}).items()}
    if not split:  # fall back on the per-shard counts
        for shard in data.get("shards", []):
            if isinstance(shard, dict) and "split" in shard and "count" in shard:
                split[str(shard["split"])] = split.get(str(shard["split"]), 0) + int(shard["count"])
    return {
        "source": str(data["source"]),
        "total": sum(split.values()),
        "split": split,
        # indexes written before "unlabelled" existed count unknown values under "None"
        "organ": {display(None if k == "None" else k): int(v) for k, v in (counts.get("organ") or {}).items()},
        "label": {display(None if k == "None" else k): int(v) for k, v in (counts.get("label") or {}).items()},
        "taxonomy": (data.get("taxonomy") or {}).get("source"),
    }


def read_data_summary(shards: list[str], run_dir: str | os.PathLike) -> DataSummary:
    """Counts per source, split, organ and label from the shard indexes of every shard folder the run
    streamed (read by their owner, :func:`sonofm.datasets.shards.load_indexes`). Entries that are not
    local folders, or folders without a readable index, are reported in ``notes`` (the card prints them)
    rather than silently dropped."""
    run_dir = Path(run_dir)
    summary = DataSummary()
    if not shards:
        summary.notes.append("the run's config lists no shard folders (data.shards is empty)")
    for entry in shards:
        folder = next((c for c in _candidates(entry, run_dir) if c.is_dir()), None)
        if folder is None:
            summary.notes.append(
                f"`{entry}`: shard index not found (not a local folder from here or from the run dir); "
                "its sources and counts are not listed"
            )
            continue
        try:
            indexes = load_indexes(folder)
        except (OSError, ValueError) as e:  # the index owner names the file that does not read
            summary.notes.append(f"`{entry}`: {e}; its sources and counts are not listed")
            continue
        if not indexes:
            summary.notes.append(f"`{entry}`: no shard index in {folder}; counts unknown")
            continue
        for data in indexes:
            summary.sources.append({**_source_counts(data), "folder": entry})
    return summary


# --------------------------------------------------------------------------------------- results


def _is_metric(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    return isinstance(value, dict) and "mean" in value and isinstance(value["mean"], (int, float))


def _fmt(value: Any) -> str:
    def num(v: float) -> str:
        if isinstance(v, int) and not isinstance(v, bool):
            return str(v)
        return "nan" if math.isnan(v) else f"{v:.4g}"

    if isinstance(value, dict):
        text = num(value["mean"])
        if isinstance(value.get("std"), (int, float)):
            text += f" ± {num(value['std'])}"
        return text
    return num(value)


# the records' format lives with the evaluation stage (probes and finetuning write it too)


def _probe_records(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Records of a ``probe.json`` (``sonofm probe``): its data, split, folds and encoder are in it."""
    data = report.get("data") or {}
    dataset = ", ".join(data.get("datasets") or []) or "—"
    folds = len(report.get("folds") or [])
    encoder = (report.get("encoder") or {}).get("spec", "—")
    out = []
    for method, res in report["methods"].items():
        protocol = f"{'linear' if method == 'linear' else 'kNN'} probe, frozen features, {folds}-fold CV by group"
        for metric, value in (res.get("summary") or {}).items():
            if _is_metric(value):
                out.append(result_record("classification", dataset, data.get("split", "—"), protocol, encoder,
                                         metric, value, report.get("n_samples")))
    return out


def _nested_records(node: dict[str, Any], path: list[str]) -> list[dict[str, Any]]:
    """Records of a hand-written ``{task: {encoder...: {metric: value}}}``: nothing says the data or split."""
    out = []
    for k, v in node.items():
        if _is_metric(v):
            out.append(result_record(path[0] if path else "results", "—", "—", "—",
                                     " / ".join(path[1:]) or "—", str(k), v))
        elif isinstance(v, dict):
            out += _nested_records(v, [*path, str(k)])
    return out


def result_records(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The reported numbers of a results file in any of its forms: sonofm's records
    (:data:`RESULTS_FORMAT`, as the quickstart writes), a ``probe.json``, or a nested
    ``{task: {metric: value | {"mean", "std"}}}`` (lists and notes in it are left out)."""
    if isinstance(results.get("results"), list):
        return [r for r in results["results"] if isinstance(r, dict) and _is_metric(r.get("mean"))]
    if isinstance(results.get("methods"), dict) and "folds" in results:
        return _probe_records(results)
    return _nested_records(results, [])


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read a results JSON; a clear error names the file when it is missing or holds no numeric metric."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"results file not found: {p}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{p}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{p}: results must be a JSON object {{task: {{metric: value}}}}, got {type(data).__name__}")
    if not result_records(data):
        raise ValueError(f"{p}: no numeric metrics found (expected sonofm's results records, a probe.json, or "
                         "{task: {metric: value or {mean, std}}})")
    return data


def results_table(results: dict[str, Any]) -> str:
    """Markdown table, one row per reported number: task, dataset, split, protocol, encoder, metric,
    mean ± std, n."""
    lines = ["| task | dataset | split | protocol | encoder | metric | mean ± std | n |",
             "|---|---|---|---|---|---|---|---|"]
    def num(v: float) -> str:
        return "nan" if math.isnan(v) else f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"

    for r in result_records(results):
        value = num(r["mean"]) + (f" ± {num(r['std'])}" if r.get("std") is not None else "")
        cells = [str(r.get(k) if r.get(k) not in (None, "") else "—") for k in RECORD_KEYS]
        n = r.get("n")
        lines.append("| " + " | ".join([*cells, value, str(n) if n is not None else "—"]) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- card


@dataclass
class CardInfo:
    """Everything the card shows; export fills it from the run."""

    architecture: str
    in_chans: int
    img_size: int
    num_features: int
    feature_channels: list[int]
    num_params: int
    mean: list[float]
    std: list[float]
    step: int
    images_seen: int | None
    weights: str  # "model" or "ema"
    ema_decay: float
    run_name: str  # the run dir as the config names it
    recipe: dict[str, Any]  # flat "section.key": value of the resolved config
    data: DataSummary
    licence: str
    title: str = ""
    repo_id: str | None = None
    results: dict[str, Any] | None = None
    results_source: str | None = None
    init: dict[str, Any] | None = None  # continued pretraining: the spec and source of the initial weights


def _counts_text(counts: dict[str, int]) -> str:
    if not counts:
        return "—"
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _place(entry: dict[str, Any] | None) -> str:
    """``region / organ`` of a source as its shard index stores it (older indexes store none)."""
    if not entry:
        return "not recorded"
    declared = "" if entry.get("declared", True) else " (self-described)"
    return f"{display(entry.get('region'))} / {display(entry.get('organ'))}{declared}"


def _data_section(data: DataSummary, split: str) -> list[str]:
    out = ["## Training data", ""]
    if data.sources:
        splits = sorted({s for src in data.sources for s in src["split"]},
                        key=lambda s: (["train", "val", "test"] + [s]).index(s))
        out += [
            f"Sample counts from the shard indexes of the run (pretraining streamed the `{split}` split).",
            "",
            "| source | place in the taxonomy | images | " + " | ".join(splits) + " | organs | labels |",
            "|---|---|---|" + "---|" * len(splits) + "---|---|",
        ]
        for src in data.sources:
            cells = [str(src["split"].get(s, 0)) for s in splits]
            out.append(f"| {src['source']} | {_place(src.get('taxonomy'))} | {src['total']} | " + " | ".join(cells)
                       + f" | {_counts_text(src['organ'])} | {_counts_text(src['label'])} |")
        totals = [str(sum(src["split"].get(s, 0) for src in data.sources)) for s in splits]
        out.append(f"| **total** | | {sum(src['total'] for src in data.sources)} | " + " | ".join(totals)
                   + " | | |")
        out.append("")
    else:
        out += ["No shard index could be read, so the sources and their counts are unknown.", ""]
    for note in data.notes:
        out.append(f"- Note: {note}")
    if data.notes:
        out.append("")
    return out


def _licence_section(info: CardInfo) -> list[str]:
    out = ["## Licences", "", f"Weights: `{info.licence}` (the most restrictive licence among the training data; "
           "code: Apache-2.0).", ""]
    for name in info.data.names:
        out.append(f"- **{name}**: {source_licence(name).text}.")
    noncommercial = [name for name in info.data.names if source_licence(name).kind == "noncommercial"]
    if noncommercial:
        shown = [facts.display if (facts := source_facts(n.lower())) else n for n in noncommercial]
        these = f"{shown[0]} is" if len(shown) == 1 else f"{', '.join(shown[:-1])} and {shown[-1]} are"
        out += ["", f"> **Non-commercial caveat**: {these} among the training sources, with files under a "
                "non-commercial licence (see above), so these weights are for non-commercial use only."]
    if not info.data.names:
        out.append("- The training sources could not be determined: check their terms before any reuse.")
    return out + [""]


def _usage_section(info: CardInfo, local_name: str) -> list[str]:
    hub = info.repo_id or "<namespace>/<repo>"
    s = info.img_size
    c = info.in_chans
    convert = '.convert("L")' if c == 1 else '.convert("RGB")'
    return [
        "## How to use",
        "",
        "Plain [timm](https://github.com/huggingface/pytorch-image-models) (>= 1.0.15 for `local-dir:`), no sonofm "
        "code needed:",
        "",
        "```python",
        "import timm, torch",
        "from PIL import Image",
        "",
        f'model = timm.create_model("hf-hub:{hub}", pretrained=True)  # or "local-dir:{local_name}"',
        "model.eval()",
        "cfg = timm.data.resolve_data_config({}, model=model)  "
        f"# input_size {[c, s, s]}, mean {info.mean}, std {info.std}",
        "transform = timm.data.create_transform(**cfg)",
        f'x = transform(Image.open("frame.png"){convert}).unsqueeze(0)  # [1, {c}, {s}, {s}]',
        "with torch.no_grad():",
        f"    emb = model(x)  # pooled, normalised embedding [1, {info.num_features}]",
        f"    fmap = model.forward_features(x)  # [1, {info.num_features}, {s // 32}, {s // 32}]",
        "```",
        "",
        "### Preprocessing the backbone expects",
        "",
        "sonofm trained on frames prepared like this; give the backbone the same, or its features mean less:",
        "",
        "1. **Cropped to the acoustic field**: the fan or rectangle of tissue only, without the scanner's "
        "UI, text, rulers and the black border (sonofm's shard build finds the field and crops to its box).",
        f"2. **{'Grayscale' if c == 1 else f'{c} channels'}**, 8-bit intensities scaled to [0, 1]"
        + (" (colour Doppler pixels were blanked in training; convert colour frames with `.convert(\"L\")`)."
           if c == 1 else "."),
        f"3. **Normalised** with mean {info.mean} and std {info.std} (in `config.json`; timm's transform above "
        "applies them), resized bilinearly with the whole field kept (`crop_pct` 1.0).",
        "",
        f"- **{c}-channel input**: the stem was trained on {'grayscale B-mode' if c == 1 else f'{c}-channel'} "
        f"images. "
        + ("If a pipeline insists on RGB, "
           "`in_chans=3` loads too: timm spreads the stem filters over three channels, so the same gray image "
           f"in all three (each normalised with mean {info.mean[0]}, std {info.std[0]}) gives the same features."
           if c == 1 else ""),
        f"- **Dense features** (segmentation, detection): `timm.create_model(\"hf-hub:{hub}\", pretrained=True, "
        f"features_only=True)` returns the four stage maps (strides 4, 8, 16, 32; channels "
        f"{info.feature_channels}).",
        f"- **Finetuning a classifier**: `timm.create_model(\"hf-hub:{hub}\", pretrained=True, num_classes=N)` "
        "adds a freshly initialised head.",
        "",
        "### In segmentation_models_pytorch",
        "",
        "`features.safetensors` holds the same weights under the names of timm's `features_only` model, which is "
        "what an smp `tu-` encoder holds in `model.encoder.model`; it loads strictly, no key renaming:",
        "",
        "```python",
        "import segmentation_models_pytorch as smp",
        "from huggingface_hub import hf_hub_download",
        "from safetensors.torch import load_file",
        "",
        f'model = smp.Unet("tu-{info.architecture}", encoder_weights=None, in_channels={c}, classes=2)',
        f'path = hf_hub_download("{hub}", "features.safetensors")  # or "{local_name}/features.safetensors"'
        if info.repo_id else f'path = "{local_name}/features.safetensors"  # or hf_hub_download(REPO, "features.safetensors")',
        "model.encoder.model.load_state_dict(load_file(path), strict=True)",
        "```",
        f"- Any input size works (fully convolutional; sides divisible by 32 keep every stage aligned); "
        f"pretraining used {s}×{s} crops.",
        "",
    ]


def render_card(info: CardInfo, local_name: str = "OUT_DIR") -> str:
    """The model card text: YAML front matter for the Hub, then the sections."""
    r = info.recipe
    title = info.title or (info.repo_id.split("/")[-1] if info.repo_id else f"sonofm {info.architecture}")
    front = [
        "---",
        "library_name: timm",
        f"license: {info.licence}",
        "pipeline_tag: image-feature-extraction",
        "tags:",
        *[f"- {t}" for t in ("timm", "image-feature-extraction", "ultrasound", "medical-imaging",
                             "convnext", "masked-image-modeling", "sonofm")],
        "---",
        "",
    ]
    weights = f"EMA weights (decay {info.ema_decay})" if info.weights == "ema" else "model weights"
    seen = f"{info.images_seen:,}" if info.images_seen is not None else "unknown"
    body = [
        f"# {title}",
        "",
        f"A **{info.architecture}** encoder ({info.num_params / 1e6:.2f} M parameters, {info.in_chans}-channel "
        f"input) pretrained on B-mode ultrasound with sonofm's masked image modelling "
        f"(dense emulation of FCMAE/SparK sparse convolution, {r['masking.ratio']:.0%} of 32-pixel patches "
        f"masked, `{r['decoder.kind']}` decoder, `{r['target.kind']}` target)"
        + (f" plus a hierarchical taxonomy classifier (loss weight {r['hierarchy.weight']})"
           if r["hierarchy.weight"] > 0 else "")
        + ". It is a headless backbone in timm's own format: pooled embedding of "
        f"{info.num_features} features, stage channels {info.feature_channels}.",
        "",
        f"- Training: **{info.step:,} steps**, **{seen} images seen**, {info.img_size}×{info.img_size} crops; "
        f"exported from the {weights} of run `{info.run_name}`.",
        (f"- Initial weights: `{info.init.get('spec')}` (from {info.init.get('source') or info.init.get('kind')}"
         + (f", stem adapted from {info.init['adapted_from_chans']} channels by timm's adapt_input_conv"
            if info.init.get("adapted_from_chans") else "") + "); the decoder and heads started new."
         if info.init else "- Initial weights: random (pretrained from scratch)."),
        "- Research use only: not a medical device, not validated for diagnosis.",
        "",
    ]
    body += _data_section(info.data, str(r.get("data.split", "train")))
    body += ["## Recipe", "", "| key | value |", "|---|---|"]
    body += [f"| `{k}` | {json.dumps(v) if not isinstance(v, str) else v} |" for k, v in r.items()]
    body += [""]
    body += ["## Downstream results", ""]
    if info.results:
        src = f" (from `{info.results_source}`)" if info.results_source else ""
        body += [f"Measured by the publisher{src}; mean ± std over folds where several were run "
                 "(a single run shows no spread); n = evaluated samples.", "",
                 results_table(info.results), ""]
    else:
        body += ["No downstream results were supplied with this export (`sonofm export ... --results FILE`).", ""]
    body += _licence_section(info)
    body += _usage_section(info, local_name)
    return "\n".join(front + body).rstrip() + "\n"


__all__ = [
    "CardInfo",
    "DataSummary",
    "RESULTS_FORMAT",
    "load_results",
    "result_record",
    "result_records",
    "model_licence",
    "read_data_summary",
    "render_card",
    "results_table",
    "source_licence",
]
