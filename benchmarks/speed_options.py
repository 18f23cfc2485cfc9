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
from typing import Any

import torch
from rich.console import Console
from step_timing import alternating_rounds, timed_fit, timing_recipe

import mtkd
from mtkd.data.build import make_train_loader

VARIANTS = {
    "contiguous fp32": ["trainer.channels_last=false", "trainer.precision=fp32"],
    "channels_last fp32": ["trainer.channels_last=true", "trainer.precision=fp32"],
    "channels_last bf16": ["trainer.channels_last=true", "trainer.precision=bf16"],
    "channels_last fp16": ["trainer.channels_last=true", "trainer.precision=fp16"],
}


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

    def recipe(extra: list[str]) -> Any:
        return timing_recipe(args.recipe, args.size, args.batch, args.steps, extra)

    base = recipe([])
    data = mtkd.build_data(base, console=Console(quiet=True))
    torch.manual_seed(0)
    model = mtkd.build_model(base, data.label_spaces)
    loader = make_train_loader(data.train, args.batch, seed=0)
    configs = {name: recipe(extra) for name, extra in VARIANTS.items()}
    models = {name: copy.deepcopy(model) for name in VARIANTS}
    names = list(VARIANTS)
    rates = alternating_rounds(
        names, args.rounds, lambda name, r: timed_fit(models[name], loader, configs[name], r)[0]
    )
    baseline = statistics.median(rates[names[0]])
    for name in names:
        median = statistics.median(rates[name])
        runs = ", ".join(f"{r:.1f}" for r in rates[name])
        print(f"{name:20s} {median:7.1f} img/s  x{median / baseline:.2f}  (rounds: {runs})")
    if not args.no_compile:
        cfg = recipe(["trainer.compile=true"])
        compiled = copy.deepcopy(model)
        first = timed_fit(compiled, loader, cfg, 0)
        again = timed_fit(compiled, loader, cfg, 1)
        eager = statistics.median(rates["channels_last fp32"])
        print(
            f"{'compile (cl fp32)':20s} {again[0]:7.1f} img/s  x{again[0] / baseline:.2f}  "
            f"(x{again[0] / eager:.2f} of eager channels_last; first step {first[1]:.0f} s "
            f"compiling, {again[1]:.1f} s in a second fit)"
        )


if __name__ == "__main__":
    main()
