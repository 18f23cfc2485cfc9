"""The host-side sample path as it was before issue 26 made it faster, frozen for comparison.

``benchmarks/scale.py`` times it beside today's path (the before/after ratio), and
``tests/test_host_path_exact.py`` checks that today's path gives exactly (``torch.equal``)
these tensors for the same RNG state. Do not change this file: it is the reference.
Copied from mtkd/data/augment.py, mtkd/samples.py and mtkd/data/build.py at commit 2f3c4b4.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mtkd.data.augment import AugmentConfig
from mtkd.data.cache import CachedSamples
from mtkd.samples import FLOAT_KINDS, PRESENT, Batch, LabelSpace, Sample


def _uniform(spread: float) -> float:
    return float(torch.empty(()).uniform_(-spread, spread)) if spread > 0 else 0.0


def _is_pixel_label(value: torch.Tensor, image: torch.Tensor) -> bool:
    return value.ndim == 2 and value.shape == image.shape[-2:]


def _flip(sample: Sample, spaces: Mapping[str, LabelSpace]) -> Sample:
    image = sample["image"]
    out: Sample = {"image": image.flip(-1)}
    for key, value in sample.items():
        if key == "image":
            continue
        space = spaces.get(key)
        if _is_pixel_label(value, image):
            value = value.flip(-1)
        if space is not None and space.flip is not None:
            table = torch.tensor(space.flip)
            vector = space.kind == "vector"
            value = value * table.to(value.dtype) if vector else table.long()[value]
        out[key] = value
    return out


def _colour(image: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    if cfg.brightness > 0:
        image = image * (1 + _uniform(cfg.brightness))
    if cfg.contrast > 0:
        mean = image.mean()
        image = (image - mean) * (1 + _uniform(cfg.contrast)) + mean
    if cfg.saturation > 0:
        grey = (image * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True)
        image = (image - grey) * (1 + _uniform(cfg.saturation)) + grey
    return image.clamp_(0.0, 1.0)


def _affine(sample: Sample, cfg: AugmentConfig) -> Sample:
    angle = math.radians(_uniform(cfg.rotate))
    zoom = 1 + _uniform(cfg.scale)
    tx, ty = _uniform(cfg.translate) * 2, _uniform(cfg.translate) * 2
    cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
    theta = torch.tensor([[cos, -sin, tx], [sin, cos, ty]], dtype=torch.float32)[None]
    image = sample["image"]
    grid = F.affine_grid(theta, [1, *image.shape], align_corners=False)
    out = dict(sample)
    out["image"] = F.grid_sample(image[None], grid, mode="bilinear", align_corners=False)[0]
    for key, value in sample.items():
        if key != "image" and _is_pixel_label(value, image):
            moved = F.grid_sample(
                value[None, None].float(), grid, mode="nearest", align_corners=False
            )
            out[key] = moved[0, 0].to(value.dtype)  # pixels moved in from outside become class 0
    return out


def augment(sample: Sample, cfg: AugmentConfig, spaces: Mapping[str, LabelSpace]) -> Sample:
    """One random augmentation of a tensor sample (image float in [0, 1], labels as tensors)."""
    if cfg.hflip > 0 and float(torch.rand(())) < cfg.hflip:
        sample = _flip(sample, spaces)
    if cfg.rotate > 0 or cfg.scale > 0 or cfg.translate > 0:
        sample = _affine(sample, cfg)
    if cfg.brightness > 0 or cfg.contrast > 0 or cfg.saturation > 0:
        sample = {**sample, "image": _colour(sample["image"], cfg)}
    return sample


def sample_to_tensors(sample: Sample, label_spaces: Mapping[str, LabelSpace]) -> Sample:
    """A cached sample (uint8 image at the model's size, labels) as tensors; image in [0, 1]."""
    image = torch.tensor(np.asarray(sample["image"])).permute(2, 0, 1)  # a copy: caches are r/o
    out: Sample = {"image": image.float().div_(255.0)}
    for key, value in sample.items():
        if key == "image" or value is None:
            continue
        tensor = torch.tensor(np.asarray(value))
        space = label_spaces.get(key)
        vector = (space.kind in FLOAT_KINDS) if space is not None else tensor.is_floating_point()
        out[key] = tensor.float() if vector else tensor.long()
    return out


def collate_samples(samples: Sequence[Sample]) -> Batch:
    """Stack tensor samples; a label missing from some samples gets a zero placeholder.

    ``batch["present"][key]`` is a bool vector marking the samples that really carry ``key``.
    """
    batch: Batch = {"image": torch.stack([s["image"] for s in samples])}
    keys = sorted({k for s in samples for k in s if k != "image"})
    present: dict[str, torch.Tensor] = {}
    for key in keys:
        template = next(s[key] for s in samples if key in s)
        mask = torch.tensor([key in s for s in samples], dtype=torch.bool)
        batch[key] = torch.stack(
            [s[key] if key in s else torch.zeros_like(template) for s in samples]
        )
        present[key] = mask
    batch[PRESENT] = present
    return batch


def get_item(cached: CachedSamples, index: int, cfg: AugmentConfig | None) -> dict[str, Any]:
    """``TensorView.__getitem__`` of before: the sample as tensors, then augmented."""
    spaces = cached.label_spaces
    sample = sample_to_tensors(cached.sample(index), spaces)
    if cfg is not None and cfg.enabled:
        sample = augment(sample, cfg, spaces)
    return sample
