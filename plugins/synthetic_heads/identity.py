"""Who a synthetic person is: head geometry and appearance, drawn once and fixed for all views.

Identity is carried mostly by geometry (head proportions, feature sizes and spacings, ear and
nose shape, hairline shape). Colours come from small palettes shared by many identities, and
every view re-lights and re-white-balances them, so colour alone says little about who it is.

Head coordinates: the unit is about half the head height; x points to the image's right in a
frontal view (the person's own left), y up, z out of the face.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

Vec2 = tuple[float, float]
Vec3 = tuple[float, float, float]

SKIN_TONES: tuple[Vec3, ...] = (
    (0.92, 0.76, 0.66),
    (0.84, 0.64, 0.51),
    (0.72, 0.53, 0.40),
    (0.58, 0.41, 0.30),
    (0.43, 0.29, 0.20),
)
HAIR_COLOURS: tuple[Vec3, ...] = (
    (0.07, 0.06, 0.06),
    (0.20, 0.13, 0.08),
    (0.38, 0.25, 0.15),
    (0.74, 0.60, 0.38),
    (0.50, 0.22, 0.10),
)
EYE_COLOURS: tuple[Vec3, ...] = (
    (0.30, 0.18, 0.09),
    (0.28, 0.42, 0.62),
    (0.32, 0.42, 0.28),
    (0.10, 0.07, 0.05),
)
FRAME_COLOURS: tuple[Vec3, ...] = (
    (0.05, 0.05, 0.05),
    (0.30, 0.17, 0.08),
    (0.70, 0.70, 0.72),
    (0.10, 0.12, 0.35),
)
FACIAL_HAIR_STYLES: tuple[str, ...] = ("none", "moustache", "goatee", "beard")


@dataclass(frozen=True)
class Identity:
    """Fixed shape and appearance parameters of one person (head coordinates, see module)."""

    head_radii: Vec3
    jaw_radii: Vec3
    chin_drop: float
    eye_spacing: float  # half the distance between the eye centres
    eye_height: float
    eye_size: Vec2  # half width, half height
    eye_tilt: float  # lift of the outer corners
    brow_raise: float  # brow centre above the eye centre
    brow_size: Vec2  # half length, half thickness
    brow_arch: float
    nose_height: float
    nose_size: Vec3  # half width, half length, protrusion
    nose_tilt: float  # degrees the tip leans forward
    mouth_height: float
    lip_size: Vec2  # half width, half thickness
    ear_height: float
    ear_size: Vec3  # half thickness, half height, half depth
    ear_flare: float  # degrees the back of the ear stands off the head
    hairline: Vec3  # height of the hairline at the front, the sides and the back
    hair_volume: float  # how far the hair stands off the scalp
    hair_slant: float  # side parting: slope of the hairline across the forehead
    temple_recess: float  # how far the hairline recedes at the temples
    neck_width: float
    skin_tone: int
    hair_colour: int
    eye_colour: int
    facial_hair: int  # index into FACIAL_HAIR_STYLES
    spectacles: bool
    frame_colour: int
    lens_size: Vec2


def _hairline(rng: np.random.Generator) -> Vec3:
    """Short, medium, long or receding hair: heights of the hairline at front, sides, back."""
    style = rng.choice(4, p=[0.4, 0.25, 0.2, 0.15])
    front = float(rng.uniform(0.42, 0.62))
    if style == 0:  # short: ears free
        return front, float(rng.uniform(0.22, 0.4)), float(rng.uniform(-0.45, -0.1))
    if style == 1:  # medium: over the top of the ears
        return front, float(rng.uniform(-0.05, 0.15)), float(rng.uniform(-0.7, -0.45))
    if style == 2:  # long: ears covered
        return front, float(rng.uniform(-0.7, -0.4)), float(rng.uniform(-0.95, -0.75))
    return float(rng.uniform(0.7, 0.85)), float(rng.uniform(0.25, 0.5)), float(rng.uniform(-0.4, 0))


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draw one person; all geometric parameters vary independently within plausible ranges."""

    def u(lo: float, hi: float) -> float:
        return float(rng.uniform(lo, hi))

    head = (u(0.70, 0.84), u(0.95, 1.08), u(0.84, 0.96))
    spectacles = bool(rng.random() < 0.25)
    return Identity(
        head_radii=head,
        jaw_radii=(u(0.50, 0.68), u(0.55, 0.72), u(0.66, 0.76)),
        chin_drop=u(0.28, 0.45),
        eye_spacing=u(0.24, 0.34),
        eye_height=u(0.02, 0.16),
        eye_size=(u(0.08, 0.12), u(0.035, 0.055)),
        eye_tilt=u(-0.2, 0.25),
        brow_raise=u(0.11, 0.18),
        brow_size=(u(0.11, 0.17), u(0.018, 0.035)),
        brow_arch=u(0.0, 0.05),
        nose_height=u(-0.22, -0.1),
        nose_size=(u(0.07, 0.12), u(0.16, 0.26), u(0.16, 0.26)),
        nose_tilt=u(5.0, 25.0),
        mouth_height=u(-0.58, -0.44),
        lip_size=(u(0.14, 0.24), u(0.03, 0.065)),
        ear_height=u(-0.12, 0.04),
        ear_size=(u(0.04, 0.07), u(0.17, 0.27), u(0.09, 0.15)),
        ear_flare=u(5.0, 30.0),
        hairline=_hairline(rng),
        hair_volume=u(0.02, 0.14),
        hair_slant=u(-0.35, 0.35),
        temple_recess=u(0.0, 0.6),
        neck_width=u(0.85, 1.1),
        skin_tone=int(rng.choice(len(SKIN_TONES), p=[0.25, 0.3, 0.2, 0.15, 0.1])),
        hair_colour=int(rng.choice(len(HAIR_COLOURS), p=[0.35, 0.3, 0.15, 0.12, 0.08])),
        eye_colour=int(rng.integers(len(EYE_COLOURS))),
        facial_hair=int(rng.choice(4, p=[0.7, 0.1, 0.08, 0.12])),
        spectacles=spectacles,
        frame_colour=int(rng.integers(len(FRAME_COLOURS))),
        lens_size=(u(0.12, 0.16), u(0.09, 0.12)),
    )


