"""The mtkd command: run with overlays and overrides, list plugins, report errors cleanly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import RECIPES, tiny_overrides

from mtkd.cli import main


def test_run_applies_overlays_and_overrides_and_writes_the_run_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    overlay = tmp_path / "profile.yaml"
    overlay.write_text("trainer: {max_epochs: 3}\n")
    out = tmp_path / "my_run"
    code = main(
        [
            "run",
            str(RECIPES / "mobilenetv2_id.yaml"),
            str(overlay),
            *tiny_overrides(
                tmp_path, **{"encoder.name": "test_efficientnet", "trainer.max_epochs": 2}
            ),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["epochs_run"] == 2  # the override wins over the overlay
    printed = capsys.readouterr().out
    assert "identification/top1" in printed and str(out) in printed.replace("\n", "")


def test_errors_are_reported_without_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", str(RECIPES / "mobilenetv2_id.yaml"), "trainer.max_epoch=2"])
    assert code == 2
    err = capsys.readouterr().err
    assert "trainer.max_epoch" in err and "max_epochs" in err and "Traceback" not in err


def test_plugins_lists_what_each_plugin_registered(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for name in ("identification", "segmentation", "random_images", "distill", "mtkd.engine.setup"):
        assert name in out
