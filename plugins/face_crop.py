"""dlib_face_crop: crop every sample to a square around its face, as the paper did with dlib.

The face is found with dlib's HOG frontal detector, its box grown by ``margin`` on each side
(dlib's box spans brows to chin; the paper's crops hold the whole head and hair), made square
and cropped from the image and from every per-pixel label with the same box, padding where the
box leaves the image so the face never shifts off-centre. The engine resizes the crop to
``data.image_size`` afterwards and caches it, so detection runs once per sample per cache build.

dlib is imported (and its detector built) only when the first sample is processed, once per
process: loading the plugin costs nothing, and a machine without dlib can load every other
plugin. Tests swap the detector through the ``detector`` argument.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

import mtkd

Box = tuple[int, int, int, int]
"""left, top, right, bottom in pixels, half-open (``right - left`` is the width)."""

FALLBACKS = ("centre", "whole", "drop")
PICKS = ("largest", "score", "centre")
PADS = ("edge", "black")
MAX_UPSAMPLE = 4  # each step doubles the image side: 4 is already 256x the pixels
MIN_DETECTION_SIDE = 80  # dlib's HOG window: no smaller face is found without upsampling


class Detection(NamedTuple):
    box: Box
    score: float


Detector = Callable[[np.ndarray, int, float], Sequence[Detection]]
"""``detector(image, upsample, min_score)``: faces in a uint8 grey or RGB image."""


@dataclass
class FaceCropOptions:
    margin: float = 0.4  # grow the face box by this fraction of its size on each side
    lift: float = 0.2  # move the square up by this fraction of the box height (keeps the hair)
    upsample: int = 0  # dlib's upsampling count: finds smaller faces, ~4x slower per step
    min_score: float = 0.0  # dlib's adjust_threshold: lower finds more faces (and more errors)
    fallback: str = "centre"  # no face found: centre (square crop), whole (keep), drop (skip)
    pick: str = "largest"  # several faces: largest box, best score, or nearest the centre
    pad: str = "edge"  # where the box leaves the image: repeat edge pixels, or black (0)
    max_side: int | None = None  # detect on a copy downscaled to this side (speed), None: off


@functools.cache
def _dlib_detector() -> Any:
    """dlib's HOG frontal face detector, built on first use, once per process."""
    import dlib

    return dlib.get_frontal_face_detector()


def dlib_detect(image: np.ndarray, upsample: int, min_score: float) -> list[Detection]:
    """Faces found by dlib's HOG detector, as half-open boxes with their scores."""
    rects, scores, _ = _dlib_detector().run(image, upsample, min_score)
    return [
        Detection((r.left(), r.top(), r.right() + 1, r.bottom() + 1), float(s))
        for r, s in zip(rects, scores, strict=True)
    ]


