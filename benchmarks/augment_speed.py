"""mtkd's per-sample augmentation against batched augmentation with kornia (issue 19, item 4).

mtkd augments each training sample in the loader (``mtkd.data.augment``: label-aware flip,
affine with masks moved by nearest interpolation, colour jitter), on the CPU. The candidate
kept here, ``KorniaAugment``, does the same to a whole collated batch on the training device:
kornia's ``RandomAffine`` and ``ColorJitter`` with a random draw per sample, masks moved by
the same affine (nearest), the flip and its label swaps per sample. ``TorchAugment`` does it
batched in plain torch (one sampling grid shared by images and masks), to tell the cost of
batching from the cost of kornia. The same batches of generated heads (image, mask, pose,
identity) go through each; collating costs the same either way and is left out. Blocks
alternate in one process; the medians and the ratios to today's code are printed (above 1:
faster than today). mtkd switches only if kornia is at least as fast (docs/benchmarks.md).

    OMP_NUM_THREADS=1 python benchmarks/augment_speed.py [--sizes 64 128] [--batch 32]
    python benchmarks/augment_speed.py --device cuda   # batched on the GPU, per-sample on CPU
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from kornia.geometry.transform import warp_affine
from rich.console import Console

import mtkd
from mtkd.data.augment import AugmentConfig, augment
from mtkd.samples import Batch, LabelSpace, Sample, collate_samples, to_device

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
SETTINGS = {  # the augmented rows of loader_vs_training.py, and every option on
    "loader_vs_training": AugmentConfig(hflip=0.5, brightness=0.2, rotate=10, scale=0.1),
    "all": AugmentConfig(0.5, 0.2, 0.2, 0.2, 10, 0.1, 0.1),
}


def _pixel_keys(batch: Batch) -> list[str]:
    """Labels with one value per pixel: B x H x W tensors the size of the images."""
    image = batch["image"]
    shape = (image.shape[0], *image.shape[-2:])
    return [k for k, v in batch.items() if isinstance(v, torch.Tensor) and v.shape == shape]


def _where(chosen: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    return torch.where(chosen.view(-1, *[1] * (old.ndim - 1)), new, old)


def flip_batch(out: Batch, p: float, spaces: Mapping[str, LabelSpace]) -> None:
    """A horizontal flip of each sample with probability ``p``, labels as their spaces say."""
    image = out["image"]
    chosen = (torch.rand(image.shape[0]) < p).to(image.device)
    for key in ["image", *_pixel_keys(out)]:
        out[key] = _where(chosen, out[key].flip(-1), out[key])
    for key, space in spaces.items():
        if space.flip is None or not isinstance(out.get(key), torch.Tensor):
            continue
        table = torch.tensor(space.flip, device=image.device)
        value = out[key]
        flipped = value * table.to(value.dtype) if space.kind == "vector" else table.long()[value]
        out[key] = _where(chosen, flipped, value)


class KorniaAugment:
    """The candidate: ``data.augment`` on a collated batch with kornia, a draw per sample."""

    def __init__(self, cfg: AugmentConfig, spaces: Mapping[str, LabelSpace]) -> None:
        self.cfg, self.spaces = cfg, spaces
        translate: Any = (cfg.translate, cfg.translate) if cfg.translate > 0 else None
        scale: Any = (1 - cfg.scale, 1 + cfg.scale) if cfg.scale > 0 else None
        self.affine = K.RandomAffine(cfg.rotate, translate, scale, p=1.0, align_corners=False)
        # no fixed order: kornia then skips the steps whose factors are all neutral
        self.jitter = K.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, p=1.0)

    def __call__(self, batch: Batch) -> Batch:
        out = dict(batch)
        if self.cfg.hflip > 0:
            flip_batch(out, self.cfg.hflip, self.spaces)
        image, keys = out["image"], _pixel_keys(out)
        out["image"] = self.affine(image)
        if keys:
            transform = self.affine.transform_matrix  # set by the call just above
            assert transform is not None
            matrix = transform[:, :2]
            labels = torch.stack([out[key].float() for key in keys], dim=1)
            size = (image.shape[-2], image.shape[-1])
            moved = warp_affine(labels, matrix, size, "nearest", "zeros", align_corners=False)
            out.update({key: moved[:, i].to(out[key].dtype) for i, key in enumerate(keys)})
        out["image"] = self.jitter(out["image"])
        return out


class TorchAugment:
    """The same batched, in plain torch: one sampling grid for the images and the masks."""

    def __init__(self, cfg: AugmentConfig, spaces: Mapping[str, LabelSpace]) -> None:
        self.cfg, self.spaces = cfg, spaces

    def _spread(self, n: int, spread: float) -> torch.Tensor:
        return torch.empty(n).uniform_(-spread, spread)

    def _grid(self, image: torch.Tensor) -> torch.Tensor:
        n, cfg = image.shape[0], self.cfg
        angle = self._spread(n, math.radians(cfg.rotate))
        zoom = 1 + self._spread(n, cfg.scale)
        cos, sin = angle.cos() / zoom, angle.sin() / zoom
        shift = self._spread(2 * n, cfg.translate).view(n, 2) * 2
        theta = torch.stack([cos, -sin, shift[:, 0], sin, cos, shift[:, 1]], 1).view(n, 2, 3)
        return F.affine_grid(theta.to(image.device), list(image.shape), align_corners=False)

    def _colour(self, image: torch.Tensor) -> torch.Tensor:
        n, cfg, device = image.shape[0], self.cfg, image.device
        image = image * (1 + self._spread(n, cfg.brightness)).view(n, 1, 1, 1).to(device)
        mean = image.mean((1, 2, 3), keepdim=True)
        factor = (1 + self._spread(n, cfg.contrast)).view(n, 1, 1, 1).to(device)
        image = (image - mean) * factor + mean
        weights = torch.tensor([0.299, 0.587, 0.114], device=device).view(1, 3, 1, 1)
        grey = (image * weights).sum(1, keepdim=True)
        factor = (1 + self._spread(n, cfg.saturation)).view(n, 1, 1, 1).to(device)
        return ((image - grey) * factor + grey).clamp_(0.0, 1.0)

    def __call__(self, batch: Batch) -> Batch:
        out = dict(batch)
        if self.cfg.hflip > 0:
            flip_batch(out, self.cfg.hflip, self.spaces)
        grid = self._grid(out["image"])
        out["image"] = F.grid_sample(out["image"], grid, "bilinear", align_corners=False)
        for key in _pixel_keys(batch):
            labels = out[key][:, None].float()
            moved = F.grid_sample(labels, grid, "nearest", align_corners=False)
            out[key] = moved[:, 0].to(out[key].dtype)
        out["image"] = self._colour(out["image"])
        return out


def batches(
    size: int, batch: int, count: int
) -> tuple[list[list[Sample]], Mapping[str, LabelSpace]]:
    """``count`` batches of unaugmented training samples (tensors), as the loader hands them."""
    cfg = mtkd.load_recipe(
        RECIPES / "seg_distilled_id.yaml",
        [
            *("data.dataset.identities=4", "data.dataset.views=40", "data.dataset.views_spread=0"),
            *(f"data.image_size={size}", "data.cache=memory", "data.split.test=0"),
            "data.split.val=0",
        ],
    )
    data = mtkd.build_data(cfg, console=Console(quiet=True))
    samples = [data.train[i] for i in range(batch * count)]
    return [samples[i : i + batch] for i in range(0, len(samples), batch)], data.label_spaces


def check_flip_matches(groups: list[list[Sample]], spaces: Mapping[str, LabelSpace]) -> None:
    """The batched flip does exactly what today's does (same pixels, classes and signs)."""
    expected = collate_samples([augment(s, AugmentConfig(hflip=1.0), spaces) for s in groups[0]])
    flipped = collate_samples(groups[0])
    flip_batch(flipped, 1.0, spaces)
    for key in ("image", "mask", "pose", "identity"):
        assert torch.equal(flipped[key], expected[key]), key


