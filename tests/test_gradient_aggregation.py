"""Gradient aggregators (trainer.weighting.name=aggregate): each method's defining update on
hand-built conflicting gradients, training through the engine, partial labels, AMP, a frozen
encoder, exact resume, DDP, and one-line errors."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from helpers import RECIPES, tiny_overrides, train_quietly
from mtkd_plugins.gradient_aggregation import METHODS, GradientAggregation
from omegaconf import DictConfig
from rich.console import Console
from safetensors.torch import load_file
from torch import nn
from torchjd.aggregation import WeightedAggregator

import mtkd
from mtkd.config import named_block
from mtkd.data.build import make_train_loader
from mtkd.engine.setup import make_weighting
from mtkd.engine.step import check_aggregation, encoder_outputs
from mtkd.model.losses import task_losses
from mtkd.runs.study import plan_study
from mtkd.weighting import EncoderOutputs

QUIET = Console(quiet=True)
KEY = "trainer.weighting"

# two task gradients that conflict (negative inner product), of different lengths
G1 = torch.tensor([1.0, 0.0, 0.5])
G2 = torch.tensor([-2.0, 1.0, 0.0])


class _Scaler:
    """What the weighting uses of fp16's GradScaler."""

    def __init__(self, scale: float) -> None:
        self.factor = scale

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.factor

    def get_scale(self) -> float:
        return self.factor


def _weighting(method: str, n: int, weights: list[float] | None = None, **options: Any) -> Any:
    keys = [f"t{i}" for i in range(n)]
    tasks = {k: SimpleNamespace(weight=w) for k, w in zip(keys, weights or [1.0] * n, strict=True)}
    theta = nn.Parameter(torch.tensor([0.3, -0.2, 0.1]))
    parsed = GradientAggregation.parse_options({"method": method, **options}, KEY)
    return GradientAggregation(tasks, parsed, [theta]), theta


def hand_built_update(
    method: str,
    gradients: list[torch.Tensor],
    counts: list[int] | None = None,
    scaler: Any = None,
    **options: Any,
) -> tuple[torch.Tensor, GradientAggregation, list[nn.Parameter]]:
    """The encoder update for losses whose gradients on the shared vector are exactly
    ``gradients``: task k's loss is h_k (g_k . f) with f = theta (the encoder's output) and
    h_k a head weight, so the Jacobian's rows are the g_k and h_k's gradient is g_k . theta."""
    weighting, theta = _weighting(method, len(gradients), **options)
    heads = [nn.Parameter(torch.tensor(1.0)) for _ in gradients]
    output = theta * 1.0
    cut = output.detach().requires_grad_()
    losses = {k: h * (g @ cut) for k, h, g in zip(weighting.keys, heads, gradients, strict=True)}
    counts = counts or [4] * len(gradients)
    outputs = EncoderOutputs([output], [cut])
    weighting.backward(losses, dict(zip(weighting.keys, counts, strict=True)), scaler, outputs)
    assert theta.grad is not None
    return theta.grad, weighting, heads


def test_pcgrad_removes_each_gradients_conflicting_component() -> None:
    update, _, _ = hand_built_update("pcgrad", [G1, G2])
    # each gradient loses its component along the other one (they conflict), then they add up
    g1 = G1 - (G1 @ G2) / (G2 @ G2) * G2
    g2 = G2 - (G2 @ G1) / (G1 @ G1) * G1
    torch.testing.assert_close(update, g1 + g2)
    assert float(g1 @ G2) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("method", ["upgrad", "dualproj", "nash_mtl"])
def test_the_update_conflicts_with_no_task(method: str) -> None:
    assert float(G1 @ G2) < 0
    update, _, _ = hand_built_update(method, [G1, G2])
    # up to the dual-cone solver's regularisation (reg_eps 1e-4 on the normalised Gramian)
    assert float(update @ G1) >= -1e-3 and float(update @ G2) >= -1e-3
    mean, _, _ = hand_built_update("mean", [G1, G2])
    assert float(mean @ G1) < 0  # the plain average does conflict with the first task


def test_upgrad_and_dualproj_are_the_mean_when_nothing_conflicts() -> None:
    agreeing = [G1, torch.tensor([1.0, 1.0, 0.0])]
    for method in ("upgrad", "dualproj"):
        update, _, _ = hand_built_update(method, agreeing)
        torch.testing.assert_close(update, (agreeing[0] + agreeing[1]) / 2, atol=1e-4, rtol=1e-4)


