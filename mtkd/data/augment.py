"""Training-time augmentation on tensors: flip (with label swaps), colour jitter, small affine.

Image and per-pixel labels move together. A horizontal flip applies each label space's
``flip``: class labels are remapped (left_eye <-> right_eye), vector labels change sign
(yaw -> -yaw). Rotation does not adjust pose labels: keep it small when a pose task trains.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import lru_cache

import torch
import torch.nn.functional as F

from ..data_schema import AugmentConfig
from ..samples import LabelSpace, Sample, sample_to_tensors


def _uniform(spread: float) -> float:
    return float(torch.empty(()).uniform_(-spread, spread)) if spread > 0 else 0.0


def _is_pixel_label(value: torch.Tensor, image: torch.Tensor) -> bool:
    return value.ndim == 2 and value.shape == image.shape[-2:]


GREY = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)  # luma weights (saturation)
BILINEAR, NEAREST, ZEROS = 0, 1, 0  # torch.grid_sampler's mode and padding codes


@lru_cache(maxsize=64)
def _flip_table(flip: tuple[float, ...], dtype: torch.dtype | None) -> torch.Tensor:
    """A label space's flip as a tensor: signs in ``dtype`` (vectors) or class ids (None);
    made once rather than per sample. Callers only read it."""
    table = torch.tensor(flip)
    return table.long() if dtype is None else table.to(dtype)


@lru_cache(maxsize=16)
def _base_lines(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The x (1 x 1 x W) and y (1 x H x 1) coordinates of ``F.affine_grid``'s pixel centres
    (align_corners=False), made as ATen makes them, once per size."""
    x, y = (torch.linspace(-1, 1, steps) * (steps - 1) / steps for steps in (width, height))
    return x.view(1, 1, width), y.view(1, height, 1)


