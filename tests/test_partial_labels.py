"""Partial labels: each task's loss sees exactly the samples that carry its label."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from helpers import ListDataset
from omegaconf import DictConfig
from rich.console import Console

import mtkd
from mtkd.model.losses import task_losses
from mtkd.samples import collate_samples, sample_to_tensors

SPACES = {"identity": mtkd.LabelSpace(("a", "b", "c")), "mask": mtkd.LabelSpace(("bg", "fg"))}


def make_samples(with_mask: list[bool]) -> list[dict[str, Any]]:
    samples = []
    for i, has_mask in enumerate(with_mask):
        sample: dict[str, Any] = {"image": np.full((32, 32, 3), i, np.uint8), "identity": i % 3}
        if has_mask:
            sample["mask"] = np.full((32, 32), i % 2, np.uint8)
        samples.append(sample)
    return samples


def test_collate_marks_which_samples_carry_each_label() -> None:
    batch = collate_samples(
        [sample_to_tensors(s, SPACES) for s in make_samples([True, False, True, False])]
    )
    assert batch["present"]["mask"].tolist() == [True, False, True, False]
    assert batch["present"]["identity"].tolist() == [True] * 4
    assert batch["mask"].shape == (4, 32, 32)
    assert batch["mask"].dtype == torch.long


def test_only_masked_samples_reach_the_segmentation_loss(
    tiny_recipe: Callable[..., DictConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_recipe()
    model = mtkd.build_model(cfg, SPACES)
    batch = collate_samples(
        [sample_to_tensors(s, SPACES) for s in make_samples([True, False, False, True, False])]
    )
    seen: dict[str, torch.Tensor] = {}
    seg = model.tasks["segmentation"]
    original = seg.loss

    def spy(output: torch.Tensor, target: torch.Tensor, head: torch.nn.Module) -> torch.Tensor:
        seen["output"], seen["target"] = output, target
        return original(output, target, head)

    monkeypatch.setattr(seg, "loss", spy)
    _, counts = task_losses(model(batch["image"]), batch, model.tasks, model.heads)
    assert counts == {"identification": 5, "segmentation": 2}
    assert seen["output"].shape[0] == 2 and seen["target"].shape[0] == 2
    # the two masked samples were images 0 and 3: their masks are 0 and 1 everywhere
    assert seen["target"][0].unique().tolist() == [0] and seen["target"][1].unique().tolist() == [1]


def test_a_batch_without_any_mask_keeps_the_decoder_in_the_graph(
    tiny_recipe: Callable[..., DictConfig],
) -> None:
    cfg = tiny_recipe()
    model = mtkd.build_model(cfg, SPACES)
    batch = collate_samples([sample_to_tensors(s, SPACES) for s in make_samples([False, False])])
    losses, counts = task_losses(model(batch["image"]), batch, model.tasks, model.heads)
    assert counts["segmentation"] == 0 and float(losses["segmentation"].detach()) == 0.0
    sum(losses.values(), torch.zeros(())).backward()
    decoder_grads = [p.grad for p in model.heads["segmentation"].parameters()]
    assert all(g is not None and float(g.abs().sum()) == 0.0 for g in decoder_grads)


def test_mixed_masked_and_unmasked_data_trains_and_scores_only_masked(
    tiny_recipe: Callable[..., DictConfig],
) -> None:
    cfg = tiny_recipe(**{"data.dataset.mask_fraction": 0.5, "trainer.max_epochs": 2})
    result = mtkd.run(cfg, console=Console(quiet=True))
    data = mtkd.build_data(cfg)
    masked = int(data.cached.present["mask"][data.test.indices].sum())
    full = result.results["test"]["full"]
    assert full["segmentation/count"] == masked < full["identification/count"]
    assert masked > 0


def test_training_and_validation_weigh_tasks_by_one_rule(
    tiny_recipe: Callable[..., DictConfig],
) -> None:
    """The epoch's training loss once averaged the steps' totals, where a batch without masks
    counts segmentation as 0, while validation weighted each task's mean over its labelled
    samples: on the same batches the two disagreed."""
    from mtkd.context import EpochTally
    from mtkd.data.build import make_loader
    from mtkd.engine.step import RunningTally
    from mtkd.metrics.evaluate import evaluate_loader
    from mtkd.weighting import weighted_losses

    model = mtkd.build_model(tiny_recipe(), SPACES).eval()
    masks = [False] * 4 + [True, True, False, True]  # the first batch has no mask at all
    loader = make_loader(
        ListDataset([sample_to_tensors(s, SPACES) for s in make_samples(masks)]), 4, shuffle=False
    )
    evaluated = evaluate_loader(model, loader)
    tally = RunningTally(list(model.tasks), EpochTally(), torch.device("cpu"))
    with torch.no_grad():
        for batch in loader:
            losses, counts = task_losses(model(batch["image"]), batch, model.tasks, model.heads)
            tally.add(int(batch["image"].shape[0]), losses, counts)
    trained = weighted_losses(tally.snapshot().task_losses(), model.tasks)  # as fit logs it
    weights = {key: task.weight for key, task in model.tasks.items()}
    assert evaluated["loss"] == pytest.approx(
        sum(w * evaluated[f"{key}/loss"] for key, w in weights.items())
    )
    assert trained["loss"] == pytest.approx(evaluated["loss"], rel=1e-5)
    # the teacher (segmentation) is gone from the distilled model: its loss compares with this
    assert model.tasks["segmentation"].role == "teacher"
    assert evaluated["student_loss"] == pytest.approx(
        weights["identification"] * evaluated["identification/loss"]
    )
    assert trained["student_loss"] == pytest.approx(evaluated["student_loss"], rel=1e-5)
