"""The import layers hold: cli -> flows -> tasks -> registry -> model, and model/ is free of Prefect and MLflow.

Imports are read from the source (``ast``), so a lazy import inside a function counts as much as one at the
top: running the code is not needed to see that a layer reaches up.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What each layer may not import (module name prefixes).
FORBIDDEN = {
    "model": ("prefect", "mlflow", "denseflow.tasks", "denseflow.flows", "denseflow.cli", "denseflow.registry"),
    "registry": ("prefect", "denseflow.tasks", "denseflow.flows", "denseflow.cli"),
    "tasks": ("denseflow.flows", "denseflow.cli"),
    "flows": ("denseflow.cli",),
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every import statement in ``path``, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, node.module)]
    return found


def reaches(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_layer_imports_a_higher_one(layer: str) -> None:
    files = sorted((REPO / layer).rglob("*.py"))
    assert files, f"{layer}/ has no modules"
    offences = [
        f"{path.relative_to(REPO)}:{line} imports {module}"
        for path in files
        for line, module in imported_modules(path)
        if any(reaches(module, prefix) for prefix in FORBIDDEN[layer])
    ]
    assert offences == []


def test_nothing_imports_the_bare_top_level_names() -> None:
    """Installed, the packages are denseflow.*; a bare ``import model`` only works from the repository root."""
    bare = ("model", "tasks", "flows", "cli", "registry")
    offences = [
        f"{path.relative_to(REPO)}:{line} imports {module}"
        for layer in (*bare, "deploy", "bench", "tests")
        for path in sorted((REPO / layer).rglob("*.py"))
        for line, module in imported_modules(path)
        if module.split(".")[0] in bare
    ]
    assert offences == []
