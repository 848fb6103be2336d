"""``quickstart --data PATH``: which known dataset layouts a folder holds, and the tasks they give.

What a layout looks like, its display name, its unit of splitting and its tasks are facts of the
source in the built-in taxonomy (``configs/taxonomy.yaml``); the adapter of the same name decides
whether a folder holds it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sonofm.datasets.taxonomy import SourceFacts, builtin_facts


@dataclass
class Task:
    """A downstream task on one shard set: a probe (``label_key``) or a segmentation (masks)."""

    name: str  # short display name ("synthetic", "BUSI", ...)
    shards: Path
    kind: str  # "probe" | "seg"
    group_desc: str  # what a group is ("patient", "image", "recording", "video")


def known_layouts() -> dict[str, SourceFacts]:
    """Built-in sources with a layout ``find_datasets`` looks for, by adapter name, in the taxonomy's order."""
    return {name: facts for name, facts in builtin_facts().items() if facts.layout}


def _candidates(root: Path, depth: int = 2) -> list[Path]:
    """``root`` and its sub-folders down to ``depth``, shallowest first (hidden folders skipped)."""
    out, level = [root], [root]
    for _ in range(depth):
        nxt = []
        for d in level:
            try:
                nxt.extend(sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")))
            except OSError:
                continue
        out.extend(nxt)
        level = nxt
    return out


def find_datasets(path: str | os.PathLike) -> dict[str, Path]:
    """Adapter name -> dataset root for every known layout under ``path`` (itself or 1-2 levels down).

    Raises ``FileNotFoundError`` listing what was looked for when nothing known is found.
    """
    from sonofm.datasets.sources.adapters import AdapterError, get_adapter

    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"--data {root}: not a folder")
    known = known_layouts()
    found: dict[str, Path] = {}
    for cand in _candidates(root):
        for name in known:
            if name in found:
                continue
            try:
                adapter = get_adapter(name, cand)
                if adapter.items():
                    found[name] = cand
            except (AdapterError, OSError, ValueError):
                continue
    if not found:
        looked = "; ".join(f"{name} ({facts.display}): {facts.layout}" for name, facts in known.items())
        raise FileNotFoundError(
            f"--data {root}: no known dataset layout found in it or in its sub-folders (2 levels). Looked for {looked}. "
            "Other collections: build shards with `sonofm shards build --source folder:DIR` or `csv:FILE` "
            "(see README) and pretrain with `sonofm pretrain`."
        )
    return found


def tasks_of(name: str, shards: Path) -> list[Task]:
    """The downstream tasks quickstart runs on the shards of known source ``name`` (probe first, then seg)."""
    facts = known_layouts()[name]
    return [Task(facts.display, shards, kind, facts.group or "group") for kind in ("probe", "seg")
            if kind in facts.tasks]
