"""Studies: members x seeds under shared overrides, a comparison table, and resuming."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import timm
from helpers import RECIPES, tiny_overrides
from rich.console import Console

import mtkd
import mtkd.runs.tracking
from mtkd.cli import main
from mtkd.runs.report import write_report
from mtkd.runs.study import is_study, plan_study, run_study
from mtkd.utils.layout import run_status


def write_study(tmp_path: Path, seeds: str = "[0, 1]") -> Path:
    study = tmp_path / "mini.yaml"
    study.write_text(
        "study:\n"
        f"  members: [{RECIPES / 'mobilenetv2_id'}, {RECIPES / 'seg_distilled_id'}]\n"
        f"  seeds: {seeds}\n"
        "  overrides: [encoder.name=mobilenetv2_035]\n"
        f"  dir: {tmp_path / 'study'}\n"
    )
    return study


def test_study_runs_every_member_and_seed_and_writes_the_table(tmp_path: Path) -> None:
    folder = run_study(write_study(tmp_path), tiny_overrides(tmp_path), console=Console(quiet=True))
    runs = sorted(p.name for p in folder.iterdir() if p.is_dir())
    assert runs == [
        "mobilenetv2_id-seed0",
        "mobilenetv2_id-seed1",
        "seg_distilled_id-seed0",
        "seg_distilled_id-seed1",
    ]
    seeds = {json.loads((folder / r / "results.json").read_text())["seed"] for r in runs}
    assert seeds == {0, 1}
    table = (folder / "table.md").read_text()
    assert table.count("| mobilenetv2_id | 2 |") == 1  # one row per recipe, seeds pooled
    assert table.count("| seg_distilled_id | 2 |") == 1
    assert " ± " in table  # two seeds: mean ± std
    assert "mIoU (teacher)" in table


def test_study_resumes_without_rerunning_finished_members(tmp_path: Path) -> None:
    study = write_study(tmp_path, seeds="[0]")
    folder = run_study(study, tiny_overrides(tmp_path), console=Console(quiet=True))
    stamp = (folder / "mobilenetv2_id-seed0" / "results.json").stat().st_mtime_ns
    partial = folder / "seg_distilled_id-seed0"
    (partial / "results.json").unlink()  # as if the run was killed before finishing
    logged = (partial / "metrics.jsonl").read_text()
    console = Console(record=True, width=200)
    run_study(study, tiny_overrides(tmp_path), console=console)
    assert (folder / "mobilenetv2_id-seed0" / "results.json").stat().st_mtime_ns == stamp
    assert (partial / "results.json").is_file()
    # continued from its checkpoint, not trained again: its epoch log is the one it had
    assert "seg_distilled_id seed 0 resumed from its checkpoint" in console.export_text()
    assert (partial / "metrics.jsonl").read_text() == logged


def test_an_interrupted_member_with_changed_settings_is_not_resumed(tmp_path: Path) -> None:
    study = write_study(tmp_path, seeds="[0]")
    folder = run_study(study, tiny_overrides(tmp_path), console=Console(quiet=True))
    shutil.rmtree(folder / "mobilenetv2_id-seed0")  # would train first, were it not checked
    (folder / "seg_distilled_id-seed0" / "results.json").unlink()
    changed = tiny_overrides(tmp_path, **{"data.batch_size": 4})
    with pytest.raises(mtkd.RecipeError, match=r"interrupted run .*data\.batch_size: 8 → 4"):
        run_study(study, changed, console=Console(quiet=True))
    assert not (folder / "mobilenetv2_id-seed0").exists()  # the error came before any training


def test_study_errors_name_the_member_or_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("study:\n  members: [no_such_recipe]\n")
    with pytest.raises(mtkd.RecipeError, match=r"study\.members\[0\]: recipe 'no_such_recipe'"):
        run_study(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("study:\n  member: [mobilenetv2_id]\n")
    with pytest.raises(mtkd.RecipeError, match=r"member.*did you mean 'members'"):
        run_study(typo)


def test_compare_prints_the_same_table_for_any_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = run_study(
        write_study(tmp_path, seeds="[0]"), tiny_overrides(tmp_path), console=Console(quiet=True)
    )
    markdown = tmp_path / "cmp.md"
    runs = [str(p) for p in sorted(folder.iterdir()) if p.is_dir()]
    assert main(["compare", *runs, "--markdown", str(markdown)]) == 0
    assert "seg_distilled_id" in capsys.readouterr().out
    assert markdown.read_text().count("\n") == 4  # header, rule, two rows
    assert main(["compare", str(tmp_path)]) == 2  # not a run folder


def test_the_table1_study_lists_the_paper_networks() -> None:
    from mtkd.runs.study import load_study

    study = load_study(RECIPES / "table1.yaml")
    assert study.members[-1] == "seg_distilled_id" and len(study.members) == 5


def test_study_on_posed_data_plots_accuracy_by_bin_for_all_members(tmp_path: Path) -> None:
    study = write_study(tmp_path, seeds="[0]")
    overrides = [
        "data.cache=memory",
        "evaluate.latency=false",
        "trainer.progress=false",
        f"output.root={tmp_path}",
    ]
    folder = run_study(study, overrides, [RECIPES / "profiles" / "tiny.yaml"], Console(quiet=True))
    assert (folder / "accuracy_by_bin-identification.png").stat().st_size > 1000


def test_a_member_variant_runs_its_own_overrides_under_its_own_name(tmp_path: Path) -> None:
    study = tmp_path / "variants.yaml"
    study.write_text(
        "study:\n"
        "  members:\n"
        f"    - {RECIPES / 'mobilenetv2_id'}\n"
        f"    - {{name: smoothed, recipe: {RECIPES / 'mobilenetv2_id'},\n"
        "       overrides: [tasks.identification.label_smoothing=0.2]}\n"
        "  overrides: [encoder.name=mobilenetv2_035]\n"
        f"  dir: {tmp_path / 'study'}\n"
    )
    folder = run_study(study, tiny_overrides(tmp_path), console=Console(quiet=True))
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == [
        "mobilenetv2_id-seed0",
        "smoothed-seed0",
    ]
    config = mtkd.load_recipe(folder / "smoothed-seed0" / "config.yaml")
    assert config.tasks.identification.label_smoothing == 0.2
    assert config.name == "smoothed"
    plain = mtkd.load_recipe(folder / "mobilenetv2_id-seed0" / "config.yaml")
    assert "label_smoothing" not in plain.tasks.identification
    table = (folder / "table.md").read_text()
    assert "| smoothed | 1 |" in table and "| mobilenetv2_id | 1 |" in table


MOBILENET = RECIPES / "mobilenetv2_id"


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ("[{name: a}]", r"study\.members\[0\]: a variant is \{name, recipe, overrides\}"),
        (f"[{MOBILENET}, {{recipe: {MOBILENET}}}]", r"names used twice: \['mobilenetv2_id'\]"),
        ("[3]", r"study\.members\[0\]: expected a recipe name or a mapping"),
    ],
)
def test_bad_member_variants_are_named(tmp_path: Path, members: str, message: str) -> None:
    study = tmp_path / "bad_members.yaml"
    study.write_text(f"study:\n  members: {members}\n")
    with pytest.raises(mtkd.RecipeError, match=message):
        run_study(study, console=Console(quiet=True))


def test_a_study_file_that_is_not_yaml_is_named(tmp_path: Path) -> None:
    study = tmp_path / "broken.yaml"
    study.write_text('study:\n  overrides:\n    - "data.root=\\$x"\n')
    with pytest.raises(mtkd.RecipeError, match=r"broken\.yaml: not valid YAML"):
        run_study(study, console=Console(quiet=True))


def test_the_shipped_ablation_and_verification_studies_load() -> None:
    from mtkd.runs.study import load_study

    ablation = load_study(RECIPES / "ablation_teachers.yaml")
    names = [m["name"] for m in ablation.members]
    assert names[:4] == ["no_teacher", "seg_teacher", "pose_teacher", "both_fixed"]
    assert {"both_uncertainty", "both_dwa", "both_gradnorm"} <= set(names)
    verification = load_study(RECIPES / "verification.yaml")
    assert any("arcface" in " ".join(m.get("overrides", [])) for m in verification.members)


def test_a_finished_member_run_with_other_settings_is_not_reused(tmp_path: Path) -> None:
    study = tmp_path / "one.yaml"
    study.write_text(
        "study:\n"
        f"  members: [{RECIPES / 'mobilenetv2_id'}]\n"
        "  overrides: [encoder.name=mobilenetv2_035]\n"
        f"  dir: {tmp_path / 'study'}\n"
    )
    quiet = Console(quiet=True)
    run_study(study, tiny_overrides(tmp_path), console=quiet)
    run_study(study, tiny_overrides(tmp_path), console=quiet)  # same settings: reused
    with pytest.raises(mtkd.RecipeError, match=r"other settings \(data\.image_size: 32 → 48\)"):
        run_study(study, tiny_overrides(tmp_path, **{"data.image_size": 48}), console=quiet)


@pytest.mark.parametrize("study", sorted(p.name for p in RECIPES.glob("*.yaml") if is_study(p)))
def test_every_shipped_study_plans_valid_recipes_for_every_member(study: str) -> None:
    folder, plan = plan_study(RECIPES / study)
    assert folder == Path("runs") / Path(study).stem
    assert plan and all(p.run_dir.parent == folder for p in plan)
    for planned in plan:
        assert timm.is_model(planned.cfg.encoder.name), (planned.member.name, planned.cfg.encoder)
        assert planned.cfg.trainer.seed == planned.seed == planned.cfg.data.split.seed


def test_the_orl_study_runs_each_table1_encoder_on_the_real_photographs() -> None:
    _, plan = plan_study(RECIPES / "orl_baselines.yaml")
    assert [p.cfg.encoder.name for p in plan] == [
        "mobilenetv2_100",
        "resnet101",
        "inception_v3",
        "vgg19",
    ]
    assert {p.cfg.data.dataset.name for p in plan} == {"identity_folder"}
    assert {p.cfg.data.image_size for p in plan} == {80}  # Inception-v3 needs >= 75 px


def test_the_cross_pose_study_trains_near_frontal_and_tests_every_yaw_for_five_networks() -> None:
    _, plan = plan_study(RECIPES / "cross_pose.yaml")
    names = list(dict.fromkeys(p.member.name for p in plan))
    assert names == [
        "mobilenetv2_id",
        "seg_distilled_id",
        "pose_distilled_id",
        "seg_pose_distilled_id",
        "resnet101_id",
    ]
    assert sorted({p.seed for p in plan}) == [0, 1, 2] and len(plan) == 15
    for planned in plan:
        cfg = planned.cfg
        assert dict(cfg.data.split.train_where) == {"yaw": [-30.0, 30.0]}
        assert cfg.data.split.val_where is None  # validation follows training: near-frontal
        assert dict(cfg.evaluate.gallery_where) == {"yaw": [-15.0, 15.0]}
        assert cfg.data.dataset.name == "synthetic_heads"
        assert cfg.data.dataset.get("identity_cues", "all") == "all"  # geometry: no (CPU size)
        assert "yaw_range" not in cfg.data.dataset  # the generator's ±90°: tested over all
    encoders = {p.member.name: p.cfg.encoder.name for p in plan}
    assert encoders["resnet101_id"] == "resnet101"
    assert {encoders[n] for n in names[:4]} == {"mobilenetv2_100"}
    teachers = {
        p.member.name: sorted(k for k, t in p.cfg.tasks.items() if t and t.get("role") == "teacher")
        for p in plan
    }
    assert teachers["seg_pose_distilled_id"] == ["pose", "segmentation"]
    assert teachers["pose_distilled_id"] == ["pose"] and teachers["mobilenetv2_id"] == []


def test_the_cross_pose_study_runs_at_smoke_size_and_reports_the_gallery(tmp_path: Path) -> None:
    overrides = [
        "study.seeds=[0]",
        f"study.dir={tmp_path / 'study'}",
        "encoder.name=mobilenetv2_035",  # every member, ResNet-101 included: a smoke run
        "data.dataset.identities=4",
        "data.dataset.views=24",
        "data.image_size=32",
        "data.batch_size=8",
        "data.cache=memory",
        "trainer.max_epochs=1",
    ]
    folder = run_study(RECIPES / "cross_pose.yaml", overrides, console=Console(quiet=True))
    table = (folder / "table.md").read_text()
    assert "gallery rank-1" in table and "top-1 on probes" in table
    assert table.count("\n| ") == 7  # header, rule and five networks
    result = json.loads((folder / "seg_pose_distilled_id-seed0" / "results.json").read_text())
    assert result["data"]["train_filtered_out"] > 0
    assert result["gallery"]["tasks"]["identification"]["probes"] > 0


def test_a_member_that_crashed_after_writing_results_is_finished_not_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = tmp_path / "one.yaml"
    study.write_text(
        f"study:\n  members: [{RECIPES / 'mobilenetv2_id'}]\n  dir: {tmp_path / 'study'}\n"
    )
    overrides = tiny_overrides(tmp_path, **{"encoder.name": "test_efficientnet"})

    def logger_server_gone(*args: object) -> None:
        raise ConnectionError("tracking server gone")

    # the loggers fail at the very end, after results.json was written
    monkeypatch.setattr(mtkd.runs.tracking.Tracking, "finish", logger_server_gone)
    with pytest.raises(mtkd.MtkdError, match="ConnectionError: tracking server gone"):
        run_study(study, overrides, console=Console(quiet=True))  # named, after the others
    member = tmp_path / "study" / "mobilenetv2_id-seed0"
    assert json.loads((member / "results.json").read_text())["completed"] is False
    page = (write_report(tmp_path / "study")).read_text()
    assert "0 of 1 runs finished" in page and "crashed after writing results.json" in page
    monkeypatch.undo()
    console = Console(record=True, width=200)
    run_study(study, overrides, console=console)
    out = console.export_text()
    assert "done before, skipped" not in out
    assert "crashed at its end, resumed to finish from its checkpoint" in out
    assert json.loads((member / "results.json").read_text())["completed"] is True
    assert "1 of 1 runs finished" in write_report(tmp_path / "study").read_text()


def test_results_from_before_the_completed_key_count_as_finished(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text('{"recipe": "old"}')
    assert run_status(tmp_path) == "finished"
    (tmp_path / "results.json").write_text('{"recipe": "new", "completed": false}')
    assert run_status(tmp_path) == "crashed"


def test_a_finished_member_with_an_interpolated_override_is_reused(tmp_path: Path) -> None:
    # kd_table1_cpu's members name their teacher as runs/...-seed${data.split.seed}; config.yaml
    # keeps the interpolation as written, and a rerun of the study must compare it resolved
    study = tmp_path / "interpolated.yaml"
    study.write_text(
        "study:\n"
        "  members:\n"
        f"    - name: tagged\n      recipe: {RECIPES / 'mobilenetv2_id'}\n"
        "      overrides: ['trainer.patience=\\${trainer.max_epochs}']\n"
        "  overrides: [encoder.name=mobilenetv2_035]\n"
        "  seeds: [0]\n"
        f"  dir: {tmp_path / 'study'}\n"
    )
    quiet = Console(quiet=True)
    run_study(study, tiny_overrides(tmp_path), console=quiet)
    saved = (tmp_path / "study" / "tagged-seed0" / "config.yaml").read_text()
    assert "${trainer.max_epochs}" in saved
    run_study(study, tiny_overrides(tmp_path), console=quiet)  # reused, not an error
