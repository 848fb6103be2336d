"""``sonofm shards inspect``: the shard indexes as a table, and a contact sheet per source.

A glance at counts (per split, organ and label), at the build report (decode errors, duplicates,
colour images, burnt-in text) and at a grid of stored images with their masks catches most data
problems before they cost a pretraining run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from sonofm.atomic_io import atomic_file
from sonofm.datasets.shards import decode_png, iter_tar_samples, load_indexes
from sonofm.datasets.taxonomy import display

TILE = 128
COLUMNS = 8


def _fmt_counts(counts: dict[str, Any]) -> str:
    # indexes written before "unlabelled" existed count unknown values under "None"
    return ", ".join(f"{display(None if k == 'None' else k)} {v}" for k, v in counts.items()) or "-"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths)), line]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


def _summary_rows(shard_dir: Path, indexes: list[dict[str, Any]]) -> tuple[list[list[str]], list[str]]:
    rows, problems = [], []
    for idx in indexes:
        src = idx["source"]
        shards = idx["shards"]
        missing = [s["file"] for s in shards if not (shard_dir / s["file"]).is_file()]
        if missing:
            problems.append(f"{src}: {len(missing)} shard(s) named in the index are missing: {missing[:5]}")
        if not idx.get("complete", True):
            problems.append(f"{src}: the index is marked incomplete")
        rep = idx.get("report", {})
        split = idx.get("counts", {}).get("split", {})
        groups = idx.get("counts", {}).get("groups", {})
        rows.append([
            src,
            str(len(shards)),
            str(sum(int(s.get("count", 0)) for s in shards)),
            ", ".join(f"{k} {split[k]}" for k in sorted(split)) or "-",
            ", ".join(f"{k} {groups[k]}" for k in sorted(groups)) or "-",
            str(rep.get("decode_errors", "-")),
            f"{rep.get('duplicates_exact', '-')}/{rep.get('duplicates_near', '-')}",
            str(rep.get("colour_images", "-")),
            str(rep.get("text_outside_field", "-")),
        ])
    return rows, problems


def inspect_shards(shard_dir: str | os.PathLike, contact_sheet_dir: str | os.PathLike | None = None) -> str:
    """Return the index of every source in ``shard_dir`` as text tables; save contact sheets.

    One PNG per source, ``{source}.contact.png``, goes to ``contact_sheet_dir`` (default: the
    working directory), never into the shard folder, which may be read-only or shared.
    """
    d = Path(shard_dir).expanduser()
    indexes = load_indexes(d)
    if not indexes:
        raise FileNotFoundError(f"{d}: no *.index.json found (is this a shard folder? build it first)")
    rows, problems = _summary_rows(d, indexes)
    parts = [
        f"shards in {d}",
        _table(rows, ["source", "shards", "samples", "per split", "groups", "errors", "dup ex/near",
                      "colour", "text"]),
    ]
    for idx in indexes:
        c = idx.get("counts", {})
        parts.append(f"\n{idx['source']}:")
        parts.append(f"  organ:  {_fmt_counts(c.get('organ', {}))}")
        parts.append(f"  region: {_fmt_counts(c.get('region', {}))}")
        parts.append(f"  label:  {_fmt_counts(c.get('label', {}))}")
        for split, labels in c.get("split_label", {}).items():
            parts.append(f"    {split:<6} {_fmt_counts(labels)}")
        rep = idx.get("report", {})
        for fmt, n in rep.get("formats", {}).items():
            parts.append(f"  format {fmt}: {_fmt_counts(n)}")
        for e in rep.get("errors", [])[:10]:
            parts.append(f"  error: {e.get('file')}: {e.get('reason')}")
        for w in rep.get("warnings", []):
            parts.append(f"  warning: {w}")
    sheet_dir = Path(contact_sheet_dir).expanduser() if contact_sheet_dir is not None else Path.cwd()
    sheet_dir.mkdir(parents=True, exist_ok=True)
    for idx in indexes:
        # First shard of every split first, so the sheet mixes splits.
        shards = sorted(enumerate(idx["shards"]), key=lambda t: (
            sum(1 for s in idx["shards"][: t[0]] if s["split"] == t[1]["split"]), t[1]["split"]))
        files = [d / s["file"] for _, s in shards if (d / s["file"]).is_file()]
        if not files:
            continue
        out = sheet_dir / f"{idx['source']}.contact.png"
        n = contact_sheet(files, out, title=f"{idx['source']} ({d})")
        parts.append(f"contact sheet: {out} ({n} samples)")
    if problems:
        parts.append("\nPROBLEMS:\n" + "\n".join(f"  {p}" for p in problems))
    return "\n".join(parts)


def _outline(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of ``mask > 0`` (pixel set, a 4-neighbour is not)."""
    m = mask > 0
    inner = m.copy()
    inner[1:, :] &= m[:-1, :]
    inner[:-1, :] &= m[1:, :]
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    return m & ~inner


