"""One process at a time trains a run folder: a second one is refused, or skipped by a study."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import RECIPES, tiny_overrides
from rich.console import Console

import mtkd
from mtkd.runs.study import run_study
from mtkd.utils.layout import run_status
from mtkd.utils.run_lock import RunFolderBusy, claim_run_folder, lock_path

HOLD = (
    "import sys, time\n"
    "from mtkd.utils.run_lock import claim_run_folder\n"
    "with claim_run_folder(sys.argv[1]):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(120)\n"
)


@contextmanager
def held_by_another_process(run_dir: Path) -> Iterator[subprocess.Popen[str]]:
    """A child process that claims ``run_dir`` until it is killed (SIGKILL: no clean-up)."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        yield child
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()


def test_a_folder_held_by_another_process_is_refused_naming_its_pid(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "a"
    with held_by_another_process(run_dir) as child:
        busy = rf"'.*a' is being trained by .*pid {child.pid}"
        with pytest.raises(RunFolderBusy, match=busy), claim_run_folder(run_dir):
            pass
    with claim_run_folder(run_dir):  # the killed holder left no stale lock
        assert f"pid {os.getpid()}" in lock_path(run_dir).read_text()
    assert not run_dir.exists()  # the lock lives beside the folder, never creates it


def test_a_claim_is_reentrant_within_one_process(tmp_path: Path) -> None:
    with claim_run_folder(tmp_path / "a"), claim_run_folder(tmp_path / "a"):
        pass
    with claim_run_folder(tmp_path / "a"):  # released after both
        pass


def test_a_run_into_a_folder_another_process_trains_fails_before_writing(tmp_path: Path) -> None:
    out = tmp_path / "runs" / "busy"
    cfg = mtkd.load_recipe(
        RECIPES / "mobilenetv2_id.yaml",
        [*tiny_overrides(tmp_path), "encoder.name=test_efficientnet", f"output.dir={out}"],
    )
    with held_by_another_process(out), pytest.raises(RunFolderBusy):
        mtkd.run(cfg, console=Console(quiet=True))
    assert not out.exists()


@pytest.mark.slow
def test_a_study_skips_a_member_another_process_trains_and_runs_it_later(
    tmp_path: Path,
) -> None:
    study = tmp_path / "two.yaml"
    study.write_text(
        "study:\n"
        f"  members: [{RECIPES / 'mobilenetv2_id'}]\n"
        "  seeds: [0, 1]\n"
        "  overrides: [encoder.name=test_efficientnet]\n"
        f"  dir: {tmp_path / 'study'}\n"
    )
    busy = tmp_path / "study" / "mobilenetv2_id-seed1"
    console = Console(record=True, width=200)
    with held_by_another_process(busy):
        started = time.perf_counter()
        run_study(study, tiny_overrides(tmp_path), console=console)
        assert time.perf_counter() - started < 100  # it did not wait for the holder
    text = console.export_text()
    assert "seed 1: being trained by another process (pid" in text
    assert "1 run(s) still train in another process (mobilenetv2_id-seed1)" in text
    assert run_status(tmp_path / "study" / "mobilenetv2_id-seed0") == "finished"
    assert not busy.exists()
    run_study(study, tiny_overrides(tmp_path), console=Console(quiet=True))
    assert run_status(busy) == "finished"
