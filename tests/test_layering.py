"""The layering contract (DESIGN.md): stages import only earlier stages, nothing imports the
command line, and the module graph has no import cycle.

Stages, earliest first: root helpers (``sonofm.paths``, ``errors``, ``atomic_io``, ``checkpoints``, ``faults``,
``config``) -> data (``sonofm.datasets``) -> models -> training core (``sonofm.train``) ->
pretrain / evaluation / finetune -> export (``sonofm.export``, ``sonofm.model_card``) -> command
line (``sonofm.cli``, ``sonofm.quickstart``, ``sonofm.__main__``). Pretraining and the downstream
packages (evaluation, finetune) share a stage but not code: what both loops need is the training
core. Imports are read with ``ast`` (module-, function- and class-level, absolute and relative);
nothing is imported or run, so the test also catches an import that only a rarely taken branch
executes. Inside the data stage the same rule orders its sub-packages: sources -> preprocess -> shards ->
build, and shards -> stream (build and stream apart). A module that no stage claims is itself a violation, so a new package gets a place in
the order before it lands.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sonofm"

#: Stage of a module: the longest prefix here that names it (or a package above it).
STAGES: dict[str, int] = {
    "sonofm": 0,  # the package's own __init__
    "sonofm.paths": 0,
    "sonofm.errors": 0,
    "sonofm.atomic_io": 0,
    "sonofm.checkpoints": 0,
    "sonofm.faults": 0,
    "sonofm.config": 0,
    "sonofm.datasets": 1,
    "sonofm.models": 2,
    "sonofm.train": 3,
    "sonofm.pretrain": 4,
    "sonofm.evaluation": 4,
    "sonofm.finetune": 4,
    "sonofm.export": 5,
    "sonofm.model_card": 5,
    "sonofm.quickstart": 6,
    "sonofm.cli": 6,
    "sonofm.__main__": 6,
}
#: The data stage's own order (sources <- preprocess <- shards <- build; shards <- stream): a module of
#: ``sonofm.datasets`` imports only sub-stages ranked before its own. The package's ``__init__``
#: (its public names) comes last, so nothing inside imports it.
DATA_STAGES: dict[str, int] = {
    "sonofm.datasets.taxonomy": 0,
    "sonofm.datasets.synthetic": 0,
    "sonofm.datasets.sources": 1,
    "sonofm.datasets.preprocess": 2,
    "sonofm.datasets.shards": 3,
    "sonofm.datasets.build": 4,
    "sonofm.datasets.stream": 4,
}
DATA_PACKAGE = "sonofm.datasets"
#: Packages of one stage that must not import each other (either way).
APART: tuple[tuple[str, frozenset[str]], ...] = (
    ("sonofm.pretrain", frozenset({"sonofm.evaluation", "sonofm.finetune"})),
    ("sonofm.datasets.build", frozenset({"sonofm.datasets.stream"})),
)
#: The command line, and the only modules allowed to import it.
COMMAND_LINE = frozenset({"sonofm.cli", "sonofm.quickstart"})
MAY_IMPORT_COMMAND_LINE = frozenset({"sonofm.__main__", "sonofm.cli"})


def module_name(path: Path, package_dir: Path) -> str:
    """Dotted name of ``path`` inside the package rooted at ``package_dir`` (``__init__`` is the package)."""
    parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every dotted name an import statement anywhere in ``tree`` may load, relative ones resolved."""
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{a.name}" for a in node.names)  # `from pkg import submodule`
    return names


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports, read from the source of ``package_dir``."""
    root = package_dir.name
    files = {module_name(p, package_dir): p for p in sorted(package_dir.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        targets = set()
        for name in _imported_names(ast.parse(path.read_text(), str(path)), mod, path.name == "__init__.py"):
            if name != root and not name.startswith(root + "."):
                continue
            while name not in files and "." in name:  # `from m import function` -> m
                name = name.rpartition(".")[0]
            if name in files and name != mod:
                targets.add(name)
        graph[mod] = targets
    return graph


def _owner(module: str, keys) -> str | None:
    """The longest of ``keys`` that is ``module`` or a package above it (the top package only itself)."""
    best = None
    for key in keys:
        if module == key or ("." in key and module.startswith(key + ".")):
            if best is None or len(key) > len(best):
                best = key
    return best


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def _data_stage(module: str) -> tuple[str, int] | None:
    """(sub-stage, rank) of a module inside ``sonofm.datasets``; the package itself ranks last."""
    if module == DATA_PACKAGE:
        return DATA_PACKAGE, len(DATA_STAGES)
    key = _owner(module, DATA_STAGES)
    return None if key is None else (key, DATA_STAGES[key])


def _stage_pair(mod: str, target: str) -> tuple[str, int, str, int] | None:
    """(home, rank, there, rank) of an import, by sub-stage inside ``sonofm.datasets``, else by stage."""
    home, there = _owner(mod, STAGES), _owner(target, STAGES)
    if home is None or there is None:
        return None
    if home == there == DATA_PACKAGE and _data_stage(mod) and _data_stage(target):
        return (*_data_stage(mod), *_data_stage(target))
    return home, STAGES[home], there, STAGES[there]


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every breach of the contract in ``graph`` (module -> imported modules), one line each, sorted."""
    out = []
    for mod in sorted(graph):
        if _owner(mod, STAGES) is None:
            out.append(f"unplaced module: {mod} (give it a stage in STAGES)")
            continue
        if _owner(mod, STAGES) == DATA_PACKAGE and _data_stage(mod) is None:
            out.append(f"unplaced module: {mod} (give it a sub-stage in DATA_STAGES)")
            continue
        for target in sorted(graph[mod]):
            pair = _stage_pair(mod, target)
            if pair is None:
                continue  # reported as unplaced on its own line
            home, rank_home, there, rank_there = pair
            line = _owner(target, COMMAND_LINE)
            if line:
                # the modules of one command-line package (sonofm.quickstart.*) may import each other
                if mod not in MAY_IMPORT_COMMAND_LINE and _owner(mod, COMMAND_LINE) != line:
                    out.append(f"imports the command line: {mod} -> {target}")
                    continue
            if rank_there > rank_home:
                out.append(f"backward import: {mod} -> {target} ({home} comes before {there})")
            for package, apart in APART:
                if (home == package and there in apart) or (home in apart and there == package):
                    out.append(f"sibling import: {mod} -> {target} ({home} and {there} share only what comes before)")
    out.extend(f"import cycle among: {', '.join(c)}" for c in strongly_connected(graph))
    return sorted(out)


