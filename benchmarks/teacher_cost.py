"""What a teacher network costs: training images/s of MobileNetV2-ID alone, with a teacher
network's cached targets, and with the same teacher online (a forward on every augmented
training batch), through mtkd's own trainer; and the one-off cost of computing the cached
targets, per image.

The teacher is a finished run (``--teacher RUN_DIR``, e.g. a ResNet-101-ID run of
recipes/kd_table1_cpu.yaml); without one, a MobileNetV2-ID run is trained for one epoch on
random images first (its weights do not matter for speed). Variants alternate over several
rounds in one process (round 0 warms up and is not counted), so the ratios to ``none`` hold
on a busy machine.

    python benchmarks/teacher_cost.py [--size 64] [--batch 16] [--steps 4] [--rounds 2]
    python benchmarks/teacher_cost.py --teacher runs/kd_table1_cpu/resnet101_id-seed0 --size 80
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from typing import Any

import numpy as np
import torch
from rich.console import Console
from step_timing import alternating_rounds, timed_fit, timing_recipe

import mtkd
from mtkd.data.build import make_train_loader

QUIET = Console(quiet=True)


def _teacher_run(size: int, folder: str) -> str:
    cfg = timing_recipe("mobilenetv2_id", size, 16, 2, [f"output.root={folder}"])
    cfg.output.plots, cfg.evaluate.latency = False, False
    return str(mtkd.run(cfg, console=QUIET).run_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", default=None, help="a finished run folder")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.size} px")
    with tempfile.TemporaryDirectory() as folder:
        teacher = args.teacher or _teacher_run(args.size, folder)
        block = f"{{type: network_teacher, loss: kl, teacher: {{name: mtkd_run, path: '{teacher}'"
        variants = {
            "none": [],
            "cached": [f"tasks.kd={block}}}}}"],
            "online": [f"tasks.kd={block}, online: true}}}}"],
        }

        def recipe(extra: list[str]) -> Any:
            augment = ["data.augment.hflip=0.5", f"data.cache_dir={folder}/cache"]
            return timing_recipe(
                "mobilenetv2_id", args.size, args.batch, args.steps, augment + extra
            )

        data = {name: mtkd.build_data(recipe(x), console=QUIET) for name, x in variants.items()}
        configs = {name: recipe(extra) for name, extra in variants.items()}
        torch.manual_seed(0)
        models = {n: mtkd.build_model(configs[n], data[n].label_spaces) for n in variants}
        loaders = {
            n: make_train_loader(data[n].train, args.batch, seed=0, collate=data[n].train_collate)
            for n in variants
        }
        rates = alternating_rounds(
            list(variants),
            args.rounds,
            lambda n, r: timed_fit(copy.deepcopy(models[n]), loaders[n], configs[n], r)[0],
        )
        one_off = _target_seconds_per_image(teacher, data["none"])
    baseline = statistics.median(rates["none"])
    print(f"{'teacher':8s} {'img/s':>7s}  {'x none':>6s}  rounds")
    for name, values in rates.items():
        median = statistics.median(values)
        shown = " ".join(f"{v:.1f}" for v in values)
        print(f"{name:8s} {median:7.1f}  {median / baseline:6.2f}  {shown}")
    print(f"cached targets, computed once: {one_off * 1000:.1f} ms per image")


def _target_seconds_per_image(teacher: str, data: mtkd.DataBundle) -> float:
    from mtkd_plugins.teacher_networks import RunTeacher, RunTeacherOptions

    network = RunTeacher(RunTeacherOptions(path=teacher), int(data.cached.images.shape[1]))
    images = [np.asarray(image) for image in data.cached.images[:64]]
    start = time.perf_counter()
    for first in range(0, len(images), network.batch_size):
        network.targets(images[first : first + network.batch_size])
    return (time.perf_counter() - start) / len(images)


if __name__ == "__main__":
    main()
