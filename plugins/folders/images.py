"""Safe decoding of image and label files: every way a file can fail becomes a SampleError.

Indexing never opens a file (it only lists and stats); these readers run in ``__getitem__``,
so one bad file costs one sample under the engine's ``data.on_error`` policy instead of a
crash. Reasons are short fixed phrases so the engine can count skipped samples by reason.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

import mtkd

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
    | {".pgm", ".ppm", ".pbm", ".pnm"}
)
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"})
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
INDEX_MODES = frozenset({"1", "L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N"})

T = TypeVar("T")


def is_image_file(path: Path) -> bool:
    """Whether a file name looks like an image Pillow reads (by suffix: no file is opened)."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def _decode(path: Path, what: str, convert: Callable[[Image.Image], T]) -> T:
    """Open, fully load and convert one file, turning every decoding failure into a SampleError."""
    try:
        with Image.open(path) as im:
            im.load()  # decode now: a truncated file fails here, not later in a worker
            return convert(im)
    except mtkd.SampleError:
        raise
    except FileNotFoundError as exc:
        raise mtkd.SampleError(path, f"{what} file not found") from exc
    except IsADirectoryError as exc:
        raise mtkd.SampleError(path, f"{what} path is a folder, not a file") from exc
    except UnidentifiedImageError as exc:
        raise mtkd.SampleError(path, f"{what} file is in no format Pillow can read") from exc
    except Image.DecompressionBombError as exc:
        raise mtkd.SampleError(path, f"{what} is too large to decode safely") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        message = str(exc).replace(str(path), "").strip(" :'") or type(exc).__name__
        if "truncated" in message.lower():
            message = "truncated"
        raise mtkd.SampleError(path, f"{what} is corrupt ({message})") from exc


def read_image(path: Path) -> np.ndarray:
    """The image as uint8: H x W for grey files (kept grey), H x W x 3 for everything else."""

    def convert(im: Image.Image) -> np.ndarray:
        if im.mode in SIXTEEN_BIT_MODES:  # convert("L") would clip, not scale
            return (np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8)
        return np.asarray(im.convert("L" if im.mode in GREY_MODES else "RGB"))

    return _decode(path, "image", convert)


def read_colour_label(path: Path) -> np.ndarray:
    """A colour label image as uint8 H x W x 3 RGB (palette PNGs expanded to their colours)."""
    return _decode(path, "mask", lambda im: np.asarray(im.convert("RGB")))


def read_index_label(path: Path) -> np.ndarray:
    """A label image holding class indices, as an integer H x W array of the stored values.

    Palette PNGs give their raw indices; an RGB file is accepted only when it is grey (all
    channels equal), since colours would need a palette (use palette_folder for those).
    """

    def convert(im: Image.Image) -> np.ndarray:
        if im.mode in INDEX_MODES:
            return np.asarray(im).astype(np.int64)
        rgb = np.asarray(im.convert("RGB"))
        if not (
            np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])
        ):
            raise mtkd.SampleError(
                path, f"mask is a colour ({im.mode}) image, not class indices (use palette_folder)"
            )
        return rgb[..., 0].astype(np.int64)

    return _decode(path, "mask", convert)
