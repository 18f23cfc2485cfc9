"""What the docs name exists: every dotted ``mtkd.…``/``mtkd_plugins.…`` name in docs/*.md,
README.md and the docstrings of mtkd/, plugins/ and benchmarks/ imports, every repository
file path a page gives is there, and every ``tests/x.py::test_y`` a page cites is a test.
A rename that forgets a page fails here instead of sending a reader to a name that is gone
(docs/export.md once named ``mtkd.export.load_exported``, docs/benchmarks.md
``mtkd.train.fit``)."""

from __future__ import annotations

import ast
import importlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import REPO

PAGES = [*sorted((REPO / "docs").glob("*.md")), REPO / "README.md"]
SOURCES = [
    path
    for folder in ("mtkd", "plugins", "benchmarks")
    for path in sorted((REPO / folder).rglob("*.py"))
]
DOTTED = re.compile(r"(?<![\w./-])(mtkd(?:_plugins)?(?:\.[A-Za-z_]\w*)+)")
NOT_PYTHON = {  # dotted names that are not Python: the tags mtkd sets on an MLflow run
    "mtkd.replaced",
    "mtkd.replaced_at",
}
# A path into the repository: rooted at one of its folders, or (docs/design.md's module map)
# at one of mtkd's stage packages. Other paths in the docs are the reader's (RUN/, OUT/, ...).
PATH = re.compile(r"(?<![\w./-])((?:[A-Za-z_][\w-]*/)+[\w.-]+\.(?:py|md|yaml|sh|toml))\b")
ROOTS = ("mtkd", "plugins", "tests", "benchmarks", "docs", "recipes", ".ci")
STAGES = ("data", "model", "engine", "metrics", "runs", "deploy", "utils", "viz")
TEST_ID = re.compile(r"(tests/[\w/]+\.py)::(\w+)")


def resolves(name: str) -> bool:
    """Import the longest importable prefix of ``name``, then getattr the rest."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            if not hasattr(found, attribute):
                return False
            found = getattr(found, attribute)
        return True
    return False


def real(name: str) -> bool:
    return name in NOT_PYTHON or resolves(name)


def docstrings(path: Path) -> Iterator[tuple[int, str]]:
    """(line, text) of the module's, each class's and each function's docstring."""
    tree = ast.parse(path.read_text(), str(path))
    nodes = [tree, *ast.walk(tree)]
    for node in nodes:
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            text = ast.get_docstring(node, clean=False)
            if text:
                yield getattr(node, "lineno", 1), text


def page_names() -> Iterator[tuple[str, str]]:
    for page in PAGES:
        for name in DOTTED.findall(page.read_text()):
            yield page.relative_to(REPO).as_posix(), name


def docstring_names() -> Iterator[tuple[str, str]]:
    for source in SOURCES:
        for line, text in docstrings(source):
            for name in DOTTED.findall(text):
                yield f"{source.relative_to(REPO).as_posix()}:{line}", name


def repository_file(path: str) -> Path | None:
    """Where ``path`` must be in the repository, or None when it is not a repository path."""
    first = path.split("/")[0]
    if first in ROOTS:
        return REPO / path
    if first in STAGES and path.endswith(".py"):
        return REPO / "mtkd" / path
    return None


def test_every_dotted_name_the_docs_give_resolves() -> None:
    missing = sorted({f"{where}: {name}" for where, name in page_names() if not real(name)})
    assert not missing, "names in the docs that do not import:\n" + "\n".join(missing)


def test_every_dotted_name_a_docstring_gives_resolves() -> None:
    missing = sorted({f"{where}: {name}" for where, name in docstring_names() if not real(name)})
    assert not missing, "names in docstrings that do not import:\n" + "\n".join(missing)


def test_every_repository_path_the_docs_give_exists() -> None:
    missing = []
    for page in PAGES:
        for path in sorted(set(PATH.findall(page.read_text()))):
            where = repository_file(path)
            if where is not None and not where.is_file():
                missing.append(f"{page.relative_to(REPO).as_posix()}: {path}")
    assert not missing, "files the docs name that are not there:\n" + "\n".join(missing)


def test_every_test_the_docs_cite_is_a_test_of_that_file() -> None:
    missing = []
    for page in PAGES:
        for path, test in sorted(set(TEST_ID.findall(page.read_text()))):
            source = REPO / path
            tests = (
                {
                    node.name
                    for node in ast.walk(ast.parse(source.read_text()))
                    if isinstance(node, ast.FunctionDef)
                }
                if source.is_file()
                else set()
            )
            if test not in tests:
                missing.append(f"{page.relative_to(REPO).as_posix()}: {path}::{test}")
    assert not missing, "tests the docs cite that do not exist:\n" + "\n".join(missing)


@pytest.mark.parametrize(
    ("name", "real"),
    [
        ("mtkd.load_exported", True),
        ("mtkd.deploy.export.load_exported", True),
        ("mtkd_plugins.seg_decoders.TapPyramid", True),
        ("mtkd.export.load_exported", False),  # a module mtkd does not have
        ("mtkd.train.fit", False),  # mtkd.train is a function: no attribute fit
        ("mtkd.engine.fit.no_such_function", False),
    ],
)
def test_the_resolver_tells_a_real_name_from_a_stale_one(name: str, real: bool) -> None:
    assert resolves(name) == real
