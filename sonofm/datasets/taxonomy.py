"""The taxonomy: region -> organ -> source, with each source's label vocabulary.

One file (``configs/taxonomy.yaml``) places every data source in the tree, so shard metadata gets
consistent ``region``/``organ`` values and the hierarchical pretraining classifier gets fixed
class indices per level. Unknown sources and labels outside a source's vocabulary are errors at
shard-build time (with a hint on how to fix them), not silent ``-1`` targets during training.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

LEVELS: tuple[str, ...] = ("region", "organ", "source", "leaf")
DEFAULT_PATH = "configs/taxonomy.yaml"
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_SOURCE_KEYS = {"organ", "region", "labels", "probe", "description"}


class TaxonomyError(ValueError):
    """A source, organ, region or label that does not fit the taxonomy (the message says how to fix it)."""


@dataclass
class SourceInfo:
    """Where one source sits in the tree and which labels its samples may carry."""

    name: str
    organ: str
    region: str
    labels: list[str] = field(default_factory=list)
    probe: str | None = None
    description: str = ""


class Taxonomy:
    """The tree loaded from YAML: ``regions: {region: [organ, ...]}`` and ``sources: {name: {organ, labels}}``."""

    def __init__(self, regions: dict[str, list[str]], sources: dict[str, SourceInfo], path: str = "<memory>"):
        self.path = path
        self.regions = {r: list(o) for r, o in regions.items()}
        self.organ_region: dict[str, str] = {}
        for region, organs in self.regions.items():
            _check_name(region, "region", path)
            for organ in organs:
                _check_name(organ, "organ", path)
                if organ in self.organ_region:
                    raise TaxonomyError(
                        f"{path}: organ {organ!r} listed under regions {self.organ_region[organ]!r} and {region!r}"
                    )
                self.organ_region[organ] = region
        self._sources: dict[str, SourceInfo] = {}
        self._tree_cache: dict[tuple[str, ...], dict[str, Any]] = {}
        self._index_cache: dict[str, dict[str, int]] | None = None
        for info in sources.values():
            self._add(info)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> Taxonomy:
        """Read the taxonomy YAML (default ``configs/taxonomy.yaml`` of the repository)."""
        from sonofm.paths import config_path

        p = config_path(path if path is not None else DEFAULT_PATH)
        try:
            data = yaml.safe_load(Path(p).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as e:
            raise TaxonomyError(f"{p}: cannot read taxonomy ({e})") from e
        return cls.from_dict(data, str(Path(p).resolve()))

    @classmethod
    def from_dict(cls, data: Any, path: str = "<memory>") -> Taxonomy:
        """Build from the parsed YAML structure (``regions`` and ``sources`` mappings)."""
        if not isinstance(data, dict) or not isinstance(data.get("regions"), dict):
            raise TaxonomyError(f"{path}: expected a mapping with 'regions' and 'sources'")
        regions = {}
        for region, organs in data["regions"].items():
            if not isinstance(organs, list):
                raise TaxonomyError(f"{path}: regions.{region} must be a list of organs, got {organs!r}")
            regions[str(region)] = [str(o) for o in organs]
        sources = {}
        for name, entry in (data.get("sources") or {}).items():
            if not isinstance(entry, dict):
                raise TaxonomyError(f"{path}: sources.{name} must be a mapping with 'organ' and 'labels'")
            unknown = set(entry) - _SOURCE_KEYS
            if unknown:
                raise TaxonomyError(
                    f"{path}: sources.{name}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_SOURCE_KEYS)}"
                )
            if "organ" not in entry:
                raise TaxonomyError(f"{path}: sources.{name} needs an 'organ'")
            labels = entry.get("labels") or []
            if not isinstance(labels, list):
                raise TaxonomyError(f"{path}: sources.{name}.labels must be a list, got {labels!r}")
            sources[str(name)] = SourceInfo(
                name=str(name),
                organ=str(entry["organ"]),
                region=str(entry["region"]) if entry.get("region") else "",
                labels=[str(v) for v in labels],
                probe=entry.get("probe"),
                description=str(entry.get("description") or ""),
            )
        return cls(regions, sources, path)

    def add_source(
        self, name: str, organ: str, labels: list[str] | tuple[str, ...] = (), region: str | None = None
    ) -> SourceInfo:
        """Register a source at run time (e.g. declared by a user's manifest); appended last in the tree."""
        if name in self._sources:
            raise TaxonomyError(f"source {name!r} is already in the taxonomy ({self.path})")
        return self._add(SourceInfo(name=name, organ=organ, region=region or "", labels=list(labels)))

    def _add(self, info: SourceInfo) -> SourceInfo:
        where = f"{self.path}: sources.{info.name}"
        _check_name(info.name, "source", self.path)
        if info.organ not in self.organ_region:
            close = difflib.get_close_matches(info.organ, self.organ_region, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise TaxonomyError(
                f"{where}: organ {info.organ!r} is not listed under any region{hint}; "
                f"add it to a region in 'regions:' (organs: {', '.join(self.organ_region)})"
            )
        region = self.organ_region[info.organ]
        if info.region and info.region != region:
            raise TaxonomyError(
                f"{where}: region {info.region!r} but organ {info.organ!r} is in region {region!r}"
            )
        info.region = region
        if len(set(info.labels)) != len(info.labels):
            raise TaxonomyError(f"{where}: duplicate labels in {info.labels}")
        for label in info.labels:
            if not label or "/" in label:
                raise TaxonomyError(f"{where}: label {label!r} must be non-empty and contain no '/'")
        self._sources[info.name] = info
        self._tree_cache = {}
        self._index_cache = None
        return info

    # -- queries -----------------------------------------------------------------------------
    @property
    def sources(self) -> list[str]:
        return list(self._sources)

    def __contains__(self, name: object) -> bool:
        return name in self._sources

    def source(self, name: str) -> SourceInfo:
        """The entry of source ``name``; an unknown name lists close matches and how to add it."""
        info = self._sources.get(name)
        if info is None:
            close = difflib.get_close_matches(str(name), self._sources, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise TaxonomyError(
                f"unknown source {name!r}: {hint}To add it, list it under 'sources:' in {self.path} as "
                f"`{name}: {{organ: <organ>, labels: [...]}}` (organs: {', '.join(self.organ_region)})"
            )
        return info

    def annotate(self, meta: dict[str, Any]) -> dict[str, Any]:
        """A copy of ``meta`` with ``organ``/``region`` from its source, after checking what it already says.

        A CSV row may carry ``organ``/``region``: accepted when equal to the taxonomy's, an error
        otherwise. A non-null ``label`` must belong to the source's vocabulary.
        """
        info = self.source(meta.get("source"))
        out = dict(meta)
        for key in ("organ", "region"):
            given = meta.get(key)
            expected = getattr(info, key)
            if given not in (None, "") and given != expected:
                raise TaxonomyError(
                    f"source {info.name!r}{_where(meta)}: {key} {given!r} given but the taxonomy ({self.path}) "
                    f"places {info.name!r} in {key} {expected!r}; fix the manifest or the taxonomy"
                )
            out[key] = expected
        self._check_label(info, meta.get("label"), meta)
        return out

    def _check_label(self, info: SourceInfo, label: Any, meta: dict[str, Any]) -> None:
        if label is None:
            return
        if not info.labels:
            raise TaxonomyError(
                f"source {info.name!r}{_where(meta)}: label {label!r} given but the source has no label "
                f"vocabulary; add `labels: [...]` to its entry in {self.path}"
            )
        if label not in info.labels:
            close = difflib.get_close_matches(str(label), info.labels, n=2, cutoff=0.5)
            close += [v for v in info.labels if v.lower() == str(label).lower() and v not in close]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise TaxonomyError(
                f"source {info.name!r}{_where(meta)}: label {label!r} is not in its vocabulary "
                f"{info.labels}{hint}; edit {self.path} to add it"
            )

    # -- tree for the hierarchical classifier ------------------------------------------------
    def _nodes(self) -> dict[str, list[tuple[str, dict[str, int]]]]:
        """Per level, ``(name, {ancestor level: index})`` in class-index order."""
        regions = list(self.regions)
        organs = [o for r in regions for o in self.regions[r]]
        r_idx = {r: i for i, r in enumerate(regions)}
        o_idx = {o: i for i, o in enumerate(organs)}
        sources = sorted(self._sources.values(), key=lambda s: o_idx[s.organ])  # stable: YAML order per organ
        nodes: dict[str, list[tuple[str, dict[str, int]]]] = {
            "region": [(r, {"region": i}) for i, r in enumerate(regions)],
            "organ": [(o, {"region": r_idx[self.organ_region[o]], "organ": i}) for i, o in enumerate(organs)],
            "source": [],
            "leaf": [],
        }
        for si, s in enumerate(sources):
            anc = {"region": r_idx[s.region], "organ": o_idx[s.organ], "source": si}
            nodes["source"].append((s.name, anc))
            for label in s.labels or [None]:
                leaf = s.name if label is None else f"{s.name}/{label}"
                nodes["leaf"].append((leaf, {**anc, "leaf": len(nodes["leaf"])}))
        return nodes

    def tree(self, levels: tuple[str, ...] | list[str] = LEVELS) -> dict[str, Any]:
        """Names, sizes and parent indices of the chosen levels (a subsequence of :data:`LEVELS`).

        ``parents[level][i]`` is the index, in the previous chosen level, of node ``i``'s ancestor.
        Leaves are ``<source>/<label>`` for sources with a vocabulary and ``<source>`` otherwise.
        """
        levels = _check_levels(levels)
        key = tuple(levels)
        if key in self._tree_cache:
            return self._tree_cache[key]
        nodes = self._nodes()
        out = {
            "levels": list(levels),
            "sizes": {lv: len(nodes[lv]) for lv in levels},
            "names": {lv: [n for n, _ in nodes[lv]] for lv in levels},
            "parents": {lv: [anc[prev] for _, anc in nodes[lv]] for prev, lv in zip(levels, levels[1:])},
        }
        self._tree_cache[key] = out
        return out

    def targets(self, meta: dict[str, Any], levels: tuple[str, ...] | list[str] = LEVELS) -> dict[str, int]:
        """Class index per level for one sample; -1 where unknown (no source, or label None on a labelled source)."""
        levels = _check_levels(levels)
        if self._index_cache is None:
            names = self.tree(LEVELS)["names"]
            self._index_cache = {lv: {n: i for i, n in enumerate(names[lv])} for lv in LEVELS}
        index = self._index_cache
        out = dict.fromkeys(LEVELS, -1)
        name = meta.get("source")
        if name is not None:
            info = self.source(name)
            out["source"] = index["source"][name]
            out["organ"] = index["organ"][info.organ]
            out["region"] = index["region"][info.region]
            label = meta.get("label")
            if not info.labels:
                out["leaf"] = index["leaf"][name]
            elif label is not None:
                self._check_label(info, label, meta)
                out["leaf"] = index["leaf"][f"{name}/{label}"]
        else:
            for lv in ("organ", "region"):
                value = meta.get(lv)
                if value is not None:
                    if value not in index[lv]:
                        raise TaxonomyError(
                            f"{lv} {value!r}{_where(meta)} is not in the taxonomy ({self.path})"
                        )
                    out[lv] = index[lv][value]
            if out["organ"] >= 0 and out["region"] < 0:
                out["region"] = index["region"][self.organ_region[meta["organ"]]]
        return {lv: out[lv] for lv in levels}


def _check_name(name: str, kind: str, path: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise TaxonomyError(f"{path}: {kind} name {name!r} must use only letters, digits, '_' or '-'")


def _check_levels(levels: tuple[str, ...] | list[str]) -> list[str]:
    levels = list(levels)
    positions = [LEVELS.index(lv) if lv in LEVELS else -1 for lv in levels]
    if not levels or -1 in positions or positions != sorted(set(positions)):
        raise TaxonomyError(f"levels {levels} must be an ordered, non-empty subsequence of {list(LEVELS)}")
    return levels


def _where(meta: dict[str, Any]) -> str:
    return f" ({meta['path']})" if meta.get("path") else ""
