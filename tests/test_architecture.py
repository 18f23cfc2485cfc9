"""The core's shape: no import cycles (counting imports under TYPE_CHECKING and inside
functions, so no lazy import can hide one), stages that import downward only, and the core
never imports its own plugins. The built-in plugins are held to no cycles too."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import mtkd_plugins

import mtkd

CORE = Path(mtkd.__file__).parent
BUILT_IN_PLUGINS = Path(mtkd_plugins.__file__).parent  # the folder plugins/


def module_name(path: Path, root: Path = CORE, package: str = "mtkd") -> str:
    parts = (package, *path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path = CORE, package: str = "mtkd") -> dict[str, Path]:
    return {module_name(p, root, package): p for p in sorted(root.rglob("*.py"))}


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


def import_graph(root: Path = CORE, package: str = "mtkd") -> dict[str, set[str]]:
    mods = modules(root, package)
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


def test_the_built_in_plugins_have_no_import_cycle() -> None:
    graph = import_graph(BUILT_IN_PLUGINS, "mtkd_plugins")
    assert "mtkd_plugins.synthetic_heads.export" in graph  # the scan did find the plugins
    inner = {k: vs - {"mtkd_plugins"} for k, vs in graph.items() if k != "mtkd_plugins"}
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


# The stages, lowest first: a package may import its own modules and those of lower layers.
# Within a layer only the foundation and the plugin contract (the top-level modules a plugin
# author imports, which name each other's types) import each other. Evaluation sits below
# the training loop, which validates with it every epoch.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "utils", "console", "recipe_files"),
    ("data_schema",),  # the data stage's recipe options, which config's schema names
    ("config",),
    (
        "hookspecs",
        "context",
        "options",
        "plugins",
        "tasks",
        "samples",
        "preprocess",
        "weighting",
        "commands",
        "loggers",
        "pretrained",
        "teachers",
    ),
    ("data", "model"),
    ("metrics",),
    ("engine",),
    ("viz",),
    ("runs",),
    ("deploy",),
    ("cli",),
    ("__main__",),
)
SHARED_LAYERS = {0, 3}  # layers whose packages may import each other


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "mtkd" and len(parts) > 1 else None


def layer_violations(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """(importer, imported) pairs of core modules that import against LAYERS."""
    level = {stage: i for i, layer in enumerate(LAYERS) for stage in layer}
    found = set()
    for module, targets in graph.items():
        here = stage_of(module)
        for target in targets:
            there = stage_of(target)
            if here is None or there is None or here == there:
                continue
            if level[there] > level[here] or (
                level[there] == level[here] and level[here] not in SHARED_LAYERS
            ):
                found.add((module, target))
    return found


def test_every_stage_is_in_one_layer() -> None:
    stages = {stage_of(m) for m in modules()} - {None}
    assert stages == {stage for layer in LAYERS for stage in layer}


def test_the_stages_import_downward_only() -> None:
    assert sorted(layer_violations(import_graph())) == []


def test_the_layer_check_finds_an_upward_import() -> None:
    assert layer_violations({"mtkd.engine.step": {"mtkd.metrics.evaluate"}}) == set()
    assert layer_violations({"mtkd.metrics.evaluate": {"mtkd.engine.step"}}) == {
        ("mtkd.metrics.evaluate", "mtkd.engine.step")
    }
    assert layer_violations({"mtkd.data.build": {"mtkd.model.build"}}) == {
        ("mtkd.data.build", "mtkd.model.build")
    }


# The built-in plugins are written as a third-party plugin must be: against ``mtkd``'s
# public names only, so whatever they need is exported (and documented) for everyone.
PLUGIN_FOLDERS = (CORE.parent / "plugins", CORE.parent / "docs" / "examples")


def private_uses(source: str) -> list[str]:
    """Each use of ``mtkd`` beyond its public names (``mtkd.__all__``): ``from mtkd.x import``,
    ``import mtkd.x``, ``from mtkd import <private>`` and ``mtkd.<private>``."""
    public = set(mtkd.__all__) | {"__version__"}
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.startswith("mtkd."):
                found.append(f"line {node.lineno}: from {node.module} import")
            elif node.module == "mtkd":
                names = [a.name for a in node.names if a.name not in public]
                found += [f"line {node.lineno}: from mtkd import {n}" for n in names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("mtkd.")]
            found += [f"line {node.lineno}: import {n}" for n in names]
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "mtkd"
            and node.attr not in public
        ):
            found.append(f"line {node.lineno}: mtkd.{node.attr}")
    return found


def test_the_built_in_plugins_use_only_the_public_api() -> None:
    files = [p for folder in PLUGIN_FOLDERS for p in sorted(folder.rglob("*.py"))]
    assert len(files) > 20
    offenders = {str(p.relative_to(CORE.parent)): private_uses(p.read_text()) for p in files}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_public_api_check_finds_each_private_use() -> None:
    source = (
        "import mtkd\nimport mtkd.utils.checksums\nfrom mtkd.weighting import weighted_sum\n"
        "from mtkd import Task, fixed_total\nx = mtkd.config.parse_options\ny = mtkd.Task\n"
    )
    assert private_uses(source) == [
        "line 2: import mtkd.utils.checksums",
        "line 3: from mtkd.weighting import",
        "line 4: from mtkd import fixed_total",
        "line 5: mtkd.config",
    ]
    assert private_uses("import mtkd_plugins.zoo\nfrom mtkd_plugins import zoo\n") == []
