"""CPU latency of a study's inference models, timed in one process, interleaved.

Each run folder's own latency was measured right after its training, whatever else the machine
was doing then; this script loads every member's inference model (teachers removed) of one seed
and times them round-robin, so the ratios compare like with like. It prints the median
milliseconds per forward pass at batch 1 and 32 (the median over rounds of each round's median)
and each model's ratio to the first member.

    python benchmarks/inference_latency.py runs/table1_cpu --seed 0
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from mtkd import load_recipe, load_run
from mtkd.metrics.latency import measure_latency


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("study", type=Path, help="a study folder (runs/<study>)")
    parser.add_argument("--seed", type=int, default=0, help="whose run folders to load")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=10, help="timed passes per round")
    args = parser.parse_args()
    summary = json.loads((args.study / "study.json").read_text())
    models = {}
    for member in summary["members"]:
        run_dir = args.study / f"{member}-seed{args.seed}"
        image_size = int(load_recipe(run_dir / "config.yaml").data.image_size)
        models[member] = (load_run(run_dir), image_size)
    times: dict[tuple[str, int], list[float]] = {(m, b): [] for m in models for b in (1, 32)}
    for round_index in range(args.rounds + 1):  # round 0 warms the process up, untimed
        for member, (model, image_size) in models.items():
            for result in measure_latency(model, image_size, (1, 32), repeats=args.repeats):
                if round_index:
                    times[member, result.batch].append(result.median_ms)
    first = summary["members"][0]
    print(f"threads: {torch.get_num_threads()}, rounds: {args.rounds} x {args.repeats} passes")
    print("| network | params (inference) | batch 1 (ms) | ratio | batch 32 (ms) | ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    base = {b: statistics.median(times[first, b]) for b in (1, 32)}
    for member, (model, _) in models.items():
        one, many = (statistics.median(times[member, b]) for b in (1, 32))
        params = model.parameter_counts().trainable / 1e6
        print(
            f"| {member} | {params:.2f}M | {one:.1f} | {one / base[1]:.2f}x | {many:.0f} | "
            f"{many / base[32]:.2f}x |"
        )


if __name__ == "__main__":
    main()
