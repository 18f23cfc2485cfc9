"""How an image of any shape becomes the model's square input, and its per-pixel labels with it.

``squash`` (the paper's, the default) scales width and height separately, so a 450 x 512
portrait is distorted by 12 %. ``center_crop`` keeps the middle square, ``top_crop`` the top
square of a tall image (head-and-shoulders portraits keep the head; a wide image is cropped
in the middle), ``pad`` adds black borders (class 0 in label maps) to make a square. Every
mode then resizes: bilinear for images, nearest for class ids.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..data_schema import check_resize_mode
from ..errors import DataError


def _crop_box(height: int, width: int, mode: str) -> tuple[int, int, int]:
    """(top, left, side) of the square a crop mode keeps."""
    side = min(height, width)
    left = (width - side) // 2
    top = 0 if mode == "top_crop" else (height - side) // 2
    return top, left, side


def make_square(array: np.ndarray, mode: str) -> np.ndarray:
    """``array`` (H x W or H x W x C) cut or padded to a square as ``mode`` says; ``squash``
    and already-square arrays come back unchanged (the same object)."""
    height, width = array.shape[:2]
    if mode == "squash" or height == width:
        return array
    if mode == "pad":
        side = max(height, width)
        top, left = (side - height) // 2, (side - width) // 2
        out = np.zeros((side, side, *array.shape[2:]), dtype=array.dtype)
        out[top : top + height, left : left + width] = array
        return out
    top, left, side = _crop_box(height, width, check_resize_mode(mode))
    return array[top : top + side, left : left + side]


def resize_image(image: np.ndarray, size: int, mode: str = "squash") -> np.ndarray:
    """3-channel uint8 at ``size`` x ``size``: how every cached (and predicted-on) image is made."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.dtype != np.uint8:
        raise DataError(f"images must be uint8, got {image.dtype}")
    image = make_square(image, mode)
    if image.shape[:2] == (size, size):
        return image
    resized = Image.fromarray(np.ascontiguousarray(image)).resize(
        (size, size), Image.Resampling.BILINEAR
    )
    return np.asarray(resized)


def resize_label(value: np.ndarray, size: int, mode: str = "squash") -> np.ndarray:
    """Per-pixel class ids (H x W) at ``size`` x ``size``, nearest neighbour."""
    value = make_square(value, mode)
    if value.shape == (size, size):
        return value
    if value.max(initial=0) > 255 or value.min(initial=0) < 0:
        raise DataError(f"per-pixel labels must be class ids in 0..255, got {value.max()}")
    resized = Image.fromarray(value.astype(np.uint8)).resize((size, size), Image.Resampling.NEAREST)
    return np.asarray(resized)