# --- the contract on the package as it is -----------------------------------------------------------


def test_package_keeps_the_layering_contract() -> None:
    graph = import_graph(PACKAGE)
    assert len(graph) > 50 and "sonofm.train.schedule" in graph  # the scan saw the package
    assert "sonofm.train.schedule" in graph["sonofm.finetune.engine"]  # and its imports
    assert layering_violations(graph) == []


# --- the checker catches what it is for ---------------------------------------------------------------


def _clean_graph() -> dict[str, set[str]]:
    return {
        "sonofm.errors": set(),
        "sonofm.datasets.stream.loader": {"sonofm.errors"},
        "sonofm.models.encoder": set(),
        "sonofm.train.schedule": set(),
        "sonofm.pretrain.engine": {"sonofm.datasets.stream.loader", "sonofm.models.encoder", "sonofm.train.schedule"},
        "sonofm.finetune.seg_train": {"sonofm.train.schedule", "sonofm.evaluation.metrics"},
        "sonofm.evaluation.metrics": set(),
        "sonofm.export": {"sonofm.models.encoder"},
        "sonofm.cli": {"sonofm.export", "sonofm.quickstart"},
        "sonofm.quickstart": {"sonofm.pretrain.engine"},
        "sonofm.__main__": {"sonofm.cli"},
    }


def test_checker_accepts_a_graph_that_keeps_the_order() -> None:
    assert layering_violations(_clean_graph()) == []


def test_checker_reports_a_planted_backward_import_with_both_modules() -> None:
    graph = _clean_graph()
    graph["sonofm.datasets.stream.loader"].add("sonofm.pretrain.engine")
    found = layering_violations(graph)
    assert "backward import: sonofm.datasets.stream.loader -> sonofm.pretrain.engine " \
        "(sonofm.datasets comes before sonofm.pretrain)" in found
    assert "import cycle among: sonofm.datasets.stream.loader, sonofm.pretrain.engine" in found
    assert len(found) == 2


def test_checker_reports_finetune_reaching_into_pretrain() -> None:
    graph = _clean_graph()
    graph["sonofm.finetune.seg_train"].add("sonofm.pretrain.engine")
    assert layering_violations(graph) == [
        "sibling import: sonofm.finetune.seg_train -> sonofm.pretrain.engine "
        "(sonofm.finetune and sonofm.pretrain share only what comes before)"
    ]


