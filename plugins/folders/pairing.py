"""Finding each image's label image, by listing (a parallel folder) or by a path pattern.

A parallel folder mirrors the image folder: ``images/alice/01.jpg`` pairs with
``masks/alice/01.png`` (same sub-folder and stem, any image suffix). A pattern builds the
label's path under the root from the image's ``{dir}``, ``{stem}``, ``{name}``, ``{suffix}``.
Images left without a label and labels no image claims are counted, never dropped silently.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import replace
from pathlib import Path, PurePosixPath

import mtkd

from .index import Entry, image_files, list_folder
from .options import KEY

PATTERN_FIELDS = ("dir", "stem", "name", "suffix")


def check_mask_pattern(pattern: str, key: str = "mask_pattern") -> None:
    """Reject a pattern with unknown ``{fields}`` before any file is looked at."""
    try:
        pattern.format(dir="d", stem="s", name="n", suffix=".x")
    except (KeyError, IndexError, ValueError) as exc:
        raise mtkd.RecipeError(
            f"{KEY}.{key}: cannot fill '{pattern}' ({exc}); "
            f"fields are {', '.join('{' + f + '}' for f in PATTERN_FIELDS)}"
        ) from exc


class MaskFinder:
    """Looks up the label image of an image given its path relative to the image folder."""

    def __init__(self, root: Path, folder: str, pattern: str, counts: Counter[str]) -> None:
        self.root = root
        self.pattern = pattern
        self.folder: Path | None = None  # where the labels live: left out of the image scan
        self.by_stem: dict[tuple[str, str], Path] = {}
        self.claimed: set[Path] = set()
        if pattern:
            check_mask_pattern(pattern)
            fixed = pattern.split("{", 1)[0].rpartition("/")[0]
            self.folder = root / fixed if fixed else None
            return
        base = self.folder = root / folder
        if not base.is_dir():
            raise mtkd.DataError(
                f"{KEY}.masks: folder '{base}' does not exist "
                f"(or set {KEY}.mask_pattern, or a 'mask' column in {KEY}.csv)"
            )
        for path in image_files(list_folder(base, (), counts), counts):
            rel = PurePosixPath(path.relative_to(base).as_posix())
            key = (rel.parent.as_posix(), rel.stem)
            if key in self.by_stem:  # keep the PNG: lossless formats are the usual labels
                counts["ignored_duplicate_masks"] += 1
                if path.suffix.lower() != ".png":
                    continue
            self.by_stem[key] = path

    def find(self, relative: PurePosixPath) -> Path | None:
        """The label image of the image at ``relative`` (to the image folder), if any."""
        if self.pattern:
            folder = relative.parent.as_posix()
            text = self.pattern.format(
                dir=folder, stem=relative.stem, name=relative.name, suffix=relative.suffix
            )
            path = Path(os.path.normpath(self.root / text))  # "{dir}/../labels" is common
            return path if path.is_file() else None
        return self.by_stem.get((relative.parent.as_posix(), relative.stem))

    def unclaimed(self) -> int:
        """Label files in the mask folder that no image claimed."""
        return len(set(self.by_stem.values()) - self.claimed)


def attach_masks(
    entries: list[tuple[Entry, PurePosixPath | None]],
    finder: MaskFinder | None,
    require: bool,
    counts: Counter[str],
) -> list[Entry]:
    """Entries with their masks (a mask from a CSV wins; ``finder`` None: CSV masks only);
    images that are some other image's label are left out."""
    paired = []
    for entry, relative in entries:
        mask = entry.mask
        if mask is None and finder is not None and relative is not None:
            mask = finder.find(relative)
        paired.append(replace(entry, mask=mask))
    labels = {e.mask for e in paired if e.mask is not None}
    out = []
    for entry in paired:
        if entry.image in labels:
            continue  # a label image sitting next to the images (mask_pattern beside them)
        if entry.mask is None:
            counts["dropped_without_mask" if require else "images_without_mask"] += 1
            if require:
                continue
        elif finder is not None:
            finder.claimed.add(entry.mask)
        out.append(entry)
    if finder is not None:
        counts["ignored_masks_without_image"] += finder.unclaimed()
    return out
