"""The core's shape: no import cycles (counting imports under TYPE_CHECKING and inside
functions, so no lazy import can hide one), and the core never imports its own plugins."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import mtkd

CORE = Path(mtkd.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(CORE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(CORE.rglob("*.py"))}


def resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a ``from … import`` statement reads from."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module ``name`` imports, wherever the statement stands in the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = resolve(name, path.name == "__init__.py", node)
            subs = {f"{target}.{alias.name}" for alias in node.names}
            found.update(subs & known or {target})
    return found


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def cycle_in(graph: dict[str, set[str]]) -> list[str]:
    """The modules of one import cycle (sorted), or [] when there is none."""
    inner = {k: {v for v in vs if v in graph} for k, vs in graph.items()}
    try:
        graphlib.TopologicalSorter(inner).prepare()
    except graphlib.CycleError as exc:
        return sorted(set(exc.args[1]))
    return []


def test_the_core_has_no_import_cycle() -> None:
    graph = import_graph()
    # the package entry points re-export everything: leave them out, as Python imports a
    # module's parent packages first anyway (that is not an edge a reader follows)
    inner = {k: {v for v in vs if v not in ("mtkd",)} for k, vs in graph.items() if k != "mtkd"}
    assert cycle_in(inner) == []


def test_the_cycle_finder_finds_a_planted_cycle() -> None:
    assert cycle_in({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c"]
    assert cycle_in({"a": {"b"}, "b": set()}) == []


def test_the_core_never_imports_the_built_in_plugins() -> None:
    offenders = {
        name: sorted(v for v in targets if v.split(".")[0] == "mtkd_plugins")
        for name, targets in import_graph().items()
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_core_module_imports_the_package_root() -> None:
    """``from mtkd import X`` inside the core would pull in every stage at once."""
    graph = import_graph()
    assert sorted(k for k, vs in graph.items() if "mtkd" in vs and k != "mtkd.__main__") == []
