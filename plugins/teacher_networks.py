"""Teacher networks that need nothing beyond mtkd's own dependencies: a finished mtkd run
(``mtkd_run``, or several as an ensemble) and an ONNX file (``onnx``).

Both see the sample cache's images (what the student sees, at ``data.image_size``), resized
to the teacher's own input size when it differs. Weights are read safely: a run's
safetensors files are checked against their SHA256SUMS by :func:`mtkd.load_run`, an ONNX file
is a protobuf read by onnxruntime; neither ever enters the student's model or its exports.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import mtkd

OUTPUTS = ("logits", "embedding")


def as_batch(images: Sequence[np.ndarray], size: int) -> torch.Tensor:
    """uint8 H x W x 3 images as a float N x 3 x size x size batch in [0, 1]."""
    batch = torch.from_numpy(np.stack([np.asarray(i) for i in images])).permute(0, 3, 1, 2)
    batch = batch.float().div_(255.0)
    if batch.shape[-2:] != (size, size):
        batch = F.interpolate(batch, size=(size, size), mode="bilinear", antialias=True)
    return batch


@dataclass
class RunTeacherOptions:
    path: str = ""  # a finished mtkd run folder
    paths: list[str] = field(default_factory=list)  # more runs: an ensemble (outputs averaged)
    task: str = "identification"  # the run's task whose head output is the target
    output: str = "logits"  # logits | embedding (the key of that head's output)

    def __post_init__(self) -> None:
        mtkd.check_options(
            self,
            [
                ("path", bool(self.path or self.paths), "names no run folder"),
                ("output", self.output in OUTPUTS, f"must be one of {', '.join(OUTPUTS)}"),
            ],
        )


class RunTeacher(mtkd.TeacherNetwork[RunTeacherOptions]):
    """A finished mtkd run's inference model (e.g. ResNet-101-ID teaching MobileNetV2-ID);
    with several runs, the mean of their outputs (an ensemble). A logits teacher's classes
    are the run's; every run of an ensemble must have the same ones."""

    name = "mtkd_run"
    sees = "cached"
    batch_size = 64

    def __init__(self, options: RunTeacherOptions, image_size: int) -> None:
        super().__init__(options, image_size)
        self.output = "logits" if options.output == "logits" else "embedding"
        self.folders = [Path(p) for p in ([options.path] if options.path else []) + options.paths]
        self.models = [self._load(folder) for folder in self.folders]
        self.input_size = self.models[0].encoder.feature_info.image_size
        self._names = self._output_names()

    def _load(self, folder: Path) -> mtkd.MultiTaskModel:
        model = mtkd.load_run(folder)
        if self.options.task not in model.tasks:
            raise mtkd.RecipeError(
                f"run '{folder}' has no task '{self.options.task}' in its inference model "
                f"(it has: {', '.join(model.tasks)}); set task"
            )
        return model

    def _output_names(self) -> tuple[str, ...]:
        task = self.options.task
        if self.output == "embedding":
            width = self._forward([np.zeros((8, 8, 3), np.uint8)]).shape[1]
            return tuple(f"e{i}" for i in range(width))
        spaces = [m.tasks[task].output_space for m in self.models]
        names = [tuple(s.names) if s is not None else () for s in spaces]
        if not names[0] or any(n != names[0] for n in names):
            raise mtkd.RecipeError(
                f"the runs' task '{task}' must output the same classes to be averaged as logits"
            )
        return names[0]

    def names(self) -> tuple[str, ...]:
        return self._names

    @torch.no_grad()
    def _forward(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        batch = as_batch(images, self.input_size)
        outputs = []
        for model in self.models:
            out = model(batch)[self.options.task]
            if isinstance(out, dict):
                if self.options.output not in out:
                    raise mtkd.DataError(
                        f"task '{self.options.task}' outputs {sorted(out)}, not "
                        f"'{self.options.output}'"
                    )
                out = out[self.options.output]
            outputs.append(out.float())
        return torch.stack(outputs).mean(0)

    def targets(self, images: Sequence[np.ndarray]) -> list[np.ndarray | None]:
        return list(self._forward(images).numpy())

    def weights_fingerprint(self) -> str:
        """The digests SHA256SUMS records (``load_run`` checked the files against them)."""
        files = [f / "distilled" / "model.safetensors" for f in self.folders]
        return ",".join(mtkd.weights_sha256(f) for f in files)


@dataclass
class OnnxTeacherOptions:
    path: str = ""  # the .onnx file
    output: str = "embedding"  # logits | embedding: what the chosen graph output holds
    output_name: str | None = None  # which graph output (default: the first)
    classes: list[str] = field(default_factory=list)  # a logits output's class names
    input_size: int | None = None  # default: the graph's fixed input size, else data.image_size
    # input = (pixel / 255 - mean) / std; mtkd's own exports normalise inside the graph
    mean: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    std: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])

    def __post_init__(self) -> None:
        mtkd.check_options(
            self,
            [
                ("path", bool(self.path), "names no .onnx file"),
                ("output", self.output in OUTPUTS, f"must be one of {', '.join(OUTPUTS)}"),
                ("mean", len(self.mean) == 3, "must list 3 values (R, G, B)"),
                ("std", len(self.std) == 3 and min(self.std) > 0, "must list 3 values > 0"),
            ],
        )


