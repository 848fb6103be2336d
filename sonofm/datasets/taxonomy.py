"""The taxonomy: region -> organ -> source, with each source's label vocabulary.

The built-in tree (``sonofm/configs/taxonomy.yaml``, shipped with the package) places the public
collections sonofm knows; a user taxonomy file (``--taxonomy FILE``, or ``taxonomy:`` in a shards
recipe) extends it with new regions, organs and sources. A source needs no entry at all to be built:
an undeclared source is *self-describing* (organ and region from the spec or the records, or
unknown; labels are whatever its records carry). Every shard index stores the entry of its source,
so later stages build their tree from the shards (:meth:`Taxonomy.from_indexes`) and never look for
a taxonomy file in the working directory.

A source of unknown organ (the typical unlabelled pretraining archive) hangs under a placeholder
node (``unlabelled``) in the classifier's tree: its samples train the source level only, and their
organ and region targets stay unknown (-1), so the hierarchical loss skips those levels.

The built-in file also keeps *facts* about the collections sonofm knows (:class:`SourceFacts`: the
name reports show, the unit of splitting, the licence, the on-disk layout its adapter recognises),
so that the model card and ``quickstart`` read them from one place instead of holding per-dataset
tables in code. Facts are not part of the tree and are not stored in shard indexes (changing one
rebuilds nothing); a user or self-describing source has none.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from sonofm.errors import UserError

LEVELS: tuple[str, ...] = ("region", "organ", "source", "leaf")
BUILTIN_FILE = "taxonomy.yaml"
#: How an unknown organ, region or label is shown (counts, reports, model cards): never ``None``.
UNLABELLED = "unlabelled"
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_SOURCE_KEYS = {"organ", "region", "labels", "probe", "description"}
#: Keys of a source entry that are facts (:class:`SourceFacts`), accepted in the built-in file only.
_FACT_KEYS = {"display", "group", "licence", "layout", "tasks"}
#: How restrictive a licence is, least first; the model card takes the most restrictive one.
LICENCE_KINDS: tuple[str, ...] = ("free", "attribution", "noncommercial")
#: Downstream tasks a source's facts may name (what ``quickstart --data`` evaluates on it).
FACT_TASKS: tuple[str, ...] = ("probe", "seg")


class TaxonomyError(UserError, ValueError):
    """A source, organ, region or label that does not fit the taxonomy (the message says how to fix it)."""


@dataclass
class SourceInfo:
    """Where one source sits in the tree and which labels its samples may carry.

    ``declared``: the entry comes from a taxonomy file, so its label vocabulary is enforced; an
    undeclared (self-describing) source accepts any label and records the ones it saw.
    """

    name: str
    organ: str | None = None
    region: str | None = None
    labels: list[str] = field(default_factory=list)
    probe: str | None = None
    description: str = ""
    declared: bool = True

    def to_dict(self) -> dict[str, Any]:
        """JSON form, as stored in a shard index."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SourceInfo:
        keys = {"name", "organ", "region", "labels", "probe", "description", "declared"}
        return cls(**{k: v for k, v in data.items() if k in keys})


class Licence(NamedTuple):
    """The terms of a source's data as the model card states them; ``kind`` is one of :data:`LICENCE_KINDS`.

    A tuple, so ``text, licence_id, kind = model_card.source_licence(name)`` keeps working."""

    text: str
    id: str  # the Hub's licence identifier ("cc-by-4.0", ...)
    kind: str


@dataclass(frozen=True)
class SourceFacts:
    """What sonofm knows about a built-in source beyond its place in the tree (see the module docstring)."""

    display: str  # name shown in tables and messages ("BUSI")
    group: str | None = None  # what a group is, the unit of splitting ("patient", "recording", "video")
    licence: Licence | None = None  # None: unknown to sonofm
    layout: str | None = None  # the folder layout the adapter of the same name recognises, told to users
    tasks: tuple[str, ...] = ()  # downstream tasks on its labels / masks, from :data:`FACT_TASKS`


def display(value: Any) -> str:
    """A label, organ or region as people read it: ``unlabelled`` when unknown."""
    return UNLABELLED if value is None or value == "" else str(value)


