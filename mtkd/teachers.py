"""The teacher-network contract: a frozen network whose outputs become a teacher task's labels.

A teacher *network* (a finished mtkd run, an ONNX file, dlib's face descriptor, ...) is not
part of the model: mtkd runs it once per sample, before training, and stores its outputs
beside the sample cache as the label ``teacher/<task key>`` of the task whose recipe block
names it (``tasks.<key>.teacher: {name: ..., ...}``). The task (e.g. ``network_teacher``)
then learns to reproduce those targets from the shared encoder, and the distillation hook
removes it like any teacher task, so the inference model holds no teacher weights. A sample
the network abstains on (no face found, a failed forward) simply lacks the label: the
partial-label machinery leaves it out of that task's loss, and the data report counts it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import ClassVar, Literal

import numpy as np

from .options import Configurable, OptionsT, options_repr
from .samples import LabelSpace

TEACHER_KEY = "teacher"  # the recipe key, inside a task's block, that names a teacher network
Sees = Literal["cached", "source"]
Output = Literal["logits", "embedding"]


def teacher_label_key(task_key: str) -> str:
    """The sample key holding the targets of the teacher network of task ``task_key``."""
    return f"{TEACHER_KEY}/{task_key}"


class TeacherNetwork(Configurable[OptionsT]):
    """Base class of a teacher-network plugin: set the class variables, write :meth:`targets`.

    ``sees`` chooses the images :meth:`targets` receives: ``cached`` — the sample cache's
    uint8 images at ``data.image_size`` (after ``data.preprocess``), what the student sees;
    ``source`` — the data set's own images at full resolution, before any preprocessing (a
    face recogniser that detects and aligns by itself). ``output`` says what the vectors are:
    ``logits`` (class scores; :meth:`names` are the classes) or ``embedding``. Load weights in
    ``__init__`` (safely: no pickle) and raise :class:`mtkd.RecipeError` or
    :class:`mtkd.PluginError` in one line when they are missing or unreadable.
    """

    name: ClassVar[str] = ""  # the registry name: ``tasks.<key>.teacher.name``
    sees: ClassVar[Sees] = "cached"  # the images :meth:`targets` receives: cached or source
    output: Output = "embedding"  # a plugin may set it per instance, from its options
    batch_size: ClassVar[int] = 32  # images per call of ``targets``

    def __init__(self, options: OptionsT, image_size: int) -> None:
        """Load the weights here (no pickle); ``image_size`` is ``data.image_size``."""
        self.options = options
        self.image_size = image_size  # the student's input size (``data.image_size``)
        self.counts: Counter[str] = Counter()  # why samples were abstained on, for the report

    def names(self) -> tuple[str, ...]:
        """One name per output component: the classes of a logits teacher."""
        raise NotImplementedError

    def targets(self, images: Sequence[np.ndarray]) -> list[np.ndarray | None]:
        """One float vector per image (``len(names())`` values), or None to abstain.

        Images are uint8, H x W x 3 (or H x W grey for ``sees = "source"``). A fixed function
        of the image: an online teacher's outputs are remembered by the image's bytes."""
        raise NotImplementedError

    def weights_fingerprint(self) -> str:
        """What identifies the network's weights (e.g. a file's SHA-256): change the weights,
        and cached targets are computed again."""
        return ""

    def fingerprint(self) -> str:
        """The target cache's key part for this teacher: name, options and weights (hashed
        once per instance: a weights file can be large)."""
        found: str | None = getattr(self, "_fingerprint", None)
        if found is None:
            shown = options_repr(self.options)
            found = self._fingerprint = f"{self.name}:{shown}:{self.weights_fingerprint()}"
        return found

    def label_space(self) -> LabelSpace:
        """The meaning of the targets: kind ``logits`` or ``vector`` (an embedding)."""
        kind = "logits" if self.output == "logits" else "vector"
        return LabelSpace(tuple(self.names()), kind=kind)