def _grid_by_products(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``F.affine_grid(theta)``'s values without its (H*W x 3) @ (3 x 2) matrix product, which
    costs more than the sampling itself at 128 px: each output is ``x*t0 + y*t1``, then
    ``+ t2``, the order and rounding of that product (see :func:`_exact_products`). Built as
    an x plane and a y plane (rows of 128 floats, not pairs), seen as the 1 x H x W x 2 grid."""
    x, y = _base_lines(height, width)
    t0, t1, t2 = (column.view(2, 1, 1) for column in theta[0].t())  # coefficients of x, y, 1
    planes = torch.add(x * t0, y * t1).add_(t2)
    return planes.permute(1, 2, 0)[None]


@lru_cache(maxsize=16)
def _exact_products(height: int, width: int) -> bool:
    """Whether :func:`_grid_by_products` gives ``F.affine_grid``'s values here, bit for bit
    (checked once per size on a few random matrices; a BLAS that fuses multiply-adds would
    not): otherwise the matrix product is used, so an augmented sample never depends on it."""
    generator = torch.Generator().manual_seed(height * 1009 + width)
    for _ in range(4):
        theta = torch.empty(1, 2, 3).uniform_(-1.5, 1.5, generator=generator)
        reference = F.affine_grid(theta, [1, 1, height, width], align_corners=False)
        if not torch.equal(_grid_by_products(theta, height, width), reference):
            return False
    return True


def _affine_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if _exact_products(height, width):
        return _grid_by_products(theta, height, width)
    return F.affine_grid(theta, [1, 1, height, width], align_corners=False)


def draw_flip(cfg: AugmentConfig) -> bool:
    """Whether this sample is flipped (one draw from the global RNG when ``hflip`` is on)."""
    return cfg.hflip > 0 and float(torch.rand(())) < cfg.hflip


def flip_labels(sample: Sample, spaces: Mapping[str, LabelSpace], pixels: bool = True) -> Sample:
    """A horizontal flip: per-pixel labels mirrored (with ``pixels``; without, they already
    are), then each label space's ``flip`` applied (class swaps, vector signs). The image is
    left to the caller."""
    out: Sample = dict(sample)
    image = sample["image"]
    for key, value in sample.items():
        if key == "image":
            continue
        if pixels and _is_pixel_label(value, image):
            value = value.flip(-1)
        space = spaces.get(key)
        if space is not None and space.flip is not None:
            if space.kind == "vector":
                value = value * _flip_table(space.flip, value.dtype)
            else:
                value = _flip_table(space.flip, None)[value]
        out[key] = value
    return out


def _affine(sample: Sample, cfg: AugmentConfig) -> Sample:
    angle = math.radians(_uniform(cfg.rotate))
    zoom = 1 + _uniform(cfg.scale)
    tx, ty = _uniform(cfg.translate) * 2, _uniform(cfg.translate) * 2
    cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
    theta = torch.tensor([[cos, -sin, tx], [sin, cos, ty]], dtype=torch.float32)[None]
    image = sample["image"]
    grid = _affine_grid(theta, *image.shape[-2:])
    out = dict(sample)
    out["image"] = torch.grid_sampler(image[None], grid, BILINEAR, ZEROS, False)[0]
    for key, value in sample.items():
        if key != "image" and _is_pixel_label(value, image):
            moved = torch.grid_sampler(value[None, None].float(), grid, NEAREST, ZEROS, False)
            out[key] = moved[0, 0].to(value.dtype)  # pixels moved in from outside become class 0
    return out


def _colour(image: torch.Tensor, cfg: AugmentConfig, owned: bool) -> torch.Tensor:
    """Brightness, contrast, saturation, then the clamp: in place once ``image`` is a tensor
    of this function's own (the first step copies an ``image`` the caller still holds)."""
    if cfg.brightness > 0:
        factor = 1 + _uniform(cfg.brightness)
        image = image.mul_(factor) if owned else image * factor
        owned = True
    if cfg.contrast > 0:
        mean = image.mean()
        factor = 1 + _uniform(cfg.contrast)
        image = (image.sub_(mean) if owned else image - mean).mul_(factor).add_(mean)
        owned = True
    if cfg.saturation > 0:
        grey = (image * GREY).sum(0, keepdim=True)
        factor = 1 + _uniform(cfg.saturation)
        image = (image.sub_(grey) if owned else image - grey).mul_(factor).add_(grey)
    return image.clamp_(0.0, 1.0)


def _geometry_and_colour(sample: Sample, cfg: AugmentConfig, owned: bool) -> Sample:
    """The affine, then the colour jitter (``owned``: the image may be changed in place)."""
    if cfg.rotate > 0 or cfg.scale > 0 or cfg.translate > 0:
        sample, owned = _affine(sample, cfg), True
    if cfg.brightness > 0 or cfg.contrast > 0 or cfg.saturation > 0:
        sample = {**sample, "image": _colour(sample["image"], cfg, owned)}
    return sample


def augment(sample: Sample, cfg: AugmentConfig, spaces: Mapping[str, LabelSpace]) -> Sample:
    """One random augmentation of a tensor sample (image float in [0, 1], labels as tensors);
    ``sample``'s tensors are left as they are."""
    flipped = draw_flip(cfg)
    if flipped:
        sample = {**flip_labels(sample, spaces), "image": sample["image"].flip(-1)}
    return _geometry_and_colour(sample, cfg, owned=flipped)


def augment_cached(sample: Sample, cfg: AugmentConfig, spaces: Mapping[str, LabelSpace]) -> Sample:
    """``augment(sample_to_tensors(sample, spaces), cfg, spaces)`` for a cached (numpy)
    sample, tensor for tensor for the same RNG state, in fewer passes: the flip is drawn
    first and done while the image is converted, and the jitter works in place."""
    flipped = draw_flip(cfg)
    tensors = sample_to_tensors(sample, spaces, mirrored=flipped)
    if flipped:
        tensors = flip_labels(tensors, spaces, pixels=False)
    return _geometry_and_colour(tensors, cfg, owned=True)
