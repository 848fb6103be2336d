"""The layering contract (DESIGN.md): stages import only earlier stages, nothing imports the
command line, and the module graph has no import cycle.

Stages, earliest first: root helpers (``sonofm.paths``, ``errors``, ``atomic_io``, ``checkpoints``, ``faults``,
``config``) -> data (``sonofm.datasets``) -> models -> training core (``sonofm.train``) ->
pretrain / evaluation / finetune -> export (``sonofm.export``, ``sonofm.model_card``) -> command
line (``sonofm.cli``, ``sonofm.quickstart``, ``sonofm.__main__``). Pretraining and the downstream
packages (evaluation, finetune) share a stage but not code: what both loops need is the training
core. Imports are read with ``ast`` (module-, function- and class-level, absolute and relative);
nothing is imported or run, so the test also catches an import that only a rarely taken branch
executes. A module that no stage claims is itself a violation, so a new package gets a place in
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
#: Packages of one stage that must not import each other (either way).
APART: tuple[tuple[str, frozenset[str]], ...] = (
    ("sonofm.pretrain", frozenset({"sonofm.evaluation", "sonofm.finetune"})),
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


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every breach of the contract in ``graph`` (module -> imported modules), one line each, sorted."""
    out = []
    for mod in sorted(graph):
        home = _owner(mod, STAGES)
        if home is None:
            out.append(f"unplaced module: {mod} (give it a stage in STAGES)")
            continue
        for target in sorted(graph[mod]):
            there = _owner(target, STAGES)
            if there is None:
                continue  # reported as unplaced on its own line
            line = _owner(target, COMMAND_LINE)
            if line:
                # the modules of one command-line package (sonofm.quickstart.*) may import each other
                if mod not in MAY_IMPORT_COMMAND_LINE and _owner(mod, COMMAND_LINE) != line:
                    out.append(f"imports the command line: {mod} -> {target}")
                    continue
            if STAGES[there] > STAGES[home]:
                out.append(f"backward import: {mod} -> {target} ({home} comes before {there})")
            for package, apart in APART:
                if (home == package and there in apart) or (home in apart and there == package):
                    out.append(f"sibling import: {mod} -> {target} ({home} and {there} share only the training core)")
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
        "sonofm.datasets.stream": {"sonofm.errors"},
        "sonofm.models.encoder": set(),
        "sonofm.train.schedule": set(),
        "sonofm.pretrain.engine": {"sonofm.datasets.stream", "sonofm.models.encoder", "sonofm.train.schedule"},
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
    graph["sonofm.datasets.stream"].add("sonofm.pretrain.engine")
    found = layering_violations(graph)
    assert "backward import: sonofm.datasets.stream -> sonofm.pretrain.engine " \
        "(sonofm.datasets comes before sonofm.pretrain)" in found
    assert "import cycle among: sonofm.datasets.stream, sonofm.pretrain.engine" in found
    assert len(found) == 2


def test_checker_reports_finetune_reaching_into_pretrain() -> None:
    graph = _clean_graph()
    graph["sonofm.finetune.seg_train"].add("sonofm.pretrain.engine")
    assert layering_violations(graph) == [
        "sibling import: sonofm.finetune.seg_train -> sonofm.pretrain.engine "
        "(sonofm.finetune and sonofm.pretrain share only the training core)"
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
    graph["sonofm.datasets.a"] = {"sonofm.datasets.b"}
    graph["sonofm.datasets.b"] = {"sonofm.datasets.c"}
    graph["sonofm.datasets.c"] = {"sonofm.datasets.a", "sonofm.errors"}
    graph["sonofm.newstage"] = set()
    assert layering_violations(graph) == [
        "import cycle among: sonofm.datasets.a, sonofm.datasets.b, sonofm.datasets.c",
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
            "from sonofm.finetune.upernet import SegModel",
            "backward import: sonofm.models.encoder -> sonofm.finetune.upernet "
            "(sonofm.models comes before sonofm.finetune)",
        ),
        (
            "datasets/synthetic/texture.py",  # relative, two levels up
            "from ..stream import StreamSpec",
            None,  # same stage: allowed by the order; the planted line must still be read
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
        assert "sonofm.datasets.stream" in graph["sonofm.datasets.synthetic.texture"]
    else:
        hits = [f for f in found if f.startswith(expected)]
        assert hits, found
        if expected == "import cycle among: ":
            assert "sonofm.datasets.synthetic.render" in hits[0] and "sonofm.datasets.synthetic.sources" in hits[0]
