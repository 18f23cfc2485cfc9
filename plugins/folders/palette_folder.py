"""palette_folder: images plus colour label images whose colours map to classes by a palette."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

import mtkd

from .images import read_colour_label
from .index import Entry
from .masks import Palette, parse_palette, resize_nearest, snap_to_palette
from .options import KEY, FolderOptions, MaskOptions, MaskSizeOptions, PaletteOptions
from .source import FolderSource


@dataclass
class PaletteFolderOptions(MaskSizeOptions, PaletteOptions, MaskOptions, FolderOptions):
    """Common options, how labels are found, and the palette (``palette`` is required)."""

    images: str = "images"  # images/<person>/<view>.png beside masks/<person>/<view>.png


class PaletteFolder(FolderSource):
    """Colour labels snapped to the nearest palette colour; off-palette pixels are counted."""

    name = "palette_folder"
    Options: ClassVar[type] = PaletteFolderOptions
    has_masks = True

    def __init__(self, options: Any, image_size: int, seed: int) -> None:
        self.palette = self.make_palette(options)
        self._off_palette: dict[int, int] = {}  # per sample, so decoding twice counts once
        self._stray: dict[int, int] = {}
        self._stray_share: dict[int, float] = {}  # per decoded mask: far pixels / all pixels
        super().__init__(options, image_size, seed)

    def make_palette(self, options: Any) -> Palette:
        """The palette of the options (subclasses may supply a default)."""
        return parse_palette(options.palette, f"{KEY}.palette")

    def mask_names(self) -> tuple[str, ...]:
        return self.palette.names

    def load_mask(self, index: int, entry: Entry, image: np.ndarray) -> np.ndarray | None:
        assert entry.mask is not None
        rgb = read_colour_label(entry.mask)
        verdict = self.fit_mask(index, rgb, image, entry)
        if verdict == "drop":
            return None
        options = self.options
        try:
            snapped = snap_to_palette(
                rgb,
                self.palette,
                options.tolerance,
                options.blends,
                entry.mask,
                options.stray_fraction,
            )
        except mtkd.SampleError as exc:
            self._stray_share[index] = 1.0  # beyond stray_fraction: the top bin
            self.bad_mask(index, exc, "far_colours")
            return None
        self._stray_share[index] = snapped.stray / max(1, rgb.shape[0] * rgb.shape[1])
        self._off_palette[index] = snapped.off_palette
        if snapped.stray:
            self._stray[index] = snapped.stray
        return resize_nearest(snapped.ids, image.shape) if verdict == "resize" else snapped.ids

    def report(self) -> dict[str, Any]:
        out = super().report()
        out["masks_decoded"] = len(self._off_palette)
        out["off_palette_pixels"] = sum(self._off_palette.values())
        if self._stray:  # pixels beyond tolerance, within stray_fraction: snapped
            out["masks_with_stray_pixels"] = len(self._stray)
            out["stray_pixels"] = sum(self._stray.values())
        if self._stray_share:
            out["masks_by_stray_share"] = stray_share_bins(
                self._stray_share.values(), self.options.stray_fraction
            )
        return out


def stray_share_bins(shares: Iterable[float], limit: float) -> dict[str, int]:
    """How many masks have no stray pixel, up to a tenth of ``stray_fraction``, up to it, and
    beyond it (dropped, or failed): whether the palette fits the files, at a glance."""
    edges = [("none", 0.0), (f"<={limit / 10:.3%}", limit / 10), (f"<={limit:.2%}", limit)]
    bins = dict.fromkeys([name for name, _ in edges] + [f">{limit:.2%}"], 0)
    for share in shares:
        name = next((n for n, edge in edges if share <= edge), f">{limit:.2%}")
        bins[name] += 1
    return bins
