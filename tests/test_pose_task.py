"""The head-pose task: head outputs in degrees, training signal, MAE metrics, distillation,
option errors, and a tiny end-to-end run of the pose_distilled_id recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import RECIPES
from mtkd_plugins.pose import PoseHead
from omegaconf import DictConfig
from rich.console import Console

import mtkd

RECIPE = RECIPES / "pose_distilled_id.yaml"
POSE = mtkd.LabelSpace(("yaw", "pitch", "roll"), kind="vector", flip=(-1, 1, -1))
SPACES = {"identity": mtkd.LabelSpace(tuple(f"id{i}" for i in range(5))), "pose": POSE}


def recipe(*extra: str) -> DictConfig:
    return mtkd.load_recipe(
        RECIPE, ["encoder.name=test_efficientnet", "data.image_size=32", *extra]
    )


def model_for(*extra: str) -> mtkd.MultiTaskModel:
    torch.manual_seed(0)
    return mtkd.build_model(recipe(*extra), SPACES)


def pose_head(module: torch.nn.Module) -> PoseHead:
    """``module`` (a model's pose head), typed as the :class:`PoseHead` it must be."""
    assert isinstance(module, PoseHead), type(module)
    return module


def images(n: int = 4) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("parameterisation", ["regression", "bins"])
def test_head_outputs_angles_in_degrees(parameterisation: str) -> None:
    model = model_for(f"tasks.pose.parameterisation={parameterisation}").eval()
    task, head = model.tasks["pose"], pose_head(model.heads["pose"])
    assert task.role == "teacher"  # the task's default role
    with torch.no_grad():
        head.out.weight.zero_()  # the output is the bias alone, whatever the image
        head.out.bias.zero_()
        if parameterisation == "regression":
            head.out.bias.copy_(torch.tensor([1.0, -0.5, 0.2]))  # normalised units
        else:
            # one confident bin per angle: yaw 30° (bin 40 of 61), pitch first, roll last
            head.out.bias[[40, 61, 99]] = 50.0
        out = model(images(2))["pose"]
    angles = task.predictions(out)
    assert angles.shape == (2, 3)
    expected = [90.0, -20.0, 3.0] if parameterisation == "regression" else [30.0, -40.0, 15.0]
    torch.testing.assert_close(angles, torch.tensor([expected] * 2), atol=1e-3, rtol=0)
    if parameterisation == "bins":  # 3° bins on ±90, ±40 and ±15 with both ends as centres
        assert out["bin_logits"].shape == (2, 61 + 28 + 11)
        # labels fall in the bins whose centres they are nearest (31° → the 30° bin)
        assert float(model.task_loss("pose", out, torch.tensor([[31.0, -39.0, 14.0]] * 2))) < 0.05
        assert float(model.task_loss("pose", out, torch.tensor([[-30.0, -40.0, 15.0]] * 2))) > 10


@pytest.mark.parametrize(
    "extra",
    [(), ("tasks.pose.loss=l1",), ("tasks.pose.parameterisation=bins", "tasks.pose.hidden=0")],
)
def test_loss_decreases_on_a_fixed_batch(extra: tuple[str, ...]) -> None:
    model = model_for("tasks.identification=null", "tasks.pose.role=student", *extra).train()
    x = images(8)
    target = torch.rand(8, 3, generator=torch.Generator().manual_seed(2)) * 2 - 1
    target = target * torch.tensor([90.0, 40.0, 15.0])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(10):
        optimizer.zero_grad()
        loss = model.task_loss("pose", model(x)["pose"], target)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses


def test_mae_per_angle_and_overall_against_hand_computed_values() -> None:
    task = model_for().tasks["pose"]
    metrics = task.metrics()
    target = torch.tensor([[10.0, 0.0, 5.0], [-30.0, 20.0, 0.0]])
    # first batch: yaw and pitch errors equal (|4|, |-2| and |-4|, |2|), roll 1 and 3
    first = target + torch.tensor([[4.0, -4.0, 1.0], [-2.0, 2.0, -3.0]])
    task.update_metrics(metrics, {"angles": first}, target)
    # second batch: one sample, target [30, 0, 15], errors yaw 12, pitch 5, roll 2
    task.update_metrics(metrics, {"angles": torch.tensor([[42.0, -5.0, 17.0]])}, target[:1] * 3)
    values = {k: float(v) for k, v in task.summarize(metrics).items()}
    assert values == pytest.approx(
        {
            "yaw_mae": (4 + 2 + 12) / 3,
            "pitch_mae": (4 + 2 + 5) / 3,
            "roll_mae": (1 + 3 + 2) / 3,
            "mae": (18 + 11 + 6) / 9,
        }
    )


def test_a_teacher_is_removed_by_distillation_and_identification_is_unchanged() -> None:
    model = model_for().eval()
    student = mtkd.distill(model)
    assert "pose" not in student.tasks and "pose" not in student.heads
    x = images()
    with torch.no_grad():
        full, distilled = model(x), student(x)
    assert set(distilled) == {"identification"}
    for name in ("logits", "embedding"):
        torch.testing.assert_close(distilled["identification"][name], full["identification"][name])


def test_a_student_pose_task_is_kept_by_distillation() -> None:
    model = model_for("tasks.pose.role=student").eval()
    student = mtkd.distill(model)
    assert set(student.tasks) == {"identification", "pose"}
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(student(x)["pose"]["angles"], model(x)["pose"]["angles"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("tasks.pose.loss=huber", r"tasks\.pose\.loss: 'huber' must be one of smooth_l1, l1, mse"),
        ("tasks.pose.parameterisation=sincos", r"tasks\.pose\.parameterisation: 'sincos'"),
        ("tasks.pose.scale=[90,40]", r"tasks\.pose\.scale: .* one per component .*yaw, pitch"),
        ("tasks.pose.scale=[90,0,15]", r"tasks\.pose\.scale: .* must be positive"),
        ("tasks.pose.hidden=-1", r"tasks\.pose\.hidden: -1 must be >= 0"),
        ("tasks.pose.dropout=1.0", r"tasks\.pose\.dropout: 1\.0 must be in \[0, 1\)"),
        ("tasks.pose.beta=0", r"tasks\.pose\.beta: 0\.0 must be > 0"),
        ("tasks.pose.bin_width=0", r"tasks\.pose\.bin_width: 0\.0"),
        ("tasks.pose.alpha=-1", r"tasks\.pose\.alpha: -1\.0 must be >= 0"),
        ("tasks.pose.hidden=wide", r"wrong type for 'tasks\.pose\.hidden'"),
        ("tasks.pose.hiden=64", r"unknown key 'tasks\.pose\.hiden'.*hidden"),
        ("tasks.head_pose={type: pose, loss: huber}", r"tasks\.head_pose\.loss: 'huber'"),
    ],
)
def test_bad_option_values_are_errors_naming_the_key(override: str, message: str) -> None:
    with pytest.raises(mtkd.RecipeError, match=message):
        mtkd.build_model(recipe(override), SPACES)


def test_a_data_set_without_pose_labels_is_named() -> None:
    spaces = {"identity": SPACES["identity"]}
    with pytest.raises(mtkd.RecipeError, match=r"tasks\.pose: task 'pose' needs label 'pose'"):
        mtkd.build_model(recipe(), spaces)


def test_the_recipe_trains_end_to_end_and_distillation_drops_pose(tmp_path: Path) -> None:
    cfg = mtkd.load_recipe(
        RECIPE,
        [
            "encoder.name=mobilenetv2_035",
            "trainer.progress=false",
            "data.cache=memory",
            f"output.root={tmp_path}",
            "evaluate.latency=false",
            "trainer.max_epochs=1",  # the tiny profile's 2 epochs, halved: it checks plumbing
            "output.plots=false",
        ],
        overlays=[RECIPES / "profiles" / "tiny.yaml"],
    )
    result = mtkd.run(cfg, console=Console(quiet=True))
    test = result.results["test"]
    assert 0.0 <= test["full"]["pose/mae"] <= 180.0
    assert {"pose/yaw_mae", "pose/pitch_mae", "pose/roll_mae"} <= set(test["full"])
    assert "pose/mae" not in test["distilled"]
    assert result.results["removed_tasks"] == ["pose"]
    assert test["distilled"]["identification/top1"] == test["full"]["identification/top1"]


def test_a_batch_normalised_hidden_layer_stays_alive_where_a_plain_one_dies() -> None:
    """The zoo pretraining's first try lost its pose head so: every hidden unit off for every
    image after its weights went negative, the angles constant (mean error ~25°)."""
    pooled = torch.rand(16, 40, 2, 2, generator=torch.Generator().manual_seed(0))
    for norm, alive in (("none", False), ("batchnorm", True)):
        model = model_for("tasks.pose.role=student", f"tasks.pose.hidden_norm={norm}")
        head = pose_head(model.tasks["pose"].build_head(mtkd.FeatureInfo((), (), (), 40, 32, 32)))
        linear = head.features[2]
        assert isinstance(linear, torch.nn.Linear), head.features
        with torch.no_grad():
            linear.weight.copy_(-linear.weight.abs())
            linear.bias.fill_(-0.01)
        head.train()
        angles = head(pooled)["angles"]
        assert bool(angles.std(0).gt(0).all()) == alive, norm


def test_an_unknown_hidden_norm_names_the_option() -> None:
    with pytest.raises(mtkd.RecipeError, match=r"tasks\.pose\.hidden_norm: 'layer'"):
        model_for("tasks.pose.hidden_norm=layer")