def test_checker_reports_imports_of_the_command_line() -> None:
    graph = _clean_graph()
    graph["sonofm.export"].add("sonofm.cli")  # later stage than export: backward and forbidden
    graph["sonofm.quickstart"].add("sonofm.cli")  # same stage, still forbidden
    assert layering_violations(graph) == [
        "import cycle among: sonofm.cli, sonofm.export, sonofm.quickstart",
        "imports the command line: sonofm.export -> sonofm.cli",
        "imports the command line: sonofm.quickstart -> sonofm.cli",
    ]


def test_checker_lets_a_command_line_package_import_its_own_modules() -> None:
    graph = _clean_graph()
    graph["sonofm.quickstart"].add("sonofm.quickstart.report")
    graph["sonofm.quickstart.report"] = {"sonofm.quickstart.plan"}
    graph["sonofm.quickstart.plan"] = set()
    assert layering_violations(graph) == []
    graph["sonofm.quickstart.plan"].add("sonofm.cli")
    assert layering_violations(graph) == [
        "import cycle among: sonofm.cli, sonofm.quickstart, sonofm.quickstart.plan, sonofm.quickstart.report",
        "imports the command line: sonofm.quickstart.plan -> sonofm.cli",
    ]


def test_checker_finds_cycles_longer_than_two_and_unplaced_modules() -> None:
    graph = _clean_graph()
    graph["sonofm.datasets.sources.a"] = {"sonofm.datasets.sources.b"}
    graph["sonofm.datasets.sources.b"] = {"sonofm.datasets.sources.c"}
    graph["sonofm.datasets.sources.c"] = {"sonofm.datasets.sources.a", "sonofm.errors"}
    graph["sonofm.newstage"] = set()
    assert layering_violations(graph) == [
        "import cycle among: sonofm.datasets.sources.a, sonofm.datasets.sources.b, sonofm.datasets.sources.c",
        "unplaced module: sonofm.newstage (give it a stage in STAGES)",
    ]


def _copy_package(tmp_path: Path) -> Path:
    dest = tmp_path / "sonofm"
    shutil.copytree(PACKAGE, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def _plant(path: Path, line: str) -> None:
    """Append a function holding ``line``: a function-level import, the kind a quick fix adds."""
    path.write_text(path.read_text() + f"\n\ndef _planted():\n    {line}\n")


@pytest.mark.parametrize(
    ("module", "line", "expected"),
    [
        (
            "models/encoder.py",
            "from sonofm.finetune.seg_train import train_segmentation",
            "backward import: sonofm.models.encoder -> sonofm.finetune.seg_train "
            "(sonofm.models comes before sonofm.finetune)",
        ),
        (
            "datasets/synthetic/texture.py",  # relative, two levels up
            "from ..stream.loader import StreamSpec",
            "backward import: sonofm.datasets.synthetic.texture -> sonofm.datasets.stream.loader "
            "(sonofm.datasets.synthetic comes before sonofm.datasets.stream)",
        ),
        (
            "datasets/sources/records.py",  # a source reaching into the build
            "from sonofm.datasets.build.splits import assign_split",
            "backward import: sonofm.datasets.sources.records -> sonofm.datasets.build.splits "
            "(sonofm.datasets.sources comes before sonofm.datasets.build)",
        ),
        (
            "datasets/stream/loader.py",  # build and stream share only the shards
            "from sonofm.datasets.build.splits import assign_split",
            "sibling import: sonofm.datasets.stream.loader -> sonofm.datasets.build.splits",
        ),
        (
            "datasets/build/orchestrate.py",  # the public names come last
            "from sonofm.datasets import StreamSpec",
            "backward import: sonofm.datasets.build.orchestrate -> sonofm.datasets "
            "(sonofm.datasets.build comes before sonofm.datasets)",
        ),
        (
            "datasets/synthetic/sources.py",
            "from . import render",  # render imports sources: a cycle inside one package
            "import cycle among: ",
        ),
        (
            "export.py",
            "import sonofm.quickstart as q",
            "imports the command line: sonofm.export -> sonofm.quickstart",
        ),
    ],
)
def test_planted_import_in_a_copy_of_the_package(tmp_path: Path, module: str, line: str, expected) -> None:
    copy = _copy_package(tmp_path)
    assert layering_violations(import_graph(copy)) == []
    _plant(copy / module, line)
    graph = import_graph(copy)
    found = layering_violations(graph)
    if expected is None:
        assert found == []
        assert "sonofm.datasets.stream.loader" in graph["sonofm.datasets.synthetic.texture"]
    else:
        hits = [f for f in found if f.startswith(expected)]
        assert hits, found
        if expected == "import cycle among: ":
            assert "sonofm.datasets.synthetic.render" in hits[0] and "sonofm.datasets.synthetic.sources" in hits[0]
