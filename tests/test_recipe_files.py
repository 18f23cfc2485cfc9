"""Recipes found by name from any folder: the user's folder first, then the recipes shipped
with mtkd; `mtkd recipes` lists the shipped ones; a wheel installed outside the repository
runs a shipped recipe by name (issue 27, item 1)."""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from helpers import RECIPES, REPO

import mtkd
from mtkd.cli import _split_run_args, main
from mtkd.recipe_files import find_recipe, shipped_dir, shipped_recipes
from mtkd.runs.study import plan_study


def test_shipped_recipes_are_the_repository_recipes_folder() -> None:
    assert (shipped_dir() / "_base.yaml").read_text() == (RECIPES / "_base.yaml").read_text()


def test_recipe_is_found_by_name_from_any_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = mtkd.load_recipe("seg_distilled_id", overlays=["tiny"])
    assert cfg.name == "seg_distilled_id" and "segmentation" in cfg.tasks
    assert cfg.trainer.max_epochs == 2 and cfg.data.image_size == 32  # profiles/tiny.yaml
    # as the docs write it, from a folder that has no recipes/
    assert find_recipe("recipes/seg_distilled_id.yaml") == shipped_dir() / "seg_distilled_id.yaml"


def test_user_recipe_in_another_folder_inherits_a_shipped_base(tmp_path: Path) -> None:
    mine = tmp_path / "elsewhere" / "mine.yaml"
    mine.parent.mkdir()
    mine.write_text("defaults: [_base]\ntrainer: {max_epochs: 3}\n")
    cfg = mtkd.load_recipe(mine)
    assert cfg.trainer.max_epochs == 3 and cfg.encoder.name == "mobilenetv2_100"
    (mine.parent / "teacher.yaml").write_text("defaults: [seg_distilled_id]\n")
    assert "segmentation" in mtkd.load_recipe(mine.parent / "teacher.yaml").tasks


def test_the_users_folder_comes_before_the_shipped_recipes(tmp_path: Path) -> None:
    (tmp_path / "_base.yaml").write_text("encoder: {name: test_resnet}\n")
    (tmp_path / "mine.yaml").write_text("defaults: [_base]\n")
    assert mtkd.load_recipe(tmp_path / "mine.yaml").encoder.name == "test_resnet"


def test_misspelt_recipe_and_base_names_get_a_did_you_mean(tmp_path: Path) -> None:
    with pytest.raises(mtkd.RecipeError, match=r"'seg_distiled_id' not found.*'seg_distilled_id'"):
        mtkd.load_recipe("seg_distiled_id")
    (tmp_path / "mine.yaml").write_text("defaults: [_bsae]\n")
    with pytest.raises(mtkd.RecipeError, match=r"mine\.yaml: defaults: base.*did you mean '_base'"):
        mtkd.load_recipe(tmp_path / "mine.yaml")


def test_study_in_another_folder_resolves_shipped_members_and_profiles(tmp_path: Path) -> None:
    study = tmp_path / "my_study.yaml"
    study.write_text(
        "study:\n  members: [mobilenetv2_id, {name: seg, recipe: seg_distilled_id}]\n"
        "  overlays: [tiny]\n"
    )
    _, plan = plan_study(study, [f"study.root={tmp_path}"])
    assert [p.member.recipe for p in plan] == [
        shipped_dir() / "mobilenetv2_id.yaml",
        shipped_dir() / "seg_distilled_id.yaml",
    ]
    assert all(p.cfg.trainer.max_epochs == 2 for p in plan)
    study.write_text("study:\n  members: [mobilenetv2_di]\n")
    with pytest.raises(mtkd.RecipeError, match=r"members\[0\].*did you mean 'mobilenetv2_id'"):
        plan_study(study)


def test_run_arguments_take_a_profile_by_name() -> None:
    overlays, overrides = _split_run_args(["tiny", "a.yaml", "trainer.seed=1", "trainer.seed"])
    assert overlays == ["tiny", "a.yaml"]
    assert overrides == ["trainer.seed=1", "trainer.seed"]  # the last one: a malformed override


def test_mtkd_recipes_lists_every_shipped_recipe_on_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [name for name, _, _ in shipped_recipes()]
    assert {"_base", "seg_distilled_id", "profiles/tiny", "table1", "zoo/mobilenetv2_heads64"} <= (
        set(names)
    )
    for name in names:
        (line,) = [ln for ln in lines if ln.split(" ", 1)[0] == name]
        assert len(line.split()) > 2  # name, kind and the recipe's first comment


def _borrowing_venv(folder: Path) -> tuple[Path, Path]:
    """A fresh venv (python, site-packages) that borrows the running interpreter's installed
    packages (torch, timm…) through a .pth file; its own site-packages come first, so the
    wheel installed there is the mtkd it imports, not this repository's editable one."""
    venv.EnvBuilder(with_pip=False).create(folder)
    python = folder / "bin" / "python"
    inner = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    borrowed = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    borrowed += [p for p in site.getsitepackages() if p not in borrowed]
    (Path(inner) / "borrowed.pth").write_text("\n".join(borrowed) + "\n")
    return python, Path(inner)


@pytest.mark.slow
def test_wheel_outside_the_repository_runs_a_shipped_recipe_by_name(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(
        [*pip, "wheel", "-q", "--no-deps", "-w", str(wheels), str(REPO)],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("mtkd-*.whl")
    python, packages = _borrowing_venv(tmp_path / "venv")
    subprocess.run(
        [*pip, "install", "-q", "--no-deps", "--target", str(packages), str(wheel)],
        check=True,
        capture_output=True,
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MTKD_CACHE_DIR": str(tmp_path / "cache")}
    for name in ("MTKD_PLUGINS", "PYTHONPATH", "VIRTUAL_ENV"):
        env.pop(name, None)

    def mtkd_cli(*args: str) -> subprocess.CompletedProcess[str]:
        code = "import sys; from mtkd.cli import main; sys.exit(main(sys.argv[1:]))"
        done = subprocess.run(
            [str(python), "-c", code, *args], cwd=empty, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return done

    listed = mtkd_cli("recipes").stdout.replace("\n", "")
    assert "seg_distilled_id" in listed and str(packages / "mtkd_recipes") in listed
    quick = ["encoder.name=mobilenetv2_035", "trainer.max_epochs=1", "trainer.progress=false"]
    quick += ["evaluate.latency=false", "output.plots=false", "data.cache=memory"]
    mtkd_cli("run", "seg_distilled_id", "tiny", *quick, "--out", "shipped")
    assert json.loads((empty / "shipped" / "results.json").read_text())["epochs_run"] == 1
    (empty / "mine.yaml").write_text("defaults: [_base]\n")
    mtkd_cli("run", "mine.yaml", "tiny", *quick, "--out", "mine")
    assert json.loads((empty / "mine" / "results.json").read_text())["recipe"] == "mine"
