"""Selectable identification losses: softmax (the paper) and the margin losses ArcFace, CosFace
and sub-center ArcFace (pytorch-metric-learning). Training signal, the embedding and logits
contract, dtype/device handling, option errors and a tiny end-to-end run."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from helpers import RECIPES
from mtkd_plugins.identification import EmbeddingLayer, MarginIdentificationHead
from omegaconf import DictConfig
from rich.console import Console

import mtkd

RECIPE = RECIPES / "mobilenetv2_id.yaml"
LOSSES = ["softmax", "arcface", "cosface", "subcenter_arcface"]
MARGIN_LOSSES = LOSSES[1:]
IDENTITIES = 4
SPACES = {"identity": mtkd.LabelSpace(tuple(f"id{i}" for i in range(IDENTITIES)))}


def recipe(*extra: str) -> DictConfig:
    return mtkd.load_recipe(
        RECIPE, ["encoder.name=test_efficientnet", "data.image_size=32", *extra]
    )


def model_for(*extra: str) -> mtkd.MultiTaskModel:
    torch.manual_seed(0)
    return mtkd.build_model(recipe(*extra), SPACES)


def task_for(*extra: str) -> mtkd.Task:
    return mtkd.build_tasks(recipe(*extra), SPACES)["identification"]


def margin_head(module: torch.nn.Module) -> MarginIdentificationHead:
    """``module`` (a model's identification head), typed as the margin head it must be."""
    assert isinstance(module, MarginIdentificationHead), type(module)
    return module


def embedding_head(module: torch.nn.Module) -> EmbeddingLayer:
    """``module`` (an identification head of either kind), typed as its embedding layer."""
    assert isinstance(module, EmbeddingLayer), type(module)
    return module


def images(n: int = 8) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def features(channels: int) -> mtkd.FeatureInfo:
    return mtkd.FeatureInfo((), (), (), channels, 32, 32)


TARGET = torch.arange(8) % IDENTITIES


@pytest.mark.parametrize("loss", LOSSES)
def test_each_loss_lowers_its_training_loss_in_a_few_steps(loss: str) -> None:
    model = model_for(f"tasks.identification.loss={loss}").train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    x = images()
    losses = []
    for _ in range(8):
        optimizer.zero_grad()
        value = model.task_loss("identification", model(x)["identification"], TARGET)
        value.backward()
        optimizer.step()
        losses.append(float(value.detach()))
    assert all(math.isfinite(v) for v in losses), losses
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("loss", MARGIN_LOSSES)
def test_margin_loss_trains_the_class_centres_held_in_the_head(loss: str) -> None:
    model = model_for(f"tasks.identification.loss={loss}").train()
    head = margin_head(model.heads["identification"])
    centres = head.margin_loss.W
    assert any(p is centres for p in model.parameters())  # the optimizer sees W
    assert "heads.identification.margin_loss.W" in model.state_dict()  # and checkpoints hold it
    before = centres.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.task_loss("identification", model(images())["identification"], TARGET).backward()
    assert centres.grad is not None and bool(centres.grad.abs().sum() > 0)
    optimizer.step()
    assert not torch.equal(centres.detach(), before)


@pytest.mark.parametrize("loss", LOSSES)
def test_embedding_is_the_relu_feature_layer_for_every_loss(loss: str) -> None:
    model = model_for(f"tasks.identification.loss={loss}").eval()
    head = embedding_head(model.heads["identification"])
    x = images(3)
    with torch.no_grad():
        out = model(x)["identification"]
        _taps, final = model.encoder(x)
        expected = F.relu(head.embed(final.mean(dim=(2, 3))))
    assert set(out) == {"logits", "embedding"}
    assert out["embedding"].shape == (3, 128)
    assert out["logits"].shape == (3, IDENTITIES)
    assert bool((out["embedding"] >= 0).all())
    torch.testing.assert_close(out["embedding"], expected)


@pytest.mark.parametrize("loss", MARGIN_LOSSES)
def test_embedding_dim_option_sizes_the_margin_embedding_and_centres(loss: str) -> None:
    model = model_for(f"tasks.identification.loss={loss}", "tasks.identification.embedding_dim=16")
    out = model.eval()(images(2))["identification"]
    assert out["embedding"].shape == (2, 16)
    assert margin_head(model.heads["identification"]).margin_loss.W.shape[0] == 16


def _identity_head(task: mtkd.Task, centres: torch.Tensor) -> MarginIdentificationHead:
    """A 2-channel head whose embedding is the pooled feature itself, with these centres."""
    head = margin_head(task.build_head(features(2)))
    with torch.no_grad():
        head.embed.weight.copy_(torch.eye(2))
        head.embed.bias.zero_()
        head.margin_loss.W.copy_(centres)
    return head.eval()


@pytest.mark.parametrize("loss", ["arcface", "cosface"])
def test_margin_logits_are_scale_times_cosine_without_the_margin(loss: str) -> None:
    task = task_for(
        f"tasks.identification.loss={loss}",
        "tasks.identification.embedding_dim=2",
        "tasks.identification.scale=10",
    )
    # class centres (columns of W): the x axis, the y axis, the diagonal, minus x (norms of
    # the centres do not matter)
    head = _identity_head(task, torch.tensor([[2.0, 0.0, 1.0, -1.0], [0.0, 3.0, 1.0, 0.0]]))
    feature = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1)  # embedding (3, 4): |e| = 5
    out = head(feature)
    expected = 10 * torch.tensor([[3 / 5, 4 / 5, 7 / (5 * math.sqrt(2)), -3 / 5]])
    torch.testing.assert_close(out["embedding"], torch.tensor([[3.0, 4.0]]))
    torch.testing.assert_close(out["logits"], expected)


