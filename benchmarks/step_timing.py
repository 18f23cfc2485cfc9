"""What the training-speed benchmarks share (speed_options.py, aggregator_cost.py): a tiny
random-image recipe sized to a few steps, a clock on every optimizer step, and rounds that
alternate their order so neither variant always runs on a warmer machine."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

import mtkd
from mtkd.engine.fit import fit

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


class StepClock:
    """A plugin that timestamps every optimizer step."""

    def __init__(self) -> None:
        self.times: list[float] = []

    @mtkd.hookimpl
    def on_step_end(self, context: object, step: int) -> None:
        self.times.append(time.perf_counter())

    def images_per_s(self, batch: int) -> float:
        """Steps after the first: warm-up, compilation and a solver's first set-up excluded."""
        return (len(self.times) - 1) * batch / (self.times[-1] - self.times[0])


def timing_recipe(recipe: str, size: int, batch: int, steps: int, extra: Sequence[str]) -> Any:
    """``recipe`` on random images, one epoch of ``steps`` timed steps after a first one."""
    return mtkd.load_recipe(
        RECIPES / f"{recipe}.yaml",
        [
            "data.dataset.name=random_images",
            "data.dataset.identities=8",
            f"data.dataset.views={2 * batch * (steps + 1) // 8 + 4}",
            f"data.image_size={size}",
            f"data.batch_size={batch}",
            "data.cache=memory",
            "trainer.max_epochs=1",
            f"trainer.max_steps_per_epoch={steps + 1}",
            "trainer.patience=0",
            "trainer.progress=false",
            "trainer.device=cpu",
            *extra,
        ],
    )


def timed_fit(model: Any, loader: Any, cfg: Any, epoch: int) -> tuple[float, float]:
    """(images/s after the first step, seconds of the first step)."""
    clock = StepClock()
    plugins = mtkd.load_plugins(objects=[("clock", clock)])
    loader.sampler.set_epoch(epoch)
    start = time.perf_counter()
    fit(model, loader, None, cfg, plugins=plugins, console=Console(quiet=True))
    return clock.images_per_s(cfg.data.batch_size), clock.times[0] - start


def alternating_rounds(
    names: Sequence[str], rounds: int, measure: Callable[[str, int], float]
) -> dict[str, list[float]]:
    """``measure(name, round)`` for every name, ``rounds`` times after one warm-up round that
    is not counted; odd rounds run the names in reverse order."""
    rates: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(rounds + 1):
        for name in names if round_ % 2 == 0 else names[::-1]:
            speed = measure(name, round_)
            if round_:
                rates[name].append(speed)
    return rates
