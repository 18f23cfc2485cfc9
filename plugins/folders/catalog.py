"""Building the list of samples from the common options: a folder scan or a CSV index, with
identity, pose and split taken from folder names, the file-name pattern or CSV columns.

Identity comes from exactly one source (``identity_from``); ``auto`` picks a CSV
``identity`` column, else a pattern ``identity`` group, else the folder. Pose and split are
read from whichever of pattern and CSV provide them (the CSV wins where both do).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import mtkd

from .csv_index import CsvIndex, read_csv_index
from .index import (
    Entry,
    check_split_names,
    empty_identity_folders,
    folder_identity,
    image_files,
    list_folder,
    listed_path,
    parse_labels,
    pattern_facts,
    relative_to,
)
from .options import KEY, FolderOptions, check_identity_from, optional_file, sub_folder

# an entry and its path relative to the image folder (None: a CSV row outside that folder)
Located = tuple[Entry, PurePosixPath | None]


@dataclass(frozen=True)
class Catalog:
    """The common options, resolved and checked against the files."""

    root: Path
    images: Path
    identity_from: str  # folder | pattern | csv | none (auto resolved)
    identity_level: int
    pattern: re.Pattern[str] | None
    csv: CsvIndex | None
    split_names: dict[str, str] = field(default_factory=dict)  # split value -> train|val|test


def resolve_identity_from(
    value: str, pattern: re.Pattern[str] | None, table: CsvIndex | None
) -> str:
    """The identity source ``auto`` stands for; an explicit source must be usable."""
    check_identity_from(value)
    has_group = pattern is not None and "identity" in pattern.groupindex
    has_column = table is not None and "identity" in table.columns
    if value == "auto":
        return "csv" if has_column else "pattern" if has_group else "folder"
    if value == "pattern" and not has_group:
        raise mtkd.RecipeError(
            f"{KEY}.pattern: needs a named group (?P<identity>...) "
            f"since {KEY}.identity_from is 'pattern'"
        )
    if value == "csv" and table is None:
        raise mtkd.RecipeError(f"{KEY}.csv: required since {KEY}.identity_from is 'csv'")
    if value == "csv" and not has_column:
        assert table is not None
        raise mtkd.DataError(
            f"{table.path}: no 'identity' column, but {KEY}.identity_from is 'csv'"
        )
    return value


def open_catalog(
    options: FolderOptions, root: Path, pattern: re.Pattern[str] | None, counts: Counter[str]
) -> Catalog:
    csv_file = optional_file(root, options.csv, "csv")
    table = read_csv_index(csv_file, counts) if csv_file is not None else None
    # with a CSV the image folder only anchors relative paths (folder identity, pattern)
    images = root / options.images if table else sub_folder(root, options.images, "images")
    identity_from = resolve_identity_from(options.identity_from, pattern, table)
    split_names = check_split_names(options.split_names)
    return Catalog(root, images, identity_from, options.identity_level, pattern, table, split_names)


def _entry(
    catalog: Catalog,
    image: Path,
    relative: PurePosixPath | None,
    labels: tuple[dict[str, str], dict[str, str]],
    where: str,
    counts: Counter[str],
    mask: Path | None = None,
) -> Entry | None:
    """One entry from the pattern's groups and the CSV's cells (``labels``), or None (counted)
    when the chosen identity source says nothing about this image."""
    found, cells = labels
    identity: str | None = None
    if catalog.identity_from == "folder" and relative is not None:
        identity = folder_identity(relative, catalog.identity_level)
    elif catalog.identity_from == "pattern":
        identity = found.get("identity")
    elif catalog.identity_from == "csv":
        identity = cells.get("identity")
    if identity is None and catalog.identity_from != "none":
        outside = catalog.identity_from == "folder"
        counts["ignored_outside_identity_folders" if outside else "ignored_without_identity"] += 1
        return None
    pose, split = parse_labels({**found, **cells}, where, catalog.split_names)
    return Entry(image, identity, pose, split, mask)


def scan(catalog: Catalog, skip: tuple[Path, ...], counts: Counter[str]) -> list[Located]:
    """Entries for every image under the image folder (``skip``: label folders inside it)."""
    listing = list_folder(catalog.images, skip, counts)
    images = image_files(listing, counts)
    if catalog.identity_from == "folder":
        empty = empty_identity_folders(listing, catalog.images, catalog.identity_level, images)
        if empty:
            more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
            raise mtkd.DataError(
                f"identity folder '{empty[0]}' has no images{more}: remove it, or set "
                f"{KEY}.identity_level / {KEY}.identity_from"
            )
    out: list[Located] = []
    for image in images:
        relative = PurePosixPath(image.relative_to(catalog.images).as_posix())
        facts = pattern_facts(catalog.pattern, relative.as_posix())
        if facts is None:
            counts["ignored_not_matching_pattern"] += 1
            continue
        where = f"{image} ({KEY}.pattern)"
        entry = _entry(catalog, image, relative, (facts, {}), where, counts)
        if entry is not None:
            out.append((entry, relative))
    return out


def from_csv(catalog: Catalog, table: CsvIndex, counts: Counter[str]) -> list[Located]:
    """Entries for the rows of the CSV index, in its order."""
    out: list[Located] = []
    for row in table.rows:
        image = listed_path(catalog.root, row.cells["image"])
        relative = relative_to(image, catalog.images)
        text = relative.as_posix() if relative else row.cells["image"].replace("\\", "/")
        facts = pattern_facts(catalog.pattern, text)
        if facts is None:
            counts["ignored_not_matching_pattern"] += 1
            continue
        cells = {k: v for k, v in row.cells.items() if k not in ("image", "mask")}
        mask = listed_path(catalog.root, row.cells["mask"]) if "mask" in row.cells else None
        where = row.where(table.path)
        entry = _entry(catalog, image, relative, (facts, cells), where, counts, mask)
        if entry is not None:
            out.append((entry, relative))
    return out


def find_entries(catalog: Catalog, skip: tuple[Path, ...], counts: Counter[str]) -> list[Located]:
    """The samples named by the CSV index when there is one, else every image found."""
    if catalog.csv is not None:
        return from_csv(catalog, catalog.csv, counts)
    return scan(catalog, skip, counts)
