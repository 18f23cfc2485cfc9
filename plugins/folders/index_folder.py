"""index_folder: images plus label images holding class indices (LaPa, Helen style)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

import mtkd

from .images import read_index_label
from .index import Entry
from .masks import check_indices, parse_classes, resize_nearest
from .options import KEY, FolderOptions, MaskOptions, MaskSizeOptions
from .source import FolderSource


@dataclass
class IndexFolderOptions(MaskSizeOptions, MaskOptions, FolderOptions):
    """Common options, how labels are found, and the class names (``classes`` is required)."""

    images: str = "images"  # images/<person>/<view>.jpg beside masks/<person>/<view>.png
    classes: list[str] = field(default_factory=list)  # class names, in class-id order


class IndexFolder(FolderSource):
    """Index labels used as they are; a value that names no class is an error for that file."""

    name = "index_folder"
    Options = IndexFolderOptions
    has_masks = True

    def __init__(self, options: Any, image_size: int, seed: int) -> None:
        self.classes = parse_classes(options.classes, f"{KEY}.classes")
        super().__init__(options, image_size, seed)

    def mask_names(self) -> tuple[str, ...]:
        return self.classes

    def load_mask(self, index: int, entry: Entry, image: np.ndarray) -> np.ndarray | None:
        assert entry.mask is not None
        values = read_index_label(entry.mask)
        verdict = self.fit_mask(index, values, image, entry)
        if verdict == "drop":
            return None
        try:
            ids = check_indices(values, self.classes, entry.mask)
        except mtkd.SampleError as exc:
            self.bad_mask(index, exc, "bad_classes")
            return None
        return resize_nearest(ids, image.shape) if verdict == "resize" else ids
