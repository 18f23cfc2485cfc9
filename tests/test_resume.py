"""Reliability: a run killed with SIGKILL mid-epoch, or stopped with Ctrl-C or SIGTERM,
resumes to the same weights and metrics as an uninterrupted run; non-finite losses never
train silently; checkpoints never execute code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import RECIPES, tiny_overrides
from rich.console import Console
from safetensors.torch import load_file

import mtkd

INTERRUPTER = """
import os
import signal

import mtkd


@mtkd.hookimpl
def on_step_end(context, step):
    if step == int(os.environ.get("MTKD_TEST_STOP_AT", "0")):
        os.kill(os.getpid(), getattr(signal, os.environ["MTKD_TEST_SIGNAL"]))
"""


def mtkd_cli(*args: str, stop_at: int = 0, sig: str = "SIGKILL") -> subprocess.CompletedProcess:
    env = {**os.environ, "MTKD_TEST_STOP_AT": str(stop_at), "MTKD_TEST_SIGNAL": sig}
    return subprocess.run(
        [sys.executable, "-m", "mtkd", *args], env=env, capture_output=True, text=True, timeout=300
    )


def train_args(tmp_path: Path, out: Path, *extra: str, recipe: str = "mobilenetv2_id") -> list[str]:
    plugin = tmp_path / "interrupter.py"
    plugin.write_text(textwrap.dedent(INTERRUPTER))
    overrides = tiny_overrides(
        tmp_path,
        **{
            "encoder.name": "test_efficientnet",
            "data.batch_size": 4,  # 4 steps per epoch
            "trainer.max_epochs": 3,
            "trainer.checkpoint_every": 1,
            "trainer.scheduler": "cosine",
            "data.augment.hflip": 0.5,  # the RNG must be restored too
            "evaluate.latency": "false",
            "output.plots": "false",
        },
    )
    return [
        "run",
        str(RECIPES / f"{recipe}.yaml"),
        *overrides,
        *extra,
        f"plugins=[{plugin}]",
        "--out",
        str(out),
    ]


def assert_same_run(a: Path, b: Path) -> None:
    for name in ("checkpoints/best.safetensors", "distilled/model.safetensors"):
        left, right = load_file(str(a / name)), load_file(str(b / name))
        assert left.keys() == right.keys()
        for key in left:
            assert torch.equal(left[key], right[key]), f"{name}: {key} differs"

    def metrics(run: Path) -> list[dict]:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in row.items() if not k.startswith("time")} for row in rows]

    assert metrics(a) == metrics(b)
    results = [json.loads((run / "results.json").read_text())["test"] for run in (a, b)]
    assert results[0] == results[1]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    straight = mtkd_cli(*train_args(tmp_path, tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr
    killed = mtkd_cli(*train_args(tmp_path, tmp_path / "killed"), stop_at=6)  # epoch 2, step 2
    assert killed.returncode == -9
    assert not (tmp_path / "killed" / "results.json").exists()
    state = json.loads((tmp_path / "killed" / "checkpoints" / "last" / "state.json").read_text())
    assert (state["epoch"], state["step"]) == (1, 2)
    resumed = mtkd_cli("resume", str(tmp_path / "killed"))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed at epoch 2, step 2" in resumed.stdout
    assert_same_run(tmp_path / "straight", tmp_path / "killed")


@pytest.mark.slow
def test_sigkill_mid_epoch_with_a_stateful_gradient_aggregator_resumes_exactly(
    tmp_path: Path,
) -> None:
    """Nash-MTL's state (its last weights) and the epoch's running gradient cosines are in
    the checkpoint: weights and every logged figure match an uninterrupted run."""
    extra = [
        "encoder.name=mobilenetv2_035",
        "trainer.weighting.name=aggregate",
        "trainer.weighting.method=nash_mtl",
    ]
    runs = {name: train_args(tmp_path, tmp_path / name, *extra, recipe="seg_distilled_id")
            for name in ("straight", "killed")}  # fmt: skip
    straight = mtkd_cli(*runs["straight"])
    assert straight.returncode == 0, straight.stderr
    assert mtkd_cli(*runs["killed"], stop_at=6).returncode == -9  # epoch 2, step 2
    resumed = mtkd_cli("resume", str(tmp_path / "killed"))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed at epoch 2, step 2" in resumed.stdout
    assert_same_run(tmp_path / "straight", tmp_path / "killed")


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_ctrl_c_or_preemption_checkpoints_says_how_to_resume_and_resumes_exactly(
    tmp_path: Path, sig: str, code: int
) -> None:
    """Ctrl-C, and SIGTERM as SLURM, Kubernetes and spot instances send before a kill: both
    checkpoint at the next step boundary mid-epoch, and the resumed run matches bit for bit."""
    straight = mtkd_cli(*train_args(tmp_path, tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr
    stopped = mtkd_cli(*train_args(tmp_path, tmp_path / "stopped"), stop_at=3, sig=sig)
    assert stopped.returncode == code, stopped.stderr
    assert f"mtkd resume {tmp_path / 'stopped'}" in stopped.stderr.replace("\n", "")
    assert mtkd_cli("resume", str(tmp_path / "stopped")).returncode == 0
    assert_same_run(tmp_path / "straight", tmp_path / "stopped")


@pytest.mark.slow
def test_resuming_a_finished_run_is_refused(tmp_path: Path) -> None:
    done = mtkd_cli(*train_args(tmp_path, tmp_path / "done"))
    assert done.returncode == 0, done.stderr
    again = mtkd_cli("resume", str(tmp_path / "done"))
    assert again.returncode == 2 and "finished run" in again.stderr


def nan_run(tmp_path: Path, policy: str, monkeypatch: pytest.MonkeyPatch) -> mtkd.RunResult:
    """A tiny run whose identification loss is NaN at the third training step."""
    from mtkd_plugins.identification import Identification

    original = Identification.loss
    steps = {"n": 0}

    def loss(
        self: Identification, output: dict, target: torch.Tensor, head: torch.nn.Module
    ) -> torch.Tensor:
        value = original(self, output, target, head)
        if torch.is_grad_enabled():  # training, not validation
            steps["n"] += 1
            if steps["n"] == 3:
                return value * float("nan")
        return value

    monkeypatch.setattr(Identification, "loss", loss)
    overrides = tiny_overrides(
        tmp_path,
        **{
            "encoder.name": "test_efficientnet",
            "trainer.max_epochs": 3,
            "trainer.on_nan": policy,
            "evaluate.verification": "false",
            "evaluate.latency": "false",
            "output.plots": "false",
        },
    )
    cfg = mtkd.load_recipe(RECIPES / "mobilenetv2_id.yaml", overrides)
    return mtkd.run(cfg, console=Console(quiet=True))


def test_a_nan_loss_stops_the_run_naming_the_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(
        mtkd.MtkdError, match=r"epoch 2, step 1: non-finite loss in task\(s\) identification"
    ):
        nan_run(tmp_path, "stop", monkeypatch)


def test_skip_and_lower_lr_policies_train_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = nan_run(tmp_path, "lower_lr", monkeypatch)
    lrs = [
        json.loads(line)["lr"]
        for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    # halved in epoch 2: its own line shows the rate it ended with, and the halving stays
    assert lrs[1] == pytest.approx(lrs[0] / 2) and lrs[2] == pytest.approx(lrs[1])
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


@pytest.mark.slow
def test_a_planted_pickle_checkpoint_is_refused(tmp_path: Path) -> None:
    from mtkd.utils.checkpoint import load_checkpoint, previous_of

    run = tmp_path / "done"
    assert mtkd_cli(*train_args(tmp_path, run)).returncode == 0
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple[Callable[[str], int], tuple[str]]:
            return (os.system, (f"touch {marker}",))

    last = run / "checkpoints" / "last"
    torch.save({"optimizer": Exploit()}, last / "optimizer.pt")
    for sums in run.rglob("SHA256SUMS"):  # the attacker removes the checksums too
        sums.unlink()
    model = mtkd.load_run(run, distilled=False, trust_plugins=True)  # it names interrupter.py
    *_, notes = load_checkpoint(last, model)  # falls back to the checkpoint before
    assert "refused" in notes[0] and not marker.exists()
    torch.save({"optimizer": Exploit()}, previous_of(last) / "optimizer.pt")
    with pytest.raises(mtkd.MtkdError, match=r"no usable checkpoint.*optimizer\.pt' refused"):
        load_checkpoint(last, model)
    assert not marker.exists()


@pytest.mark.slow
def test_a_truncated_checkpoint_falls_back_to_the_one_before(tmp_path: Path) -> None:
    straight = mtkd_cli(*train_args(tmp_path, tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr
    killed = mtkd_cli(*train_args(tmp_path, tmp_path / "killed"), stop_at=6)
    assert killed.returncode == -9
    weights = tmp_path / "killed" / "checkpoints" / "last" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a torn write
    resumed = mtkd_cli("resume", str(tmp_path / "killed"))
    assert resumed.returncode == 0, resumed.stderr
    out = resumed.stdout.replace("\n", "")
    assert "unreadable" in out and "resumed at epoch 2, step 1" in out
    assert_same_run(tmp_path / "straight", tmp_path / "killed")


def test_a_full_disk_stops_with_a_message_and_keeps_the_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from mtkd.utils import checkpoint

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    last = tmp_path / "checkpoints" / "last"
    checkpoint.save_checkpoint(last, model, optimizer, {"epoch": 1})

    def full(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full)
    with pytest.raises(mtkd.MtkdError, match=r"No space left on device.*still holds the last good"):
        checkpoint.save_checkpoint(last, model, optimizer, {"epoch": 2})
    monkeypatch.undo()
    state, *_ = checkpoint.load_checkpoint(last, model, optimizer, required=("epoch",))
    assert state == {"epoch": 1}
