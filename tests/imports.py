"""The imports of a module, read from its source (not by importing it): what
tests/test_layering.py and tests/test_dvc_yaml.py check the package's structure with."""

from __future__ import annotations

import ast
from pathlib import Path


def imported(path: Path, package: str) -> list[tuple[str, bool]]:
    """(absolute name, inside a function) of every import in the module at `path`.

    `from X import a` gives X and X.a (a may be a submodule); relative imports are resolved
    against `package`, the package the module belongs to.
    """
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    inner = {
        id(sub)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for sub in ast.walk(node)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in inner) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, node.module] if node.module else parts)
            else:
                base = node.module or ""
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            found += [(name, id(node) in inner) for name in names]
    return found
