"""Is the data loader ever the bottleneck? Cached-loader images/s against training images/s.

Both are measured in this one process on the same machine: the loader delivers batches from
the sample cache (decoded, resized uint8 arrays) as the trainer sees them — tensor conversion,
collate with partial labels and, optionally, augmentation — and the trainer runs
``mobilenetv2_100`` + the identification head (and the U-Net teacher) at the same size on
in-memory batches. Target (issue: data): the loader is at least 5x faster than training.

Run: python benchmarks/loader_vs_training.py [--size 128] [--augment]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from rich.console import Console

import mtkd
from mtkd.model.losses import task_losses
from mtkd.weighting import fixed_total

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def loader_rate(data: mtkd.DataBundle, batch_size: int, epochs: int) -> float:
    loader = mtkd.make_loader(data.train, batch_size, shuffle=True)
    for _ in loader:  # one warm-up epoch: first-touch of the arrays, allocator
        pass
    seen, started = 0, time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            seen += int(batch["image"].shape[0])
    return seen / (time.perf_counter() - started)


def training_rate(model: mtkd.MultiTaskModel, batch: dict, steps: int) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for step in range(steps + 1):
        if step == 1:  # the first step warms up allocators and kernels
            started = time.perf_counter()
        losses, _ = task_losses(model(batch["image"]), batch, model.tasks, model.heads)
        optimizer.zero_grad(set_to_none=True)
        fixed_total(losses, model.tasks).backward()
        optimizer.step()
    return steps * int(batch["image"].shape[0]) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--augment", action="store_true", help="flip + colour + affine on")
    args = parser.parse_args()
    overrides = [
        "data.dataset.identities=10",
        "data.dataset.views=40",
        "data.dataset.views_spread=0",
        f"data.image_size={args.size}",
        "data.cache=memory",
        f"data.batch_size={args.batch}",
    ]
    if args.augment:
        overrides += [
            "data.augment.hflip=0.5",
            "data.augment.brightness=0.2",
            "data.augment.rotate=10",
            "data.augment.scale=0.1",
        ]
    console = Console()
    rows = []
    for recipe in ("mobilenetv2_id", "seg_distilled_id"):
        cfg = mtkd.load_recipe(RECIPES / f"{recipe}.yaml", overrides)
        data = mtkd.build_data(cfg)
        model = mtkd.build_model(cfg, data.label_spaces)
        batch = next(iter(mtkd.make_loader(data.train, args.batch, shuffle=True)))
        loads = loader_rate(data, args.batch, epochs=3)
        trains = training_rate(model, batch, args.steps)
        rows.append((recipe, loads, trains))
    console.print(
        f"torch threads {torch.get_num_threads()}, image size {args.size}, "
        f"batch {args.batch}, augment {args.augment}"
    )
    worst = min(loads / trains for _, loads, trains in rows)
    for recipe, loads, trains in rows:
        console.print(
            f"{recipe:18s} loader {loads:8.1f} images/s   "
            f"training {trains:6.1f} images/s   ratio {loads / trains:6.1f}x"
        )
    console.print(f"smallest ratio: {worst:.1f}x (target >= 5x)")
    raise SystemExit(0 if worst >= 5 else 1)


if __name__ == "__main__":
    main()
