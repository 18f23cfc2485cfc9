"""Finding images and reading what their paths say: identity, pose and split.

Only lists and stats files, never opens one, so indexing a large data set is quick and an
unreadable image costs one sample later instead of failing the whole index. Whatever is
passed over (hidden files, non-image files, paths the pattern does not match) is counted.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import mtkd

from .images import is_image_file
from .options import KEY

POSE_KEYS = ("yaw", "pitch", "roll")
PATTERN_GROUPS = ("identity", *POSE_KEYS, "split")
SPLITS = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}

Pose = tuple[float, float, float]


@dataclass(frozen=True)
class Entry:
    """One sample as indexed: its files and the labels its path or index gave, nothing decoded."""

    image: Path
    identity: str | None = None
    pose: Pose | None = None
    split: str | None = None
    mask: Path | None = None


@dataclass(frozen=True)
class Listing:
    """Files and folders under a folder, in natural order (s2 before s10)."""

    files: list[Path]
    folders: list[Path]


def natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders embedded numbers by value: s1, s2, ..., s10."""
    parts = re.split(r"(\d+)", text)  # odd positions hold the digit runs
    return tuple((0, int(p)) if i % 2 else (1, p.lower()) for i, p in enumerate(parts) if p)


def list_folder(folder: Path, skip: Collection[Path], counts: Counter[str]) -> Listing:
    """Every file and folder under ``folder``; hidden ones are counted and left out, and so
    are the ``skip`` folders (label folders nested in the image folder)."""
    skipped = {os.path.normpath(p) for p in skip}
    files: list[Path] = []
    folders: list[Path] = []
    for here, dirs, names in os.walk(folder, followlinks=True):  # linked person folders
        kept = []
        for name in dirs:
            path = os.path.join(here, name)
            if name.startswith("."):
                counts["ignored_hidden"] += 1
            elif os.path.normpath(path) not in skipped:
                kept.append(name)
        dirs[:] = kept
        folders.extend(Path(here, name) for name in kept)
        for name in names:
            if name.startswith("."):
                counts["ignored_hidden"] += 1
            else:
                files.append(Path(here, name))
    files.sort(key=lambda p: natural_key(p.as_posix()))
    folders.sort(key=lambda p: natural_key(p.as_posix()))
    return Listing(files, folders)


def image_files(listing: Listing, counts: Counter[str]) -> list[Path]:
    """The image files of a listing; the others are counted as ignored."""
    images = [p for p in listing.files if is_image_file(p)]
    counts["ignored_non_image_files"] += len(listing.files) - len(images)
    return images


def compile_pattern(text: str, key: str = "pattern") -> re.Pattern[str] | None:
    """The file-name regular expression of an option, checked for known group names."""
    if not text:
        return None
    try:
        pattern = re.compile(text)
    except re.error as exc:
        raise mtkd.RecipeError(f"{KEY}.{key}: not a valid regular expression: {exc}") from exc
    unknown = sorted(set(pattern.groupindex) - set(PATTERN_GROUPS))
    if unknown:
        raise mtkd.RecipeError(
            f"{KEY}.{key}: unknown named group(s) {', '.join(unknown)}; "
            f"known: {', '.join(PATTERN_GROUPS)}"
        )
    return pattern


def pattern_facts(pattern: re.Pattern[str] | None, text: str) -> dict[str, str] | None:
    """The named groups the pattern finds in ``text`` ({} without a pattern; None: no match)."""
    if pattern is None:
        return {}
    match = pattern.search(text)
    if match is None:
        return None
    return {k: v for k, v in match.groupdict().items() if v}


def folder_identity(relative: PurePosixPath, level: int) -> str | None:
    """The name of the folder at ``level`` above the file (0: first folder under the root)."""
    folders = relative.parts[:-1]
    return folders[level] if -len(folders) <= level < len(folders) else None


def empty_identity_folders(
    listing: Listing, base: Path, level: int, images: list[Path]
) -> list[Path]:
    """Folders at the identity level holding no image: a person without pictures."""
    if level < 0:
        return []
    used = {p.relative_to(base).parts[: level + 1] for p in images}
    return [
        folder
        for folder in listing.folders
        if len(parts := folder.relative_to(base).parts) == level + 1 and parts not in used
    ]


def parse_labels(facts: Mapping[str, str], where: str) -> tuple[Pose | None, str | None]:
    """Pose (components not given are 0) and split from a pattern's groups or a CSV row."""
    pose: Pose | None = None
    if any(k in facts for k in POSE_KEYS):
        values = []
        for k in POSE_KEYS:
            try:
                values.append(float(facts.get(k, 0.0)))
            except ValueError:
                raise mtkd.DataError(f"{where}: {k} '{facts[k]}' is not a number") from None
        pose = (values[0], values[1], values[2])
    split = None
    if "split" in facts:
        split = SPLITS.get(facts["split"].strip().lower())
        if split is None:
            raise mtkd.DataError(
                f"{where}: split '{facts['split']}' is not one of train, val, test"
            )
    return pose, split


def relative_to(path: Path, base: Path) -> PurePosixPath | None:
    """``path`` relative to ``base`` with '/' separators, or None when it lies outside."""
    try:
        return PurePosixPath(path.relative_to(base).as_posix())
    except ValueError:
        return None


def listed_path(root: Path, text: str) -> Path:
    """A path written in a CSV or XML index ('/' or '\\' separators), resolved against root."""
    path = Path(os.path.normpath(text.strip().replace("\\", "/")))
    return path if path.is_absolute() else root / path
