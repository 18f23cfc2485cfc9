"""Recipe options shared by the folder data sets (keys under ``data.dataset``), and their checks.

Each plugin's ``Options`` dataclass is assembled from these pieces, so the same key means the
same thing in every folder plugin and is documented once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mtkd

KEY = "data.dataset"
IDENTITY_SOURCES = ("auto", "folder", "pattern", "csv", "none")


@dataclass
class FolderOptions:
    """Where the images are and where identity, pose and split come from."""

    root: str = ""  # the data set's folder (required)
    images: str = ""  # sub-folder of root holding the images; "" = root itself
    identity_from: str = "auto"  # auto | folder | pattern | csv | none
    identity_level: int = 0  # folder level under `images` that names the person (-1: parent)
    pattern: str = ""  # regex searched in each image path; groups identity/yaw/pitch/roll/split
    csv: str = ""  # CSV index (relative to root): image, identity, yaw, pitch, roll, split, mask
    split_names: dict[Any, str] = field(default_factory=dict)  # split value -> train|val|test


@dataclass
class MaskOptions:
    """How each image's label image is found."""

    masks: str = "masks"  # sub-folder of root mirroring `images`: same sub-folder and stem
    mask_pattern: str = ""  # or a path under root built from {dir} {stem} {name} {suffix}
    require_masks: bool = False  # drop (and count) images without a mask


@dataclass
class PaletteOptions:
    """How label colours map to classes."""

    palette: dict[str, list[int]] = field(default_factory=dict)  # class: [R, G, B], id order
    tolerance: float = 40.0  # largest RGB distance a label colour may be from the palette
    blends: bool = True  # also accept mixes of two palette colours (anti-aliased edges)
    stray_fraction: float = 0.001  # share of a mask's pixels that may be beyond tolerance


MASK_SIZE_POLICIES = ("resize", "fail", "drop_mask")
BAD_MASK_POLICIES = ("drop", "fail")


@dataclass
class MaskSizeOptions:
    """What a label image of another size than its image becomes, and what a defective one
    costs."""

    mask_size: str = "resize"  # resize (nearest, within mask_size_tolerance) | fail | drop_mask
    mask_size_tolerance: float = 0.05  # largest relative difference of a side that resize takes
    # a mask that cannot be used (its size beyond what mask_size takes, too many far colours,
    # a class index out of range): drop = drop the mask, keep the image and its identity, and
    # count it; fail = the sample fails (data.on_error then stops or skips it)
    bad_masks: str = "drop"


def check_mask_options(options: object) -> None:
    """The ranges of the mask options a plugin's Options carries (errors name the key)."""
    policy = getattr(options, "mask_size", "fail")
    if policy not in MASK_SIZE_POLICIES:
        raise mtkd.RecipeError(
            f"{KEY}.mask_size: '{policy}' is not one of {', '.join(MASK_SIZE_POLICIES)}"
        )
    bad = getattr(options, "bad_masks", "fail")
    if bad not in BAD_MASK_POLICIES:
        raise mtkd.RecipeError(
            f"{KEY}.bad_masks: '{bad}' is not one of {', '.join(BAD_MASK_POLICIES)}"
        )
    for key in ("mask_size_tolerance", "stray_fraction", "tolerance"):  # where the plugin has it
        value = getattr(options, key, 0.0)
        if value < 0 or (key != "tolerance" and value >= 1):
            limit = ">= 0" if key == "tolerance" else "in [0, 1)"
            raise mtkd.RecipeError(f"{KEY}.{key}: must be {limit}, got {value}")


def required_folder(value: str, key: str) -> Path:
    """An existing folder named by a required option; the error names the option."""
    if not value:
        raise mtkd.RecipeError(f"{KEY}.{key}: required (the data set's folder)")
    path = Path(value).expanduser()
    if not path.is_dir():
        raise mtkd.DataError(f"{KEY}.{key}: folder '{path}' does not exist")
    return path


def sub_folder(root: Path, value: str, key: str) -> Path:
    """A folder under ``root`` (or absolute) named by an option; it must exist."""
    path = root / Path(value).expanduser() if value else root
    if not path.is_dir():
        raise mtkd.DataError(f"{KEY}.{key}: folder '{path}' does not exist")
    return path


def optional_file(root: Path, value: str, key: str) -> Path | None:
    """A file under ``root`` (or absolute) named by an option, or None when the option is empty."""
    if not value:
        return None
    path = root / Path(value).expanduser()
    if not path.is_file():
        raise mtkd.DataError(f"{KEY}.{key}: file '{path}' does not exist")
    return path


def check_identity_from(value: str) -> str:
    if value not in IDENTITY_SOURCES:
        raise mtkd.RecipeError(
            f"{KEY}.identity_from: '{value}' is not one of {', '.join(IDENTITY_SOURCES)}"
        )
    return value