def test_subcenter_logits_take_each_class_closest_sub_centre() -> None:
    task = task_for(
        "tasks.identification.loss=subcenter_arcface",
        "tasks.identification.embedding_dim=2",
        "tasks.identification.scale=10",
        "tasks.identification.sub_centers=2",
    )
    # W's columns are class-major: class c owns columns 2c and 2c+1
    centres = torch.tensor(
        [
            [1.0, 0.0, 0.0, -1.0, 1.0, 1.0, -1.0, -1.0],
            [0.0, 1.0, -1.0, 0.0, 1.0, -1.0, 1.0, -1.0],
        ]
    )
    head = _identity_head(task, centres)
    out = head(torch.tensor([3.0, 4.0]).view(1, 2, 1, 1))
    r2 = math.sqrt(2)
    expected = 10 * torch.tensor([[4 / 5, -3 / 5, 7 / (5 * r2), 1 / (5 * r2)]])
    torch.testing.assert_close(out["logits"], expected)


@pytest.mark.parametrize("loss", MARGIN_LOSSES)
def test_margin_logits_match_the_losses_own_get_logits(loss: str) -> None:
    head = margin_head(model_for(f"tasks.identification.loss={loss}").heads["identification"])
    head.eval()
    embedding = torch.randn(5, 128, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(
            head.class_logits(embedding), head.margin_loss.get_logits(embedding)
        )


@pytest.mark.parametrize("loss", MARGIN_LOSSES)
def test_margin_applies_to_the_loss_only_and_zero_margin_is_plain_cross_entropy(
    loss: str,
) -> None:
    x, target = images(6), TARGET[:6]
    margined = model_for(f"tasks.identification.loss={loss}").eval()
    plain = model_for(f"tasks.identification.loss={loss}", "tasks.identification.margin=0").eval()
    with torch.no_grad():
        out, out0 = margined(x)["identification"], plain(x)["identification"]
        torch.testing.assert_close(out["logits"], out0["logits"])  # same seed, no margin
        cross_entropy = F.cross_entropy(out["logits"], target)
        assert float(margined.task_loss("identification", out, target)) > float(cross_entropy)
        torch.testing.assert_close(plain.task_loss("identification", out0, target), cross_entropy)


def test_softmax_is_the_default_and_builds_the_papers_head_unchanged() -> None:
    task = task_for()
    assert task.options.loss == "softmax"
    assert task.describe() == "identification (identification, student, weight 1)"
    torch.manual_seed(0)
    head = task.build_head(features(40))
    # the paper's head, built the way it always was: Linear 40→128 then Linear 128→N
    torch.manual_seed(0)
    embed, classify = torch.nn.Linear(40, 128), torch.nn.Linear(128, IDENTITIES)
    state = head.state_dict()
    assert list(state) == ["embed.weight", "embed.bias", "classify.weight", "classify.bias"]
    for name, want in [
        ("embed.weight", embed.weight),
        ("embed.bias", embed.bias),
        ("classify.weight", classify.weight),
        ("classify.bias", classify.bias),
    ]:
        assert torch.equal(state[name], want), name
    feature = torch.rand(3, 40, 2, 2, generator=torch.Generator().manual_seed(4))
    out = head(feature)
    embedding = F.relu(embed(feature.mean(dim=(2, 3))))
    assert torch.equal(out["embedding"], embedding)
    assert torch.equal(out["logits"], classify(embedding))
    target = torch.tensor([0, 1, 3])
    smoothed = task_for("tasks.identification.label_smoothing=0.1")
    assert torch.equal(task.loss(out, target, head), F.cross_entropy(out["logits"], target))
    assert torch.equal(
        smoothed.loss(out, target, head),
        F.cross_entropy(out["logits"], target, label_smoothing=0.1),
    )


def test_explicit_softmax_gives_the_same_model_as_the_default() -> None:
    default, explicit = model_for(), model_for("tasks.identification.loss=softmax")
    a, b = default.state_dict(), explicit.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert default.parameter_counts() == explicit.parameter_counts()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "tasks.identification.loss=triplet",
            r"tasks\.identification\.loss: 'triplet' must be one of softmax, arcface, cosface, "
            r"subcenter_arcface",
        ),
        ("tasks.identification.margin=-0.1", r"tasks\.identification\.margin: -0\.1 must be >= 0"),
        (
            "tasks.identification.margin=180",
            r"tasks\.identification\.margin: 180\.0 must be < 180 \(degrees\)",
        ),
        ("tasks.identification.scale=0", r"tasks\.identification\.scale: 0\.0 must be > 0"),
        ("tasks.identification.scale=-64", r"tasks\.identification\.scale: -64\.0 must be > 0"),
        ("tasks.identification.sub_centers=0", r"tasks\.identification\.sub_centers: 0 must be"),
        ("tasks.identification.embedding_dim=0", r"tasks\.identification\.embedding_dim: 0"),
        ("tasks.identification.label_smoothing=1.5", r"tasks\.identification\.label_smoothing"),
        ("tasks.identification.scale=big", r"wrong type for 'tasks\.identification\.scale'"),
        ("tasks.identification.margins=0.3", r"unknown key 'tasks\.identification\.margins'"),
        ("tasks.person={type: identification, loss: arc}", r"tasks\.person\.loss: 'arc'"),
    ],
)
def test_bad_options_are_recipe_errors_naming_the_key(override: str, message: str) -> None:
    with pytest.raises(mtkd.RecipeError, match=message):
        mtkd.build_tasks(recipe("tasks.identification.loss=arcface", override), SPACES)


