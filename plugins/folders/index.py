"""Finding images and reading what their paths say: identity, pose and split.

Only lists and stats files, never opens one, so indexing a large data set is quick and an
unreadable image costs one sample later instead of failing the whole index. Whatever is
passed over (hidden files, non-image files, paths the pattern does not match) is counted.
"""

from __future__ import annotations

import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

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
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Entry:
    """One sample as indexed: its files and the labels its path or index gave, nothing decoded.
    Slotted: a data set of 200,000 images holds 200,000 of them in every process."""

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


# text characters below 3 are escaped so that the part markers 0 and 1 sort below all text
_ESCAPE_LOW = {0: "\x02\x00", 1: "\x02\x01", 2: "\x02\x02"}


def natural_key(text: str) -> str:
    """Sort key that orders embedded numbers by value: s1, s2, ..., s10; letters ignore case.

    One flat string, about the text's own size: sorting 50,000 paths by a tuple of tuples
    (the digit runs as ints, the rest lower-cased) held 50 MiB of keys at once. The order is
    that tuple's exactly: a digit run becomes marker 0, its digit count and its value's
    digits (numeric order; numbers before text), a text run marker 1 and the text.
    """
    parts = re.split(r"(\d+)", text)  # odd positions hold the digit runs
    out = []
    for i, part in enumerate(parts):
        if not part:
            continue
        if i % 2:
            digits = str(int(part))
            out.append(f"\x00{chr(len(digits))}{digits}")
        else:
            out.append("\x01" + part.lower().translate(_ESCAPE_LOW))
    return "".join(out)


def _walked_before(path: str, here: str, seen: set[str], counts: Counter[str]) -> bool:
    """Whether the folder ``path`` (a sub-folder of ``here``) leads somewhere already walked:
    a link back to a folder above it (a loop: ``alice/loop -> ..``), or a second way into one
    folder. Either is counted, and walked no further."""
    real, above = os.path.realpath(path), os.path.realpath(here)
    if above == real or above.startswith(real.rstrip(os.sep) + os.sep):
        counts["ignored_symlink_loops"] += 1  # it leads to a folder it is inside of
        return True
    if real in seen:
        counts["ignored_repeated_folders"] += 1
        return True
    seen.add(real)
    return False


def list_folder(folder: Path, skip: Collection[Path], counts: Counter[str]) -> Listing:
    """Every file and folder under ``folder``; hidden ones are counted and left out, and so
    are the ``skip`` folders (label folders nested in the image folder). Linked folders are
    followed (a person folder may be a link), each real folder once: a link loop is counted
    and cut, never walked round. Folders that cannot be read are counted."""
    skipped = {os.path.normpath(p) for p in skip}
    seen = {os.path.realpath(folder)}
    files: list[Path] = []
    folders: list[Path] = []

    def unreadable(_error: OSError) -> None:
        counts["ignored_unreadable_folders"] += 1

    for here, dirs, names in os.walk(folder, onerror=unreadable, followlinks=True):
        kept = []
        for name in sorted(dirs, key=natural_key):  # the first way into a folder wins
            path = os.path.join(here, name)
            if name.startswith("."):
                counts["ignored_hidden"] += 1
            elif os.path.normpath(path) not in skipped and not _walked_before(
                path, here, seen, counts
            ):
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


def unique_files(entries: list[T], path_of: Callable[[T], Path], counts: Counter[str]) -> list[T]:
    """``entries`` with each real file once (by resolved path, the first one kept): two links
    to one photo must not make two samples, possibly of two people. The others are counted."""
    seen: set[str] = set()
    out: list[T] = []
    for entry in entries:
        real = os.path.realpath(path_of(entry))
        if real in seen:
            counts["ignored_duplicate_files"] += 1
            continue
        seen.add(real)
        out.append(entry)
    return out


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
    folders = relative.parts[:-1]  # interned: one string per person, not one per image
    return sys.intern(folders[level]) if -len(folders) <= level < len(folders) else None


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


def check_split_names(values: Mapping[Any, str]) -> dict[str, str]:
    """``split_names`` (a data set's own split values, e.g. session numbers, to the words
    train, val, test), with each value checked; keys become strings as paths give them."""
    out: dict[str, str] = {}
    for raw, word in values.items():
        split = SPLITS.get(str(word).strip().lower())
        if split is None:
            raise mtkd.RecipeError(
                f"{KEY}.split_names.{raw}: '{word}' is not one of train, val, test"
            )
        out[str(raw).strip()] = split
    return out


def _split(value: str, names: Mapping[str, str], where: str) -> str:
    text = value.strip()
    split = names.get(text) or SPLITS.get(text.lower())
    if split is None:
        raise mtkd.DataError(
            f"{where}: split '{value}' is not one of train, val, test "
            f"(map the data set's own values in {KEY}.split_names)"
        )
    return split


def parse_labels(
    facts: Mapping[str, str], where: str, split_names: Mapping[str, str] | None = None
) -> tuple[Pose | None, str | None]:
    """Pose (components not given are 0) and split from a pattern's groups or a CSV row;
    ``split_names`` maps split values other than the usual words (``{"3": test}``)."""
    pose: Pose | None = None
    if any(k in facts for k in POSE_KEYS):
        values = []
        for k in POSE_KEYS:
            try:
                values.append(float(facts.get(k, 0.0)))
            except ValueError:
                raise mtkd.DataError(f"{where}: {k} '{facts[k]}' is not a number") from None
        pose = (values[0], values[1], values[2])
    split = _split(facts["split"], split_names or {}, where) if "split" in facts else None
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