def apply_each(augmenter: Callable[[Batch], Batch], collated: list[Batch]) -> list[Batch]:
    return [augmenter(one) for one in collated]


def timed(work: Callable[[], object], device: torch.device) -> float:
    started = time.perf_counter()
    work()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def compare(size: int, batch: int, name: str, rounds: int, device: torch.device) -> list[float]:
    """Median images/s: today's per-sample code (CPU), then kornia and torch batched."""
    groups, spaces = batches(size, batch, count=4)
    check_flip_matches(groups, spaces)
    collated = [to_device(collate_samples(group), device) for group in groups]
    cfg = SETTINGS[name]
    runs: list[Callable[[], object]] = [
        lambda: [[augment(sample, cfg, spaces) for sample in group] for group in groups]
    ]
    for candidate in (KorniaAugment(cfg, spaces), TorchAugment(cfg, spaces)):
        runs.append(functools.partial(apply_each, candidate, collated))
    seconds: list[list[float]] = [[] for _ in runs]
    for _ in range(rounds + 1):  # the first round warms up allocators and kernels
        for times, run in zip(seconds, runs, strict=True):
            times.append(timed(run, device))
    return [batch * len(groups) / statistics.median(times[1:]) for times in seconds]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cpu", help="where the batched candidates run")
    args = parser.parse_args()
    device = torch.device(args.device)
    console = Console(width=200)
    console.print(f"torch threads {torch.get_num_threads()}, batch {args.batch}, {device}")
    for size in args.sizes:
        for name in SETTINGS:
            old, kornia, plain = compare(size, args.batch, name, args.rounds, device)
            console.print(
                f"{size:4d} px {name:18s} images/s: per-sample {old:7.1f}  kornia {kornia:7.1f}"
                f" ({kornia / old:4.2f}x)  torch batched {plain:7.1f} ({plain / old:4.2f}x)"
            )


if __name__ == "__main__":
    main()
