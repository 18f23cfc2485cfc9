"""Random backgrounds and image grain, different for every view.

Backgrounds vary in kind (smooth noise, stripes, gradients) and colour per image, so that no
colour statistic of the frame is tied to the person in it.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .raycast import pixel_centres


@lru_cache(maxsize=32)
def _upsampler(size: int, cells: int) -> np.ndarray:
    """Bilinear interpolation matrix from a coarse grid of ``cells`` values to ``size`` pixels."""
    positions = np.linspace(0, cells - 1, size)
    weights = np.maximum(0, 1 - np.abs(positions[:, None] - np.arange(cells)[None, :]))
    return weights.astype(np.float32)


def _smooth_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    cells = int(rng.integers(3, 9))
    coarse = rng.uniform(0, 1, size=(3, cells, cells)).astype(np.float32)
    up = _upsampler(size, cells)
    return np.stack([up @ channel @ up.T for channel in coarse], axis=-1)


def _stripes(rng: np.random.Generator, size: int) -> np.ndarray:
    u, v = pixel_centres(size)
    angle = rng.uniform(0, np.pi)
    frequency = rng.uniform(4, 30)
    phase = np.add.outer(float(np.sin(angle) * frequency) * v, float(np.cos(angle) * frequency) * u)
    wave = 0.5 + 0.5 * np.sin(phase + np.float32(rng.uniform(0, 2 * np.pi)))
    return _blend(rng, wave)


def _gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    u, v = pixel_centres(size)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.add.outer(float(np.sin(angle)) * v, float(np.cos(angle)) * u)
    return _blend(rng, 0.5 + 0.35 * ramp)


def _blend(rng: np.random.Generator, weight: np.ndarray) -> np.ndarray:
    """Mix two random colours by a per-pixel weight in [0, 1]."""
    first, second = rng.uniform(0, 1, size=(2, 3)).astype(np.float32)
    return first + weight[..., None] * (second - first)


def background(kind: int, seed: int, size: int) -> np.ndarray:
    """A float32 RGB background in [0, 1]: noise, stripes, gradient, or noise and stripes."""
    rng = np.random.default_rng(seed)
    if kind == 0:
        return _smooth_noise(rng, size)
    if kind == 1:
        return _stripes(rng, size)
    if kind == 2:
        return _gradient(rng, size)
    return 0.5 * (_smooth_noise(rng, size) + _stripes(rng, size))


@lru_cache(maxsize=8)
def _grain_texture(size: int) -> np.ndarray:
    """A fixed noise texture twice the image size; each view crops it at its own offset."""
    rng = np.random.default_rng(0)
    return rng.standard_normal((2 * size, 2 * size, 3)).astype(np.float32)


def grain(seed: int, size: int) -> np.ndarray:
    """Unit-variance per-pixel noise, cropped from the fixed texture at a seed-given offset."""
    row, col = seed % size, (seed // size) % size
    return _grain_texture(size)[row : row + size, col : col + size]
