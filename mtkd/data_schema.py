"""The data stage's recipe options, declared below the recipe schema.

``config.py`` names these in its schema and checks them when a recipe loads, before any
data is read; declaring them here keeps the recipe layer from importing the data stage
(which imports the recipe layer). The data stage imports them from here to apply them:
``data/augment.py`` (the augmentation), ``data/resize.py`` (the square input) and
``data/where.py`` (label-range conditions).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import RecipeError

RESIZE_MODES = ("squash", "center_crop", "top_crop", "pad")


@dataclass
class AugmentConfig:
    """``data.augment``: training-time augmentation (:func:`mtkd.data.augment.augment`)."""

    hflip: float = 0.0  # probability of a horizontal flip
    brightness: float = 0.0  # factor drawn from 1 ± brightness
    contrast: float = 0.0  # factor drawn from 1 ± contrast
    saturation: float = 0.0  # factor drawn from 1 ± saturation
    rotate: float = 0.0  # degrees, drawn from ± rotate
    scale: float = 0.0  # zoom drawn from 1 ± scale
    translate: float = 0.0  # shift drawn from ± translate (fraction of the image side)

    @property
    def enabled(self) -> bool:
        return any(value > 0 for value in vars(self).values())


def check_resize_mode(mode: str) -> str:
    """``data.resize`` is one of :data:`RESIZE_MODES` (see :mod:`mtkd.data.resize`)."""
    if mode not in RESIZE_MODES:
        raise RecipeError(f"data.resize: '{mode}' is not one of {', '.join(RESIZE_MODES)}")
    return mode


def check_where(raw: Any, key: str) -> None:
    """The shape of a label-range condition (:mod:`mtkd.data.where`), at recipe load: each
    entry a finite [low, high], low <= high."""
    if raw is None:
        return
    if not isinstance(raw, Mapping):
        raise RecipeError(f"{key}: expected {{component: [low, high]}}, got {raw!r}")
    for name, ends in raw.items():
        values = list(ends) if isinstance(ends, Sequence) and not isinstance(ends, str) else []
        numbers = [v for v in values if isinstance(v, int | float) and math.isfinite(v)]
        if len(values) != 2 or len(numbers) != 2 or numbers[0] > numbers[1]:
            raise RecipeError(f"{key}.{name}: expected [low, high] with low <= high, got {ends}")
