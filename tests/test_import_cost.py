"""``import mtkd`` stays cheap: the public names load on first use, and plotting, experiment
tracking and export libraries load only where a run uses them."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import mtkd

INIT = Path(mtkd.__file__)
# what a plain ``import mtkd`` must leave unloaded
NEVER_ON_IMPORT = (
    "torch",
    "timm",
    "torchmetrics",
    "matplotlib",
    "mlflow",
    "tensorboard",
    "torch.utils.tensorboard",
    "onnx",
    "onnxruntime",
)
# what even using every public name must leave unloaded (torch and timm are the library)
NEVER_FROM_THE_API = NEVER_ON_IMPORT[3:]


def loaded_after(code: str) -> list[str]:
    """The modules of NEVER_ON_IMPORT a fresh interpreter holds after running ``code``."""
    script = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300
    )
    modules = set(json.loads(done.stdout.splitlines()[-1]))
    return sorted(set(NEVER_ON_IMPORT) & modules)


# a fresh interpreter is the only honest view of sys.modules; starting one is a subprocess,
# so CI runs this and the inner loop keeps the in-process checks below
@pytest.mark.slow
def test_import_mtkd_loads_no_heavy_library() -> None:
    assert loaded_after("import mtkd") == []


@pytest.mark.slow
def test_every_public_name_loads_without_plotting_tracking_or_export_libraries() -> None:
    loaded = loaded_after("import mtkd\nfor name in mtkd.__all__: getattr(mtkd, name)")
    assert [m for m in loaded if m in NEVER_FROM_THE_API] == []


def lazy_table() -> tuple[set[tuple[str, str]], set[tuple[str, str]], list[str]]:
    """(name, module) pairs of the TYPE_CHECKING imports and of ``_HOMES``, and ``__all__``."""
    tree = ast.parse(INIT.read_text())
    typed: set[tuple[str, str]] = set()
    homes: set[tuple[str, str]] = set()
    exported: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for stmt in node.body:
                if isinstance(stmt, ast.ImportFrom):
                    home = "." * stmt.level + (stmt.module or "")
                    typed.update((alias.name, home) for alias in stmt.names)
        elif isinstance(node, ast.AnnAssign) and ast.unparse(node.target) == "_HOMES":
            assert node.value is not None
            homes = set(ast.literal_eval(node.value).items())
        elif isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "__all__":
            exported = ast.literal_eval(node.value)
    return typed, homes, exported


def test_the_lazy_names_match_the_typed_imports_and_all() -> None:
    typed, homes, exported = lazy_table()
    assert typed and typed == homes  # what type checkers see is what runs
    assert exported == sorted(name for name, _ in homes)


def test_a_lazy_name_is_the_object_its_module_defines() -> None:
    for name, home in lazy_table()[1]:
        assert getattr(mtkd, name) is getattr(importlib.import_module(home, "mtkd"), name)


def test_submodules_stay_reachable_and_typos_fail() -> None:
    assert mtkd.config.load_recipe is mtkd.load_recipe
    with pytest.raises(AttributeError, match="no attribute 'lod_recipe'"):
        mtkd.lod_recipe  # type: ignore[attr-defined]  # noqa: B018