# What tells people apart (the data set's ``identity_cues`` option):
# - all: everything drawn above (the default, and every data set drawn before the option);
# - geometry: only the face's geometry (eyes, brows, nose, mouth, ears, jaw and chin); the
#   cues a turned head still shows from any side (skin tone, hair colour and style, the
#   skull's outline, the neck, beards, spectacles, eye colour) are the same for everyone.
IDENTITY_CUES: tuple[str, ...] = ("all", "geometry")

# The look every person shares under identity_cues=geometry: mid-range values of the draws
# above (short hair, the commonest skin tone and hair colour, no beard, no spectacles).
SHARED_LOOK: dict[str, Any] = {
    "head_radii": (0.77, 1.015, 0.90),
    "hairline": (0.52, 0.31, -0.28),
    "hair_volume": 0.08,
    "hair_slant": 0.0,
    "temple_recess": 0.3,
    "neck_width": 0.975,
    "skin_tone": 1,
    "hair_colour": 1,
    "eye_colour": 0,
    "facial_hair": 0,
    "spectacles": False,
}


def sample_identities(n: int, seed: int, cues: str = "all") -> list[Identity]:
    """Draw ``n`` people; person ``i`` depends on ``(seed, i)`` only, so prefixes agree across n.

    ``cues="geometry"`` draws the same people (the same random numbers, so the same faces)
    and gives them all :data:`SHARED_LOOK`, leaving identity in the face's geometry alone.
    """
    if cues not in IDENTITY_CUES:
        raise ValueError(f"identity cues must be one of {', '.join(IDENTITY_CUES)}, got '{cues}'")
    people = [sample_identity(np.random.default_rng([seed, i])) for i in range(n)]
    return people if cues == "all" else [replace(p, **SHARED_LOOK) for p in people]
