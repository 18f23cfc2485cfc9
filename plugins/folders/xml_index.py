"""Reading a Mut1ny-style XML index: ``<srcimg name=...>`` followed by its ``<labelimg name=...>``.

Editions differ in nesting (the label inside the image element, or the next sibling), so
elements are read in document order and each label pairs with the image before it. Paths are
relative to the data set's root, often with Windows separators.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import mtkd

from .index import listed_path


def _name(element: ET.Element, path: Path) -> str:
    name = element.get("name")
    if not name:
        raise mtkd.DataError(f"{path}: a <{element.tag}> element has no name attribute")
    return name


def read_xml_pairs(path: Path, root: Path, counts: Counter[str]) -> list[tuple[Path, Path]]:
    """(image, label) pairs in file order; unpaired elements are counted, not kept."""
    try:
        tree = ET.parse(path)
    except (ET.ParseError, OSError) as exc:
        raise mtkd.DataError(f"{path}: cannot read the XML index: {exc}") from exc
    pairs: list[tuple[Path, Path]] = []
    image: Path | None = None
    for element in tree.getroot().iter():
        if element.tag == "srcimg":
            if image is not None:
                counts["ignored_images_without_label"] += 1
            image = listed_path(root, _name(element, path))
        elif element.tag == "labelimg":
            if image is None:
                counts["ignored_labels_without_image"] += 1
            else:
                pairs.append((image, listed_path(root, _name(element, path))))
                image = None
    if image is not None:
        counts["ignored_images_without_label"] += 1
    return pairs
