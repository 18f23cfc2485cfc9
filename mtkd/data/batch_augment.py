"""``data.augment`` on a whole batch on the training device (``data.augment_on: device``).

The loader then hands uint8 images (a quarter of float32's bytes to copy), and the training
step turns them into floats in [0, 1] and augments them on the device: the operations of
:mod:`mtkd.data.augment` in the same order (flip, affine, colour) with the same parameter
distributions, drawn per sample. The parameters are drawn on the host from the global CPU
generator in one call per batch, so a checkpoint's RNG state resumes the run exactly, and the
result does not depend on the device's own generator.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import check_augment_on
from ..errors import RecipeError
from ..samples import Batch, LabelSpace
from .augment import AugmentConfig

_COLUMNS = 8  # flip, angle, zoom, shift x, shift y, brightness, contrast, saturation


def augment_place(setting: str, device: torch.device, *, online_teachers: bool = False) -> str:
    """Where training augmentation runs: ``host`` (per sample, in the loader) or ``device``
    (per batch, in the training step). ``auto`` picks the device on a GPU; on a CPU the
    per-sample path was measured faster (docs/scaling.md). Online teachers compute their
    targets on the augmented images in the loader's collate, so they need the host path."""
    check_augment_on(setting)
    if setting == "device" and online_teachers:
        raise RecipeError(
            "data.augment_on: 'device' augments after the loader, but an online teacher "
            "(teacher.online) computes its targets on the augmented images inside the loader; "
            "use host or auto"
        )
    if setting == "auto":
        return "device" if device.type == "cuda" and not online_teachers else "host"
    return setting


@dataclass
class AugmentParams:
    """One batch's per-sample parameters (CPU tensors of length N, float64 but ``flip``)."""

    flip: torch.Tensor  # bool
    angle: torch.Tensor  # degrees
    zoom: torch.Tensor
    shift_x: torch.Tensor  # fraction of the image side
    shift_y: torch.Tensor
    brightness: torch.Tensor  # factors around 1
    contrast: torch.Tensor
    saturation: torch.Tensor


def draw_params(n: int, cfg: AugmentConfig) -> AugmentParams:
    """Per-sample parameters from the global CPU generator, one call for the whole batch:
    the distributions of :func:`mtkd.data.augment.augment` (a flip with probability
    ``hflip``, every other value uniform in ± its spread)."""
    u = torch.rand(n, _COLUMNS).double()

    def spread(column: int, width: float) -> torch.Tensor:
        return (u[:, column] * 2 - 1) * width

    return AugmentParams(
        flip=u[:, 0] < cfg.hflip,
        angle=spread(1, cfg.rotate),
        zoom=1 + spread(2, cfg.scale),
        shift_x=spread(3, cfg.translate),
        shift_y=spread(4, cfg.translate),
        brightness=1 + spread(5, cfg.brightness),
        contrast=1 + spread(6, cfg.contrast),
        saturation=1 + spread(7, cfg.saturation),
    )


def images_to_float(batch: Batch) -> Batch:
    """uint8 images as floats in [0, 1] (what the host path's samples hold); float ones as
    they are."""
    image = batch["image"]
    if image.dtype != torch.uint8:
        return batch
    return {**batch, "image": image.float().div_(255.0)}


def _pixel_keys(batch: Batch) -> list[str]:
    """Labels with one value per pixel: N x H x W tensors the size of the images."""
    image = batch["image"]
    shape = (image.shape[0], *image.shape[-2:])
    return [
        k
        for k, v in batch.items()
        if k != "image" and isinstance(v, torch.Tensor) and tuple(v.shape) == shape
    ]


