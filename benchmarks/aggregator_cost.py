"""What a gradient aggregator costs: training images/s of each method against the fixed
weights, on the paper's recipe (seg_distilled_id), through mtkd's own trainer.

Every variant starts from the same weights and trains the same batches; variants alternate
over several rounds in one process (round 0 warms up and is not counted), so the ratios to
``fixed`` hold even on a busy machine. Images/s count the steps after the first of each fit,
timed with an ``on_step_end`` hook.

    python benchmarks/aggregator_cost.py [--size 64] [--batch 16] [--steps 4] [--rounds 2]
    python benchmarks/aggregator_cost.py --methods upgrad pcgrad --recipe seg_pose_distilled_id
    python benchmarks/aggregator_cost.py --methods sum --chunk 1   # one encoder pass per task
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

METHODS = [
    "sum", "mean", "upgrad", "mgda", "pcgrad", "cagrad", "nash_mtl", "imtl_g", "dualproj",
    "graddrop", "aligned_mtl",
]  # fmt: skip


def _variants(methods: list[str], chunk: int | None) -> dict[str, list[str]]:
    out = {"fixed": ["trainer.weighting.name=fixed"]}
    extra = [] if chunk is None else [f"trainer.weighting.parallel_chunk_size={chunk}"]
    for method in methods:
        out[method] = [
            "trainer.weighting.name=aggregate",
            f"trainer.weighting.method={method}",
            *extra,
        ]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="seg_distilled_id")
    parser.add_argument("--encoder", default="mobilenetv2_100")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--chunk", type=int, default=None, help="parallel_chunk_size (1: no vmap)")
    args = parser.parse_args()
    setting = f"{args.recipe}, {args.encoder}, {args.size} px, batch {args.batch}"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {setting}")
    variants = _variants(args.methods, args.chunk)

    def recipe(extra: list[str]) -> Any:
        encoder = [f"encoder.name={args.encoder}"]
        return timing_recipe(args.recipe, args.size, args.batch, args.steps, encoder + extra)

    base = recipe([])
    data = mtkd.build_data(base, console=Console(quiet=True))
    torch.manual_seed(0)
    model = mtkd.build_model(base, data.label_spaces)
    loader = make_train_loader(data.train, args.batch, seed=0)
    configs = {name: recipe(extra) for name, extra in variants.items()}
    names = list(variants)
    rates = alternating_rounds(
        names,
        args.rounds,
        lambda name, r: timed_fit(copy.deepcopy(model), loader, configs[name], r)[0],
    )
    baseline = statistics.median(rates["fixed"])
    print(f"{'method':12s} {'img/s':>7s}  {'x fixed':>7s}  rounds")
    for name in names:
        median = statistics.median(rates[name])
        runs = ", ".join(f"{r:.1f}" for r in rates[name])
        print(f"{name:12s} {median:7.1f}  {median / baseline:7.2f}  ({runs})")


if __name__ == "__main__":
    main()
