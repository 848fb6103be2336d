"""Every key a schema accepts is read by the code it configures.

A key that is validated, saved in ``config.yaml`` and printed on the model card but never read
(``masking.patch_size`` was one: the encoder used a constant) tells users a knob exists that does
nothing. This test reads the package's source (``ast``, nothing is run) and, for every leaf key of
the schemas in ``COVERED``, looks outside ``sonofm/config/`` (which defines and checks keys) and outside
``export.py`` / ``model_card.py`` (which only print the recipe) for an attribute access that reads
it:

- through its section: ``<anything>.masking.patch_size`` or ``masking.patch_size``;
- or through a name annotated with the section's class in the enclosing function
  (``def f(cfg: FastPathConfig): cfg.compile``), which is also how top-level keys are read
  (``cfg: PretrainConfig`` ... ``cfg.seed``).

Keys read generically (``getattr`` over names, ``dataclasses.asdict``) cannot be found this way;
they would go in ``GENERIC`` with the reason. It is empty now.

``COVERED`` is the pretraining recipe. The probe, finetune and shard-build entry points take their
config as ``cfg: Any`` and finetuning maps keys through a string table (``finetune/settings.py``),
which this rule cannot follow; they join ``COVERED`` once their readers are typed.
"""

from __future__ import annotations

import ast
import dataclasses
from collections import defaultdict
from pathlib import Path

import pytest

from sonofm.config.loader import _fields, _nested_schema, valid_keys
from sonofm.config.schema import SCHEMAS

PACKAGE = Path(__file__).resolve().parents[1] / "sonofm"
#: Files that only display a recipe (the model card's table, config.json's ``sonofm`` section).
DISPLAY_ONLY = {"export.py", "model_card.py"}
#: The schemas (names in ``SCHEMAS``) whose every key must be read.
COVERED = ("pretrain",)
#: ``schema name -> {key: why}`` for keys read generically (none today).
GENERIC: dict[str, dict[str, str]] = {}


def _sources() -> list[tuple[Path, ast.Module]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "config" or str(rel) in DISPLAY_ONLY:
            continue
        out.append((path, ast.parse(path.read_text(encoding="utf-8"))))
    return out


def _reads(sources: list[tuple[Path, ast.Module]]) -> tuple[dict, dict]:
    """``(section, leaf) -> files`` for ``X.section.leaf`` / ``section.leaf``, and
    ``(class name, leaf) -> files`` for ``name.leaf`` with ``name`` annotated as that class."""
    by_section: dict[tuple[str, str], set[str]] = defaultdict(set)
    by_class: dict[tuple[str, str], set[str]] = defaultdict(set)
    for path, tree in sources:
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                value = node.value
                name = value.attr if isinstance(value, ast.Attribute) else value.id if isinstance(value, ast.Name) else None
                if name:
                    by_section[(name, node.attr)].add(path.name)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
                annotated = {a.arg: ast.unparse(a.annotation) for a in args if a.annotation is not None}
                for inner in ast.walk(node):
                    if isinstance(inner, ast.Attribute) and isinstance(inner.value, ast.Name) \
                            and inner.value.id in annotated:
                        for cls in _class_names(annotated[inner.value.id]):
                            by_class[(cls, inner.attr)].add(path.name)
    return by_section, by_class


def _class_names(annotation: str) -> set[str]:
    return {part.strip(" '\"").rpartition(".")[2] for part in annotation.replace("|", ",").replace("[", ",")
            .replace("]", ",").split(",") if part.strip()}


def _leaves(schema: type) -> list[tuple[str, str, str]]:
    """``(dotted key, section field name or '', section class name)`` of every leaf key."""
    out = []
    for key in valid_keys(schema):
        parts = key.split(".")
        section_cls = schema
        for part in parts[:-1]:
            section_cls = _nested_schema(_fields(section_cls)[part])
        field = _fields(section_cls)[parts[-1]]
        if _nested_schema(field) is not None:
            continue  # a section: read through its keys
        out.append((key, parts[-2] if len(parts) > 1 else "", section_cls.__name__))
    return out


SOURCES = _sources()
BY_SECTION, BY_CLASS = _reads(SOURCES)
CASES = [(name, key, section, cls) for name in COVERED for key, section, cls in _leaves(SCHEMAS[name])]


def test_the_scan_sees_the_package() -> None:
    assert len(SOURCES) > 50
    assert ("masking", "ratio") in BY_SECTION and ("PretrainConfig", "seed") in BY_CLASS


@pytest.mark.parametrize(("schema", "key", "section", "cls"), CASES, ids=[f"{c[0]}:{c[1]}" for c in CASES])
def test_every_schema_key_is_read(schema: str, key: str, section: str, cls: str) -> None:
    if key in GENERIC.get(schema, {}):
        return
    leaf = key.rpartition(".")[2]
    files = (BY_SECTION.get((section, leaf), set()) if section else set()) | BY_CLASS.get((cls, leaf), set())
    assert files, (f"{schema} key '{key}' is accepted by the schema but no code outside config/, export.py and "
                   f"model_card.py reads it (.{section + '.' if section else ''}{leaf}, or .{leaf} on a "
                   f"{cls} argument): use it, or remove it from the schema")


def test_the_generic_allow_list_names_real_keys() -> None:
    for name, keys in GENERIC.items():
        assert set(keys) <= set(valid_keys(SCHEMAS[name])), keys
        assert all(why for why in keys.values())


def test_the_check_finds_an_unread_key(tmp_path: Path) -> None:
    """The rule fails for a key nobody reads (a made-up one), so it can fail."""

    @dataclasses.dataclass
    class Knobs:
        used: int = 1
        unused: int = 2

    code = "def f(k: Knobs):\n    return k.used\n"
    by_section, by_class = _reads([(tmp_path / "m.py", ast.parse(code))])
    assert by_class.get(("Knobs", "used")) and not by_class.get(("Knobs", "unused"))
    assert not by_section.get(("masking", "patch_size"))
