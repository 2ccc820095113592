"""The package's layers depend one way, lazy (in-function) imports included."""

from __future__ import annotations

import ast
from pathlib import Path

import loratk

PACKAGE = Path(loratk.__file__).parent
# The engine's subpackages, bottom first: each may import only those of a lower or equal rank.
ENGINE_RANKS = {"quiet": 0, "lazy": 0, "data": 1, "models": 1, "kernels": 2, "memory": 3, "training": 4,
                "inference": 5, "export": 6}


def unit_of(module: str) -> str:
    """The layer a module belongs to: ``loratk.cli``, ``loratk.engine.memory``, ``loratk.errors``..."""
    parts = module.split(".")
    depth = 3 if parts[:2] == ["loratk", "engine"] and len(parts) > 2 else 2
    return ".".join(parts[:depth])


def imports() -> dict[str, set[str]]:
    """Every loratk module's name -> the loratk modules it imports anywhere in its body."""
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(relative.parts[:-1] if relative.name == "__init__" else relative.parts)
        targets = found.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("loratk"):
                targets.add(node.module)
                targets.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names if alias.name.startswith("loratk"))
    return found


def layer_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    modules = imports()
    for module, targets in modules.items():
        edges = graph.setdefault(unit_of(module), set())
        edges.update(unit_of(t) for t in targets if t in modules and unit_of(t) != unit_of(module))
    return graph


def test_engine_subpackages_depend_one_way():
    wrong = []
    for unit, targets in layer_graph().items():
        if not unit.startswith("loratk.engine."):
            continue
        rank = ENGINE_RANKS[unit.rsplit(".", 1)[1]]
        for target in targets:
            if target.startswith("loratk.engine.") and ENGINE_RANKS[target.rsplit(".", 1)[1]] > rank:
                wrong.append(f"{unit} -> {target}")
    assert not wrong, f"imports against the engine's layering: {wrong}"


def test_every_engine_module_is_in_a_named_subpackage():
    loose = [p.name for p in (PACKAGE / "engine").glob("*.py") if p.stem not in ("__init__", *ENGINE_RANKS)]
    assert not loose, f"engine modules outside a subpackage: {loose}"
    assert {p.name for p in (PACKAGE / "engine").iterdir() if (p / "__init__.py").exists()} == {
        name for name, rank in ENGINE_RANKS.items() if rank > 0}


def test_no_import_loops_between_layers():
    graph = layer_graph()
    cycles = []

    def visit(unit: str, path: list[str]) -> None:
        for target in sorted(graph.get(unit, ())):
            if target in path:
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif len(path) < len(graph):
                visit(target, path + [target])

    for unit in sorted(graph):
        visit(unit, [unit])
    assert not cycles, f"import loops: {sorted(set(cycles))[:5]}"


def test_the_graph_holds_lazy_imports():
    """The checks above see imports inside functions too, where loratk puts its heavy ones."""
    graph = layer_graph()
    assert "loratk.plugins" in graph["loratk.cli"]
    assert "loratk.engine.models" in graph["loratk.engine.memory"]
