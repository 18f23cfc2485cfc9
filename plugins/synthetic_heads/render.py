"""Public API: render a synthetic person under per-view nuisances, with its 14-class mask.

Everything is numpy, float32 and deterministic: ``render_view`` draws the nuisance from
``(seed, identity_index, view_index)`` alone, so any sample can be made on the fly, in any order,
in any data-loader worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from . import labels as m
from .background import background, grain
from .head import render_materials
from .identity import (
    EYE_COLOURS,
    FRAME_COLOURS,
    HAIR_COLOURS,
    SKIN_TONES,
    Identity,
    Vec2,
    sample_identities,
)
from .labels import CLASS_NAMES, PALETTE, mask_to_rgb
from .nuisance import Nuisance, sample_nuisance
from .raycast import Pose

__all__ = [
    "CLASS_NAMES",
    "PALETTE",
    "Identity",
    "Nuisance",
    "mask_to_rgb",
    "render",
    "render_view",
    "sample_identities",
    "sample_nuisance",
]


@lru_cache(maxsize=4096)
def _albedo(identity: Identity) -> np.ndarray:
    """Base colour of every material for this person, (N_MATERIALS, 3) float32."""
    skin = np.array(SKIN_TONES[identity.skin_tone])
    hair = np.array(HAIR_COLOURS[identity.hair_colour])
    table = np.zeros((m.N_MATERIALS, 3))
    table[[m.SKIN, m.NOSE, m.LEFT_EAR, m.RIGHT_EAR, m.NECK]] = skin
    table[m.LIPS] = skin * (0.95, 0.62, 0.62)
    table[[m.LEFT_EYE, m.RIGHT_EYE]] = (0.9, 0.88, 0.84)
    table[[m.LEFT_IRIS, m.RIGHT_IRIS]] = EYE_COLOURS[identity.eye_colour]
    table[[m.HAIR, m.FACIAL_HAIR]] = hair
    table[[m.LEFT_BROW, m.RIGHT_BROW]] = hair * 0.7
    table[m.TEETH] = (0.92, 0.9, 0.82)
    table[m.MOUTH_INSIDE] = (0.25, 0.06, 0.06)
    table[m.SPECTACLES] = FRAME_COLOURS[identity.frame_colour]
    return table.astype(np.float32)


def render(
    identity: Identity, nuisance: Nuisance, size: int = 128
) -> tuple[np.ndarray, np.ndarray]:
    """The image (size, size, 3) uint8 and the class-id mask (size, size) uint8 of one view."""
    pose = Pose.from_angles(
        nuisance.yaw, nuisance.pitch, nuisance.roll, nuisance.scale, nuisance.shift
    )
    light = np.array(nuisance.light_direction)
    canvas = render_materials(identity, pose, light, size, nuisance.mouth_open)
    lighting = nuisance.ambient + nuisance.light_strength * np.maximum(canvas.shade, 0)
    albedo = _albedo(identity) * np.array(nuisance.light_colour, dtype=np.float32)
    colour = albedo[canvas.material] * lighting[..., None]
    empty = (canvas.material == m.BACKGROUND)[..., None]
    colour = np.where(
        empty, background(nuisance.background, nuisance.background_seed, size), colour
    )
    colour *= np.array(nuisance.white_balance, dtype=np.float32)
    colour += nuisance.grain * grain(nuisance.background_seed, size)
    image = np.clip(colour * 255, 0, 255, out=colour).astype(np.uint8)
    return image, m.CLASS_OF_MATERIAL[canvas.material]


def render_view(
    identities: Sequence[Identity],
    identity_index: int,
    view_index: int,
    size: int,
    seed: int,
    **ranges: Vec2,
) -> tuple[np.ndarray, np.ndarray, Nuisance]:
    """Render view ``view_index`` of person ``identity_index``; a pure function of its arguments.

    ``ranges`` are passed to ``sample_nuisance`` (``yaw_range``, ``pitch_range``, ``roll_range``).
    """
    rng = np.random.default_rng([seed, identity_index, view_index])
    nuisance = sample_nuisance(rng, **ranges)
    image, mask = render(identities[identity_index], nuisance, size)
    return image, mask, nuisance