def test_mgda_finds_the_min_norm_point_of_the_gradients_hull() -> None:
    update, _, _ = hand_built_update("mgda", [G1, G2], epsilon=1e-6, max_iters=1000)
    a = float(G2 @ (G2 - G1) / ((G1 - G2) @ (G1 - G2)))  # argmin |a g1 + (1 - a) g2|
    torch.testing.assert_close(update, a * G1 + (1 - a) * G2, atol=1e-3, rtol=1e-3)


def test_imtl_g_projects_equally_onto_every_task_direction() -> None:
    update, _, _ = hand_built_update("imtl_g", [G1, G2])
    along = [float(update @ g / g.norm()) for g in (G1, G2)]
    assert along[0] == pytest.approx(along[1], rel=1e-4)


def test_nash_mtl_gives_every_task_the_same_weighted_improvement() -> None:
    """The bargaining solution: alpha_k (g_k . d) is the same for every task."""
    update, weighting, _ = hand_built_update("nash_mtl", [G1, G2], max_norm=0.0)
    weighting.epoch_end({})
    alpha = weighting.current_weights()
    products = [alpha["t0"] * float(update @ G1), alpha["t1"] * float(update @ G2)]
    assert products[0] == pytest.approx(products[1], rel=1e-2)


def test_cagrad_improves_the_worst_task_more_than_the_mean() -> None:
    mean, _, _ = hand_built_update("mean", [G1, G2])
    update, _, _ = hand_built_update("cagrad", [G1, G2], c=0.5)
    assert min(float(update @ G1), float(update @ G2)) > min(float(mean @ G1), float(mean @ G2))


def test_graddrop_keeps_one_sign_per_coordinate() -> None:
    torch.manual_seed(0)
    update, _, _ = hand_built_update("graddrop", [G1, G2])
    rows = torch.stack([G1, G2])
    positive, negative = rows.clamp_min(0).sum(0), rows.clamp_max(0).sum(0)
    for j, value in enumerate(update.tolist()):
        assert value == pytest.approx(positive[j]) or value == pytest.approx(negative[j])


def test_sum_with_the_recipe_weights_is_the_fixed_weighting() -> None:
    weighting, _ = _weighting("sum", 2, weights=[0.1, 1.0])
    losses = {"t0": torch.tensor(2.0), "t1": torch.tensor(3.0)}
    assert float(weighting.combine(losses, {"t0": 1, "t1": 1})) == pytest.approx(3.2)


def test_each_head_gets_its_own_tasks_gradient() -> None:
    theta = torch.tensor([0.3, -0.2, 0.1])
    _, _, heads = hand_built_update("upgrad", [G1, G2])
    for head, g in zip(heads, (G1, G2), strict=True):
        assert head.grad is not None
        assert float(head.grad) == pytest.approx(float(g @ theta))


def test_a_task_without_labels_in_the_batch_has_no_row() -> None:
    update, weighting, _ = hand_built_update("upgrad", [G1, G2, G1 + G2], counts=[4, 0, 2])
    # UPGrad of the two labelled rows, the unlabelled task's gradient left out
    expected, _, _ = hand_built_update("upgrad", [G1, G1 + G2])
    torch.testing.assert_close(update, expected)
    weighting.epoch_end({})
    assert set(weighting.current_weights()) == {"t0", "t2"}
    assert set(weighting.epoch_metrics()) == {
        "grad_cos/t0__t2",
        "update_share/t0",
        "update_share/t2",
    }  # no row, no cosine and no share for t1, which had no label


def test_the_grad_scaler_scales_the_update_and_not_what_the_method_sees() -> None:
    """Nash-MTL is not scale-equivariant: it must see the unscaled gradients."""
    plain, _, heads = hand_built_update("nash_mtl", [G1, G2])
    scaled, _, scaled_heads = hand_built_update("nash_mtl", [G1, G2], scaler=_Scaler(1024.0))
    torch.testing.assert_close(scaled, plain * 1024.0)
    for head, scaled_head in zip(heads, scaled_heads, strict=True):
        assert scaled_head.grad is not None and head.grad is not None
        torch.testing.assert_close(scaled_head.grad, head.grad * 1024.0)


def test_an_overflowing_gradient_is_left_for_the_grad_scaler_to_skip() -> None:
    update, weighting, _ = hand_built_update("upgrad", [G1, torch.tensor([math.inf, 0.0, 0.0])])
    assert not bool(torch.isfinite(update).all())
    weighting.epoch_end({})
    assert weighting.current_weights() == {}  # the method never ran on it


