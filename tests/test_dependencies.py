"""Every package packcache imports is declared in pyproject.toml, not only pulled in by another."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imported_modules() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "packcache").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {name for name in names if name not in sys.stdlib_module_names and name != "packcache"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_imported_package_is_a_declared_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {
        canonical(re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0]) for spec in project["dependencies"]
    }
    distributions = importlib.metadata.packages_distributions()
    modules = imported_modules()
    assert {"typer", "rich", "humanize"} <= modules
    for module in sorted(modules):
        assert module in distributions, f"{module} is imported but not installed"
        assert {canonical(d) for d in distributions[module]} & declared, (
            f"packcache imports {module} but pyproject.toml does not declare it"
        )
