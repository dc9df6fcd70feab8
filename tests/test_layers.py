"""The import graph only points down: core library < heads < pipelines < CLI.

The layers (README, "Layout"):

1. ``featcache`` core — cache I/O, datasets, models, preprocessing, metrics, runs, PEFT: the
   modules directly in ``featcache/`` and ``featcache/datasets/``;
2. ``featcache.heads`` (folder ``heads/``) — heads, losses, samplers, the batched trainer;
3. ``featcache.pipelines`` (folder ``pipelines/``) — one ``run(config)`` per command;
4. ``featcache.cli`` (and ``python -m featcache``) — builds a config from the command line and
   calls a pipeline.

A module may import from its own layer and the layers below it, never above. The package's
``__init__`` is the flat public API: it reaches every layer lazily (PEP 562 ``__getattr__``),
so it is checked for having no eager import of a higher layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = {"core": 0, "heads": 1, "pipelines": 2, "cli": 3}


def layer_of(module: str) -> int | None:
    """The layer of a ``featcache...`` module name (None for anything outside featcache)."""
    parts = module.split(".")
    if parts[0] in ("heads", "pipelines"):  # the old top-level names: still their layers
        return LAYERS[parts[0]]
    if parts[0] != "featcache":
        return None
    if module == "featcache.__main__":  # ``python -m featcache``: the CLI's entry point
        return LAYERS["cli"]
    if len(parts) > 1 and parts[1] in ("heads", "pipelines", "cli"):
        return LAYERS[parts[1]]
    return LAYERS["core"]


def modules() -> list[tuple[str, Path]]:
    """Every source module of the installed namespace, with its dotted name."""
    out = []
    for folder, prefix in ((REPO / "featcache", "featcache"), (REPO / "heads", "featcache.heads"),
                           (REPO / "pipelines", "featcache.pipelines")):
        for path in sorted(folder.rglob("*.py")):
            if path.is_relative_to(REPO / "featcache" / "heads") or path.is_relative_to(REPO / "featcache" / "pipelines"):
                continue  # the symlinks: the same files are listed under their real folders
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out.append((".".join([prefix, *parts]), path))
    return out


def imports_of(path: Path, module: str, *, eager_only: bool = False) -> list[tuple[str, int]]:
    """(imported module, line) for each import in a file; relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    nodes = tree.body if eager_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((base, node.lineno))
            found += [(f"{base}.{a.name}", node.lineno) for a in node.names]
    return found


def test_there_are_modules_in_every_layer() -> None:
    seen = {layer_of(name) for name, _ in modules()}
    assert seen == set(LAYERS.values())


@pytest.mark.parametrize(("module", "path"), modules(), ids=[m for m, _ in modules()])
def test_imports_only_point_down(module: str, path: Path) -> None:
    if module == "featcache":  # the flat API: lazy attributes, checked below
        return
    own = layer_of(module)
    bad = [(name, line) for name, line in imports_of(path, module)
           if (target := layer_of(name)) is not None and target > own]
    assert not bad, f"{path.relative_to(REPO)} (layer {own}) imports a higher layer: {bad}"


@pytest.mark.parametrize(("module", "path"), modules(), ids=[m for m, _ in modules()])
def test_no_top_level_heads_or_pipelines(module: str, path: Path) -> None:
    """One installed namespace: ``heads`` and ``pipelines`` are reached as ``featcache.*``."""
    bad = [(name, line) for name, line in imports_of(path, module)
           if name.split(".")[0] in ("heads", "pipelines")]
    assert not bad, f"{path.relative_to(REPO)} imports a top-level name: {bad}"


def test_flat_api_imports_no_higher_layer_eagerly() -> None:
    path = REPO / "featcache" / "__init__.py"
    bad = [(name, line) for name, line in imports_of(path, "featcache", eager_only=True)
           if (target := layer_of(name)) is not None and target > 0]
    assert not bad, bad