def test_a_failing_solver_names_the_method(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(self: Any, matrix: torch.Tensor) -> torch.Tensor:
        raise ValueError("Failed to solve the quadratic programming problem.")

    monkeypatch.setattr(METHODS["upgrad"].cls, "forward", fail)
    with pytest.raises(mtkd.MtkdError, match=r"^trainer\.weighting\.method=upgrad: .*quadratic"):
        hand_built_update("upgrad", [G1, G2])


def test_the_cosine_between_task_gradients_is_logged_per_epoch() -> None:
    _, weighting, _ = hand_built_update("upgrad", [G1, G2])
    weighting.epoch_end({})
    cosine = float(G1 @ G2 / (G1.norm() * G2.norm()))
    assert weighting.epoch_metrics()["grad_cos/t0__t1"] == pytest.approx(cosine, rel=1e-5)
    assert set(weighting.current_weights()) == {"t0", "t1"}


def test_a_frozen_encoder_trains_each_head_on_its_own_task() -> None:
    weighting, theta = _weighting("upgrad", 2)
    theta.requires_grad_(False)
    heads = [nn.Parameter(torch.tensor(1.0)) for _ in range(2)]
    output = theta * 1.0  # no graph: the encoder is frozen
    losses = {k: h * (g @ output) for k, h, g in zip(weighting.keys, heads, (G1, G2), strict=True)}
    weighting.backward(losses, {"t0": 1, "t1": 1}, None, EncoderOutputs([output], [output]))
    assert theta.grad is None
    assert heads[0].grad is not None and float(heads[0].grad) == pytest.approx(float(G1 @ theta))


# --- errors -------------------------------------------------------------------------------


def test_an_unknown_method_names_the_key_and_suggests() -> None:
    with pytest.raises(mtkd.RecipeError, match=r"trainer\.weighting\.method.*'pcgrad'"):
        GradientAggregation.parse_options({"method": "pcgard"}, KEY)


def test_an_option_the_method_does_not_take_names_the_key() -> None:
    with pytest.raises(mtkd.RecipeError, match=r"trainer\.weighting\.epsilon.*'upgrad' takes"):
        GradientAggregation.parse_options({"method": "upgrad", "epsilon": 0.1}, KEY)


def test_an_option_value_the_method_refuses_names_the_key() -> None:
    with pytest.raises(mtkd.RecipeError, match=r"^trainer\.weighting\.c: c must be non-negative"):
        _weighting("cagrad", 2, c=-1.0)


def test_a_per_task_option_needs_one_value_per_task() -> None:
    with pytest.raises(mtkd.RecipeError, match=r"trainer\.weighting\.pref_vector.*t0, t1"):
        _weighting("upgrad", 2, pref_vector=[1.0, 2.0, 3.0])
    weighting, _ = _weighting("upgrad", 2, pref_vector={"t1": 2.0, "t0": 1.0})
    assert weighting.kwargs["pref_vector"] == [1.0, 2.0]


def test_compile_is_refused_with_an_aggregator(tiny_recipe: Callable[..., DictConfig]) -> None:
    cfg = tiny_recipe(**{f"{KEY}.name": "aggregate", "trainer.compile": True})
    with pytest.raises(mtkd.RecipeError, match=r"trainer\.compile"):
        train_quietly(cfg)


def test_sync_batchnorm_is_refused_with_an_aggregator() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.SyncBatchNorm(4))
    trainer = SimpleNamespace(compile=False)
    with pytest.raises(mtkd.RecipeError, match=r"^trainer\.sync_batchnorm: .*=false"):
        check_aggregation(model, trainer, "aggregate")
    check_aggregation(nn.Sequential(nn.BatchNorm2d(4)), trainer, "aggregate")  # plain BN is fine


# --- through the engine -------------------------------------------------------------------


def _aggregate(method: str, **extra: Any) -> dict[str, Any]:
    return {f"{KEY}.name": "aggregate", f"{KEY}.method": method, **extra}


