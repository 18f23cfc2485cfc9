"""One module owns the run folder's layout: the names a run writes are spelled there alone,
``run_status`` is the one answer to "did this run finish, crash or stop", and the keys a
checkpoint's state must hold are ``LoopState``'s fields."""

from __future__ import annotations

import ast
import json
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import pytest

import mtkd
from mtkd.context import RESUME_STATE_KEYS, EpochTally, LoopState
from mtkd.utils import layout

CORE = Path(mtkd.__file__).parent
# names specific enough that a string equal to one (or a path through one) is a layout use;
# "last", "distilled" and "export" are also ordinary words and results keys
NAMES = (
    layout.CONFIG,
    layout.LABELS,
    layout.METRICS,
    layout.RESULTS,
    layout.CHECKPOINTS,
    layout.BEST,
    layout.STATE,
    layout.WEIGHTS,
    layout.OPTIMIZER,
    layout.RNG,
    layout.TASKS,
    layout.TRACKING,
    layout.MLFLOW_RUN,
    layout.INIT_FROM,
    layout.LAST + layout.PREVIOUS,
)


def docstrings(tree: ast.AST) -> set[int]:
    """ids of the string nodes that are docstrings (prose may name the files)."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def spells_a_layout_name(text: str) -> bool:
    parts = text.split("/")
    return any(name in parts for name in NAMES)


def test_the_run_folder_names_are_spelled_only_in_the_layout_module() -> None:
    offenders = []
    for path in sorted(CORE.rglob("*.py")):
        if path == Path(layout.__file__):
            continue
        tree = ast.parse(path.read_text())
        skip = docstrings(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in skip
                and spells_a_layout_name(node.value)
            ):
                offenders.append(f"{path.relative_to(CORE.parent)}:{node.lineno}: {node.value!r}")
    assert offenders == []


def test_the_scan_finds_a_planted_literal() -> None:
    assert spells_a_layout_name("checkpoints/best.safetensors")
    assert spells_a_layout_name("results.json")
    assert not spells_a_layout_name("distilled") and not spells_a_layout_name("see results")


def write_checkpoint(run: Path, name: str = layout.LAST) -> None:
    folder = run / layout.CHECKPOINTS / name
    folder.mkdir(parents=True)
    (folder / layout.STATE).write_text(json.dumps(LoopState().to_dict()))


@pytest.mark.parametrize(
    ("make", "status"),
    [
        (lambda run: None, None),
        (lambda run: (run / layout.CONFIG).write_text("name: x\n"), "started"),
        (lambda run: (run / layout.CHECKPOINTS).mkdir(), "started"),
        (write_checkpoint, "interrupted"),
        # a crash between the checkpoint's two renames leaves only the one before
        (lambda run: write_checkpoint(run, layout.LAST + layout.PREVIOUS), "interrupted"),
        (lambda run: (run / layout.RESULTS).write_text('{"completed": false}'), "crashed"),
        (lambda run: (run / layout.RESULTS).write_text('{"completed": true}'), "finished"),
        (lambda run: (run / layout.RESULTS).write_text("{not json"), "finished"),
    ],
)
def test_run_status_tells_each_kind_of_folder(
    tmp_path: Path, make: Callable[[Path], object], status: str | None
) -> None:
    make(tmp_path)
    assert layout.run_status(tmp_path) == status
    assert layout.run_status(tmp_path / "absent") is None


def test_resume_state_keys_are_the_loop_states_fields() -> None:
    assert tuple(f.name for f in fields(LoopState)) == RESUME_STATE_KEYS
    assert tuple(LoopState().to_dict()) == RESUME_STATE_KEYS  # what a checkpoint writes


def test_an_unknown_state_key_is_named_not_a_type_error() -> None:
    raw = LoopState().to_dict()
    with pytest.raises(ValueError, match=r"unknown key\(s\) 'warmup_left'"):
        LoopState.from_dict({**raw, "warmup_left": 3})
    with pytest.raises(ValueError, match=r"'tally\.margin'"):
        LoopState.from_dict({**raw, "tally": {**EpochTally().__dict__, "margin": 1.0}})
    assert LoopState.from_dict(raw) == LoopState()
    # a key this version retired (the tally's step-mean ``total``) is read past, so a
    # checkpoint an earlier version wrote still resumes
    assert LoopState.from_dict({**raw, "tally": {**raw["tally"], "total": 0.5}}) == LoopState()
