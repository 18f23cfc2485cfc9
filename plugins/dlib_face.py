"""dlib_face: dlib's pretrained face recogniser (128-d descriptor) as a teacher network.

For each sample, on the data set's own full-resolution image (before mtkd crops or resizes
it): find the face with dlib's HOG detector, then (``cnn: true``) its CNN detector where HOG
finds none, then (``fallback: whole``) take the whole image as the face box; align it with
the 5-point landmark model; the descriptor of the 150 x 150 aligned chip is the target. A
sample where no face is found (``fallback: abstain``, the default) lacks the target: the
task's loss leaves it out, and the data report counts it.

The model files come from the ``face_recognition_models`` package (about 100 MB download,
installed by the extra ``mtkd[dlib-teacher]``): ``dlib_face_recognition_resnet_model_v1.dat``
(a 29-layer ResNet, 22.5 MB; 99.38 % on LFW, trained by Davis King on about 3 million faces),
``shape_predictor_5_face_landmarks.dat`` and ``mmod_human_face_detector.dat``. Their author
released them into the public domain; the 68-point predictor in the same package has a
restrictive licence and is not used. The files are located with importlib (the package's own
``__init__`` needs ``pkg_resources``, which recent setuptools no longer has) and read by dlib
(a binary format of its own: no pickle).
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import mtkd

EXTRA = "pip install 'mtkd[dlib-teacher]'"
PACKAGE = "face_recognition_models"
RECOGNISER = "dlib_face_recognition_resnet_model_v1.dat"
LANDMARKS = "shape_predictor_5_face_landmarks.dat"
CNN_DETECTOR = "mmod_human_face_detector.dat"
FALLBACKS = ("abstain", "whole")
DESCRIPTOR_SIZE = 128


def model_folder() -> Path:
    """The folder holding dlib's model files; a one-line error naming the extra if absent."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise mtkd.PluginError(
            f"the dlib_face teacher needs dlib's model files from '{PACKAGE}': {EXTRA}"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    missing = [f for f in (RECOGNISER, LANDMARKS, CNN_DETECTOR) if not (folder / f).is_file()]
    if missing:
        raise mtkd.PluginError(
            f"'{folder}' lacks {', '.join(missing)}: reinstall the model files ({EXTRA})"
        )
    return folder


@functools.cache
def _models(folder: str) -> tuple[Any, Any, Any, Any]:
    """dlib's HOG detector, CNN detector, landmark model and recogniser, once per process."""
    import dlib

    return (
        dlib.get_frontal_face_detector(),
        dlib.cnn_face_detection_model_v1(str(Path(folder) / CNN_DETECTOR)),
        dlib.shape_predictor(str(Path(folder) / LANDMARKS)),
        dlib.face_recognition_model_v1(str(Path(folder) / RECOGNISER)),
    )


@functools.cache
def _weights_sha256(folder: str) -> str:
    files = (RECOGNISER, LANDMARKS, CNN_DETECTOR)
    return ",".join(mtkd.sha256_file(Path(folder) / name) for name in files)


@dataclass
class DlibFaceOptions:
    upsample: int = 1  # HOG and CNN detectors: upsampling steps (finds smaller faces, slower)
    cnn: bool = True  # try the CNN detector where HOG finds no face
    fallback: str = "abstain"  # no face found: abstain (no target) or whole (the whole image)
    jitter: int = 0  # dlib's num_jitters: average over this many jittered chips (slower)
    padding: float = 0.25  # dlib's chip padding around the aligned face

    def __post_init__(self) -> None:
        mtkd.check_options(
            self,
            [
                ("upsample", 0 <= self.upsample <= 3, "must be 0 to 3"),
                ("fallback", self.fallback in FALLBACKS, f"must be one of {', '.join(FALLBACKS)}"),
                ("jitter", self.jitter >= 0, "must be >= 0"),
                ("padding", self.padding >= 0, "must be >= 0"),
            ],
        )


def _rgb(image: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    return np.ascontiguousarray(array[:, :, :3])


def _largest(rects: Sequence[Any]) -> Any:
    return max(rects, key=lambda r: r.width() * r.height())


class DlibFace(mtkd.TeacherNetwork[DlibFaceOptions]):
    """dlib's face descriptor of each sample's full-resolution image (an embedding teacher)."""

    name = "dlib_face"
    sees = "source"
    output = "embedding"
    batch_size = 1

    def __init__(self, options: DlibFaceOptions, image_size: int) -> None:
        super().__init__(options, image_size)
        self.folder = str(model_folder())

    def names(self) -> tuple[str, ...]:
        return tuple(f"d{i}" for i in range(DESCRIPTOR_SIZE))

    def weights_fingerprint(self) -> str:
        return _weights_sha256(self.folder)

    def _face(self, image: np.ndarray) -> Any | None:
        """The face's box: HOG, then the CNN detector, then the whole image (as configured)."""
        import dlib

        hog, cnn, _, _ = _models(self.folder)
        o = self.options
        rects = list(hog(image, o.upsample))
        if rects:
            self.counts["found by HOG"] += 1
            return _largest(rects)
        if o.cnn:
            found = [d.rect for d in cnn(image, o.upsample)]
            if found:
                self.counts["found by CNN"] += 1
                return _largest(found)
        if o.fallback == "whole":
            self.counts["whole image"] += 1
            return dlib.rectangle(0, 0, image.shape[1] - 1, image.shape[0] - 1)
        self.counts["no face"] += 1
        return None

    def descriptor(self, image: np.ndarray) -> np.ndarray | None:
        """The 128-d descriptor of the largest face in ``image``, or None (no face)."""
        rgb = _rgb(image)
        box = self._face(rgb)
        if box is None:
            return None
        _, _, landmarks, recogniser = _models(self.folder)
        shape = landmarks(rgb, box)
        o = self.options
        vector = recogniser.compute_face_descriptor(rgb, shape, o.jitter, o.padding)
        return np.asarray(vector, dtype=np.float32)

    def targets(self, images: Sequence[np.ndarray]) -> list[np.ndarray | None]:
        return [self.descriptor(image) for image in images]


@mtkd.hookimpl
def register_teacher_networks(register: Any) -> None:
    register(DlibFace)
