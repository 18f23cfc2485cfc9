"""What changes from one photo of a person to the next: pose, light, background, framing, mouth.

Pose angles are in degrees. Positive yaw turns the face towards the image's right, positive
pitch lifts the chin, positive roll tilts the head counter-clockwise in the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .identity import Vec2, Vec3

BACKGROUND_KINDS: tuple[str, ...] = ("noise", "stripes", "gradient", "noise+stripes")


@dataclass(frozen=True)
class Nuisance:
    """Per-image parameters; together with an Identity they fix the rendered image exactly."""

    yaw: float
    pitch: float
    roll: float
    light_direction: Vec3  # unit vector towards the light, camera coordinates (z to the viewer)
    light_strength: float
    light_colour: Vec3  # per-channel gain of the light on the head (not the background)
    ambient: float
    white_balance: Vec3  # per-channel gain of the camera
    scale: float  # half head height as a fraction of half the image side
    shift: Vec2  # head centre offset, fractions of half the image side (x right, y up)
    mouth_open: float  # 0 closed .. 1 wide open (teeth show when > 0)
    background: int  # index into BACKGROUND_KINDS
    background_seed: int  # drives the background texture and the image grain
    grain: float  # amplitude of the sensor-like noise, in [0, 1] intensity units


def sample_nuisance(
    rng: np.random.Generator,
    yaw_range: Vec2 = (-90.0, 90.0),
    pitch_range: Vec2 = (-40.0, 40.0),
    roll_range: Vec2 = (-15.0, 15.0),
) -> Nuisance:
    """Draw one view: uniform pose within the ranges, light from the camera's hemisphere."""
    azimuth = rng.uniform(0.0, 2.0 * np.pi)
    elevation = np.arcsin(rng.uniform(0.15, 0.95))  # angle of the light above the image plane
    light = (
        float(np.cos(elevation) * np.cos(azimuth)),
        float(np.cos(elevation) * np.sin(azimuth)),
        float(np.sin(elevation)),
    )
    gains = rng.uniform(0.7, 1.3) * rng.uniform(0.9, 1.1, size=3)  # exposure, white balance
    warmth = rng.uniform(-0.3, 0.3)  # colour temperature of the light: warm (+) to cool (-)
    tint = (1 + warmth, 1.0, 1 - warmth) * rng.uniform(0.93, 1.07, size=3)
    opened = rng.random() < 0.4
    return Nuisance(
        yaw=float(rng.uniform(*yaw_range)),
        pitch=float(rng.uniform(*pitch_range)),
        roll=float(rng.uniform(*roll_range)),
        light_direction=light,
        light_strength=float(rng.uniform(0.4, 0.9)),
        light_colour=(float(tint[0]), float(tint[1]), float(tint[2])),
        ambient=float(rng.uniform(0.25, 0.5)),
        white_balance=(float(gains[0]), float(gains[1]), float(gains[2])),
        scale=float(rng.uniform(0.56, 0.7)),
        shift=(float(rng.uniform(-0.08, 0.08)), float(rng.uniform(-0.06, 0.1))),
        mouth_open=float(rng.uniform(0.25, 1.0)) if opened else 0.0,
        background=int(rng.integers(len(BACKGROUND_KINDS))),
        background_seed=int(rng.integers(2**31)),
        grain=float(rng.uniform(0.0, 0.05)),
    )