@pytest.mark.parametrize("recipe", ["seg_distilled_id", "seg_pose_distilled_id"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_method_trains_a_two_and_a_three_task_model(
    tiny_recipe: Callable[..., DictConfig], method: str, recipe: str
) -> None:
    extra: dict[str, Any] = {"encoder.name": "mobilenetv2_035", "trainer.max_steps_per_epoch": 2}
    if recipe == "seg_pose_distilled_id":  # random_images has no pose label
        extra |= {"data.dataset.name": "synthetic_heads", "data.dataset.views_spread": 0}
    cfg = tiny_recipe(recipe, **_aggregate(method, **extra))
    torch.manual_seed(0)
    data = mtkd.build_data(cfg, console=QUIET)
    model = mtkd.build_model(cfg, data.label_spaces)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    ctx = mtkd.train(model, data, cfg, console=QUIET)
    for part in ["encoder", *(f"heads.{key}" for key in model.tasks)]:
        moved = [not torch.equal(v, before[k]) for k, v in model.named_parameters() if part in k]
        assert any(moved), f"{part} did not train"
    record = ctx.history[-1]
    assert math.isfinite(record["train/loss"])
    pairs = [k for k in record if k.startswith("grad_cos/")]
    assert len(pairs) == len(model.tasks) * (len(model.tasks) - 1) // 2
    if issubclass(METHODS[method].cls, WeightedAggregator):  # it says how it weighed the tasks
        assert {f"weight/{k}" for k in model.tasks} <= set(record)


def _step_gradients(model: Any, batch: Any, cfg: DictConfig) -> dict[str, torch.Tensor]:
    """The gradients one training step of ``cfg``'s weighting sets, on a fixed batch."""
    weighting = make_weighting(model, cfg, mtkd.load_plugins())
    torch.manual_seed(1)  # the same dropout masks
    with encoder_outputs(model.encoder, weighting.aggregates_gradients) as features:
        outputs = model(batch["image"])
    losses, counts = task_losses(outputs, batch, model.tasks, model.heads)
    model.zero_grad(set_to_none=True)
    weighting.backward(losses, counts, None, features)
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("chunk", ["sequential", "vmapped"])
@pytest.mark.parametrize("recipe", ["seg_distilled_id", "pose_distilled_id"])
def test_sum_sets_the_gradients_the_fixed_weighting_sets(
    tiny_recipe: Callable[..., DictConfig], recipe: str, chunk: str
) -> None:
    """Rows carry the recipe weights, so their sum is the fixed weighting's gradient: the
    two-step chain rule (each head, then the encoder's taps and final features) is exact,
    one task per encoder pass (the CPU's default) or all in one vmapped pass."""
    extra: dict[str, Any] = {"encoder.name": "mobilenetv2_035"}
    if recipe == "pose_distilled_id":  # random_images has no pose label
        extra |= {"data.dataset.name": "synthetic_heads", "data.dataset.views_spread": 0}
    cfg = tiny_recipe(recipe, **extra)
    data = mtkd.build_data(cfg, console=QUIET)
    torch.manual_seed(0)
    model = mtkd.build_model(cfg, data.label_spaces).train()
    batch = next(iter(make_train_loader(data.train, 8, seed=0)))
    fixed = _step_gradients(model, batch, cfg)
    tasks_per_pass = {f"{KEY}.parallel_chunk_size": 1 if chunk == "sequential" else 8}
    summed_cfg = tiny_recipe(recipe, **extra, **_aggregate("sum", **tasks_per_pass))
    summed = _step_gradients(model, batch, summed_cfg)
    assert fixed.keys() == summed.keys()
    top = max(float(g.abs().max()) for g in fixed.values())
    for key, gradient in fixed.items():  # (a bias before a BatchNorm has a ~0 gradient: noise)
        torch.testing.assert_close(summed[key], gradient, rtol=1e-3, atol=1e-5 * top, msg=key)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_an_aggregator_trains_under_autocast(
    tiny_recipe: Callable[..., DictConfig], precision: str
) -> None:
    # fp16's scaler starts at 2^16: the first steps overflow and are skipped, as without
    # an aggregator, until the scale has come down
    overrides = {"trainer.precision": precision, "trainer.max_epochs": 2}
    _, ctx = train_quietly(tiny_recipe(**_aggregate("upgrad", **overrides)))
    assert math.isfinite(ctx.history[-1]["train/loss"])
    assert "grad_cos/identification__segmentation" in ctx.history[-1]


def test_partial_labels_and_a_frozen_first_epoch_train(
    tiny_recipe: Callable[..., DictConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[int, ...]] = []
    aggregate = GradientAggregation._aggregate

    def spy(self: GradientAggregation, jacobian: torch.Tensor, active: Any) -> torch.Tensor:
        seen.append(active)
        return aggregate(self, jacobian, active)

    monkeypatch.setattr(GradientAggregation, "_aggregate", spy)
    overrides = {"data.dataset.mask_fraction": 0.1, "trainer.freeze_encoder_epochs": 1}
    cfg = tiny_recipe(**_aggregate("nash_mtl", **overrides, **{"trainer.max_epochs": 3}))
    _, ctx = train_quietly(cfg)
    assert "grad_cos/identification__segmentation" not in ctx.history[0]  # frozen: no rows
    assert "weight/identification" in ctx.history[-1]
    # steps whose batch held no mask had the identification row alone
    assert {(0,), (0, 1)} <= set(seen)


def test_a_resumed_run_continues_an_aggregators_state_exactly(
    tiny_recipe: Callable[..., DictConfig], tmp_path: Path
) -> None:
    """Nash-MTL solving every third step reuses its last weights in between: resuming must
    restore them (and its step count) for the second epoch to train the same."""
    overrides = _aggregate(
        "nash_mtl", **{"trainer.max_epochs": 2, f"{KEY}.update_weights_every": 3}
    )
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    for run_dir in (straight, resumed):
        run_dir.mkdir()
    train_quietly(tiny_recipe(**overrides), straight)
    train_quietly(tiny_recipe(**{**overrides, "trainer.max_epochs": 1}), resumed)
    train_quietly(tiny_recipe(**overrides), resumed, resume=True)
    last = Path("checkpoints") / "last" / "model.safetensors"
    a, b = load_file(str(straight / last)), load_file(str(resumed / last))
    for key, value in a.items():  # the last epoch's weights, not the best ones
        assert torch.equal(value, b[key]), key

    def logged(run_dir: Path) -> list[dict[str, Any]]:
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in row.items() if not k.startswith("time")} for row in rows]

    assert logged(straight) == logged(resumed)
    assert "weight/identification" in logged(resumed)[-1]


def test_a_run_reports_its_training_throughput_and_the_gradients_conflict(
    tmp_path: Path,
) -> None:
    cfg = mtkd.load_recipe(
        RECIPES / "seg_distilled_id.yaml",
        tiny_overrides(
            tmp_path,
            **{
                "encoder.name": "mobilenetv2_035",
                **_aggregate("upgrad"),
                "evaluate.latency": False,
                "evaluate.verification": False,
                "output.plots": False,
            },
        ),
    )
    result = mtkd.run(cfg, console=QUIET)
    assert result.results["train_images_per_s"] > 0
    first = json.loads((result.run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert -1.0 <= first["grad_cos/identification__segmentation"] <= 1.0
    assert first["weight/identification"] > 0


def test_the_gradient_study_sets_fixed_weights_against_aggregators_on_both_recipes() -> None:
    _, plan = plan_study(RECIPES / "ablation_gradients.yaml")
    registry = mtkd.load_plugins().weightings
    methods: dict[str, set[str]] = {}
    for planned in plan:
        name, raw = named_block(dict(planned.cfg.trainer.weighting), KEY, default="fixed")
        options = registry.get(name, key=f"{KEY}.name").parse_options(raw, KEY)  # all valid
        method = options.method if name == "aggregate" else name
        methods.setdefault(planned.member.recipe.stem, set()).add(method)
    assert {p.seed for p in plan} == {0, 1, 2}
    assert set(methods) == {"seg_distilled_id", "seg_pose_distilled_id"}
    assert methods["seg_distilled_id"] == {"fixed", "upgrad", "pcgrad", "cagrad"}
    assert methods["seg_pose_distilled_id"] == {"fixed", "upgrad"}


def test_a_large_pcgrad_weight_is_the_coefficient_of_a_short_row_not_a_large_step() -> None:
    """PCGrad's logged weight of 3414 on a tiny run: the task's gradient was thousands of
    times shorter than the one it conflicted with, so PCGrad expressed that gradient's removed
    component through the short row with a large coefficient. The step is an ordinary one; the
    update share says how much each task made of it."""
    long, short = torch.tensor([1000.0, 0.0, 0.0]), torch.tensor([-0.1, 0.05, 0.0])
    update, weighting, _ = hand_built_update("pcgrad", [long, short])
    weighting.epoch_end({})
    weights = weighting.current_weights()
    assert weights["t1"] > 1000  # a coefficient on the short row ...
    torch.testing.assert_close(update, weights["t0"] * long + weights["t1"] * short)
    assert float(update.norm()) <= float(long.norm() + short.norm())  # ... of no larger a step
    shares = {k: v for k, v in weighting.epoch_metrics().items() if k.startswith("update_")}
    assert shares.keys() == {"update_share/t0", "update_share/t1"}
    assert sum(shares.values()) == pytest.approx(1.0)
    assert 0.3 < shares["update_share/t1"] < 0.5  # most of the update is still the long row


def test_a_checkpoint_from_before_update_shares_still_loads() -> None:
    weighting, _ = _weighting("pcgrad", 2)
    state = {
        k: v for k, v in weighting.state_dict().items() if k not in ("share_sum", "epoch_share")
    }
    fresh, _ = _weighting("pcgrad", 2)
    fresh.load_state_dict(state)
    assert float(fresh.share_sum.sum()) == 0.0
