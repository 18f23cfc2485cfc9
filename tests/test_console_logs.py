"""Logs a person can read (issue 27, items 4-7): whole lines and whole tables in a log file,
a progress bar that moves in short epochs, warnings as one line, a readable start-up line."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import pytest
from helpers import RECIPES, tiny_overrides
from rich.console import Console
from rich.progress import Progress

import mtkd
from mtkd.cli import main
from mtkd.console import make_console, one_line_warnings
from mtkd.recipe_files import shipped_recipes
from mtkd.runs.pipeline import startup_lines
from mtkd.runs.study import run_study


def test_a_console_writing_to_a_file_never_wraps_a_line() -> None:
    out = io.StringIO()
    console = make_console(file=out)
    line = "epoch 1  " + "  ".join(f"val/segmentation/metric_{i} 0.1234" for i in range(12))
    console.print(line)
    assert out.getvalue() == line + "\n"


def test_the_command_prints_whole_lines_into_a_pipe(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    name, _, description = next(r for r in shipped_recipes() if r[0] == "seg_distilled_id")
    (line,) = [ln for ln in out.splitlines() if ln.startswith(name + " ")]
    assert len(line) > 80 and line.endswith(description)


def test_a_studys_table_in_a_log_file_is_whole_and_is_the_table_in_the_study_folder(
    tmp_path: Path,
) -> None:
    study = tmp_path / "a_study_with_a_long_name.yaml"
    study.write_text(
        "study:\n  members: [{name: a_member_with_a_long_descriptive_name, "
        f"recipe: {RECIPES / 'mobilenetv2_id.yaml'}}}]\n  seeds: [0]\n"
        f"  dir: {tmp_path / 'a_study_with_a_long_name'}\n"  # not runs/ under the cwd
    )
    log = io.StringIO()
    overrides = tiny_overrides(tmp_path, **{"encoder.name": "test_efficientnet"})
    folder = run_study(study, overrides, console=Console(file=log, width=80))
    printed = log.getvalue().splitlines()
    table = (folder / "table.md").read_text().splitlines()[2:]  # below its heading
    assert len(table[0]) > 80 and "…" not in log.getvalue()
    start = printed.index(table[0])
    assert printed[start : start + len(table)] == table  # the same table, whole
    assert f"table: {folder / 'table.md'}" in printed


class RecordingProgress(Progress):
    """A disabled progress display that remembers where each bar was moved to."""

    moved: list[int] = []

    def update(self, task_id: Any, **fields: Any) -> None:
        if "completed" in fields:
            RecordingProgress.moved.append(int(fields["completed"]))
        super().update(task_id, **fields)


def test_the_progress_bar_moves_every_step_when_an_epoch_is_shorter_than_log_every(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mtkd.engine import fit

    monkeypatch.setattr(
        fit, "epoch_progress", lambda console, enabled: RecordingProgress(disable=True)
    )
    RecordingProgress.moved = []
    cfg = mtkd.load_recipe(
        RECIPES / "mobilenetv2_id.yaml",
        tiny_overrides(
            tmp_path,
            **{"encoder.name": "test_efficientnet", "trainer.log_every": 50},
            **{"data.dataset.views": 12, "data.batch_size": 8},
        ),
    )
    data = mtkd.build_data(cfg)
    model = mtkd.build_model(cfg, data.label_spaces)
    mtkd.train(model, data, cfg, console=Console(quiet=True))
    steps = -(-len(data.train) // 8)
    assert steps > 2
    assert RecordingProgress.moved == list(range(1, steps + 1))  # not only the epoch's end


def test_python_warnings_print_as_one_mtkd_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import mtkd.cli as cli

    def warn(self: Any, args: Any, console: Console) -> int:
        warnings.warn("the thing\n  is deprecated", FutureWarning, stacklevel=1)
        return 0

    monkeypatch.setattr(cli.Recipes, "run", warn)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["recipes"]) == 0
    err = capsys.readouterr().err
    assert err == "warning: the thing is deprecated (FutureWarning, test_console_logs.py)\n"
    before = warnings.showwarning
    with one_line_warnings(Console(file=io.StringIO())):
        pass
    assert warnings.showwarning is before  # put back


def test_the_startup_model_line_reads_like_the_rest(tmp_path: Path) -> None:
    cfg = mtkd.load_recipe(
        RECIPES / "seg_distilled_id.yaml",
        tiny_overrides(tmp_path, **{"encoder.name": "mobilenetv2_035"}),
    )
    data = mtkd.build_data(cfg)
    model = mtkd.build_model(cfg, data.label_spaces)
    lines = startup_lines(data.sizes(), cfg.encoder.name, model.describe())
    assert lines[0] == f"data: train {len(data.train)}, val {len(data.val)}, test {len(data.test)}"
    assert lines[1] == (
        "model: mobilenetv2_035 with 5 taps; tasks: identification (identification, student, "
        "weight 0.1); segmentation (segmentation, teacher, weight 1)"
    )
    assert not any(c in "".join(lines) for c in "{}'")
