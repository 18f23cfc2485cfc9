"""random_images: a tiny generated data set for smoke tests and examples.

Each identity is a fixed arrangement of coloured ellipses; each view jitters their position
and size and adds noise. The mask labels which ellipse covers each pixel. ``mask_fraction``
drops masks from a share of samples, to exercise partial labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

import mtkd


@dataclass
class RandomImagesOptions:
    identities: int = 8
    views: int = 12
    num_classes: int = 4  # background + (num_classes - 1) ellipses
    mask_fraction: float = 1.0
    seed: int = 0


class RandomImages(mtkd.SampleSource[RandomImagesOptions]):
    name = "random_images"

    def __init__(self, options: RandomImagesOptions, image_size: int, seed: int) -> None:
        super().__init__(options, image_size, seed)
        if options.identities < 1 or options.views < 1 or options.num_classes < 2:
            raise mtkd.DataError(
                "data.dataset: random_images needs identities >= 1, views >= 1, num_classes >= 2"
            )
        rng = np.random.default_rng(options.seed)
        parts = options.num_classes - 1
        self._centres = rng.uniform(0.25, 0.75, size=(options.identities, parts, 2))
        self._radii = rng.uniform(0.1, 0.3, size=(options.identities, parts, 2))
        self._colours = rng.uniform(0, 255, size=(options.identities, parts, 3))
        self.label_spaces = {
            "identity": mtkd.LabelSpace(tuple(f"id{i:03d}" for i in range(options.identities))),
            "mask": mtkd.LabelSpace(
                ("background", *(f"part{i}" for i in range(1, options.num_classes)))
            ),
        }

    def __len__(self) -> int:
        return self.options.identities * self.options.views

    def groups(self) -> Sequence[int]:
        return [i // self.options.views for i in range(len(self))]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        identity = index // self.options.views
        rng = np.random.default_rng([self.options.seed, index])
        size = self.image_size
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
        image = rng.normal(96, 20, size=(size, size, 3)).astype(np.float32)
        mask = np.zeros((size, size), dtype=np.uint8)
        shift = rng.normal(0, 0.04, size=2)
        scale = rng.uniform(0.85, 1.15)
        for part in range(self.options.num_classes - 1):
            cy, cx = self._centres[identity, part] + shift
            ry, rx = self._radii[identity, part] * scale
            inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
            image[inside] = self._colours[identity, part] + rng.normal(0, 10, size=3)
            mask[inside] = part + 1
        sample: dict[str, Any] = {
            "image": np.clip(image, 0, 255).astype(np.uint8),
            "identity": identity,
        }
        if rng.random() < self.options.mask_fraction:
            sample["mask"] = mask
        return sample


@mtkd.hookimpl
def register_datasets(register: Any) -> None:
    register(RandomImages)
