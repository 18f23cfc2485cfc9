"""benchmarks/results_tables.py: docs/results.md's tables come from study folders, not by hand."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from helpers import RECIPES, REPO, tiny_overrides
from rich.console import Console

from mtkd.runs.study import run_study


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "results_tables", REPO / "benchmarks" / "results_tables.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def two_seed_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp_path = tmp_path_factory.mktemp("study")
    study = tmp_path / "pair.yaml"
    study.write_text(
        "study:\n"
        f"  members: [{RECIPES / 'mobilenetv2_id'}, {RECIPES / 'seg_distilled_id'}]\n"
        "  seeds: [0, 1]\n"
        "  overrides: [encoder.name=mobilenetv2_035, evaluate.latency=false]\n"
        f"  dir: {tmp_path / 'study'}\n"
    )
    return run_study(study, tiny_overrides(tmp_path), console=Console(quiet=True))


@pytest.mark.slow
def test_tables_show_each_seed_and_the_paper_beside_the_measured_accuracy(
    two_seed_study: Path, tmp_path: Path
) -> None:
    folder = two_seed_study
    section = _script().study_section(folder, tmp_path / "images", paper=True)
    seed1 = json.loads((folder / "seg_distilled_id-seed1" / "results.json").read_text())
    measured = 100 * seed1["test"]["distilled"]["identification/top1"]
    per_seed = section.split("Test accuracy of each seed")[1].split("Beside the paper")[0]
    per_seed_row = next(line for line in per_seed.splitlines() if line.startswith("| seg_dis"))
    assert per_seed_row.endswith(f"| {measured:.1f} % |")  # seed 1, the last column
    assert "| MobileNetV2-ID | 2.4M | 21.9 % |" in section
    paper_row = next(line for line in section.splitlines() if line.startswith("| Seg-Dist"))
    assert "99.9 %" in paper_row and " ± " in paper_row
    assert "ResNet-101-ID" not in section  # only the study's networks are compared


@pytest.mark.slow
def test_accuracy_by_yaw_pools_seeds_and_neighbouring_bins_by_image_count() -> None:
    def run(seed: int, accuracies: list[float], counts: list[int]) -> dict[str, object]:
        bins = [
            {"low": low, "high": low + 15, "accuracy": a, "count": n}
            for low, a, n in zip((-30, -15, 0, 15), accuracies, counts, strict=True)
        ]
        return {
            "recipe": "net",
            "seed": seed,
            "accuracy_by_bin": {"tasks": {"identification": bins}},
        }

    table = _script().by_bin_table(
        [run(0, [1.0, 0.0, 0.5, 0.5], [3, 1, 2, 2]), run(1, [0.0, 1.0, 0.0, 1.0], [2, 2, 1, 1])]
    )
    # -30…0°: (3 + 0 + 0 + 2) correct of 8 images; 0…+30°: (1 + 1 + 0 + 1) of 6
    assert "| -30…+0° | +0…+30° |" in table
    assert "| net | 62 % (8) | 50 % (6) |" in table


@pytest.mark.slow
def test_latency_benchmark_times_every_member_of_a_study_against_the_first(
    two_seed_study: Path,
) -> None:
    script = REPO / "benchmarks" / "inference_latency.py"
    args = [str(two_seed_study), "--seed", "1", "--rounds", "1", "--repeats", "1"]
    done = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "ms" not in line]
    rows = [row for row in rows if not row.startswith("| ---")]
    assert [row.split(" | ")[0] for row in rows] == ["| mobilenetv2_id", "| seg_distilled_id"]
    assert rows[0].split(" | ")[3] == "1.00x"  # the first member is the reference


def _yaw_run(recipe: str, seed: int, frontal: float, profile: float) -> dict[str, object]:
    """A run with 30-degree bins: ``frontal`` within ±30°, ``profile`` beyond ±60°, 10 each."""
    accuracy = {-90: profile, -60: 0.5, -30: frontal, 0: frontal, 30: 0.5, 60: profile}
    bins = [
        {"low": float(low), "high": float(low + 30), "count": 10, "accuracy": a}
        for low, a in accuracy.items()
    ]
    rank1 = [dict(b, accuracy=b["accuracy"] / 2) for b in bins]
    return {
        "recipe": recipe,
        "seed": seed,
        "accuracy_by_bin": {"tasks": {"identification": bins}},
        "gallery": {
            "where": "{yaw: [-15, 15]}",
            "tasks": {"identification": {"rank1_by_bin": rank1}},
        },
    }


def test_frontal_against_profile_gains_are_paired_by_seed_with_standard_errors() -> None:
    runs = [
        _yaw_run("net", 0, 0.8, 0.2),
        _yaw_run("net", 1, 0.6, 0.4),
        _yaw_run("teach", 0, 0.8, 0.5),
        _yaw_run("teach", 1, 0.7, 0.5),
    ]
    table = _script().pose_gap_table(runs, ["net", "teach"], baseline="net")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines()[2:]}
    # net: frontal 0.8, 0.6; profile 0.2, 0.4; profile - frontal -0.6, -0.2 (s.e. = sd / sqrt 2)
    assert rows["net"] == "| net | 70.0 ± 10.0 % | 30.0 ± 10.0 % | -40.0 ± 20.0 % | — | — |"
    # teach against net, seed by seed: frontal +0.0, +0.1; profile +0.3, +0.1
    assert rows["teach"] == (
        "| teach | 75.0 ± 5.0 % | 50.0 ± 0.0 % | -25.0 ± 5.0 % | +5.0 ± 5.0 % | +20.0 ± 10.0 % |"
    )
    gallery = _script().pose_gap_table(runs, ["net", "teach"], "net", source="gallery")
    assert "| net | 35.0 ± 5.0 % | 15.0 ± 5.0 % |" in gallery
    section = _script().gallery_section(runs, ["net", "teach"])
    assert "Gallery/probe rank-1 by yaw (gallery: the test views within {yaw: [-15, 15]}" in section
    assert section.count("gain over net") == 4  # two tables, two gain columns each


@pytest.mark.slow
def test_a_study_still_running_is_tabulated_from_its_finished_runs(
    two_seed_study: Path, tmp_path: Path
) -> None:
    running = tmp_path / "running"
    shutil.copytree(two_seed_study, running)
    (running / "study.json").unlink()  # written only when the last member finishes
    (running / "seg_distilled_id-seed1" / "results.json").unlink()  # still training
    section = _script().study_section(running, None)
    assert "(unfinished: the 3 runs finished so far)" in section
    per_seed = section.split("Test accuracy of each seed")[1]
    seg_row = next(line for line in per_seed.splitlines() if line.startswith("| seg_dis"))
    assert seg_row.endswith("| — |")  # seed 1 has no result yet
    with pytest.raises(SystemExit, match=r"no study\.json and no finished run"):
        _script().study_section(tmp_path / "empty", None)
