"""Turning label images into class-id masks: palette snapping and index checks.

Real colour label images are often anti-aliased or JPEG-compressed, so a pixel's colour is
snapped to the nearest palette entry and the number of such off-palette pixels is reported.
A colour that is far from every entry (and from every straight mix of two entries, which is
what anti-aliasing between two regions produces) is a stray pixel: real label images carry a
handful (1-2 pixels in 230,000), which are snapped and counted; more than a small share of
the mask means the palette is wrong for the files, an error naming the file and the colour
rather than a silent guess.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
from PIL import Image

import mtkd

MAX_CLASSES = 256  # masks are uint8 class ids


@dataclass(frozen=True)
class Palette:
    """Class names in class-id order, and the RGB colour of each."""

    names: tuple[str, ...]
    colours: np.ndarray  # (classes, 3) int


def parse_palette(values: Mapping[str, Sequence[int]], key: str) -> Palette:
    """Validate ``name: [R, G, B]`` entries; errors name the option key at fault."""
    if not values:
        raise mtkd.RecipeError(f"{key}: needs at least one class as  name: [R, G, B]")
    if len(values) > MAX_CLASSES:
        raise mtkd.RecipeError(f"{key}: {len(values)} classes; at most {MAX_CLASSES} fit a mask")
    seen: dict[tuple[int, ...], str] = {}
    for name, colour in values.items():
        rgb = tuple(int(c) for c in colour)
        if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
            raise mtkd.RecipeError(
                f"{key}.{name}: expected [R, G, B] in 0..255, got {list(colour)}"
            )
        if rgb in seen:
            raise mtkd.RecipeError(f"{key}: '{seen[rgb]}' and '{name}' have the same colour {rgb}")
        seen[rgb] = name
    return Palette(tuple(str(n) for n in values), np.array(list(seen), dtype=np.int64))


def parse_classes(names: Sequence[str], key: str) -> tuple[str, ...]:
    """Validate the class names of an index mask (class id = position in the list)."""
    if not names:
        raise mtkd.RecipeError(f"{key}: needs the class names, in class-id order")
    if len(names) > MAX_CLASSES:
        raise mtkd.RecipeError(f"{key}: {len(names)} classes; at most {MAX_CLASSES} fit a mask")
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if list(names).count(n) > 1})
        raise mtkd.RecipeError(f"{key}: class names appear twice: {', '.join(twice)}")
    return tuple(str(n) for n in names)


def _mirrored(name: str) -> str:
    for side, other in (("left", "right"), ("right", "left")):
        if name.startswith(side + "_"):
            return other + name[len(side) :]
        if name.endswith("_" + side):
            return name[: -len(side)] + other
    return name


def mirror_table(names: Sequence[str]) -> tuple[float, ...] | None:
    """For each class, the class it becomes in a mirror image (left_x <-> right_x, x_left <->
    x_right), for flip augmentation; None when no class has a side (ids stay unchanged)."""
    index = {name: i for i, name in enumerate(names)}
    table = [float(index.get(_mirrored(name), i)) for i, name in enumerate(names)]
    return None if table == [float(i) for i in range(len(names))] else tuple(table)


def _blend_distance(colours: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Distance of each colour to the nearest straight mix of two palette colours."""
    best = np.full(len(colours), np.inf)
    for a, b in combinations(palette.astype(np.float64), 2):
        ab = b - a
        t = np.clip((colours - a) @ ab / float(ab @ ab), 0.0, 1.0)
        best = np.minimum(best, np.linalg.norm(colours - (a + t[:, None] * ab), axis=1))
    return best


@dataclass(frozen=True)
class Snapped:
    """A colour label image as class ids, and how many of its pixels had to be snapped."""

    ids: np.ndarray  # uint8 H x W
    off_palette: int  # pixels not exactly a palette colour (all snapped to the nearest)
    stray: int  # of those, pixels beyond tolerance of every colour and blend (stray pixels)


def _far_error(
    path: Path, palette: Palette, found: tuple[np.ndarray, np.ndarray, np.ndarray], limits: str
) -> mtkd.SampleError:
    """The error for a mask with too many far pixels, naming its most common far colour."""
    colours, counts, far = found
    worst = int(np.flatnonzero(far)[counts[far].argmax()])
    colour = tuple(int(c) for c in colours[worst])
    distances = np.linalg.norm(palette.colours - colours[worst], axis=1)
    return mtkd.SampleError(
        path,
        "colours far from every palette colour (does data.dataset.palette match the files?)",
        f"colour {colour} ({int(counts[worst])} pixels) is {distances.min():.0f} away from "
        f"the nearest palette colour ('{palette.names[int(distances.argmin())]}'); {limits}",
    )


def snap_to_palette(
    rgb: np.ndarray,
    palette: Palette,
    tolerance: float,
    blends: bool,
    path: Path,
    stray_fraction: float = 0.0,
) -> Snapped:
    """Class ids of the nearest palette colours. Pixels beyond ``tolerance`` of every colour
    (and, with ``blends``, of every mix of two) are stray pixels: snapped too while they are at
    most ``stray_fraction`` of the mask, else the palette does not match (a SampleError)."""
    flat = rgb.reshape(-1, 3).astype(np.int64)
    keys = (flat[:, 0] << 16) | (flat[:, 1] << 8) | flat[:, 2]
    unique, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    colours = np.stack([(unique >> 16) & 255, (unique >> 8) & 255, unique & 255], axis=1)
    distances = np.linalg.norm(
        colours[:, None, :].astype(np.float64) - palette.colours[None].astype(np.float64), axis=2
    )
    nearest, distance = distances.argmin(axis=1), distances.min(axis=1)
    far = distance > tolerance
    if far.any() and blends:
        far[far] = _blend_distance(colours[far].astype(np.float64), palette.colours) > tolerance
    stray = int(counts[far].sum())
    if stray > stray_fraction * len(flat):
        share = f"{stray} of {len(flat)} pixels ({stray / len(flat):.2%}) are"
        limits = (
            f"{share} beyond data.dataset.tolerance={tolerance:g}, more than "
            f"data.dataset.stray_fraction={stray_fraction:g} allows"
        )
        raise _far_error(path, palette, (colours, counts, far), limits)
    ids = nearest[inverse.reshape(-1)].reshape(rgb.shape[:2]).astype(np.uint8)
    return Snapped(ids, int(counts[distance > 0].sum()), stray)


def resize_nearest(ids: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Class ids (uint8 H x W) at another height and width, nearest neighbour (no new ids)."""
    height, width = shape[:2]
    return np.asarray(Image.fromarray(ids).resize((width, height), Image.Resampling.NEAREST))


def check_indices(values: np.ndarray, classes: Sequence[str], path: Path) -> np.ndarray:
    """The index mask as uint8, after checking every value names a class."""
    low, high = int(values.min(initial=0)), int(values.max(initial=0))
    if high >= len(classes) or low < 0:
        bad = high if high >= len(classes) else low
        raise mtkd.SampleError(
            path,
            f"class index {bad} is outside 0..{len(classes) - 1} "
            f"({len(classes)} classes in data.dataset.classes)",
        )
    return values.astype(np.uint8)
