"""Training speed of the trainer's hardware options, measured through mtkd's own trainer.

MobileNetV2 with the ID head (and, with --recipe, any recipe) at 128 px, batch 32, on
in-memory data: contiguous fp32 (the baseline), channels_last fp32 (the default), channels_last
with bf16 autocast, and with fp16 autocast + gradient scaler, alternating over several rounds
in one process; then torch.compile once, timing its first step (the compilation) apart from
the steps after it. Images/s count the
steps after the first of each fit, timed with an ``on_step_end`` hook.

    python benchmarks/speed_options.py [--recipe mobilenetv2_id] [--rounds 4] [--steps 6]
    python benchmarks/speed_options.py --no-compile
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
from rich.console import Console

import mtkd
from mtkd.data.build import make_train_loader
from mtkd.engine.fit import fit

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
VARIANTS = {
    "contiguous fp32": ["trainer.channels_last=false", "trainer.precision=fp32"],
    "channels_last fp32": ["trainer.channels_last=true", "trainer.precision=fp32"],
    "channels_last bf16": ["trainer.channels_last=true", "trainer.precision=bf16"],
    "channels_last fp16": ["trainer.channels_last=true", "trainer.precision=fp16"],
}


class StepClock:
    """A plugin that timestamps every optimizer step."""

    def __init__(self) -> None:
        self.times: list[float] = []

    @mtkd.hookimpl
    def on_step_end(self, context: object, step: int) -> None:
        self.times.append(time.perf_counter())

    def images_per_s(self, batch: int) -> float:
        """Steps after the first: warm-up and compilation excluded."""
        return (len(self.times) - 1) * batch / (self.times[-1] - self.times[0])


def _cfg(recipe: str, args: argparse.Namespace, extra: list[str]):
    return mtkd.load_recipe(
        RECIPES / f"{recipe}.yaml",
        [
            "data.dataset.name=random_images",
            "data.dataset.identities=8",
            f"data.dataset.views={2 * args.batch * (args.steps + 1) // 8 + 4}",
            f"data.image_size={args.size}",
            f"data.batch_size={args.batch}",
            "data.cache=memory",
            "trainer.max_epochs=1",
            f"trainer.max_steps_per_epoch={args.steps + 1}",
            "trainer.patience=0",
            "trainer.progress=false",
            "trainer.device=cpu",
            *extra,
        ],
    )


def _timed_fit(model, loader, cfg, epoch: int) -> tuple[float, float]:
    """(images/s after the first step, seconds of the first step)."""
    clock = StepClock()
    plugins = mtkd.load_plugins(objects=[("clock", clock)])
    loader.sampler.set_epoch(epoch)
    start = time.perf_counter()
    fit(model, loader, None, cfg, plugins=plugins, console=Console(quiet=True))
    return clock.images_per_s(cfg.data.batch_size), clock.times[0] - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="mobilenetv2_id")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    setting = f"{args.recipe}, {args.size} px, batch {args.batch}, {args.steps} timed steps"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {setting}")
    base = _cfg(args.recipe, args, [])
    data = mtkd.build_data(base, console=Console(quiet=True))
    torch.manual_seed(0)
    model = mtkd.build_model(base, data.label_spaces)
    loader = make_train_loader(data.train, args.batch, seed=0)
    configs = {name: _cfg(args.recipe, args, extra) for name, extra in VARIANTS.items()}
    models = {name: copy.deepcopy(model) for name in VARIANTS}
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    names = list(VARIANTS)
    for round_ in range(args.rounds + 1):  # round 0 warms up, not counted
        order = names if round_ % 2 == 0 else names[::-1]
        for name in order:
            speed, _ = _timed_fit(models[name], loader, configs[name], round_)
            if round_:
                rates[name].append(speed)
    baseline = statistics.median(rates[names[0]])
    for name in names:
        median = statistics.median(rates[name])
        runs = ", ".join(f"{r:.1f}" for r in rates[name])
        print(f"{name:20s} {median:7.1f} img/s  x{median / baseline:.2f}  (rounds: {runs})")
    if not args.no_compile:
        cfg = _cfg(args.recipe, args, ["trainer.compile=true"])
        compiled = copy.deepcopy(model)
        first = _timed_fit(compiled, loader, cfg, 0)
        again = _timed_fit(compiled, loader, cfg, 1)
        eager = statistics.median(rates["channels_last fp32"])
        print(
            f"{'compile (cl fp32)':20s} {again[0]:7.1f} img/s  x{again[0] / baseline:.2f}  "
            f"(x{again[0] / eager:.2f} of eager channels_last; first step {first[1]:.0f} s "
            f"compiling, {again[1]:.1f} s in a second fit)"
        )


if __name__ == "__main__":
    main()
