"""Loss-weighting strategies: each one's defining behaviour, recipe selection, plugins, resume."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from helpers import RECIPES, train_quietly
from mtkd_plugins.loss_weighting import (
    DwaOptions,
    DynamicWeightAveraging,
    GradNorm,
    GradNormOptions,
    UncertaintyWeighting,
)
from omegaconf import DictConfig
from rich.console import Console

import mtkd
from mtkd.weighting import FixedWeighting, LossWeighting

QUIET = Console(quiet=True)


def _tasks(*keys: str, weight: float = 1.0) -> dict[str, Any]:
    return {key: SimpleNamespace(weight=weight) for key in keys}


def test_uncertainty_gives_the_noisier_task_the_smaller_weight() -> None:
    weighting = UncertaintyWeighting(_tasks("noisy", "clean"), None, [])
    optimizer = torch.optim.Adam(weighting.parameters(), lr=0.05)
    losses = {"noisy": torch.tensor(4.0), "clean": torch.tensor(0.25)}
    for _ in range(400):
        optimizer.zero_grad()
        weighting.combine(losses, {"noisy": 8, "clean": 8}).backward()
        optimizer.step()
    weights = weighting.current_weights()
    # the optimum of L/(2 sigma^2) + log sigma is sigma^2 = L: weight 1/(2L)
    assert weights["noisy"] == pytest.approx(0.5 / 4.0, rel=0.05)
    assert weights["clean"] == pytest.approx(0.5 / 0.25, rel=0.05)


def test_uncertainty_leaves_a_task_without_labels_alone() -> None:
    weighting = UncertaintyWeighting(_tasks("a", "b"), None, [])
    zero = torch.zeros((), requires_grad=True) * 0.0
    weighting.combine({"a": torch.tensor(1.0), "b": zero}, {"a": 4, "b": 0}).backward()
    assert weighting.log_vars.grad is not None
    assert weighting.log_vars.grad[1] == 0.0


def test_dwa_weights_the_task_whose_loss_falls_slower_higher() -> None:
    weighting = DynamicWeightAveraging(_tasks("fast", "slow"), DwaOptions(temperature=2.0), [])
    weighting.epoch_end({"fast": 1.0, "slow": 1.0})
    assert weighting.current_weights() == {"fast": 1.0, "slow": 1.0}  # two epochs needed
    weighting.epoch_end({"fast": 0.5, "slow": 0.95})
    weights = weighting.current_weights()
    assert weights["slow"] > weights["fast"]
    assert sum(weights.values()) == pytest.approx(2.0)
    expected = 2 * torch.softmax(torch.tensor([0.5, 0.95]) / 2.0, 0)
    assert weights["fast"] == pytest.approx(float(expected[0]))


def test_dwa_rejects_a_non_positive_temperature() -> None:
    with pytest.raises(mtkd.RecipeError, match=r"trainer\.weighting\.temperature"):
        DynamicWeightAveraging(_tasks("a"), DwaOptions(temperature=0.0), [])


def test_gradnorm_lowers_the_weight_of_the_task_with_the_larger_gradient() -> None:
    shared = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    x = torch.tensor([0.3, 0.1, 0.7])
    weighting = GradNorm(_tasks("loud", "quiet"), GradNormOptions(alpha=1.5), [shared])
    optimizer = torch.optim.SGD(weighting.parameters(), lr=0.01)
    for _ in range(50):
        optimizer.zero_grad()
        base = (shared * x).sum() ** 2
        losses = {"loud": 10.0 * base, "quiet": base}
        total = weighting.combine(losses, {"loud": 4, "quiet": 4})
        assert not total.requires_grad or total.grad_fn is not None
        optimizer.step()
    weights = weighting.current_weights()
    assert weights["loud"] < weights["quiet"]
    assert sum(weights.values()) == pytest.approx(2.0)
    # balanced gradients: w_loud * 10 g ~ w_quiet * g
    assert weights["loud"] * 10 == pytest.approx(weights["quiet"], rel=0.2)


def test_fixed_weighting_is_the_recipe_weights() -> None:
    space = mtkd.LabelSpace(("x", "y"))
    tasks = {
        key: mtkd.Task(key, mtkd.NoOptions(), role="student", weight=weight, label_space=space)
        for key, weight in (("a", 1.0), ("b", 0.1))
    }
    weighting = FixedWeighting(tasks, None, [])
    total = weighting.combine({"a": torch.tensor(2.0), "b": torch.tensor(3.0)}, {"a": 1, "b": 1})
    assert float(total) == pytest.approx(2.3)


@pytest.mark.parametrize("name", ["uncertainty", "dwa", "gradnorm"])
def test_each_strategy_trains_from_the_recipe_and_logs_its_weights(
    tiny_recipe: Callable[..., DictConfig], name: str
) -> None:
    cfg = tiny_recipe(**{"trainer.weighting.name": name, "trainer.max_epochs": 3})
    _, ctx = train_quietly(cfg)
    assert isinstance(ctx.weighting, LossWeighting) and ctx.weighting.name == name
    last = ctx.history[-1]
    weights = {k: last[f"weight/{k}"] for k in ("identification", "segmentation")}
    assert all(w > 0 for w in weights.values())
    if name != "uncertainty":
        assert sum(weights.values()) == pytest.approx(2.0)
    if name == "uncertainty":  # the learned log-variances moved off their start
        assert weights != {"identification": 0.5, "segmentation": 0.5}


def test_a_resumed_run_continues_the_learned_weights_exactly(
    tiny_recipe: Callable[..., DictConfig], tmp_path: Path
) -> None:
    overrides = {"trainer.weighting.name": "uncertainty", "trainer.max_epochs": 2}
    full, _ = train_quietly(tiny_recipe(**overrides))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    train_quietly(tiny_recipe(**{**overrides, "trainer.max_epochs": 1}), run_dir)
    resumed, ctx = train_quietly(tiny_recipe(**overrides), run_dir, resume=True)
    assert len(ctx.history) == 2
    for key, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert logged[-1]["weight/identification"] == ctx.history[-1]["weight/identification"]


class HalfWeights(LossWeighting):
    """A strategy from a test plugin: half of every loss."""

    name = "halves"
    calls = 0

    def combine(
        self, losses: Mapping[str, torch.Tensor], counts: Mapping[str, int]
    ) -> torch.Tensor:
        HalfWeights.calls += 1
        return sum((0.5 * loss for loss in losses.values()), torch.zeros(()))


class _WeightingPlugin:
    @mtkd.hookimpl
    def register_weightings(self, register: Callable[[type[LossWeighting]], None]) -> None:
        register(HalfWeights)


def test_a_plugin_strategy_is_selected_by_name(tiny_recipe: Callable[..., DictConfig]) -> None:
    plugins = mtkd.load_plugins(objects=[("halves", _WeightingPlugin())])
    assert plugins.weightings.by_plugin("halves") == ["halves"]
    cfg = tiny_recipe(**{"trainer.weighting.name": "halves"})
    data = mtkd.build_data(cfg, plugins, console=QUIET)
    model = mtkd.build_model(cfg, data.label_spaces, plugins)
    HalfWeights.calls = 0
    mtkd.train(model, data, cfg, plugins=plugins, console=QUIET)
    assert HalfWeights.calls > 0


def test_an_unknown_strategy_names_the_key_and_suggests(
    tiny_recipe: Callable[..., DictConfig],
) -> None:
    cfg = tiny_recipe(**{"trainer.weighting.name": "uncertainy"})
    with pytest.raises(mtkd.PluginError, match=r"trainer.weighting.name.*uncertainty"):
        train_quietly(cfg)


def test_a_strategy_option_is_checked_against_its_plugin(
    tiny_recipe: Callable[..., DictConfig],
) -> None:
    cfg = tiny_recipe(**{"trainer.weighting.name": "dwa", "trainer.weighting.temprature": 3})
    with pytest.raises(mtkd.RecipeError, match=r"trainer.weighting.*temperature"):
        train_quietly(cfg)


def test_naming_another_strategy_drops_the_old_ones_options(
    tiny_recipe: Callable[..., DictConfig],
) -> None:
    cfg = tiny_recipe(**{"trainer.weighting.name": "gradnorm", "trainer.weighting.alpha": 0.5})
    assert dict(cfg.trainer.weighting) == {"name": "gradnorm", "alpha": 0.5}
    again = mtkd.load_recipe(
        RECIPES / "seg_distilled_id.yaml",
        [
            "trainer.weighting.name=gradnorm",
            "trainer.weighting.alpha=0.5",
            "trainer.weighting.name=dwa",
        ],
    )
    assert dict(again.trainer.weighting) == {"name": "dwa"}