def test_an_arcface_margin_given_in_radians_warns_that_it_is_degrees() -> None:
    with pytest.warns(UserWarning, match=r"tasks\.identification\.margin: 0\.5 is in degrees"):
        task_for("tasks.identification.loss=arcface", "tasks.identification.margin=0.5")


def test_default_margins_follow_pytorch_metric_learning() -> None:
    from pytorch_metric_learning.losses import ArcFaceLoss, CosFaceLoss

    arc = margin_head(model_for("tasks.identification.loss=arcface").heads["identification"])
    cos = margin_head(model_for("tasks.identification.loss=cosface").heads["identification"])
    sub = margin_head(
        model_for("tasks.identification.loss=subcenter_arcface").heads["identification"]
    )
    reference_arc, reference_cos = ArcFaceLoss(IDENTITIES, 128), CosFaceLoss(IDENTITIES, 128)
    assert arc.margin_loss.margin == pytest.approx(reference_arc.margin)  # 28.6° = 0.499 rad
    assert arc.margin_loss.margin == pytest.approx(math.radians(28.6))
    assert arc.margin_loss.scale == reference_arc.scale == 64
    assert cos.margin_loss.margin == pytest.approx(reference_cos.margin) == pytest.approx(0.35)
    assert cos.margin_loss.scale == reference_cos.scale == 64
    assert sub.margin_loss.sub_centers == 3
    assert sub.margin_loss.W.shape == (128, IDENTITIES * 3)


