"""mtkd's per-sample augmentation against batched augmentation (issue 19 item 4, issue 26 item 1).

mtkd augments each training sample in the loader (``mtkd.data.augment``: label-aware flip,
affine with masks moved by nearest interpolation, colour jitter), on the CPU. The candidate
kept here, ``KorniaAugment``, does the same to a whole collated batch on the training device:
kornia's ``RandomAffine`` and ``ColorJitter`` with a random draw per sample, masks moved by
the same affine (nearest), the flip and its label swaps per sample. ``data.augment_on: device``
(``mtkd.data.batch_augment``) does it batched in plain torch (one sampling grid shared by images
and masks), exactly as the per-sample code would with the same parameters. The same batches of
generated heads (image, mask, pose, identity) go through each; collating costs the same either
way and is left out. Blocks alternate in one process; the medians and the ratios to today's code
are printed (above 1: faster than today).

A second table times the whole training loader as ``data.augment_on`` sets it up, per image:
``host`` (cached uint8 -> float tensors, augmented per sample, collated) against ``device``
(uint8 tensors collated, then converted and augmented per batch by ``DeviceAugment`` on the
``--device``, included in the time). On the CPU device this decides ``auto`` there.

    OMP_NUM_THREADS=1 python benchmarks/augment_speed.py [--sizes 64 128] [--batch 32]
    python benchmarks/augment_speed.py --device cuda   # batched on the GPU, per-sample on CPU
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import kornia.augmentation as K
import torch
from kornia.geometry.transform import warp_affine
from rich.console import Console

import mtkd
from mtkd.data.augment import AugmentConfig, augment
from mtkd.data.batch_augment import DeviceAugment
from mtkd.data.build import TensorView
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


def training_data(size: int) -> mtkd.DataBundle:
    cfg = mtkd.load_recipe(
        RECIPES / "seg_distilled_id.yaml",
        [
            *("data.dataset.identities=4", "data.dataset.views=40", "data.dataset.views_spread=0"),
            *(f"data.image_size={size}", "data.cache=memory", "data.split.test=0"),
            "data.split.val=0",
        ],
    )
    return mtkd.build_data(cfg, console=Console(quiet=True))


def batches(
    size: int, batch: int, count: int
) -> tuple[list[list[Sample]], Mapping[str, LabelSpace]]:
    """``count`` batches of unaugmented training samples (tensors), as the loader hands them."""
    data = training_data(size)
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
    """Median images/s: today's per-sample code (CPU), then kornia and mtkd's batched."""
    groups, spaces = batches(size, batch, count=4)
    check_flip_matches(groups, spaces)
    collated = [to_device(collate_samples(group), device) for group in groups]
    cfg = SETTINGS[name]
    runs: list[Callable[[], object]] = [
        lambda: [[augment(sample, cfg, spaces) for sample in group] for group in groups]
    ]
    for candidate in (KorniaAugment(cfg, spaces), DeviceAugment(cfg, spaces)):
        runs.append(functools.partial(apply_each, candidate, collated))
    seconds: list[list[float]] = [[] for _ in runs]
    for _ in range(rounds + 1):  # the first round warms up allocators and kernels
        for times, run in zip(seconds, runs, strict=True):
            times.append(timed(run, device))
    return [batch * len(groups) / statistics.median(times[1:]) for times in seconds]


def compare_loaders(
    size: int, batch: int, name: str, rounds: int, device: torch.device
) -> tuple[float, float]:
    """Median images/s of the training loader's work per batch: ``host`` against ``device``
    (uint8 batch moved, converted and augmented on ``device``), the same four batches."""
    data, cfg = training_data(size), SETTINGS[name]
    host = TensorView(data.cached, data.train.indices, cfg)
    raw = data.train.for_device()
    step = DeviceAugment(cfg, data.label_spaces)
    index = [list(range(i * batch, (i + 1) * batch)) for i in range(4)]

    def on_host() -> None:
        for group in index:
            collate_samples([host[i] for i in group])

    def on_device() -> None:
        for group in index:
            step(to_device(collate_samples([raw[i] for i in group]), device))

    seconds: list[list[float]] = [[], []]
    for _ in range(rounds + 1):
        for times, run in zip(seconds, (on_host, on_device), strict=True):
            times.append(timed(run, device))
    host_rate, device_rate = (batch * 4 / statistics.median(t[1:]) for t in seconds)
    return host_rate, device_rate


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
                f" ({kornia / old:4.2f}x)  mtkd batched {plain:7.1f} ({plain / old:4.2f}x)"
            )
    console.print("the training loader with data.augment_on=host against =device:")
    for size in args.sizes:
        for name in SETTINGS:
            host, device_rate = compare_loaders(size, args.batch, name, args.rounds, device)
            console.print(
                f"{size:4d} px {name:18s} images/s: host {host:7.1f}  device {device_rate:7.1f}"
                f" ({device_rate / host:4.2f}x of host)"
            )


if __name__ == "__main__":
    main()
