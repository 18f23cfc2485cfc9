"""Teacher networks: a frozen network's outputs as a removable teacher task's targets,
computed once and cached, abstentions unlabelled and counted, KD losses as published."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import RECIPES, tiny_overrides
from mtkd_plugins import dlib_face
from mtkd_plugins.network_teacher import relational_kd, soft_target_kl
from rich.console import Console

import mtkd
from mtkd.data.targets import ClassCentroids, OnlineTargets

SHARED_ORL = Path(__file__).resolve().parents[2] / "shared" / "data" / "orl_faces"


@dataclass
class MeanColourOptions:
    picky: bool = False  # abstain on images redder than they are green (about half)
    scale: float = 1.0


class MeanColour(mtkd.TeacherNetwork):
    """A stand-in network: the mean of each colour channel, abstaining on reddish images."""

    name = "mean_colour"
    Options = MeanColourOptions
    calls: ClassVar[int] = 0

    def names(self) -> tuple[str, ...]:
        return ("r", "g", "b")

    def targets(self, images: Sequence[np.ndarray]) -> list[np.ndarray | None]:
        MeanColour.calls += len(images)
        out: list[np.ndarray | None] = []
        for image in images:
            if self.options.picky and _reddish(image):
                self.counts["reddish"] += 1
                out.append(None)
            else:
                out.append(image.reshape(-1, 3).mean(0) / 255.0 * self.options.scale)
        return out


class _MeanColourPlugin:
    @mtkd.hookimpl
    def register_teacher_networks(self, register: Any) -> None:
        register(MeanColour)


def _reddish(image: np.ndarray) -> bool:
    return bool(image[..., 0].mean() > image[..., 1].mean())


def _plugins() -> mtkd.PluginSet:
    return mtkd.load_plugins(objects=[("mean_colour_plugin", _MeanColourPlugin())])


def _recipe(tmp_path: Path, teacher: str = "{name: mean_colour}", **extra: Any) -> Any:
    values = {"encoder.name": "test_efficientnet", "tasks.kd": f"{{teacher: {teacher}}}"}
    values.update(extra)
    overrides = tiny_overrides(tmp_path, **values)
    overrides.append("tasks.kd.type=network_teacher")
    return mtkd.load_recipe(RECIPES / "mobilenetv2_id.yaml", overrides)


def test_soft_target_kl_matches_the_hand_computed_hinton_loss() -> None:
    student = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    teacher = torch.tensor([[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    t = 3.0
    expected = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist(), strict=True):
        p = np.exp(np.array(t_row) / t) / np.exp(np.array(t_row) / t).sum()
        q = np.exp(np.array(s_row) / t) / np.exp(np.array(s_row) / t).sum()
        expected += float((p * np.log(p / q)).sum())
    expected = expected / 2 * t * t
    assert soft_target_kl(student, teacher, t).item() == pytest.approx(expected, rel=1e-5)
    assert soft_target_kl(teacher, teacher, t).item() == pytest.approx(0.0, abs=1e-6)


def test_relational_kd_ignores_scale_and_position_but_not_shape() -> None:
    torch.manual_seed(0)
    teacher = torch.randn(6, 4)
    same_shape = 3.0 * teacher + 1.5  # every distance scaled, every angle kept
    assert relational_kd(same_shape, teacher, 1.0, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert relational_kd(torch.randn(6, 4), teacher, 1.0, 2.0).item() > 0.01
    assert relational_kd(teacher[:2], teacher[:2], 1.0, 2.0).item() == 0.0  # < 3 samples


def test_relational_kd_distance_term_matches_a_hand_computed_triangle() -> None:
    teacher = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])  # distances 3, 4, 5
    student = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # distances 1, 1, sqrt 2
    t = np.array([3, 4, 5]) / 4.0
    s = np.array([1, 1, math.sqrt(2)]) / ((2 + math.sqrt(2)) / 3)
    diff = np.abs(np.concatenate([t - s, t - s]))  # each pair twice, the diagonal is 0 - 0
    smooth = np.where(diff < 1, 0.5 * diff**2, diff - 0.5)
    expected = smooth.sum() / 9
    got = relational_kd(student, teacher, 1.0, 0.0).item()
    assert got == pytest.approx(expected, rel=1e-5)


def test_targets_become_a_partial_label_and_the_report_counts_abstentions(
    tmp_path: Path,
) -> None:
    cfg = _recipe(tmp_path, teacher="{name: mean_colour, picky: true}")
    data = mtkd.build_data(cfg, _plugins(), console=Console(quiet=True))
    key = mtkd.teacher_label_key("kd")
    present = np.asarray(data.cached.present[key])
    assert present.tolist() == [not _reddish(image) for image in data.cached.images]
    assert 0 < present.sum() < len(present)
    values = np.asarray(data.cached.labels[key])
    first = int(np.flatnonzero(present)[0])
    expected = np.asarray(data.cached.images[first]).reshape(-1, 3).mean(0) / 255
    assert values[first] == pytest.approx(expected, rel=1e-5)
    counts = next(v for k, v in data.report.preprocess_counts.items() if k.startswith(key))
    assert counts["abstained"] == counts["reddish"] == len(present) - present.sum()
    assert data.label_spaces[key] == mtkd.LabelSpace(("r", "g", "b"), kind="vector")


def test_cached_targets_are_reused_and_recomputed_when_the_teacher_changes(
    tmp_path: Path,
) -> None:
    plugins, quiet = _plugins(), Console(quiet=True)
    MeanColour.calls = 0
    first = mtkd.build_data(_recipe(tmp_path), plugins, console=quiet)
    n = len(first.cached)
    assert MeanColour.calls == n
    again = mtkd.build_data(_recipe(tmp_path), plugins, console=quiet)
    assert MeanColour.calls == n  # not one teacher call: read from the target cache
    key = mtkd.teacher_label_key("kd")
    assert np.array_equal(again.cached.labels[key], first.cached.labels[key])
    assert any("from the target cache" in k for k in again.report.preprocess_counts)
    changed = mtkd.build_data(
        _recipe(tmp_path, teacher="{name: mean_colour, scale: 2.0}"), plugins, console=quiet
    )
    assert MeanColour.calls == 2 * n
    assert np.allclose(changed.cached.labels[key], 2 * np.asarray(first.cached.labels[key]))


def test_a_run_with_a_teacher_network_trains_then_drops_it(tmp_path: Path) -> None:
    plugins = _plugins()
    cfg = _recipe(tmp_path, teacher="{name: mean_colour, picky: true}", **{"tasks.kd.loss": "rkd"})
    result = mtkd.run(cfg, plugins=plugins, console=Console(quiet=True))
    results = json.loads((result.run_dir / "results.json").read_text())
    plain_cfg = mtkd.load_recipe(
        RECIPES / "mobilenetv2_id.yaml",
        tiny_overrides(tmp_path, **{"encoder.name": "test_efficientnet"}),
    )
    plain = mtkd.build_model(plain_cfg, {"identity": cfg_identity(result.run_dir)})
    assert results["params"]["inference"]["total"] == plain.parameter_counts().total
    assert results["params"]["training"]["total"] > plain.parameter_counts().total
    assert results["removed_tasks"] == ["kd"]
    tasks = json.loads((result.run_dir / "distilled" / "tasks.json").read_text())["tasks"]
    assert "kd" not in tasks
    log = (result.run_dir / "metrics.jsonl").read_text()
    rows = [json.loads(line) for line in log.splitlines()]
    assert all(math.isfinite(row["train/kd/loss"]) for row in rows)


def cfg_identity(run_dir: Path) -> mtkd.LabelSpace:
    spaces = json.loads((run_dir / "labels.json").read_text())
    return mtkd.LabelSpace.from_dict(spaces["identity"])


def test_a_finished_run_teaches_its_logits_and_an_exported_onnx_its_embedding(
    tmp_path: Path,
) -> None:
    quiet = Console(quiet=True)
    teacher_cfg = mtkd.load_recipe(
        RECIPES / "mobilenetv2_id.yaml",
        tiny_overrides(tmp_path, **{"encoder.name": "test_efficientnet", "output.plots": False}),
    )
    teacher_run = mtkd.run(teacher_cfg, console=quiet).run_dir
    student = _recipe(tmp_path, teacher=f"{{name: mtkd_run, path: '{teacher_run}'}}")
    data = mtkd.build_data(student, console=quiet)
    key = mtkd.teacher_label_key("kd")
    space = data.label_spaces[key]
    assert space.kind == "logits" and space.names == cfg_identity(teacher_run).names
    model = mtkd.load_run(teacher_run)
    image = torch.from_numpy(np.array(data.cached.images[:2])).permute(0, 3, 1, 2) / 255.0
    with torch.no_grad():
        logits = model(image)["identification"]["logits"]
    assert np.allclose(data.cached.labels[key][:2], logits.numpy(), atol=1e-5)
    kd = mtkd.build_model(student, data.label_spaces).tasks["kd"]
    assert kd.describe().endswith("mtkd_run teacher, kl loss")

    onnx_path = mtkd.export_run(teacher_run, "onnx", console=quiet)
    output = "output_name: identification.embedding"
    onnx = _recipe(tmp_path, teacher=f"{{name: onnx, path: '{onnx_path}', {output}}}")
    data = mtkd.build_data(onnx, console=quiet)
    with torch.no_grad():
        embedding = model(image)["identification"]["embedding"]
    assert np.allclose(data.cached.labels[key][:2], embedding.numpy(), atol=1e-4)
    assert data.label_spaces[key].kind == "vector"


def test_a_wrong_teacher_is_one_line_naming_the_recipe_key(tmp_path: Path) -> None:
    with pytest.raises(mtkd.MtkdError, match=r"tasks\.kd\.teacher \(mtkd_run\): .*not a run"):
        mtkd.build_data(_recipe(tmp_path, teacher="{name: mtkd_run, path: nowhere}"))
    garbage = tmp_path / "teacher.onnx"
    garbage.write_bytes(b"not a protobuf at all")
    with pytest.raises(mtkd.RecipeError, match=r"tasks\.kd\.teacher \(onnx\): .*not a readable"):
        mtkd.build_data(_recipe(tmp_path, teacher=f"{{name: onnx, path: '{garbage}'}}"))
    with pytest.raises(mtkd.PluginError, match=r"tasks\.kd\.teacher\.name: unknown teacher"):
        mtkd.build_data(_recipe(tmp_path, teacher="{name: mean_colour}"))
    with pytest.raises(mtkd.RecipeError, match="does not learn from a teacher network"):
        mtkd.build_data(
            mtkd.load_recipe(
                RECIPES / "mobilenetv2_id.yaml",
                tiny_overrides(tmp_path, **{"tasks.identification.teacher": "{name: onnx}"}),
            )
        )


def test_kl_on_an_embedding_teacher_is_refused_by_its_recipe_key(tmp_path: Path) -> None:
    cfg = _recipe(tmp_path, **{"tasks.kd.loss": "kl"})
    data = mtkd.build_data(cfg, _plugins(), console=Console(quiet=True))
    with pytest.raises(mtkd.RecipeError, match=r"tasks\.kd\.loss: kl needs a teacher"):
        mtkd.build_model(cfg, data.label_spaces, _plugins())


def test_the_dlib_teacher_without_its_model_files_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dlib_face.importlib.util, "find_spec", lambda _name: None)
    with pytest.raises(mtkd.PluginError) as error:
        dlib_face.DlibFace(dlib_face.DlibFaceOptions(), 64)
    assert "mtkd[dlib-teacher]" in str(error.value)
    assert "\n" not in str(error.value)


def test_the_dlib_teacher_describes_a_real_face_and_abstains_on_a_blank_image() -> None:
    if not SHARED_ORL.is_dir():
        pytest.skip("the ORL faces (../shared/data/orl_faces) are not beside this checkout")
    from PIL import Image

    teacher = dlib_face.DlibFace(dlib_face.DlibFaceOptions(), 64)
    faces = [np.asarray(Image.open(SHARED_ORL / "s1" / f"{i}.pgm")) for i in (1, 2)]
    other = np.asarray(Image.open(SHARED_ORL / "s2" / "1.pgm"))
    blank = np.full((112, 92), 128, np.uint8)
    a, b, c, none = teacher.targets([*faces, other, blank])
    assert none is None and teacher.counts["no face"] == 1
    assert a is not None and b is not None and c is not None and a.shape == (128,)
    same, different = np.linalg.norm(a - b), np.linalg.norm(a - c)
    assert same < 0.6 < different  # dlib's threshold for one person
    assert F.cosine_similarity(torch.tensor(a), torch.tensor(b), dim=0) > 0.9


def test_an_online_teacher_sees_each_augmented_training_batch(tmp_path: Path) -> None:
    cfg = _recipe(
        tmp_path,
        teacher="{name: mean_colour, online: true}",
        **{"data.augment.brightness": 0.5, "data.augment.hflip": 0.5},
    )
    data = mtkd.build_data(cfg, _plugins(), console=Console(quiet=True))
    samples = [data.train[i] for i in range(4)]
    batch = data.train_collate(samples)
    key = mtkd.teacher_label_key("kd")
    seen = batch["image"].clamp(0, 1).mul(255).round().div(255).mean(dim=(2, 3))
    assert torch.allclose(batch[key], seen, atol=1e-5)
    cached = torch.tensor(np.asarray(data.cached.labels[key])[data.train.indices[:4]])
    assert not torch.allclose(batch[key], cached, atol=1e-3)  # brightness moved them
    assert batch["present"][key].all()
    val = mtkd.make_loader(data.val, 4, shuffle=False)
    assert torch.allclose(  # validation keeps the cached, un-augmented targets
        next(iter(val))[key],
        torch.tensor(np.asarray(data.cached.labels[key])[data.val.indices[:4]]),
    )


def test_an_online_teacher_runs_once_per_distinct_image_and_remembers_repeats(
    tmp_path: Path,
) -> None:
    cfg = _recipe(tmp_path, "{name: mean_colour, online: true}", **{"data.augment.hflip": 1.0})
    data = mtkd.build_data(cfg, _plugins(), console=Console(quiet=True))
    samples = [data.train[i] for i in range(4)]  # always flipped: the same four images again
    MeanColour.calls = 0
    first = data.train_collate(samples)
    assert MeanColour.calls == 4
    again = data.train_collate([data.train[i] for i in (2, 0, 1, 3, 0)])
    assert MeanColour.calls == 4  # nothing new: every output remembered
    key = mtkd.teacher_label_key("kd")
    assert torch.equal(again[key], first[key][[2, 0, 1, 3, 0]])
    collate = data.train_collate
    assert isinstance(collate, OnlineTargets)
    assert (collate.images, collate.computed) == (9, 4)


def test_an_online_as_classes_teacher_scores_augmented_batches_by_training_centroids(
    tmp_path: Path,
) -> None:
    augment = {"data.augment.brightness": 0.5, "data.augment.hflip": 0.5}
    raw = mtkd.build_data(_recipe(tmp_path, "{name: mean_colour}", **augment), _plugins())
    block = "{name: mean_colour, online: true, as_classes: identification, class_scale: 5}"
    data = mtkd.build_data(_recipe(tmp_path, block, **augment), _plugins())
    key = mtkd.teacher_label_key("kd")
    train = np.zeros(len(raw.cached), dtype=bool)
    train[raw.train.indices] = True
    fitted = ClassCentroids.fit(raw.cached.labels[key], train, raw.cached.labels["identity"], 4, 5)
    torch.manual_seed(0)
    batch = data.train_collate([data.train[i] for i in range(4)])
    seen = batch["image"].clamp(0, 1).mul(255).round().div(255).mean(dim=(2, 3))
    assert batch[key].shape == (4, 4)  # logits over the four people, not colours
    assert torch.allclose(batch[key], torch.from_numpy(fitted.logits(seen.numpy())), atol=1e-4)
    cached = np.asarray(data.cached.labels[key])[data.train.indices[:4]]
    assert not np.allclose(batch[key].numpy(), cached, atol=1e-3)  # the augmented images count


@pytest.mark.slow
def test_sigkill_then_resume_with_a_teacher_network_matches_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    from test_resume import assert_same_run, mtkd_cli, train_args

    teacher_cfg = mtkd.load_recipe(
        RECIPES / "mobilenetv2_id.yaml",
        tiny_overrides(tmp_path, **{"encoder.name": "test_efficientnet", "output.plots": False}),
    )
    teacher = mtkd.run(teacher_cfg, console=Console(quiet=True)).run_dir
    block = f"tasks.kd={{type: network_teacher, teacher: {{name: mtkd_run, path: '{teacher}'}}}}"
    straight = mtkd_cli(*train_args(tmp_path, tmp_path / "straight", block))
    assert straight.returncode == 0, straight.stderr
    killed = mtkd_cli(*train_args(tmp_path, tmp_path / "killed", block), stop_at=6)
    assert killed.returncode == -9
    resumed = mtkd_cli("resume", str(tmp_path / "killed"))
    assert resumed.returncode == 0, resumed.stderr
    assert "from the target cache" in resumed.stdout + resumed.stderr
    assert_same_run(tmp_path / "straight", tmp_path / "killed")


def test_an_ensemble_of_runs_teaches_the_mean_of_their_logits(tmp_path: Path) -> None:
    quiet = Console(quiet=True)
    runs = []
    for seed in (0, 1):
        overrides = tiny_overrides(
            tmp_path,
            **{"encoder.name": "test_efficientnet", "output.plots": False, "trainer.seed": seed},
        )
        cfg = mtkd.load_recipe(RECIPES / "mobilenetv2_id.yaml", overrides)
        runs.append(mtkd.run(cfg, console=quiet).run_dir)
    ensemble = f"{{name: mtkd_run, paths: ['{runs[0]}', '{runs[1]}']}}"
    data = mtkd.build_data(_recipe(tmp_path, teacher=ensemble), console=quiet)
    images = torch.from_numpy(np.array(data.cached.images[:3])).permute(0, 3, 1, 2) / 255.0
    with torch.no_grad():
        logits = [mtkd.load_run(r)(images)["identification"]["logits"] for r in runs]
    key = mtkd.teacher_label_key("kd")
    assert not torch.allclose(logits[0], logits[1], atol=1e-3)  # two different teachers
    assert np.allclose(
        data.cached.labels[key][:3], ((logits[0] + logits[1]) / 2).numpy(), atol=1e-5
    )


def test_damaged_cached_targets_are_computed_again(tmp_path: Path) -> None:
    plugins, quiet = _plugins(), Console(quiet=True)
    recipe = _recipe(tmp_path, teacher="{name: mean_colour, scale: 3.0}")  # no other test's
    store = Path(os.environ["MTKD_CACHE_DIR"]) / "teacher-targets"
    before = set(store.glob("mean_colour-*"))
    first = mtkd.build_data(recipe, plugins, console=quiet)
    (folder,) = set(store.glob("mean_colour-*")) - before
    (folder / "values.npy").write_bytes(b"truncated")
    MeanColour.calls = 0
    again = mtkd.build_data(recipe, plugins, console=quiet)
    assert MeanColour.calls == len(first.cached)
    key = mtkd.teacher_label_key("kd")
    assert np.array_equal(again.cached.labels[key], first.cached.labels[key])
    assert np.load(folder / "values.npy").shape == np.asarray(first.cached.labels[key]).shape


def test_class_centroid_logits_match_hand_computed_cosines_to_training_centroids() -> None:
    values = np.array([[2.0, 0.0], [0.0, 2.0], [3.0, 1.0], [5.0, 5.0]])
    usable = np.array([True, True, False, False])  # 2 and 3 are validation or test photos
    classes = np.array([0, 1, 0, 0])
    logits = ClassCentroids.fit(values, usable, classes, num_classes=3, scale=10.0).logits(values)
    # centre (1, 1): the centroids are (1, -1)/sqrt 2 and (-1, 1)/sqrt 2, class 2 has none
    r = 10.0 / math.sqrt(2)
    expected = [[10.0, -10.0, 0.0], [-10.0, 10.0, 0.0], [r, -r, 0.0], [0.0, 0.0, 0.0]]
    assert logits == pytest.approx(np.array(expected), abs=1e-5)
    assert logits.dtype == np.float32
    with_all = ClassCentroids.fit(values, np.ones(4, dtype=bool), classes, 3, 10.0).logits(values)
    assert not np.allclose(with_all, logits, atol=1e-3)  # the usable set does decide


def _as_classes_data(tmp_path: Path, teacher: str, **extra: Any) -> Any:
    return mtkd.build_data(_recipe(tmp_path, teacher, **extra), _plugins(), Console(quiet=True))


def test_as_classes_turns_an_embedding_into_logits_from_training_centroids_only(
    tmp_path: Path,
) -> None:
    split = {"data.split.test": 0.34, "data.split.val": 0.17}
    raw = _as_classes_data(tmp_path, "{name: mean_colour, picky: true}", **split)
    block = "{name: mean_colour, picky: true, as_classes: identification, class_scale: 5}"
    data = _as_classes_data(tmp_path, block, **split)
    key = mtkd.teacher_label_key("kd")
    assert data.label_spaces[key] == mtkd.LabelSpace(data.label_spaces["identity"].names, "logits")
    assert np.array_equal(data.train.indices, raw.train.indices)
    assert len(data.val.indices) and len(data.test.indices)
    present = np.asarray(raw.cached.present[key])
    assert np.array_equal(np.asarray(data.cached.present[key]), present)  # abstained: unlabelled
    assert 0 < present.sum() < len(present)
    embeddings, classes = np.asarray(raw.cached.labels[key]), raw.cached.labels["identity"]
    train = np.zeros(len(present), dtype=bool)
    train[raw.train.indices] = True
    usable = train & present
    expected = ClassCentroids.fit(embeddings, usable, classes, 4, 5.0).logits(embeddings)
    got = np.asarray(data.cached.labels[key])
    assert got[present] == pytest.approx(expected[present], abs=1e-5)
    everyone = ClassCentroids.fit(embeddings, present, classes, 4, 5.0).logits(embeddings)
    assert not np.allclose(got[present], everyone[present], atol=1e-3)  # val/test left out
    counts = data.report.preprocess_counts[f"{key} as identification classes"]
    assert counts["centroid samples"] == usable.sum()
    kd = mtkd.build_model(_recipe(tmp_path, block, **split), data.label_spaces, _plugins())
    assert kd.tasks["kd"].describe().endswith("mean_colour teacher, kl loss")


def test_a_wrong_as_classes_is_one_line_naming_its_recipe_key(tmp_path: Path) -> None:
    where = r"tasks\.kd\.teacher\."
    with pytest.raises(mtkd.RecipeError, match=where + r"as_classes: 'nobody' is not a task"):
        _as_classes_data(tmp_path, "{name: mean_colour, as_classes: nobody}")
    with pytest.raises(mtkd.RecipeError, match=where + r"class_scale: only means something"):
        _as_classes_data(tmp_path, "{name: mean_colour, class_scale: 3}")
    with pytest.raises(mtkd.RecipeError, match=where + r"class_scale: must be a number > 0"):
        _as_classes_data(
            tmp_path, "{name: mean_colour, as_classes: identification, class_scale: 0}"
        )
