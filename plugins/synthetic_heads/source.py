"""synthetic_heads: the embedded default data set, generated on the fly (no files, no network).

This module is the data set itself; ``dataset.py`` (the module the entry point names)
registers it, and ``export.py`` (``mtkd synth``) writes it to disk.

Every sample is a pure function of (seed, identity, view), so any split, order or worker
gets the same images. The engine renders each sample once into its sample cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import mtkd

from .identity import IDENTITY_CUES
from .render import CLASS_NAMES, render_view, sample_identities

POSE_NAMES = ("yaw", "pitch", "roll")
POSE_FLIP = (-1.0, 1.0, -1.0)  # a mirror image turns the other way and rolls the other way


def mirrored_classes(names: Sequence[str]) -> tuple[float, ...]:
    """For each class, the class it becomes in a mirror image (left_* <-> right_*)."""
    index = {name: i for i, name in enumerate(names)}
    out = []
    for name in names:
        if name.startswith("left_"):
            name = "right_" + name[5:]
        elif name.startswith("right_"):
            name = "left_" + name[6:]
        out.append(float(index[name]))
    return tuple(out)


@dataclass
class SyntheticHeadsOptions:
    identities: int = 67  # the paper's 67 synthetic people
    views: int = 200  # mean views per identity (the paper: 150-250)
    views_spread: int = 50  # each identity gets views ± spread (uniform; at most views - 1)
    yaw_range: list[float] = field(default_factory=lambda: [-90.0, 90.0])
    pitch_range: list[float] = field(default_factory=lambda: [-40.0, 40.0])
    roll_range: list[float] = field(default_factory=lambda: [-15.0, 15.0])
    seed: int = 0  # generation seed: fixes the people and their views
    # what tells people apart: all (default) or geometry (the face's shape alone; skin, hair,
    # head outline, beards and spectacles shared by everyone: a cross-pose benchmark)
    identity_cues: str = "all"


def _range(values: Sequence[float], key: str) -> tuple[float, float]:
    if len(values) != 2 or values[0] > values[1]:
        raise mtkd.RecipeError(f"data.dataset.{key}: expected [low, high], got {list(values)}")
    return float(values[0]), float(values[1])


def effective_spread(options: SyntheticHeadsOptions) -> int:
    """``views_spread``, clipped to ``views - 1`` so the counts stay centred on ``views`` (a
    spread of 50 around 4 views once gave 1-54 views, not about 4); a spread below ``views``
    is used as it is, so every data set drawn before the clip is drawn the same."""
    return max(0, min(options.views_spread, options.views - 1))


def views_per_identity(options: SyntheticHeadsOptions) -> list[int]:
    """How many views each person has: a pure function of the options."""
    rng = np.random.default_rng([options.seed, 1_000_003])
    spread = effective_spread(options)
    if spread != options.views_spread:
        return _balanced_views(rng, options.views, spread, options.identities)
    low = max(1, options.views - spread)
    high = max(low, options.views + spread)
    return [int(v) for v in rng.integers(low, high + 1, size=options.identities)]


def _balanced_views(rng: np.random.Generator, views: int, spread: int, people: int) -> list[int]:
    """A clipped spread: offsets drawn in pairs of opposite sign (an odd person out gets
    none), shuffled, so even three people average exactly ``views`` (a plain draw of 1-7
    around 4 once gave 6, 1 and 1)."""
    offsets = rng.integers(-spread, spread + 1, size=(people + 1) // 2)
    paired = np.stack([offsets, -offsets], axis=1).reshape(-1)[:people]
    if people % 2:
        paired[-1] = 0
    return [views + int(d) for d in rng.permutation(paired)]


class SyntheticHeads(mtkd.SampleSource[SyntheticHeadsOptions]):
    name = "synthetic_heads"

    def __init__(self, options: SyntheticHeadsOptions, image_size: int, seed: int) -> None:
        super().__init__(options, image_size, seed)
        if options.identities < 1 or options.views < 1 or options.views_spread < 0:
            raise mtkd.RecipeError(
                "data.dataset: synthetic_heads needs identities >= 1, views >= 1, views_spread >= 0"
            )
        self._ranges = {
            "yaw_range": _range(options.yaw_range, "yaw_range"),
            "pitch_range": _range(options.pitch_range, "pitch_range"),
            "roll_range": _range(options.roll_range, "roll_range"),
        }
        if options.identity_cues not in IDENTITY_CUES:
            raise mtkd.RecipeError(
                f"data.dataset.identity_cues: '{options.identity_cues}' is not one of "
                f"{', '.join(IDENTITY_CUES)}"
            )
        self._people = sample_identities(options.identities, options.seed, options.identity_cues)
        counts = views_per_identity(options)
        self._identity = np.repeat(np.arange(options.identities), counts)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self._view = np.arange(len(self._identity)) - starts[self._identity]
        self.label_spaces = {
            "identity": mtkd.LabelSpace(
                tuple(f"person_{i:03d}" for i in range(options.identities))
            ),
            "mask": mtkd.LabelSpace(CLASS_NAMES, flip=mirrored_classes(CLASS_NAMES)),
            "pose": mtkd.LabelSpace(POSE_NAMES, kind="vector", flip=POSE_FLIP),
        }

    def __len__(self) -> int:
        return len(self._identity)

    def groups(self) -> Sequence[int]:
        return self._identity.tolist()

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        identity = int(self._identity[index])
        image, mask, nuisance = render_view(
            self._people,
            identity,
            int(self._view[index]),
            self.image_size,
            self.options.seed,
            **self._ranges,
        )
        return {
            "image": image,
            "mask": mask,
            "identity": identity,
            "pose": np.array([nuisance.yaw, nuisance.pitch, nuisance.roll], dtype=np.float32),
        }
