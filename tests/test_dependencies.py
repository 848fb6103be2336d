"""pyproject's dependencies are exactly what the package imports.

An import of an undeclared package works on the developer's machine (it came in with something
else) and breaks a clean ``pip install sonofm``; a declared package nobody imports makes every
install heavier for nothing. Both are caught here, from the source, without importing it.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sonofm"

#: Top-level import name -> the distribution that provides it. A new third-party import must be
#: added here (and to pyproject): the test fails on any import name it does not know.
DISTRIBUTION = {
    "PIL": "pillow",
    "accelerate": "accelerate",
    "av": "av",
    "braceexpand": "braceexpand",
    "huggingface_hub": "huggingface-hub",
    "matplotlib": "matplotlib",
    "numpy": "numpy",
    "omegaconf": "omegaconf",
    "pydicom": "pydicom",
    "pytesseract": "pytesseract",
    "safetensors": "safetensors",
    "scipy": "scipy",
    "sklearn": "scikit-learn",
    "tensorboard": "tensorboard",
    "threadpoolctl": "threadpoolctl",
    "timm": "timm",
    "torch": "torch",
    "tqdm": "tqdm",
    "wandb": "wandb",
    "webdataset": "webdataset",
    "yaml": "pyyaml",
}

#: Extras whose packages are not for the library itself (tests, linting, benchmarks).
DEV_EXTRAS = {"dev"}


def _canonical(name: str) -> str:
    """PEP 503 normalised distribution name (``huggingface_hub`` == ``huggingface-hub``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(req: str) -> str:
    return _canonical(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req).group(1))


def _pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def third_party_imports() -> dict[str, set[str]]:
    """Top-level names of every absolute, non-stdlib, non-sonofm import in ``sonofm/`` -> files."""
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != "sonofm" and top not in sys.stdlib_module_names:
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_import_is_mapped_and_declared_and_every_dependency_imported() -> None:
    project = _pyproject()["project"]
    required = {_requirement_name(r) for r in project["dependencies"]}
    optional = {
        _requirement_name(r)
        for extra, reqs in project.get("optional-dependencies", {}).items()
        if extra not in DEV_EXTRAS
        for r in reqs
    }
    imports = third_party_imports()
    unmapped = {name: sorted(files) for name, files in imports.items() if name not in DISTRIBUTION}
    assert not unmapped, f"imports missing from DISTRIBUTION in {__file__} (and maybe from pyproject): {unmapped}"
    imported = {_canonical(DISTRIBUTION[name]) for name in imports}
    undeclared = {
        name: sorted(files)
        for name, files in imports.items()
        if _canonical(DISTRIBUTION[name]) not in required | optional
    }
    assert not undeclared, f"imported but not in pyproject [project.dependencies]: {undeclared}"
    unused = sorted(required - imported)
    assert not unused, f"declared in [project.dependencies] but imported nowhere in sonofm/: {unused}"


def test_torch_floor_and_no_exact_pins() -> None:
    """Users bring their own CUDA build of torch: a floor, never a pin that would replace it."""
    deps = _pyproject()["project"]["dependencies"]
    assert "torch>=2.4" in deps
    assert not [r for r in deps if "==" in r], f"exact pins in [project.dependencies]: {deps}"
