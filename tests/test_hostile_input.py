"""Issue 27's hostile-input round: each case a user met is a one-line message that says what
to do, never a traceback, a hang or a silent wrong result."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import RECIPE, RECIPES, interrupted_copy, tiny_run, tiny_run_args, train_quietly

import mtkd
import mtkd.engine.fit
import mtkd.runs.pipeline
from mtkd.cli import main


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-epoch run; tests copy it before changing anything."""
    return tiny_run(tmp_path_factory.mktemp("hostile") / "done")


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "2000")  # rich wraps at the terminal width: one line is one


def run_cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of ``mtkd ARGS``; an error must be one line."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    if code != 0:
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    return code, out, err.strip()


# -- item 17: compare and report on results that are not there --------------------------------


def test_compare_on_an_empty_results_object_is_one_line_naming_the_file(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    shutil.copytree(finished, empty)
    (empty / "results.json").write_text("{}\n")
    code, _, err = run_cli(capsys, "compare", finished, empty)
    assert code == 2 and f"'{empty / 'results.json'}' holds no 'recipe'" in err


def test_report_on_a_study_names_the_member_without_results_as_unfinished(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = tmp_path / "study"  # killed mid-study: no study.json yet
    shutil.copytree(finished, study / "a-seed0")
    interrupted_copy(finished, study / "b-seed0")
    code, out, _ = run_cli(capsys, "report", study)
    assert code == 0
    assert "b-seed0: unfinished: interrupted" in out and "mtkd resume" in out
    page = (study / "report.html").read_text()
    assert "1 of 2 runs finished" in page and "b-seed0 unfinished" in page


def test_report_on_an_interrupted_run_says_so_and_names_resume(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    killed = interrupted_copy(finished, tmp_path / "killed")
    code, _, err = run_cli(capsys, "report", killed)
    assert code == 2 and "is an unfinished run" in err
    assert f"mtkd resume {killed}" in err and "neither" not in err


# -- item 19: a resume cannot move the run --------------------------------------------------


def test_resume_with_another_output_dir_is_refused_and_config_yaml_keeps_what_ran(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    killed = interrupted_copy(finished, tmp_path / "killed")
    config = (killed / "config.yaml").read_text()
    elsewhere = tmp_path / "elsewhere"
    code, _, err = run_cli(capsys, "resume", killed, f"output.dir={elsewhere}")
    assert code == 2 and f"output.dir={elsewhere} is refused" in err and str(killed) in err
    assert (killed / "config.yaml").read_text() == config
    assert not elsewhere.exists() and not (killed / "results.json").exists()


def test_resume_naming_its_own_folder_as_output_dir_still_resumes(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    killed = interrupted_copy(finished, tmp_path / "moved")  # its config names 'done'
    code, _, _ = run_cli(capsys, "resume", killed, f"output.dir={killed}")
    assert code == 0 and (killed / "results.json").is_file()


# -- item 18: an unreachable tracking server fails at start-up --------------------------------


def closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_mlflow_server_fails_in_one_line_before_any_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("mlflow")
    uri = f"http://127.0.0.1:{closed_port()}"
    args = tiny_run_args(**{"output.loggers": "[mlflow]", "output.mlflow_uri": uri})
    started = time.perf_counter()
    code, _, err = run_cli(capsys, "run", RECIPE, *args, "--out", tmp_path / "run")
    assert time.perf_counter() - started < 20  # MLflow's own retries take minutes
    assert code == 2 and f"output.mlflow_uri ({uri}): the tracking server did not answer" in err
    assert not (tmp_path / "run").exists()  # nothing built, nothing trained


# -- item 23: a validation loss that is never finite ------------------------------------------


@pytest.fixture
def nan_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every validation loss comes out NaN, as after an absurd learning rate."""
    evaluate = mtkd.engine.fit.evaluate_loader

    def broken(*args: Any, **kwargs: Any) -> dict[str, object]:
        values = evaluate(*args, **kwargs)
        return {k: float("nan") if k.endswith("loss") else v for k, v in values.items()}

    monkeypatch.setattr(mtkd.engine.fit, "evaluate_loader", broken)


@pytest.mark.usefixtures("nan_validation")
def test_a_nan_validation_loss_stops_the_run_in_one_line_with_on_nan_stop() -> None:
    cfg = mtkd.load_recipe(RECIPE, tiny_run_args())
    with pytest.raises(mtkd.MtkdError, match=r"^epoch 1: val/loss is nan .*on_nan=stop") as info:
        train_quietly(cfg)
    assert "identification" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.usefixtures("nan_validation")
def test_with_on_nan_skip_a_run_without_any_finite_epoch_ends_with_an_error() -> None:
    cfg = mtkd.load_recipe(RECIPE, tiny_run_args(**{"trainer.on_nan": "skip"}))
    with pytest.raises(mtkd.MtkdError, match=r"val/loss was not finite in any of the 2 epoch"):
        train_quietly(cfg)


def test_a_gallery_filter_that_selects_no_image_warns_and_shows_in_the_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "encoder.name=mobilenetv2_035",
        "data.cache=memory",
        "evaluate.gallery_where={yaw: [89, 90]}",  # no synthetic head turns that far
        "evaluate.latency=false",
        "trainer.max_epochs=1",
        "trainer.progress=false",
        "output.plots=false",
    ]
    recipe, profile = RECIPES / "mobilenetv2_id.yaml", RECIPES / "profiles" / "tiny.yaml"
    code, out, err = run_cli(capsys, "run", recipe, profile, *args, "--out", tmp_path / "r")
    # the CLI shows the warning as one line (and the summary repeats it)
    assert "warning: evaluate.gallery_where {yaw: [89, 90]} selects no test" in out + err
    assert code == 0 and "gallery: evaluate.gallery_where {yaw: [89, 90]} selects no" in out
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert "selects no test image" in results["gallery"]["warning"]


# -- item 20: what can be checked is checked before the run folder exists ----------------------


def test_a_batch_of_one_for_batchnorm_fails_before_the_folder_and_the_fixed_rerun_needs_no_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    small = tiny_run_args(**{"encoder.name": "mobilenetv2_035", "trainer.max_epochs": 1})
    code, _, err = run_cli(capsys, "run", RECIPE, *small, "data.batch_size=1", "--out", out)
    assert code == 2 and "data.batch_size: 1" in err and "BatchNorm" in err
    assert not out.exists()
    code, _, _ = run_cli(capsys, "run", RECIPE, *small, "--out", out)
    assert code == 0 and (out / "results.json").is_file()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.weighting={name: aggregate, method: upgradd}", "unknown gradient aggregator"),
        ("encoder.name=mobilenetv9", "encoder.name: unknown timm model 'mobilenetv9'"),
        ("tasks.identification.type=identificaton", "identificaton"),
        ("trainer.optimizer=adamm", "trainer.optimizer: unknown optimizer"),
    ],
)
def test_unknown_names_fail_before_the_data_set_is_built_or_the_folder_made(
    override: str,
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the data set was built before the recipe's names were checked")

    monkeypatch.setattr(mtkd.runs.pipeline, "build_data", never)
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "run", RECIPE, *tiny_run_args(), override, "--out", out)
    assert code == 2 and message in err and not out.exists()


def test_a_run_that_fails_before_its_first_epoch_ends_leaves_no_folder_blocking_the_next(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def fails(self: object, epoch: int) -> None:
        raise mtkd.MtkdError("epoch 1, step 1: something broke")

    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(mtkd.engine.fit.Loop, "run_epoch", fails)
        code, _, err = run_cli(capsys, "run", RECIPE, *tiny_run_args(), "--out", out)
    assert code == 2 and "something broke" in err
    assert not out.exists()
    code, _, _ = run_cli(capsys, "run", RECIPE, *tiny_run_args(), "--out", out)
    assert code == 0 and (out / "results.json").is_file()


# -- item 21: a failing study member costs only its own run -----------------------------------


def test_a_failing_study_member_is_named_the_others_run_and_the_table_marks_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = tmp_path / "mixed.yaml"
    recipe = RECIPES / "mobilenetv2_id.yaml"
    study.write_text(
        "study:\n"
        "  members:\n"
        f"    - {{name: broken, recipe: {recipe}, overrides: [encoder.name=mobilenetv9]}}\n"
        f"    - {recipe}\n"
        "  overrides: [encoder.name=test_efficientnet]\n"  # a member's own overrides win
        f"  dir: {tmp_path / 'study'}\n"
    )
    args = [a for a in tiny_run_args(**{"trainer.max_epochs": 1}) if "encoder." not in a]
    code, out, err = run_cli(capsys, "run", study, *args)
    folder = tmp_path / "study"
    assert code == 2 and "study mixed: 1 of 2 run(s) failed (broken-seed0: encoder.name" in err
    assert "[1/2] broken seed 0 failed: encoder.name: unknown timm model" in out
    assert (folder / "mobilenetv2_id-seed0" / "results.json").is_file()  # ran after the failure
    table = (folder / "table.md").read_text()
    assert "| broken | 0 (1 FAILED) |" in table and "| mobilenetv2_id | 1 |" in table
    failed = json.loads((folder / "study.json").read_text())["failed"]
    assert list(failed) == [str(folder / "broken-seed0")]
    code, out, _ = run_cli(capsys, "report", folder)
    assert code == 0 and "broken-seed0: failed: encoder.name: unknown timm model" in out


# -- item 24: one line instead of a traceback or jargon ----------------------------------------


@pytest.mark.slow
def test_a_reader_that_leaves_the_pipe_early_gets_no_traceback() -> None:
    """``mtkd zoo --json | head``: the reader closes the pipe before mtkd writes."""
    command = [sys.executable, "-m", "mtkd", "zoo", "--json"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141
    assert "Traceback" not in err and "BrokenPipeError" not in err and not err.strip()


@pytest.mark.parametrize("value", ["tensorboard", "tensorboard,jsonl"])
def test_a_single_logger_name_without_brackets_is_a_list(value: str) -> None:
    cfg = mtkd.load_recipe(RECIPE, [f"output.loggers={value}"])
    assert list(cfg.output.loggers) == value.split(",")


def test_a_key_that_may_hold_a_list_or_a_word_keeps_the_word() -> None:
    cfg = mtkd.load_recipe(RECIPES / "seg_distilled_id.yaml", ["encoder.taps=stages"])
    assert cfg.encoder.taps == "stages"  # taps is typed Any: a list there is not a list key


def test_a_misspelt_recipe_file_gets_the_closest_file_names(tmp_path: Path) -> None:
    with pytest.raises(mtkd.RecipeError, match=r"did you mean '(.*/)?seg_distilled_id(\.yaml)?'"):
        mtkd.load_recipe(RECIPES / "seg_distiled_id.yaml")


def test_an_empty_labels_json_says_the_file_is_damaged(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "blank"
    shutil.copytree(finished, run)
    (run / "labels.json").write_text("{}\n")
    image = tmp_path / "face.png"
    from PIL import Image

    Image.new("RGB", (40, 40), (120, 80, 60)).save(image)
    code, _, err = run_cli(capsys, "predict", run, image)
    assert code == 2 and f"'{run / 'labels.json'}' is damaged: it lists no label space" in err
    assert "needs label" not in err


@pytest.mark.parametrize("people", [2, 3, 5, 30])
def test_a_clipped_views_spread_averages_exactly_the_views_asked(people: int) -> None:
    from mtkd_plugins.synthetic_heads.source import SyntheticHeadsOptions, views_per_identity

    for seed in range(5):
        options = SyntheticHeadsOptions(identities=people, views=4, views_spread=50, seed=seed)
        counts = views_per_identity(options)
        assert sum(counts) == 4 * people and min(counts) >= 1 and max(counts) <= 7
