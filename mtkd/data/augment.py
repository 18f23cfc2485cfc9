"""Training-time augmentation on tensors: flip (with label swaps), colour jitter, small affine.

Image and per-pixel labels move together. A horizontal flip applies each label space's
``flip``: class labels are remapped (left_eye <-> right_eye), vector labels change sign
(yaw -> -yaw). Rotation does not adjust pose labels: keep it small when a pose task trains.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from ..data_schema import AugmentConfig
from ..samples import LabelSpace, Sample


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
