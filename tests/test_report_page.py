"""mtkd report: one self-contained HTML page per run or study, whose tables are results.json."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from helpers import RECIPES, html_tables, tiny_overrides
from rich.console import Console

import mtkd
from mtkd.cli import main
from mtkd.runs.study import run_study


def assert_self_contained(page: str) -> None:
    """Nothing is fetched when the page opens: no script, stylesheet link or remote source."""
    assert "<script" not in page and "<link" not in page
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", page)
    assert "url(" not in page
    for source in re.findall(r'<img src="([^"]*)"', page):
        assert source.startswith("data:image/png;base64,")


def assert_test_table(rows: list[list[tuple[str, float | None]]], results: dict[str, Any]) -> None:
    """Each row: metric, full model, inference model; numbers exactly as in results.json."""
    full, distilled = results["test"]["full"], results["test"]["distilled"]
    shown = {row[0][0]: (row[1][1], row[2][1]) for row in rows}
    expected = {
        key: (full.get(key), distilled.get(key))
        for key in {**full, **distilled}
        if isinstance(full.get(key, distilled.get(key)), int | float)
    }
    assert shown == expected


def test_a_run_page_is_one_self_contained_file_whose_tables_are_results_json(
    tmp_path: Path,
) -> None:
    overrides = tiny_overrides(
        tmp_path,
        **{
            "encoder.name": "test_efficientnet",
            "trainer.max_epochs": 2,
            "evaluate.latency_batches": "[1]",
            "evaluate.latency_repeats": 2,
        },
    )
    cfg = mtkd.load_recipe(RECIPES / "mobilenetv2_id.yaml", overrides)
    run_dir = mtkd.run(cfg, console=Console(quiet=True)).run_dir
    before = set(run_dir.rglob("*"))
    assert main(["report", str(run_dir)]) == 0
    assert set(run_dir.rglob("*")) - before == {run_dir / "report.html"}  # one file, no assets
    page = (run_dir / "report.html").read_text()
    assert_self_contained(page)
    assert page.count("<img ") == len(list(run_dir.glob("*.png"))) >= 2  # curves, confusion
    results = json.loads((run_dir / "results.json").read_text())
    tables, headers = html_tables(page)
    assert_test_table(tables["test"], results)
    summary = {row[0][0]: row[1] for row in tables["summary"]}
    assert summary["epochs run"][1] == results["epochs_run"] == 2
    params = {row[0][0]: (row[1][1], row[2][1]) for row in tables["params"]}
    assert params["trainable"] == (
        results["params"]["training"]["trainable"],
        results["params"]["inference"]["trainable"],
    )
    latency = [(row[0][0], row[1][1], row[2][1]) for row in tables["latency"]]
    assert latency == [
        (model, r["batch"], r["median_ms"]) for model, rs in results["latency"].items() for r in rs
    ]
    assert [row[1][0] for row in tables["versions"]] == list(results["versions"].values())
    assert any("24 of 24 samples kept" in row[1][0] for row in tables["data"])
    assert [row[0][1] for row in tables["epochs"]] == [1, 2]
    assert headers["epochs"][:3] == ["epoch", "lr", "train/loss"]
    assert "mobilenetv2_id" in page and "test_efficientnet" in page  # the recipe is shown


def test_a_study_page_has_the_comparison_by_yaw_and_every_members_curves(tmp_path: Path) -> None:
    study = tmp_path / "mini.yaml"
    study.write_text(
        "study:\n"
        f"  members: [{RECIPES / 'mobilenetv2_id'}, {RECIPES / 'pose_distilled_id'}]\n"
        f"  overlays: [{RECIPES / 'profiles' / 'tiny.yaml'}]\n"
        "  overrides: [encoder.name=test_efficientnet, trainer.progress=false,"
        " data.cache=memory, evaluate.latency=false]\n"
        f"  dir: {tmp_path / 'study'}\n"
    )
    folder = run_study(study, [f"output.root={tmp_path / 'runs'}"], console=Console(quiet=True))
    assert main(["report", str(folder)]) == 0
    page = (folder / "report.html").read_text()
    assert_self_contained(page)
    tables, headers = html_tables(page)
    members = ["mobilenetv2_id", "pose_distilled_id"]
    results = {m: json.loads((folder / f"{m}-seed0" / "results.json").read_text()) for m in members}
    comparison = {
        row[0][0]: dict(zip(headers["comparison"], (c[0] for c in row), strict=True))
        for row in tables["comparison"]
    }
    assert list(comparison) == members
    for member in members:
        top1 = results[member]["test"]["distilled"]["identification/top1"]
        assert comparison[member]["test accuracy"] == f"{100 * top1:.1f} %"
        assert comparison[member]["epochs"] == str(results[member]["epochs_run"])
        assert_test_table(tables[f"test-{member}-seed0"], results[member])
    by_yaw = list(folder.glob("accuracy_by_bin-*.png"))
    assert by_yaw  # the pose teacher's labels give the accuracy by yaw
    assert page.count('alt="accuracy_by_bin: ') == len(by_yaw)
    assert page.count('alt="curves"') == len(members)


def test_report_on_a_folder_without_runs_says_what_it_expects(tmp_path: Path) -> None:
    with pytest.raises(mtkd.MtkdError, match=r"neither a run folder .* nor a study folder"):
        from mtkd.runs.report import write_report

        write_report(tmp_path)