@pytest.mark.parametrize("loss", MARGIN_LOSSES)
def test_margin_loss_runs_in_float32_under_autocast_and_keeps_its_weights(loss: str) -> None:
    model = model_for(f"tasks.identification.loss={loss}").train()
    task, head = model.tasks["identification"], margin_head(model.heads["identification"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images(4))["identification"]
        value = task.loss(out, TARGET[:4], head)
    assert out["embedding"].dtype == torch.bfloat16  # autocast is on for the encoder ...
    assert out["logits"].dtype == torch.float32  # ... but not for the cosines
    assert value.dtype == torch.float32
    value.backward()
    assert head.margin_loss.W.dtype == torch.float32  # PML casts W to the embedding's dtype
    assert head.margin_loss.W.grad is not None
    # the same embedding in float32 without autocast gives the same loss
    torch.testing.assert_close(
        task.loss({"embedding": out["embedding"].float()}, TARGET[:4], head), value
    )


@pytest.mark.parametrize("loss", MARGIN_LOSSES)
def test_margin_centres_follow_the_model_to_another_device(loss: str) -> None:
    model = model_for(f"tasks.identification.loss={loss}")
    model.to("meta")  # moves every parameter without needing an accelerator
    assert margin_head(model.heads["identification"]).margin_loss.W.device.type == "meta"
    if torch.cuda.is_available():
        model = model_for(f"tasks.identification.loss={loss}").cuda()
        out = model(images(4).cuda())["identification"]
        value = model.task_loss("identification", out, TARGET[:4].cuda())
        assert value.device.type == "cuda" and math.isfinite(float(value))


def test_a_copied_model_trains_its_own_centres() -> None:
    """Distillation deep-copies the model; the copy's task must use the copy's W."""
    model = model_for("tasks.identification.loss=arcface")
    clone = model.without_tasks([])
    original_w = margin_head(model.heads["identification"]).margin_loss.W
    clone_w = margin_head(clone.heads["identification"]).margin_loss.W
    assert clone_w is not original_w
    clone.task_loss("identification", clone(images(4))["identification"], TARGET[:4]).backward()
    assert clone_w.grad is not None
    assert original_w.grad is None


def test_a_tiny_run_with_arcface_trains_evaluates_and_reloads(
    tiny_recipe: Callable[..., DictConfig],
) -> None:
    cfg = tiny_recipe(
        "mobilenetv2_id",
        **{
            "encoder.name": "test_efficientnet",
            "tasks.identification.loss": "arcface",
            "output.plots": False,
        },
    )
    result = mtkd.run(cfg, console=Console(quiet=True))
    test = result.results["test"]["distilled"]
    assert math.isfinite(test["identification/loss"])
    assert 0.0 <= test["identification/top1"] <= 1.0
    assert "verification" in result.results
    reloaded = mtkd.load_run(result.run_dir)  # W is saved and restored with the head
    x = images(2)
    result.inference_model.eval()
    with torch.no_grad():
        want = result.inference_model(x)["identification"]
        got = reloaded(x)["identification"]
    torch.testing.assert_close(got["logits"], want["logits"])
    torch.testing.assert_close(got["embedding"], want["embedding"])


def test_a_dead_embedding_is_measured_and_warned_about() -> None:
    from types import SimpleNamespace

    from mtkd_plugins.identification import ACTIVE, on_epoch_end

    task = task_for()
    metrics = task.metrics()
    alive = torch.zeros(4, 128)
    alive[0, :32] = 1.0  # a quarter of the units fire for some sample
    logits = torch.randn(4, IDENTITIES)
    labels = torch.arange(4) % IDENTITIES
    task.update_metrics(metrics, {"logits": logits, "embedding": alive}, labels)
    assert float(metrics.compute()[ACTIVE]) == 0.25
    context = SimpleNamespace(model=SimpleNamespace(tasks={"identification": task}))
    with pytest.warns(UserWarning, match="embedding layer is inactive"):
        on_epoch_end(context, 3, {f"val/identification/{ACTIVE}": 0.0})


def test_collapsed_features_name_one_class_for_every_image_and_are_warned_about() -> None:
    from types import SimpleNamespace

    from mtkd_plugins.identification import ACTIVE, PREDICTED, on_epoch_end

    task = task_for()
    metrics = task.metrics()
    labels = torch.arange(4) % IDENTITIES
    same = torch.rand(128).expand(4, 128)  # one embedding for every image, all units positive
    logits = torch.zeros(4, IDENTITIES)
    logits[:, 3] = 1.0  # so one class wins for every image
    task.update_metrics(metrics, {"logits": logits, "embedding": same}, labels)
    computed = metrics.compute()
    assert float(computed[ACTIVE]) == 1.0  # the dead-ReLU check sees nothing wrong
    assert float(computed[PREDICTED]) == 1 / IDENTITIES
    metrics.reset()
    varied = torch.eye(IDENTITIES)[:4] * 5  # images 0-3 each name their own class
    task.update_metrics(metrics, {"logits": varied, "embedding": same}, labels)
    assert float(metrics.compute()[PREDICTED]) == 4 / IDENTITIES
    collapsed = {f"val/identification/{ACTIVE}": 1.0, f"val/identification/{PREDICTED}": 0.1}
    history = [dict(collapsed) for _ in range(3)]
    context = SimpleNamespace(
        model=SimpleNamespace(tasks={"identification": task}), history=history
    )
    with pytest.warns(UserWarning, match="one class for every validation image for 3 epochs"):
        on_epoch_end(context, 3, history[-1])


def test_the_collapse_warning_waits_until_it_lasted_three_epochs() -> None:
    """After epoch 1 a healthy network often still names one class: only a lasting collapse
    is worth a warning, once."""
    import warnings
    from types import SimpleNamespace

    from mtkd_plugins.identification import ACTIVE, PREDICTED, on_epoch_end

    task = task_for()
    one = {f"val/identification/{ACTIVE}": 1.0, f"val/identification/{PREDICTED}": 0.1}
    many = {f"val/identification/{ACTIVE}": 1.0, f"val/identification/{PREDICTED}": 0.8}
    context = SimpleNamespace(model=SimpleNamespace(tasks={"identification": task}), history=[])
    warned = []
    for epoch, record in enumerate([one, one, many, one, one, one, one, one], start=1):
        context.history.append(dict(record))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            on_epoch_end(context, epoch, context.history[-1])
        warned += [epoch for w in caught if "one class for every" in str(w.message)]
    assert warned == [6]  # epochs 4, 5, 6 in a row; said once


@pytest.mark.parametrize("loss", LOSSES)
def test_a_batch_normalised_embedding_stays_alive_where_a_plain_one_dies(loss: str) -> None:
    """The dead-embedding mechanism: pooled features are non-negative, so once every weight of
    the Linear layer is negative every unit is off for every image (and gets no gradient).
    With ``embedding_norm: batchnorm`` each unit is centred on its batch, so it stays on for
    part of the batch whatever the weights."""
    pooled = torch.rand(16, 40, 2, 2, generator=torch.Generator().manual_seed(0))  # >= 0
    for norm, alive in (("none", False), ("batchnorm", True)):
        head = embedding_head(
            task_for(
                f"tasks.identification.loss={loss}", f"tasks.identification.embedding_norm={norm}"
            ).build_head(features(40))
        )
        with torch.no_grad():
            head.embed.weight.copy_(-head.embed.weight.abs())  # what Adam did in epoch 1
            head.embed.bias.fill_(-0.01)
        head.train()
        embedding = head(pooled)["embedding"]
        share = float((embedding > 0).any(0).float().mean())
        assert (share > 0.9) if alive else (share == 0.0), (norm, share)


def test_the_default_head_keeps_the_papers_parameters() -> None:
    """embedding_norm: none adds nothing: checkpoints of earlier runs load unchanged."""
    plain = task_for().build_head(features(40)).state_dict()
    normed = task_for("tasks.identification.embedding_norm=batchnorm").build_head(features(40))
    assert list(plain) == ["embed.weight", "embed.bias", "classify.weight", "classify.bias"]
    assert {"norm.weight", "norm.bias", "norm.running_mean"} <= set(normed.state_dict())
