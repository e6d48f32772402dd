"""The package's layers, read from the source: lower layers never import higher ones, and mml
modules are imported at the top of modules (cli.py alone imports lazily, for start-up time)."""

from __future__ import annotations

from pathlib import Path

from imports import imported

PACKAGE = Path(__file__).resolve().parents[1] / "mml"

# from the bottom up; a module may import its own layer and the ones below
LAYERS = [
    {"errors", "fsio", "progress", "seeds", "workers", "losses", "metrics"},
    {"config", "checkpoint", "stats", "artifacts"},
    {"data", "models", "distributed", "tracking"},
    {"inference", "stage_setup", "stage_files", "ensemble", "pretrain"},
    {"train", "evaluate", "predictor", "runs"},
    {"tune", "registry", "serving", "comparisons"},
    {"report", "views", "repro"},
    {"cli", "__main__"},
]


def layer(module: str) -> int:
    top = module.split(".")[1] if module.startswith("mml.") else module
    return next(i for i, names in enumerate(LAYERS) if top in names)


def imports(path: Path) -> list[tuple[str, bool]]:
    """(mml module, imported inside a function) for each import of an mml module in `path`."""
    package = ".".join(path.relative_to(PACKAGE.parent).parent.parts)
    return [(name, inner) for name, inner in imported(path, package) if name.startswith("mml.")]


def modules() -> list[tuple[str, Path]]:
    return [
        (".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts), p)
        for p in sorted(PACKAGE.rglob("*.py"))
        if p.name != "__init__.py"
    ]


def test_no_module_imports_a_higher_layer():
    upward = [
        f"{name} (layer {layer(name)}) imports {target} (layer {layer(target)})"
        for name, path in modules()
        for target, _ in imports(path)
        if layer(target) > layer(name)
    ]
    assert not upward, "\n".join(upward)


def test_mml_modules_are_imported_at_the_top_except_in_the_cli():
    lazy = [
        f"{name} imports {target} inside a function"
        for name, path in modules()
        if name != "mml.cli"
        for target, inner in imports(path)
        if inner
    ]
    assert not lazy, "\n".join(lazy)