CAPTION = 26  # two lines of PIL's default font under each thumbnail
LEGEND = 30
MASK_RGB, FIELD_RGB, TEXT_RGB = (255, 40, 40), (0, 200, 0), (255, 255, 0)


def _caption_name(meta: dict[str, Any], key: str) -> str:
    """The thumbnail's file: its source-relative path's name (and frame), else the sample key."""
    path = meta.get("path")
    name = Path(str(path)).name if path else key.rsplit("/", 1)[-1]
    frame = meta.get("frame")
    return f"{name} #{frame}" if frame is not None else name


def _fit(text: str, width: int) -> str:
    """``text`` cut from the left (keeping the distinctive end of a file name) to ``width`` characters."""
    return text if len(text) <= width else "…" + text[-(width - 1):]


def _tile(sample: dict[str, Any]) -> Image.Image:
    img = decode_png(sample["png"], "image")
    rgb = np.repeat(img[..., None], 3, axis=2)
    if "field.png" in sample:
        field = decode_png(sample["field.png"], "field")
        if field.shape == img.shape:
            rgb[_outline(field)] = FIELD_RGB
    if "mask.png" in sample:
        mask = decode_png(sample["mask.png"], "mask")
        if mask.shape == img.shape:
            rgb[_outline(mask)] = MASK_RGB
    im = Image.fromarray(rgb)
    im.thumbnail((TILE, TILE))
    tile = Image.new("RGB", (TILE, TILE + CAPTION), (20, 20, 20))
    tile.paste(im, ((TILE - im.width) // 2, (TILE - im.height) // 2))
    meta = json.loads(sample.get("json", b"{}"))
    draw = ImageDraw.Draw(tile)
    draw.text((2, TILE + 1), _fit(f"{meta.get('split', '?')} {meta.get('label') or ''}", 21), fill=TEXT_RGB)
    draw.text((2, TILE + 13), _fit(_caption_name(meta, str(sample.get("__key__", "?"))), 21), fill=(220, 220, 220))
    return tile


def _legend(width: int, title: str) -> Image.Image:
    """The strip above the grid: what the sheet shows and what each colour and caption line means."""
    strip = Image.new("RGB", (width, LEGEND), (0, 0, 0))
    draw = ImageDraw.Draw(strip)
    draw.text((4, 2), title, fill=(255, 255, 255))
    x = 4
    for colour, words in ((MASK_RGB, "mask outline"), (FIELD_RGB, "acoustic field outline"),
                          (TEXT_RGB, "split + label"), ((220, 220, 220), "file (frame)")):
        draw.rectangle((x, 18, x + 8, 26), fill=colour)
        draw.text((x + 12, 16), words, fill=colour)
        x += 12 + 6 * len(words) + 14
    return strip


def contact_sheet(shard_files: Iterable[Path], out: Path, n: int = 32, max_shards: int = 3, title: str = "") -> int:
    """Save a grid of up to ``n`` samples under a legend (mask outline red, field outline green; each
    thumbnail captioned with its split, label and file name), labels and splits mixed."""
    by_label: dict[str, list[dict[str, Any]]] = {}
    for i, f in enumerate(shard_files):
        if i >= max_shards:
            break
        for j, s in enumerate(iter_tar_samples(f)):
            if j >= 2 * n:
                break  # enough candidates from this shard; do not read all of a large one
            if "png" not in s:
                continue
            meta = json.loads(s.get("json", b"{}"))
            bucket = by_label.setdefault(f"{meta.get('label')}|{meta.get('split')}", [])
            if len(bucket) < n:
                bucket.append(s)
    chosen: list[dict[str, Any]] = []
    while len(chosen) < n and any(by_label.values()):
        for label in sorted(by_label):
            if by_label[label] and len(chosen) < n:
                chosen.append(by_label[label].pop(0))
    if not chosen:
        return 0
    cols = COLUMNS if len(chosen) > 2 else 4  # wide enough for the legend
    rows = (len(chosen) + cols - 1) // cols
    height = TILE + CAPTION
    sheet = Image.new("RGB", (cols * TILE, LEGEND + rows * height), (0, 0, 0))
    sheet.paste(_legend(cols * TILE, title or out.stem), (0, 0))
    for i, s in enumerate(chosen):
        sheet.paste(_tile(s), ((i % cols) * TILE, LEGEND + (i // cols) * height))
    with atomic_file(out) as tmp:
        sheet.save(tmp, format="PNG")
    return len(chosen)
