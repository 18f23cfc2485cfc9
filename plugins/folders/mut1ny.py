"""mut1ny: the Mut1ny head-segmentation layout, on top of palette_folder's palette machinery.

Each RGB image has an RGB label PNG; the person is the subject folder of the label,
``labels/<subject>/...``. Pairs come from the XML index (``training_fixed.xml``) when the
edition ships one, else each label pairs with the image of the same sub-folder and stem (or
the only image with that stem). The palette defaults to the 11-label community edition; the
14-class edition needs its palette in the recipe (see docs/datasets-folders.md).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import mtkd

from .index import (
    Entry,
    check_split_names,
    compile_pattern,
    folder_identity,
    image_files,
    list_folder,
    parse_labels,
    pattern_facts,
    relative_to,
)
from .masks import Palette, parse_palette
from .options import (
    KEY,
    MaskSizeOptions,
    PaletteOptions,
    optional_file,
    required_folder,
    sub_folder,
)
from .palette_folder import PaletteFolder
from .source import no_images_error
from .xml_index import read_xml_pairs

XML_NAME = "training_fixed.xml"

# The 11-label community edition (design notes, section 2), in class-id order.
COMMUNITY_PALETTE: dict[str, list[int]] = {
    "background": [0, 0, 0],
    "lips": [255, 0, 0],
    "eyes": [0, 255, 0],
    "nose": [0, 0, 255],
    "hair": [255, 255, 0],
    "ears": [0, 255, 255],
    "eyebrows": [255, 0, 255],
    "teeth": [255, 255, 255],
    "skin": [128, 128, 128],
    "facial_hair": [255, 192, 192],
    "spectacles": [0, 128, 128],
}


@dataclass
class Mut1nyLayout:
    root: str = ""  # the unpacked Mut1ny folder (required)
    images: str = "images"  # image folder under root (used without an XML index)
    labels: str = "labels"  # label folder under root: labels/<subject>/...
    xml: str = ""  # "": root/training_fixed.xml when present; "none": pair by folders
    pattern: str = ""  # regex on the image path under root: yaw, pitch, roll, split groups
    exclude_subjects: list[str] = field(default_factory=list)  # e.g. folders of several people
    split_names: dict[Any, str] = field(default_factory=dict)  # split value -> train|val|test


@dataclass
class Mut1nyOptions(MaskSizeOptions, PaletteOptions, Mut1nyLayout):
    """The layout, the palette (empty: the 11-label community palette), and what a label of
    another size than its image becomes."""


def pair_by_folders(images: Path, labels: Path, counts: Counter[str]) -> list[tuple[Path, Path]]:
    """(image, label) pairs by same sub-folder and stem, else by a stem only one image has."""
    label_files = image_files(list_folder(labels, (), counts), counts)
    image_list = image_files(list_folder(images, (labels,), counts), counts)
    by_place: dict[tuple[str, str], Path] = {}
    by_stem: dict[str, list[Path]] = {}
    for image in image_list:
        rel = PurePosixPath(image.relative_to(images).as_posix())
        by_place[(rel.parent.as_posix(), rel.stem)] = image
        by_stem.setdefault(rel.stem, []).append(image)
    pairs: list[tuple[Path, Path]] = []
    for label in label_files:
        rel = PurePosixPath(label.relative_to(labels).as_posix())
        match = by_place.get((rel.parent.as_posix(), rel.stem))
        if match is None and len(by_stem.get(rel.stem, [])) == 1:
            match = by_stem[rel.stem][0]
        if match is None:
            counts["ignored_labels_without_image"] += 1
        else:
            pairs.append((match, label))
    counts["ignored_images_without_label"] += len(image_list) - len({i for i, _ in pairs})
    return pairs


class Mut1ny(PaletteFolder):
    """Mut1ny head segmentation: identity from ``labels/<subject>``, palette-snapped masks."""

    name = "mut1ny"
    Options = Mut1nyOptions

    def make_palette(self, options: Any) -> Palette:
        return parse_palette(options.palette or COMMUNITY_PALETTE, f"{KEY}.palette")

    def _pairs(self, root: Path) -> tuple[list[tuple[Path, Path]], Path]:
        options = self.options
        xml = None
        if options.xml == "":
            xml = root / XML_NAME if (root / XML_NAME).is_file() else None
        elif options.xml != "none":
            xml = optional_file(root, options.xml, "xml")
        if xml is not None:
            return read_xml_pairs(xml, root, self.counts), xml
        images = sub_folder(root, options.images, "images")
        labels = sub_folder(root, options.labels, "labels")
        return pair_by_folders(images, labels, self.counts), labels

    def index(self) -> list[Entry]:
        options = self.options
        root = required_folder(options.root, "root")
        pattern = compile_pattern(options.pattern)
        if pattern is not None and "identity" in pattern.groupindex:
            raise mtkd.RecipeError(
                f"{KEY}.pattern: mut1ny reads identity from labels/<subject>/; "
                "remove the identity group"
            )
        split_names = check_split_names(options.split_names)
        pairs, source = self._pairs(root)
        labels, excluded = root / options.labels, set(options.exclude_subjects)
        entries: list[Entry] = []
        for image, label in pairs:
            in_labels = relative_to(label, labels)
            subject = folder_identity(in_labels, 0) if in_labels is not None else None
            if subject is None:
                self.counts["ignored_labels_outside_subject_folders"] += 1
                continue
            if subject in excluded:
                self.counts["excluded_by_subject"] += 1
                continue
            relative = relative_to(image, root)
            facts = pattern_facts(pattern, (relative or image).as_posix())
            if facts is None:
                self.counts["ignored_not_matching_pattern"] += 1
                continue
            pose, split = parse_labels(facts, f"{image} ({KEY}.pattern)", split_names)
            entries.append(Entry(image, subject, pose, split, label))
        if not entries:
            raise no_images_error(source, self.counts)
        return entries
