"""The evaluation written to results.json: holdout groups, verification, accuracy by pose bin,
confusion, IoU with and without background, latency."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import RECIPES, run_tiny_synthetic

import mtkd
from mtkd.data.splits import split_indices

TINY = RECIPES / "profiles" / "tiny.yaml"


def test_holdout_groups_never_reach_training_validation_or_test() -> None:
    groups = [i // 10 for i in range(200)]  # 20 groups of 10
    parts = split_indices(groups, 200, test=0.1, val=0.2, seed=3, holdout=0.2)
    held = {groups[i] for i in parts["holdout"]}
    seen = {groups[i] for name in ("train", "val", "test") for i in parts[name]}
    assert len(held) == 4 and not held & seen and len(seen) == 16
    without = split_indices(groups, 200, test=0.1, val=0.2, seed=3)
    kept = [i for i in without["train"] if groups[i] not in held]
    assert set(kept) <= set(parts["train"])  # holding groups out leaves the others' split alone


@pytest.fixture(scope="module")
def assessed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("assess")
    overrides = [
        "data.dataset.identities=8",
        "data.split.holdout=0.25",
        "evaluate.latency_repeats=2",
        "trainer.max_epochs=1",  # what is asserted is the evaluation, not what training learned
    ]
    return run_tiny_synthetic(tmp, *overrides).results


def test_verification_runs_on_the_held_out_groups(assessed: dict) -> None:
    result = assessed["verification"]["identification"]
    assert result["on"] == "holdout" and assessed["data"]["holdout"] == 20
    assert 0.0 <= result["accuracy_mean"] <= 1.0 and len(result["fold_accuracies"]) == 10


def test_accuracy_by_yaw_bin_covers_the_test_samples(assessed: dict) -> None:
    by_bin = assessed["accuracy_by_bin"]
    assert (by_bin["label"], by_bin["component"]) == ("pose", "yaw")
    bins = by_bin["tasks"]["identification"]
    assert len(bins) == 12 and bins[0]["low"] == -90.0
    assert sum(b["count"] for b in bins) == assessed["test"]["distilled"]["identification/count"]


def test_confusion_counts_every_test_sample(assessed: dict) -> None:
    matrix = np.array(assessed["confusion"]["identification"])
    assert matrix.shape == (8, 8)
    assert matrix.sum() == assessed["test"]["distilled"]["identification/count"]
    top1 = np.trace(matrix) / matrix.sum()
    assert top1 == pytest.approx(assessed["test"]["distilled"]["identification/top1"])


def test_segmentation_iou_with_and_without_background(assessed: dict) -> None:
    full = assessed["test"]["full"]
    by_class = full["segmentation/iou_by_class"]
    assert set(by_class) >= {"background", "skin", "left_eye"}
    present = [v for v in by_class.values() if v is not None]
    assert full["segmentation/miou_present"] == pytest.approx(np.mean(present))
    foreground = [v for k, v in by_class.items() if v is not None and k != "background"]
    assert full["segmentation/miou_no_background"] == pytest.approx(np.mean(foreground))
    assert "segmentation/miou" not in assessed["test"]["distilled"]


def test_latency_is_reported_for_both_models(assessed: dict) -> None:
    for model in ("full", "inference"):
        rows = assessed["latency"][model]
        assert [r["batch"] for r in rows] == [1, 32]
        assert all(r["median_ms"] > 0 and r["threads"] >= 1 for r in rows)


def test_comparison_table_reads_the_new_figures(assessed: dict, tmp_path: Path) -> None:
    from mtkd.runs.compare import comparison_rows, markdown_table

    table = markdown_table(comparison_rows([assessed]))
    for title in ("verification", "latency b1 (ms)", "mIoU (teacher)", "test accuracy"):
        assert title in table


def test_eval_command_rescores_a_saved_run(
    assessed: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    from mtkd.cli import main

    run_dir = Path(assessed["run_dir"])
    assert main(["eval", str(run_dir), "data.cache=memory", "evaluate.latency=false"]) == 0
    printed = capsys.readouterr().out
    assert "identification/top1" in printed and "verification (identification" in printed
    saved = sorted(run_dir.glob("eval-*.json"))
    assert saved, "the evaluation is saved in the run folder"


def test_eval_on_data_with_other_classes_scores_verification_only(assessed: dict) -> None:
    from mtkd.runs.eval_run import evaluate_run

    other = evaluate_run(
        assessed["run_dir"],
        ["data.cache=memory", "data.dataset.identities=5", "evaluate.latency=false"],
    )
    assert other["same_classes"] is False and "test" not in other
    assert other["verification"]["identification"]["on"] == "holdout"


def test_run_folder_has_the_accuracy_by_bin_figure(assessed: dict) -> None:
    run_dir = Path(assessed["run_dir"])
    for name in ("accuracy_by_bin-identification.png", "predictions-segmentation.png"):
        assert (run_dir / name).stat().st_size > 1000


def lfw_tree(root: Path, people: tuple[str, ...] = ("Ann_A", "Ben_B", "Cat_C"), n: int = 4) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for person in people:
        (root / person).mkdir(parents=True)
        for k in range(1, n + 1):
            pixels = rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / person / f"{person}_{k:04d}.png")
    return root


def run_on_lfw_tree(tmp_path: Path, root: Path, pairs: Path, *extra: str) -> mtkd.RunResult:
    """Identification alone on an identity_folder tree, verified with a pairs file."""
    overrides = [
        "data.dataset.name=identity_folder",
        f"data.dataset.root={root}",
        f"evaluate.pairs_file={pairs}",
        "tasks.segmentation=null",
        "evaluate.latency=false",
        *extra,
    ]
    return run_tiny_synthetic(tmp_path / "runs", *overrides)


def test_verification_follows_an_lfw_pairs_file(tmp_path: Path) -> None:
    root = lfw_tree(tmp_path / "lfw")
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(
        "2\t2\nAnn_A\t1\t2\nBen_B\t1\t3\nAnn_A\t1\tCat_C\t1\nBen_B\t2\tCat_C\t2\n"
        "Cat_C\t1\t4\nAnn_A\t3\t4\nAnn_A\t2\tBen_B\t4\nCat_C\t3\tBen_B\t1\n"
    )
    result = run_on_lfw_tree(tmp_path, root, pairs, "data.split.test=0.25").results
    result = result["verification"]
    assert result["identification"]["on"] == "pairs.txt"
    assert (
        result["identification"]["n_pairs"] == 8
        and len(result["identification"]["fold_accuracies"]) == 2
    )


def test_a_pairs_file_naming_missing_samples_is_reported(tmp_path: Path) -> None:
    root = lfw_tree(tmp_path / "lfw", people=("Ann_A", "Ben_B"), n=2)
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("1\t1\nAnn_A\t1\t2\nAnn_A\t1\tZed_Z\t1\n")
    with pytest.raises(mtkd.DataError, match=r"pairs\.txt.*\('Zed_Z', 1\)"):
        run_on_lfw_tree(tmp_path, root, pairs, "data.split.test=0.0")


def test_classes_predicted_is_read_from_the_confusion_matrix_so_older_runs_have_it() -> None:
    from mtkd.runs.compare import comparison_rows, markdown_table

    collapsed = {
        "recipe": "vgg",
        "confusion": {"identification": [[0, 3, 0], [0, 2, 0], [0, 4, 0]]},
    }
    healthy = {"recipe": "mnv2", "confusion": {"identification": [[3, 0, 0], [1, 1, 0], [0, 1, 3]]}}
    table = markdown_table(comparison_rows([collapsed, healthy]))
    assert "| vgg | 1 | 33.3 % |" in table  # one class named for every image
    assert "| mnv2 | 1 | 100.0 % |" in table