def _per_sample(chosen: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return chosen.view(-1, *[1] * (like.ndim - 1))


def _flip(batch: Batch, chosen: torch.Tensor, spaces: Mapping[str, LabelSpace]) -> Batch:
    """The chosen samples mirrored, their labels changed as their spaces' ``flip`` says."""
    out = dict(batch)
    for key in ["image", *_pixel_keys(batch)]:
        value = out[key]
        out[key] = torch.where(_per_sample(chosen, value), value.flip(-1), value)
    for key, value in list(out.items()):
        space = spaces.get(key)
        if key == "image" or space is None or space.flip is None:
            continue
        if not isinstance(value, torch.Tensor):
            continue
        table = torch.tensor(space.flip, device=value.device)
        vector = space.kind == "vector"
        flipped = value * table.to(value.dtype) if vector else table.long()[value]
        out[key] = torch.where(_per_sample(chosen, value), flipped, value)
    return out


def _theta(params: AugmentParams) -> torch.Tensor:
    """The N x 2 x 3 sampling matrices, computed in float64 as the host path does."""
    angle = params.angle * (math.pi / 180)
    cos, sin = angle.cos() / params.zoom, angle.sin() / params.zoom
    rows = [cos, -sin, params.shift_x * 2, sin, cos, params.shift_y * 2]
    return torch.stack(rows, 1).view(-1, 2, 3).float()


def _affine(batch: Batch, params: AugmentParams) -> Batch:
    image = batch["image"]
    theta = _theta(params).to(image.device, non_blocking=True)
    grid = F.affine_grid(theta, list(image.shape), align_corners=False)
    out = dict(batch)
    out["image"] = F.grid_sample(image, grid, mode="bilinear", align_corners=False)
    keys = _pixel_keys(batch)
    if keys:
        labels = torch.stack([batch[k].float() for k in keys], 1)
        moved = F.grid_sample(labels, grid, mode="nearest", align_corners=False)
        for i, key in enumerate(keys):  # pixels moved in from outside become class 0
            out[key] = moved[:, i].to(batch[key].dtype)
    return out


def _factor(values: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    return values.float().to(image.device, non_blocking=True).view(-1, 1, 1, 1)


def _colour(image: torch.Tensor, params: AugmentParams, cfg: AugmentConfig) -> torch.Tensor:
    if cfg.brightness > 0:
        image = image * _factor(params.brightness, image)
    if cfg.contrast > 0:
        mean = image.mean((1, 2, 3), keepdim=True)
        image = (image - mean) * _factor(params.contrast, image) + mean
    if cfg.saturation > 0:
        weights = torch.tensor([0.299, 0.587, 0.114], device=image.device).view(1, 3, 1, 1)
        grey = (image * weights).sum(1, keepdim=True)
        image = (image - grey) * _factor(params.saturation, image) + grey
    return image.clamp_(0.0, 1.0)


def augment_batch(
    batch: Batch, params: AugmentParams, cfg: AugmentConfig, spaces: Mapping[str, LabelSpace]
) -> Batch:
    """A collated batch (float images in [0, 1]) augmented with the given per-sample
    parameters; each sample gets what :func:`mtkd.data.augment.augment` would give it."""
    if cfg.hflip > 0:
        batch = _flip(batch, params.flip.to(batch["image"].device), spaces)
    if cfg.rotate > 0 or cfg.scale > 0 or cfg.translate > 0:
        batch = _affine(batch, params)
    if cfg.brightness > 0 or cfg.contrast > 0 or cfg.saturation > 0:
        batch = {**batch, "image": _colour(batch["image"], params, cfg)}
    return batch


class DeviceAugment:
    """The training step's share of ``data.augment_on: device``: a moved batch's uint8
    images become floats in [0, 1], then the batch is augmented (``data.augment``)."""

    def __init__(self, cfg: AugmentConfig, spaces: Mapping[str, LabelSpace]) -> None:
        self.cfg, self.spaces = cfg, dict(spaces)

    def __call__(self, batch: Batch) -> Batch:
        batch = images_to_float(batch)
        if not self.cfg.enabled:
            return batch
        params = draw_params(int(batch["image"].shape[0]), self.cfg)
        return augment_batch(batch, params, self.cfg, self.spaces)


__all__ = [
    "AugmentParams",
    "DeviceAugment",
    "augment_batch",
    "augment_place",
    "draw_params",
    "images_to_float",
]