def dlib_version() -> str:
    """The installed dlib's version, read from package metadata (importing dlib is slow)."""
    for dist in ("dlib-bin", "dlib"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


def _round(value: float) -> int:
    """Round half up: Python's round() goes to even, which would make boxes jump by a pixel."""
    return math.floor(value + 0.5)


def square_box(box: Box, margin: float, lift: float = 0.0) -> Box:
    """The square of side ``max(w, h) * (1 + 2 * margin)`` around ``box``'s centre.

    ``lift`` moves it up by that fraction of the box height: dlib's box runs from the brows to
    the chin, so its centre is the nose and a plain square cuts the top of the hair first.
    """
    left, top, right, bottom = box
    side = max(1, _round(max(right - left, bottom - top) * (1 + 2 * margin)))
    x0 = _round((left + right) / 2 - side / 2)
    y0 = _round((top + bottom) / 2 - lift * (bottom - top) - side / 2)
    return (x0, y0, x0 + side, y0 + side)


def centre_box(height: int, width: int) -> Box:
    """The largest square centred in the image."""
    side = min(height, width)
    x0, y0 = (width - side) // 2, (height - side) // 2
    return (x0, y0, x0 + side, y0 + side)


def crop(array: np.ndarray, box: Box, pad: str = "edge") -> np.ndarray:
    """``array[top:bottom, left:right]`` (any trailing channels), padded where the box leaves it.

    The result is always ``(bottom - top, right - left, ...)`` and a copy, so a cached crop
    never keeps the full-size image alive.
    """
    left, top, right, bottom = box
    height, width = array.shape[:2]
    x0, x1 = max(left, 0), min(right, width)
    y0, y1 = max(top, 0), min(bottom, height)
    if x0 >= x1 or y0 >= y1:  # the box misses the image: nothing to repeat
        return np.zeros((bottom - top, right - left, *array.shape[2:]), dtype=array.dtype)
    inner = array[y0:y1, x0:x1]
    widths = [(y0 - top, bottom - y1), (x0 - left, right - x1)] + [(0, 0)] * (array.ndim - 2)
    if not any(before or after for before, after in widths):
        return inner.copy()
    return np.pad(inner, widths, mode="edge" if pad == "edge" else "constant")


def _detection_image(image: np.ndarray) -> np.ndarray:
    """The uint8 grey (H x W) or RGB (H x W x 3) view dlib accepts; alpha is dropped."""
    if image.dtype != np.uint8:
        raise mtkd.DataError(
            f"data.preprocess: dlib_face_crop needs uint8 images, got dtype {image.dtype}"
        )
    if image.ndim == 3 and image.shape[2] in (1, 3, 4):
        image = image[:, :, 0] if image.shape[2] == 1 else image[:, :, :3]
    elif image.ndim != 2:
        raise mtkd.DataError(
            "data.preprocess: dlib_face_crop needs an H x W grey or H x W x 1/3/4 image, "
            f"got shape {image.shape}"
        )
    return np.ascontiguousarray(image)


def _check_choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise mtkd.RecipeError(
            f"data.preprocess: dlib_face_crop.{name} must be one of {', '.join(allowed)}, "
            f"got {value!r}"
        )


class FaceCrop(mtkd.Preprocessor[FaceCropOptions]):
    """Square crop around the detected face; image and per-pixel labels share one box."""

    name = "dlib_face_crop"

    def __init__(
        self, options: FaceCropOptions, image_size: int, *, detector: Detector | None = None
    ) -> None:
        super().__init__(options, image_size)
        _check_choice("fallback", options.fallback, FALLBACKS)
        _check_choice("pick", options.pick, PICKS)
        _check_choice("pad", options.pad, PADS)
        if not (math.isfinite(options.margin) and options.margin >= 0):
            raise mtkd.RecipeError(
                f"data.preprocess: dlib_face_crop.margin must be >= 0, got {options.margin}"
            )
        if not 0 <= options.upsample <= MAX_UPSAMPLE:
            raise mtkd.RecipeError(
                f"data.preprocess: dlib_face_crop.upsample must be 0 to {MAX_UPSAMPLE}, "
                f"got {options.upsample}"
            )
        if not math.isfinite(options.lift):
            raise mtkd.RecipeError(
                f"data.preprocess: dlib_face_crop.lift must be a finite number, got {options.lift}"
            )
        if options.max_side is not None and options.max_side < MIN_DETECTION_SIDE:
            raise mtkd.RecipeError(
                f"data.preprocess: dlib_face_crop.max_side must be >= {MIN_DETECTION_SIDE} "
                f"(dlib finds no face smaller than that), got {options.max_side}"
            )
        if detector is None and importlib.util.find_spec("dlib") is None:
            # fail before the cache build starts, not on the first sample
            raise mtkd.PluginError(
                "data.preprocess: dlib_face_crop needs dlib: pip install dlib-bin (or dlib)"
            )
        # None means dlib, looked up per call: the instance stays small and picklable for
        # data-loader workers, and each process builds its own detector once.
        self.detector = detector

    def fingerprint(self) -> str:
        """Options plus the dlib version: another dlib may find other faces, so re-crop."""
        if self.detector is None:
            detector = "dlib " + dlib_version()
        else:  # its name, not its repr: a memory address would change the key every run
            detector = getattr(self.detector, "__qualname__", type(self.detector).__qualname__)
        return f"{super().fingerprint()}|{detector}"

    def detect(self, image: np.ndarray) -> list[Detection]:
        """Faces in ``image`` (any layout the sample contract allows), in its own pixels."""
        view = _detection_image(np.asarray(image))
        height, width = view.shape[:2]
        scale_x = scale_y = 1.0
        limit = self.options.max_side
        if limit is not None and max(height, width) > limit:
            factor = limit / max(height, width)
            size = (max(1, _round(width * factor)), max(1, _round(height * factor)))
            view = np.asarray(Image.fromarray(view).resize(size, Image.Resampling.BILINEAR))
            scale_x, scale_y = width / size[0], height / size[1]
        detect = self.detector or dlib_detect
        found = detect(view, self.options.upsample, self.options.min_score)
        if scale_x == scale_y == 1.0:
            return list(found)
        return [
            Detection(
                (
                    _round(d.box[0] * scale_x),
                    _round(d.box[1] * scale_y),
                    _round(d.box[2] * scale_x),
                    _round(d.box[3] * scale_y),
                ),
                d.score,
            )
            for d in found
        ]

    def choose(self, faces: Sequence[Detection], height: int, width: int) -> Detection:
        """The face to crop when there are several, as ``pick`` says."""
        if self.options.pick == "score":
            return max(faces, key=lambda d: d.score)
        if self.options.pick == "centre":

            def distance(d: Detection) -> float:
                left, top, right, bottom = d.box
                return math.hypot((left + right - width) / 2, (top + bottom - height) / 2)

            return min(faces, key=distance)
        return max(faces, key=lambda d: (d.box[2] - d.box[0]) * (d.box[3] - d.box[1]))

    def crop_box(self, image: np.ndarray) -> Box | None:
        """The square this step crops from ``image``, or None when it finds no face.

        Counts ``detected`` and ``multiple_faces``; the fallback is the caller's business.
        """
        faces = self.detect(image)
        if not faces:
            return None
        self.counts["detected"] += 1
        if len(faces) > 1:
            self.counts["multiple_faces"] += 1
        height, width = np.asarray(image).shape[:2]
        face = self.choose(faces, height, width)
        return square_box(face.box, self.options.margin, self.options.lift)

    def __call__(self, sample: mtkd.Sample) -> mtkd.Sample | None:
        image = np.asarray(sample["image"])
        height, width = image.shape[:2]
        box = self.crop_box(image)
        if box is None:
            fallback = self.options.fallback
            if fallback == "drop":
                self.counts["dropped"] += 1
                return None
            self.counts[f"fallback_{fallback}"] += 1
            if fallback == "whole":
                return sample
            box = centre_box(height, width)
        if box[0] < 0 or box[1] < 0 or box[2] > width or box[3] > height:
            self.counts["padded"] += 1
        out = dict(sample)
        out["image"] = crop(image, box, self.options.pad)
        for key, value in sample.items():
            if key == "image" or not isinstance(value, np.ndarray):
                continue
            if value.ndim >= 2 and value.shape[:2] == (height, width):
                out[key] = crop(value, box, self.options.pad)
            elif key == "mask":
                raise mtkd.DataError(
                    f"data.preprocess: dlib_face_crop got a mask of shape {value.shape} for an "
                    f"image of {height} x {width}: they cannot share one crop box"
                )
        return out


@mtkd.hookimpl
def register_preprocessors(register: Callable[[type[mtkd.Preprocessor]], None]) -> None:
    register(FaceCrop)
