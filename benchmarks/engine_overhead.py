"""What mtkd's trainer costs over a minimal hand-written PyTorch loop.

The same model, batch, optimizer (Adam) and in-memory data are trained (a) by a plain loop
(forward, cross-entropy losses, backward, step) and (b) by ``mtkd.engine.fit.fit`` with its
defaults (NaN check every step, progress every 10 steps, per-task loss bookkeeping, hooks),
alternating A/B in one process over several rounds. Prints images/s of each and the ratio
mtkd / hand (target: >= 0.97) for MobileNetV2 with the ID head and with ID + segmentation heads.

    python benchmarks/engine_overhead.py [--size 128] [--batch 32] [--steps 6] [--rounds 5]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from torch.utils.data import DataLoader

import mtkd
from mtkd.data.build import make_train_loader
from mtkd.engine.fit import fit

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _setup(recipe: str, size: int, batch: int, steps: int) -> tuple:
    cfg = mtkd.load_recipe(
        RECIPES / f"{recipe}.yaml",
        [
            "data.dataset.name=random_images",
            "data.dataset.identities=8",
            f"data.dataset.views={2 * batch * steps // 8 + 4}",  # more than steps x batch
            f"data.image_size={size}",
            f"data.batch_size={batch}",
            "data.cache=memory",
            "trainer.max_epochs=1",
            f"trainer.max_steps_per_epoch={steps}",
            "trainer.patience=0",
            "trainer.progress=false",
            "trainer.device=cpu",
        ],
    )
    quiet = Console(quiet=True)
    data = mtkd.build_data(cfg, console=quiet)
    torch.manual_seed(0)
    model = mtkd.build_model(cfg, data.label_spaces)
    loader = make_train_loader(data.train, batch, seed=0)
    return cfg, model, loader


def hand_loop(
    model: mtkd.MultiTaskModel, loader: DataLoader, steps: int, channels_last: bool
) -> int:
    """The minimal loop: what a user would write by hand for the same model and data."""
    weights = {key: task.weight for key, task in model.tasks.items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model.train()
    seen = 0
    for step, batch in enumerate(loader):
        if step == steps:
            break
        images = batch["image"]
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        out = model(images)
        loss = weights["identification"] * F.cross_entropy(
            out["identification"]["logits"], batch["identity"]
        )
        if "segmentation" in out:
            loss = loss + weights["segmentation"] * F.cross_entropy(
                out["segmentation"], batch["mask"]
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += images.shape[0]
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--recipes", nargs="+", default=["mobilenetv2_id", "seg_distilled_id"])
    args = parser.parse_args()
    quiet = Console(quiet=True)
    setting = f"{args.size} px, batch {args.batch}, {args.steps} steps per arm per round"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {setting}")
    for recipe in args.recipes:
        cfg, model, loader = _setup(recipe, args.size, args.batch, args.steps)
        hand_model, mtkd_model = model, copy.deepcopy(model)
        channels_last = bool(cfg.trainer.channels_last)
        rates: dict[str, list[float]] = {"hand": [], "mtkd": []}
        for round_ in range(args.rounds + 1):  # round 0 warms both arms up, not counted
            order = ("hand", "mtkd") if round_ % 2 == 0 else ("mtkd", "hand")
            for arm in order:
                loader.sampler.set_epoch(round_)
                start = time.perf_counter()
                if arm == "hand":
                    seen = hand_loop(hand_model, loader, args.steps, channels_last)
                else:
                    fit(mtkd_model, loader, None, cfg, console=quiet)
                    seen = args.steps * args.batch
                elapsed = time.perf_counter() - start
                if round_ > 0:
                    rates[arm].append(seen / elapsed)
        hand, ours = statistics.median(rates["hand"]), statistics.median(rates["mtkd"])
        ratios = [m / h for m, h in zip(rates["mtkd"], rates["hand"], strict=True)]
        per_round = ", ".join(f"{r:.3f}" for r in ratios)
        print(f"{recipe}: hand loop {hand:.1f} img/s, mtkd {ours:.1f} img/s, ratio mtkd/hand")
        print(f"  {ours / hand:.3f} over {args.rounds} rounds (per round: {per_round})")


if __name__ == "__main__":
    main()
