"""Predict identities and compute embeddings for image files with a run's inference model.

An image goes through exactly what a training image went through: decoded with Pillow, the
recipe's ``data.preprocess`` steps (e.g. the dlib face crop), the sample cache's resize to
``data.image_size`` and the training tensor conversion (uint8 → float in [0, 1]); the model
normalises it itself. Any difference here would be a silent train/test mismatch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..config import load_recipe
from ..data.build import build_preprocessors
from ..data.resize import resize_image
from ..errors import MtkdError, SampleError
from ..model.embedding import embed_with_flip
from ..plugins import PluginSet
from ..runs.folder import load_run, require_run_folder
from ..runs.trust import run_folder_plugins
from ..samples import Sample, sample_to_tensors
from ..utils.layout import CONFIG

# Grey files stay H x W, as data-set readers deliver them (the face crop accepts grey; the
# cache's resize makes them RGB); 16-bit grey is scaled, since convert("L") would clip it.
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})

Prediction = list[tuple[str, float]]


def read_image(path: str | Path) -> np.ndarray:
    """An image file as uint8 (H x W grey or H x W x 3 RGB); any failure is a SampleError."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()  # decode now, so a truncated file fails here with its name
            if im.mode in _SIXTEEN_BIT_MODES:
                return (np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8)
            return np.asarray(im.convert("L" if im.mode in _GREY_MODES else "RGB"))
    except FileNotFoundError as exc:
        raise SampleError(path, "image file not found") from exc
    except IsADirectoryError as exc:
        raise SampleError(path, "image path is a folder, not a file") from exc
    except UnidentifiedImageError as exc:
        raise SampleError(path, "not an image file Pillow can read") from exc
    except Image.DecompressionBombError as exc:
        raise SampleError(path, "image is too large to decode safely") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        detail = str(exc).replace(str(path), "").strip(" :'") or type(exc).__name__
        raise SampleError(path, f"corrupt image ({detail})") from exc


def _chunks(items: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Predictor:
    """A run folder's distilled model with the recipe's preprocessing, for image files.

    ``task`` is the identification task's key in the recipe; its head must return
    ``{"logits", "embedding"}``. Images are processed ``batch_size`` at a time. Plugins the
    run folder's config.yaml names load only with ``trust_plugins`` (or MTKD_TRUST_PLUGINS=1).
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        task: str = "identification",
        device: str | torch.device = "cpu",
        batch_size: int = 32,
        plugins: PluginSet | None = None,
        trust_plugins: bool = False,
    ) -> None:
        self.run_dir = require_run_folder(run_dir)
        self.cfg = load_recipe(self.run_dir / CONFIG)
        if plugins is None:  # the folder's own plugins only when trusted (mtkd.runs.trust)
            plugins = run_folder_plugins(
                list(self.cfg.plugins), self.run_dir / CONFIG, trust=trust_plugins
            )
        self.model = load_run(self.run_dir, plugins=plugins)
        if task not in self.model.tasks:
            raise MtkdError(
                f"run '{self.run_dir}' has no task '{task}' in its inference model "
                f"(it has: {', '.join(self.model.tasks) or 'none'})"
            )
        space = self.model.tasks[task].output_space
        if space is None or space.kind not in ("class", "vector"):
            raise MtkdError(f"task '{task}' of run '{self.run_dir}' has no class names")
        self.task = task
        self.names: tuple[str, ...] = space.names  # the classes, or a vector's components
        self.kind = space.kind
        self.device = torch.device(device)
        self.model.to(self.device)
        self.batch_size = max(1, int(batch_size))
        self.image_size = int(self.cfg.data.image_size)
        self.preprocessors = build_preprocessors(self.cfg, plugins)

    def load(self, path: str | Path) -> torch.Tensor:
        """One file as the model's input (3, S, S) in [0, 1], exactly as training saw it."""
        sample: Sample | None = {"image": read_image(path)}
        for step in self.preprocessors:
            assert sample is not None
            sample = step(sample)
            if sample is None:
                raise SampleError(
                    path, f"preprocessing step '{step.name}' dropped it (e.g. no face found)"
                )
        assert sample is not None
        mode = str(self.cfg.data.get("resize", "squash"))  # as the run was trained
        image = resize_image(np.asarray(sample["image"]), self.image_size, mode)
        return sample_to_tensors({"image": image}, {})["image"]

    @torch.inference_mode()
    def _outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.model(images.to(self.device))[self.task]
        if not isinstance(out, dict) or not {"logits", "embedding"} <= set(out):
            raise MtkdError(
                f"task '{self.task}' does not return 'logits' and 'embedding' "
                "(is it an identification task? choose one with task=...)"
            )
        return {"logits": out["logits"].float().cpu(), "embedding": out["embedding"].float().cpu()}

    def _batches(self, paths: Sequence[str | Path]) -> Iterator[torch.Tensor]:
        files = [Path(p) for p in paths]
        for chunk in _chunks(files, self.batch_size):
            yield torch.stack([self.load(p) for p in chunk])

    def embed(self, paths: Sequence[str | Path], *, flip: bool = True) -> np.ndarray:
        """L2-normalised embeddings (N, D) float32, by the rule verification scores with
        (:func:`~mtkd.model.embedding.embed_with_flip`): with ``flip``, the image's and
        its mirror's raw embeddings summed, then normalised, which steadies them against pose."""
        rows = [
            embed_with_flip(lambda x: self._outputs(x)["embedding"], images, flip=flip)
            for images in self._batches(paths)
        ]
        if not rows:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        return np.concatenate(rows).astype(np.float32, copy=False)

    @property
    def embedding_dim(self) -> int:
        """The embedding's size, read from the head (128 in the paper's recipes)."""
        zeros = torch.zeros(1, 3, self.image_size, self.image_size)
        return int(self._outputs(zeros)["embedding"].shape[1])

    @torch.inference_mode()
    def _vector(self, images: torch.Tensor) -> torch.Tensor:
        out = self.model(images.to(self.device))[self.task]
        value = self.model.tasks[self.task].predictions(out)
        if not isinstance(value, torch.Tensor) or tuple(value.shape[1:]) != (len(self.names),):
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise MtkdError(
                f"task '{self.task}' outputs {shape}, not one value per component "
                f"({', '.join(self.names)})"
            )
        return value.float().cpu()

    def predict(self, paths: Sequence[str | Path], top_k: int = 5) -> list[Prediction]:
        """Per image, the ``top_k`` most probable identities (name, softmax probability),
        most probable first; for a task with a ``vector`` output (a regression), each
        component's name and predicted value, in the output's order (``top_k`` unused)."""
        if top_k < 1:
            raise MtkdError(f"top_k must be at least 1, got {top_k}")
        if self.kind == "vector":
            return [
                list(zip(self.names, map(float, row), strict=True))
                for images in self._batches(paths)
                for row in self._vector(images).tolist()
            ]
        k = min(top_k, len(self.names))
        results: list[Prediction] = []
        for images in self._batches(paths):
            probs = self._outputs(images)["logits"].softmax(dim=1)
            values, indices = probs.topk(k, dim=1)
            for row_v, row_i in zip(values.tolist(), indices.tolist(), strict=True):
                results.append(
                    [(self.names[i], float(v)) for v, i in zip(row_v, row_i, strict=True)]
                )
        return results