class OnnxTeacher(mtkd.TeacherNetwork[OnnxTeacherOptions]):
    """Any ONNX model taking an N x 3 x H x W float image: its chosen output is the target.
    An ``export.json`` beside the file (``mtkd export``) names a logits output's classes."""

    name = "onnx"
    sees = "cached"

    def __init__(self, options: OnnxTeacherOptions, image_size: int) -> None:
        super().__init__(options, image_size)
        import onnxruntime  # an mtkd dependency; imported here so other runs skip it

        self.path = Path(options.path)
        if not self.path.is_file():
            raise mtkd.RecipeError(f"ONNX file '{self.path}' not found")
        self.output = "logits" if options.output == "logits" else "embedding"
        try:
            self.session = onnxruntime.InferenceSession(
                str(self.path), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise mtkd.RecipeError(f"'{self.path}' is not a readable ONNX model ({first})") from exc
        graph_input = self.session.get_inputs()[0]
        self.input_name = graph_input.name
        fixed = graph_input.shape[-1]
        self.input_size = options.input_size or (fixed if isinstance(fixed, int) else image_size)
        outputs = [o.name for o in self.session.get_outputs()]
        self.output_name = options.output_name or outputs[0]
        if self.output_name not in outputs:
            raise mtkd.RecipeError(
                f"'{self.path}' has no output '{self.output_name}' (it has: {', '.join(outputs)})"
            )
        self.mean = np.asarray(options.mean, np.float32).reshape(1, 3, 1, 1)
        self.std = np.asarray(options.std, np.float32).reshape(1, 3, 1, 1)
        self._names = self._output_names()

    def _output_names(self) -> tuple[str, ...]:
        width = self._run([np.zeros((8, 8, 3), np.uint8)]).shape[1]
        names = list(self.options.classes) or self._exported_classes() or []
        if names and len(names) != width:
            raise mtkd.RecipeError(f"classes: {len(names)} names for {width} outputs")
        return tuple(names) if names else tuple(f"e{i}" for i in range(width))

    def _exported_classes(self) -> list[str] | None:
        card = self.path.with_name("export.json")
        if self.output != "logits" or not card.is_file():
            return None
        entry = json.loads(card.read_text()).get(self.path.name, {})
        for output in entry.get("outputs", []) if isinstance(entry, dict) else []:
            if isinstance(output, dict) and output.get("name") == self.output_name:
                classes = output.get("classes")
                return [str(c) for c in classes] if classes else None
        return None

    def _run(self, images: Sequence[np.ndarray]) -> np.ndarray:
        batch = as_batch(images, self.input_size).numpy()
        batch = (batch - self.mean) / self.std
        out = self.session.run([self.output_name], {self.input_name: batch.astype(np.float32)})
        return np.asarray(out[0], dtype=np.float32).reshape(len(images), -1)

    def names(self) -> tuple[str, ...]:
        return self._names

    def targets(self, images: Sequence[np.ndarray]) -> list[np.ndarray | None]:
        return list(self._run(images))

    def weights_fingerprint(self) -> str:
        return mtkd.sha256_file(self.path)


@mtkd.hookimpl
def register_teacher_networks(register: Any) -> None:
    register(RunTeacher)
    register(OnnxTeacher)
