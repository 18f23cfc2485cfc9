"""Run folders are never lost, mixed or trusted blindly: a new run never takes over another
run's folder, a resume changes only what it honestly can, opening a folder runs none of the
code it names, and every wrong folder or file is one line, never a traceback."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import RECIPE, interrupted_copy, tiny_run, tiny_run_args
from PIL import Image

import mtkd
from mtkd.cli import main


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-epoch run; tests copy it before changing anything."""
    return tiny_run(tmp_path_factory.mktemp("safety") / "done")


@pytest.fixture
def interrupted(finished: Path, tmp_path: Path) -> Path:
    return interrupted_copy(finished, tmp_path / "killed")


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("images") / "face.png"
    Image.new("RGB", (40, 40), (120, 80, 60)).save(path)
    return path


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "2000")  # rich wraps at the terminal width: one line is one


def run_cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str]:
    """Exit status and stderr of ``mtkd ARGS`` (in this process); an error must be one line."""
    code = main([str(a) for a in args])
    err = capsys.readouterr().err.strip()
    if code != 0:
        assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return code, err


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


# -- item 1: a new run never takes over another run's folder ---------------------------------


def test_a_new_run_into_an_interrupted_runs_folder_is_refused_and_leaves_it_intact(
    interrupted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(interrupted)
    code, err = run_cli(capsys, "run", RECIPE, *tiny_run_args(), "--out", interrupted)
    assert code == 2
    assert f"mtkd resume {interrupted}" in err and "--force" in err
    assert snapshot(interrupted) == before  # checkpoint, metrics and config untouched


def test_a_finished_runs_folder_is_refused_by_the_library_too(finished: Path) -> None:
    cfg = mtkd.load_recipe(RECIPE, [*tiny_run_args(), f"output.dir={finished}"])
    with pytest.raises(mtkd.MtkdError, match=r"already holds a finished run.*--force"):
        mtkd.run(cfg)


def test_force_starts_the_folder_afresh_and_never_appends_to_the_old_metrics(
    interrupted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (interrupted / "notes.txt").write_text("mine")  # not the run's: stays
    args = tiny_run_args(**{"trainer.max_epochs": 1})
    code, _ = run_cli(capsys, "run", RECIPE, *args, "--out", interrupted, "--force")
    assert code == 0
    epochs = (interrupted / "metrics.jsonl").read_text().splitlines()
    results = json.loads((interrupted / "results.json").read_text())
    assert len(epochs) == results["epochs_run"] == 1  # the old run's two epochs are gone
    state = json.loads((interrupted / "checkpoints" / "last" / "state.json").read_text())
    assert state["epoch"] == 1
    assert (interrupted / "notes.txt").read_text() == "mine"


def test_an_unknown_key_in_a_checkpoints_state_is_one_line(
    interrupted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A state.json from another mtkd version once stopped the resume with a TypeError."""
    path = interrupted / "checkpoints" / "last" / "state.json"
    state = json.loads(path.read_text())
    path.write_text(json.dumps({**state, "warmup_left": 3}))
    code, err = run_cli(capsys, "resume", interrupted)
    assert code != 0
    assert "unknown key(s) 'warmup_left'" in err and str(path.parent) in err
    assert "TypeError" not in err


# -- item 3: a resume applies safe overrides, refuses the rest, and config.yaml says so -------


def test_resume_refuses_overrides_that_change_the_data_model_or_optimizer(
    interrupted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = (interrupted / "config.yaml").read_bytes()
    code, err = run_cli(
        capsys, "resume", interrupted, "trainer.lr=0.5", "data.image_size=48", "output.plots=true"
    )
    assert code == 2
    assert "trainer.lr" in err and "data.image_size" in err and "output.plots" not in err
    assert (interrupted / "config.yaml").read_bytes() == config


def test_resume_applies_safe_overrides_and_records_them_in_config_yaml(
    interrupted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = run_cli(capsys, "resume", interrupted, "trainer.max_epochs=3")
    assert code == 0
    assert json.loads((interrupted / "results.json").read_text())["epochs_run"] == 3
    assert mtkd.load_recipe(interrupted / "config.yaml").trainer.max_epochs == 3


def test_a_library_resume_refuses_unsafe_changes_too(interrupted: Path) -> None:
    cfg = mtkd.load_recipe(interrupted / "config.yaml", ["trainer.optimizer=sgd"])
    with pytest.raises(mtkd.RecipeError, match=r"resume: trainer\.optimizer would change"):
        mtkd.run(cfg, resume_dir=interrupted)


# -- item 11: opening a run folder runs no code it names, unless trusted ---------------------

EVIL = """
from pathlib import Path
Path({marker!r}).write_text("ran")
"""


@pytest.fixture
def planted(finished: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the run whose config.yaml names a plugin file that leaves a marker."""
    run = tmp_path / "received"
    shutil.copytree(finished, run)
    marker = tmp_path / "marker"
    plugin = tmp_path / "evil.py"
    plugin.write_text(EVIL.format(marker=str(marker)))
    config = (run / "config.yaml").read_text().replace("plugins: []", f"plugins:\n- {plugin}")
    assert str(plugin) in config
    (run / "config.yaml").write_text(config)
    return run, marker


@pytest.mark.parametrize("command", ["predict", "embed", "eval", "export"])
def test_opening_a_run_folder_does_not_import_the_plugins_it_names(
    command: str,
    planted: tuple[Path, Path],
    image: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MTKD_TRUST_PLUGINS", raising=False)
    run, marker = planted
    extra: dict[str, list[object]] = {
        "predict": [image],
        "embed": [image],
        "eval": [],
        "export": ["--format", "onnx"],
    }
    code, err = run_cli(capsys, command, run, *extra[command])
    assert code == 2 and not marker.exists()
    assert "evil.py" in err and "--trust-plugins" in err and "MTKD_TRUST_PLUGINS=1" in err


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_trusting_a_run_folder_loads_its_plugins(
    how: str,
    planted: tuple[Path, Path],
    image: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run, marker = planted
    if how == "flag":
        assert main(["predict", str(run), str(image), "--trust-plugins"]) == 0
    else:
        monkeypatch.setenv("MTKD_TRUST_PLUGINS", "1")
        mtkd.load_run(run)
    assert marker.read_text() == "ran"


def test_installed_plugins_a_run_folder_names_load_without_trust(
    finished: Path, tmp_path: Path
) -> None:
    run = tmp_path / "named"
    shutil.copytree(finished, run)
    config = (run / "config.yaml").read_text()
    named = config.replace("plugins: []", "plugins:\n- mtkd_plugins.identification")
    (run / "config.yaml").write_text(named)
    assert "identification" in mtkd.load_run(run).tasks


# -- one run-folder check, and one line for every wrong folder or file -----------------------


@pytest.mark.parametrize(
    "command",
    [
        ["resume"],
        ["eval"],
        ["predict", "x.png"],
        ["embed", "x.png"],
        ["export", "--format", "onnx"],
    ],
    ids=lambda c: c[0],
)
def test_every_command_says_when_a_folder_is_not_a_run(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name, *rest = command
    code, err = run_cli(capsys, name, tmp_path, *rest)
    assert code == 2 and f"'{tmp_path}' is not a run folder" in err


def test_an_output_dir_that_is_a_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    taken = tmp_path / "a-file"
    taken.write_text("")
    code, err = run_cli(capsys, "run", RECIPE, *tiny_run_args(), "--out", taken)
    assert code == 2 and f"output.dir: '{taken}' is a file" in err


def test_a_read_only_output_dir_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: make the folder refuse as a read-only mount

        def refuse(*_args: object, **kwargs: object) -> object:
            raise OSError(errno.EROFS, "Read-only file system")

        monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    try:
        code, err = run_cli(capsys, "run", RECIPE, *tiny_run_args(), "--out", locked / "run")
    finally:
        locked.chmod(0o755)
    assert code == 2 and f"output.dir: cannot write in '{locked}'" in err
    assert not (locked / "run").exists()


def test_a_pickle_as_encoder_weights_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple[Callable[[str], int], tuple[str]]:
            return (os.system, (f"touch {marker}",))

    weights = tmp_path / "encoder.pth"
    torch.save({"conv_stem.weight": Exploit()}, weights)
    args = tiny_run_args(**{"encoder.weights": weights})
    code, err = run_cli(capsys, "run", RECIPE, *args, "--out", tmp_path / "run")
    assert code == 2 and not marker.exists()
    assert f"encoder.weights: '{weights}' is not a plain tensor file" in err


def test_compare_on_a_corrupt_results_file_is_one_line(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(finished, broken)
    text = (broken / "results.json").read_text()
    (broken / "results.json").write_text(text[: len(text) // 2])  # a torn write
    code, err = run_cli(capsys, "compare", finished, broken)
    assert code == 2 and f"'{broken / 'results.json'}' is corrupt" in err


def test_predict_without_labels_json_is_one_line(
    finished: Path, tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "unlabelled"
    shutil.copytree(finished, run)
    (run / "labels.json").unlink()
    code, err = run_cli(capsys, "predict", run, image)
    assert code == 2 and f"'{run / 'labels.json'}' is missing" in err