class Taxonomy:
    """The tree: ``regions: {region: [organ, ...]}`` and ``sources: {name: SourceInfo}``."""

    def __init__(self, regions: dict[str, list[str]], sources: dict[str, SourceInfo], path: str = "<memory>",
                 facts: dict[str, SourceFacts] | None = None):
        self.path = path
        self.regions: dict[str, list[str]] = {}
        self.organ_region: dict[str, str] = {}
        for region, organs in regions.items():
            self._add_region(region, organs, path)
        self._sources: dict[str, SourceInfo] = {}
        self._tree_cache: dict[tuple[str, ...], dict[str, Any]] = {}
        self._index_cache: dict[str, dict[str, int]] | None = None
        for info in sources.values():
            self._add(info)
        self._facts: dict[str, SourceFacts] = {k: v for k, v in (facts or {}).items() if k in self._sources}

    def _add_region(self, region: str, organs: Iterable[str], path: str) -> None:
        _check_name(region, "region", path)
        listed = self.regions.setdefault(region, [])
        for organ in organs:
            _check_name(organ, "organ", path)
            if organ in self.organ_region:
                if self.organ_region[organ] != region:
                    raise TaxonomyError(
                        f"{path}: organ {organ!r} listed under regions {self.organ_region[organ]!r} and {region!r}"
                    )
                continue
            self.organ_region[organ] = region
            listed.append(organ)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> Taxonomy:
        """Read one complete taxonomy file; ``None`` reads the built-in one shipped with sonofm."""
        from sonofm.paths import config_path, packaged_configs

        builtin = packaged_configs() / BUILTIN_FILE
        p = builtin if path is None else config_path(path)
        try:
            data = yaml.safe_load(Path(p).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as e:
            raise TaxonomyError(f"{p}: cannot read taxonomy ({e})") from e
        resolved = Path(p).resolve()
        return cls.from_dict(data, str(resolved), facts=resolved == builtin.resolve())

    @classmethod
    def with_user_files(cls, files: str | os.PathLike | Iterable[str | os.PathLike] | None) -> Taxonomy:
        """The built-in taxonomy extended by each user file (none: the built-in one alone)."""
        tax = cls.load()
        if files is None or files == "":
            return tax
        for f in [files] if isinstance(files, (str, os.PathLike)) else list(files):
            if f:
                tax.extend(cls.load(f))
        return tax

    @classmethod
    def from_dict(cls, data: Any, path: str = "<memory>", facts: bool = False) -> Taxonomy:
        """Build from the parsed YAML structure (``regions`` and ``sources`` mappings).

        ``facts``: the entries may carry :class:`SourceFacts` keys (only the built-in file does: the model
        card of an export reads facts from there and never sees a user's taxonomy file).
        """
        if not isinstance(data, dict) or not isinstance(data.get("regions", {}), dict):
            raise TaxonomyError(f"{path}: expected a mapping with 'regions' and 'sources'")
        regions = {}
        for region, organs in (data.get("regions") or {}).items():
            if not isinstance(organs, list):
                raise TaxonomyError(f"{path}: regions.{region} must be a list of organs, got {organs!r}")
            regions[str(region)] = [str(o) for o in organs]
        sources = {}
        found_facts: dict[str, SourceFacts] = {}
        for name, entry in (data.get("sources") or {}).items():
            if not isinstance(entry, dict):
                raise TaxonomyError(f"{path}: sources.{name} must be a mapping (organ, region, labels, ...)")
            unknown = set(entry) - _SOURCE_KEYS - (_FACT_KEYS if facts else set())
            if unknown:
                note = ""
                if unknown & _FACT_KEYS:
                    note = (f" ({', '.join(sorted(unknown & _FACT_KEYS))}: facts sonofm keeps for its built-in "
                            "sources only; the model card cannot see a user taxonomy file)")
                raise TaxonomyError(
                    f"{path}: sources.{name}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_SOURCE_KEYS)}"
                    + note
                )
            if facts and set(entry) & _FACT_KEYS:
                found_facts[str(name)] = _parse_facts(str(name), entry, path)
            labels = entry.get("labels") or []
            if not isinstance(labels, list):
                raise TaxonomyError(f"{path}: sources.{name}.labels must be a list, got {labels!r}")
            sources[str(name)] = SourceInfo(
                name=str(name),
                organ=str(entry["organ"]) if entry.get("organ") else None,
                region=str(entry["region"]) if entry.get("region") else None,
                labels=[str(v) for v in labels],
                probe=entry.get("probe"),
                description=str(entry.get("description") or ""),
            )
        return cls(regions, sources, path, facts=found_facts)

    def extend(self, other: Taxonomy) -> Taxonomy:
        """Add ``other``'s regions, organs and sources (a source it also lists is replaced by its entry)."""
        for region, organs in other.regions.items():
            self._add_region(region, organs, other.path)
        for info in other._sources.values():
            self._sources.pop(info.name, None)
            self._facts.pop(info.name, None)  # a source redeclared by the other file is that file's source
            self._add(SourceInfo(**asdict(info)))
        self._facts.update(other._facts)
        self.path = f"{self.path} + {other.path}"
        return self

    @classmethod
    def from_indexes(
        cls, indexes: Iterable[dict[str, Any]], user_files: str | os.PathLike | Iterable[Any] | None = None
    ) -> Taxonomy:
        """The tree of the sources these shard indexes hold, from the entries the indexes store.

        Only the regions and organs those sources use enter the tree (built-in order first, new
        ones after), so the classifier has no class that no sample can train. An index written
        before indexes stored their entry is looked up in the built-in taxonomy (plus ``user_files``).
        """
        base = cls.with_user_files(user_files)
        infos: dict[str, SourceInfo] = {}
        extra_regions: dict[str, list[str]] = {}
        for index in indexes:
            name = str(index.get("source"))
            if name in infos:
                continue
            stored = index.get("taxonomy")
            if isinstance(stored, dict) and isinstance(stored.get("source"), dict):
                info = SourceInfo.from_dict(stored["source"])
                for region, organs in (stored.get("regions") or {}).items():
                    extra_regions.setdefault(str(region), []).extend(str(o) for o in organs)
            elif name in base:
                info = SourceInfo(**asdict(base.source(name)))
            else:  # an old index of an undeclared source: its labels from the counts
                labels = sorted(k for k in (index.get("counts", {}).get("label") or {}) if k not in ("None", UNLABELLED))
                info = SourceInfo(name=name, labels=labels, declared=False)
            infos[name] = info
        regions: dict[str, list[str]] = {}
        order = {r: i for i, r in enumerate(base.regions)}
        known = {**{o: r for r, os_ in extra_regions.items() for o in os_}, **base.organ_region}
        for info in infos.values():
            region = info.region or (known.get(info.organ) if info.organ else None)
            if info.organ and region is None:
                raise TaxonomyError(
                    f"source {info.name!r}: organ {info.organ!r} is in no region; list it under a region "
                    "in a taxonomy file (--taxonomy FILE)"
                )
            if region is not None:
                organs = regions.setdefault(region, [])
                if info.organ and info.organ not in organs:
                    organs.append(info.organ)
        organ_order = {o: i for i, o in enumerate(base.organ_region)}
        ordered = {
            r: sorted(regions[r], key=lambda o: (organ_order.get(o, len(organ_order)), o))
            for r in sorted(regions, key=lambda r: (order.get(r, len(order)), r))
        }
        return cls(ordered, infos, path="<shard indexes>")

    def add_source(
        self, name: str, organ: str | None, labels: list[str] | tuple[str, ...] = (), region: str | None = None
    ) -> SourceInfo:
        """Register a source at run time (e.g. declared by a user's manifest); appended last in the tree."""
        if name in self._sources:
            raise TaxonomyError(f"source {name!r} is already in the taxonomy ({self.path})")
        return self._add(SourceInfo(name=name, organ=organ, region=region, labels=list(labels)))

    def _add(self, info: SourceInfo) -> SourceInfo:
        where = f"{self.path}: sources.{info.name}"
        _check_name(info.name, "source", self.path)
        self._place(info, where)
        if len(set(info.labels)) != len(info.labels):
            raise TaxonomyError(f"{where}: duplicate labels in {info.labels}")
        for label in info.labels:
            _check_label_text(label, where)
        self._sources[info.name] = info
        self._tree_cache = {}
        self._index_cache = None
        return info

    def _place(self, info: SourceInfo, where: str) -> None:
        """Check ``info``'s organ / region against the tree and fill the region its organ implies."""
        if info.organ is not None:
            if info.organ not in self.organ_region:
                close = difflib.get_close_matches(info.organ, self.organ_region, n=3)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise TaxonomyError(
                    f"{where}: organ {info.organ!r} is not listed under any region{hint}; add it to a region "
                    f"in 'regions:' of a taxonomy file (organs: {', '.join(self.organ_region)})"
                )
            region = self.organ_region[info.organ]
            if info.region and info.region != region:
                raise TaxonomyError(
                    f"{where}: region {info.region!r} but organ {info.organ!r} is in region {region!r}"
                )
            info.region = region
        elif info.region is not None and info.region not in self.regions:
            close = difflib.get_close_matches(info.region, self.regions, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise TaxonomyError(f"{where}: region {info.region!r} is not in the taxonomy{hint}")

    # -- queries -----------------------------------------------------------------------------
    @property
    def sources(self) -> list[str]:
        return list(self._sources)

    def __contains__(self, name: object) -> bool:
        return name in self._sources

    def source(self, name: str) -> SourceInfo:
        """The entry of source ``name``; an unknown name lists close matches."""
        info = self._sources.get(name)
        if info is None:
            close = difflib.get_close_matches(str(name), self._sources, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise TaxonomyError(
                f"unknown source {name!r}: {hint}A source needs no entry to be built into shards; to place "
                f"it in the tree, list it in a taxonomy file (--taxonomy FILE) as `{name}: {{organ: <organ>, "
                f"labels: [...]}}` (organs: {', '.join(self.organ_region)}; taxonomy: {self.path})"
            )
        return info

    def source_facts(self, name: str) -> SourceFacts | None:
        """The facts this taxonomy's file gives about source ``name``; None for any other source."""
        return self._facts.get(name)

    def describe(
        self,
        name: str,
        organ: str | None = None,
        region: str | None = None,
        probe: str | None = None,
        description: str | None = None,
    ) -> SourceInfo:
        """The entry a build uses for source ``name``: its declared one, else a self-describing one.

        ``organ``/``region``/``probe``/``description`` come from the source spec (``?organ=...``);
        for a declared source they must agree with its entry.
        """
        _check_name(name, "source", "source spec")
        info = self._sources.get(name)
        if info is not None:
            for key, given in (("organ", organ), ("region", region)):
                if given and given != getattr(info, key):
                    raise TaxonomyError(
                        f"source {name!r}: {key} {given!r} given but the taxonomy ({self.path}) places it in "
                        f"{key} {getattr(info, key)!r}; drop the option or give the source another name"
                    )
            return SourceInfo(**asdict(info))
        out = SourceInfo(name=name, organ=organ or None, region=region or None, probe=probe,
                         description=description or "", declared=False)
        self._place(out, f"source {name!r}")
        return out

    def annotate(self, meta: dict[str, Any], info: SourceInfo | None = None) -> dict[str, Any]:
        """A copy of ``meta`` with ``organ``/``region`` filled in, after checking what it already says.

        ``info`` is the source's entry (default: looked up by ``meta["source"]``). A declared source
        fixes organ and region (a record may repeat them; a different value is an error) and its
        vocabulary the labels. A self-describing source takes organ/region from the record when the
        record knows them (a CSV column; a DICOM header's hint), else from its spec; any label is accepted.
        """
        if info is None:
            info = self.source(meta.get("source"))
        out = dict(meta)
        # ``header_organ`` / ``header_region`` (a DICOM's BodyPartExamined) are hints: used where
        # nothing else says, never an error (scanner headers are often wrong or generic)
        hint = {k: meta.get(f"header_{k}") or None for k in ("organ", "region")}
        if info.organ is not None:
            for key in ("organ", "region"):
                given, expected = meta.get(key), getattr(info, key)
                if given not in (None, "") and expected is not None and given != expected:
                    raise TaxonomyError(
                        f"source {info.name!r}{_where(meta)}: {key} {given!r} given but the taxonomy "
                        f"({self.path}) places {info.name!r} in {key} {expected!r}; fix the manifest or the taxonomy"
                    )
                out[key] = expected
        else:
            organ = meta.get("organ") or None
            region = meta.get("region") or info.region
            if organ is None and hint["organ"] in self.organ_region and (
                    region is None or self.organ_region[hint["organ"]] == region):
                organ = hint["organ"]
            if region is None and hint["region"] in self.regions:
                region = hint["region"]
            record = SourceInfo(name=info.name, organ=organ, region=region)
            self._place(record, f"source {info.name!r}{_where(meta)}")
            out["organ"], out["region"] = record.organ, record.region
        label = meta.get("label")
        if info.declared:
            self._check_label(info, label, meta)
        elif label is not None:
            _check_label_text(label, f"source {info.name!r}{_where(meta)}")
        return out

    def _check_label(self, info: SourceInfo, label: Any, meta: dict[str, Any]) -> None:
        if label is None:
            return
        if not info.labels:
            raise TaxonomyError(
                f"source {info.name!r}{_where(meta)}: label {label!r} given but the source has no label "
                f"vocabulary; add `labels: [...]` to its entry in a taxonomy file (--taxonomy FILE)"
            )
        if label not in info.labels:
            close = difflib.get_close_matches(str(label), info.labels, n=2, cutoff=0.5)
            close += [v for v in info.labels if v.lower() == str(label).lower() and v not in close]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise TaxonomyError(
                f"source {info.name!r}{_where(meta)}: label {label!r} is not in its vocabulary "
                f"{info.labels}{hint}; add it in a taxonomy file (--taxonomy FILE)"
            )

    # -- tree for the hierarchical classifier ------------------------------------------------
    def _nodes(self) -> dict[str, list[tuple[str, dict[str, int]]]]:
        """Per level, ``(name, {ancestor level: index})`` in class-index order.

        Sources of unknown organ sit under a placeholder organ (``<region>/unlabelled``, or
        ``unlabelled`` under a placeholder region ``unlabelled``) appended after the real nodes.
        """
        regions = list(self.regions)
        organs = [o for r in regions for o in self.regions[r]]
        organ_parent = [regions.index(self.organ_region[o]) for o in organs]
        for s in self._sources.values():
            organ = _organ_node(s)
            if organ not in organs:  # a placeholder (known organs are all listed already)
                region = s.region or UNLABELLED
                if region not in regions:
                    regions.append(region)
                organs.append(organ)
                organ_parent.append(regions.index(region))
        o_idx = {o: i for i, o in enumerate(organs)}

        sources = sorted(self._sources.values(), key=lambda s: o_idx[_organ_node(s)])  # stable: file order per organ
        nodes: dict[str, list[tuple[str, dict[str, int]]]] = {
            "region": [(r, {"region": i}) for i, r in enumerate(regions)],
            "organ": [(o, {"region": organ_parent[i], "organ": i}) for i, o in enumerate(organs)],
            "source": [],
            "leaf": [],
        }
        for si, s in enumerate(sources):
            oi = o_idx[_organ_node(s)]
            anc = {"region": organ_parent[oi], "organ": oi, "source": si}
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
        if not nodes["source"]:
            raise TaxonomyError(f"the taxonomy ({self.path}) holds no source: the classifier would have no class")
        out = {
            "levels": list(levels),
            "sizes": {lv: len(nodes[lv]) for lv in levels},
            "names": {lv: [n for n, _ in nodes[lv]] for lv in levels},
            "parents": {lv: [anc[prev] for _, anc in nodes[lv]] for prev, lv in zip(levels, levels[1:])},
        }
        self._tree_cache[key] = out
        return out

    def targets(self, meta: dict[str, Any], levels: tuple[str, ...] | list[str] = LEVELS) -> dict[str, int]:
        """Class index per level for one sample; -1 where unknown.

        A declared source's label outside its vocabulary is an error (the build refuses it, so it
        means shards and taxonomy disagree); a sample of a source the tree does not hold keeps the
        organ / region its metadata names, if the tree has them, and -1 elsewhere.
        """
        levels = _check_levels(levels)
        if self._index_cache is None:
            names = self.tree(LEVELS)["names"]
            self._index_cache = {lv: {n: i for i, n in enumerate(names[lv])} for lv in LEVELS}
        index = self._index_cache
        out = dict.fromkeys(LEVELS, -1)
        name = meta.get("source")
        info = self._sources.get(name) if name is not None else None
        if info is not None:
            out["source"] = index["source"][name]
            if info.organ is not None:
                out["organ"] = index["organ"][info.organ]
            if info.region is not None:
                out["region"] = index["region"][info.region]
            label = meta.get("label")
            if not info.labels:
                out["leaf"] = index["leaf"][name]
            elif label is not None:
                if info.declared:
                    self._check_label(info, label, meta)
                out["leaf"] = index["leaf"].get(f"{name}/{label}", -1)
        else:
            for lv in ("organ", "region"):
                value = meta.get(lv)
                if value is not None and value in index[lv] and not str(value).endswith(UNLABELLED):
                    out[lv] = index[lv][value]
            organ = meta.get("organ")
            if out["organ"] >= 0 and out["region"] < 0 and organ in self.organ_region:
                out["region"] = index["region"][self.organ_region[organ]]
        return {lv: out[lv] for lv in levels}


@functools.lru_cache(maxsize=1)
def _builtin_facts() -> dict[str, SourceFacts]:
    tax = Taxonomy.load()
    return {name: f for name in tax.sources if (f := tax.source_facts(name)) is not None}


def builtin_facts() -> dict[str, SourceFacts]:
    """Facts of every built-in source that has some, in the built-in file's order (read once)."""
    return dict(_builtin_facts())


def source_facts(name: str) -> SourceFacts | None:
    """Facts of a built-in source; None for a user's or a self-describing source (sonofm knows nothing of it)."""
    return _builtin_facts().get(name)


def _parse_facts(name: str, entry: dict[str, Any], path: str) -> SourceFacts:
    where = f"{path}: sources.{name}"
    texts = {}
    for key in ("display", "group", "layout"):
        value = entry.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise TaxonomyError(f"{where}.{key} must be a non-empty string, got {value!r}")
        texts[key] = value
    tasks = entry.get("tasks") or []
    if not isinstance(tasks, list) or not set(tasks) <= set(FACT_TASKS):
        raise TaxonomyError(f"{where}.tasks must be a list of {list(FACT_TASKS)}, got {tasks!r}")
    licence = entry.get("licence")
    if licence is not None:
        if not isinstance(licence, dict) or set(licence) != {"text", "id", "kind"} or not all(
                isinstance(v, str) and v for v in licence.values()):
            raise TaxonomyError(f"{where}.licence must be a mapping of non-empty text, id and kind, got {licence!r}")
        if licence["kind"] not in LICENCE_KINDS:
            raise TaxonomyError(f"{where}.licence.kind {licence['kind']!r} is not one of {list(LICENCE_KINDS)}")
        licence = Licence(text=licence["text"], id=licence["id"], kind=licence["kind"])
    return SourceFacts(display=texts["display"] or name, group=texts["group"], licence=licence,
                       layout=texts["layout"], tasks=tuple(tasks))


def _organ_node(info: SourceInfo) -> str:
    """The organ node a source hangs under: its organ, else the placeholder of its region."""
    if info.organ is not None:
        return info.organ
    return f"{info.region}/{UNLABELLED}" if info.region else UNLABELLED


def regions_of(info: SourceInfo) -> dict[str, list[str]]:
    """The ``regions:`` part a shard index stores beside ``info``: its region and organ, if known."""
    if info.region is None:
        return {}
    return {info.region: [info.organ] if info.organ else []}


def _check_name(name: str, kind: str, path: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise TaxonomyError(f"{path}: {kind} name {name!r} must use only letters, digits, '_' or '-'")


def _check_label_text(label: Any, where: str) -> None:
    if not isinstance(label, str) or not label or "/" in label or label in ("None", UNLABELLED):
        raise TaxonomyError(
            f"{where}: label {label!r} must be a non-empty string without '/' (and not 'None' or "
            f"'{UNLABELLED}', which mean no label)"
        )


def _check_levels(levels: tuple[str, ...] | list[str]) -> list[str]:
    levels = list(levels)
    positions = [LEVELS.index(lv) if lv in LEVELS else -1 for lv in levels]
    if not levels or -1 in positions or positions != sorted(set(positions)):
        raise TaxonomyError(f"levels {levels} must be an ordered, non-empty subsequence of {list(LEVELS)}")
    return levels


def _where(meta: dict[str, Any]) -> str:
    return f" ({meta['path']})" if meta.get("path") else ""
