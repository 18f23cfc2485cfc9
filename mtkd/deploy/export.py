"""Export a run's inference (distilled) model as ONNX, TorchScript or safetensors.

Every format gets the same treatment: the dict-returning model is wrapped so the artefact has
flat, named outputs (``identification.logits``, ``identification.embedding``) and one input
``image`` (float RGB in [0, 1], dynamic batch; the encoder normalises it itself). The artefact
is written under a temporary name, reloaded the way a user would load it, and run on the same
random batch as PyTorch; only when every output agrees within ``TOLERANCE`` is it renamed into
place, so a file under the real name has always passed that check. ``export.json`` beside it
records, per artefact, the input, the outputs, their class names and the differences measured.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from rich.console import Console
from torch import nn

from ..config import recipe_from_dict
from ..console import make_console
from ..errors import MtkdError
from ..model.build import build_model
from ..model.multitask import MultiTaskModel
from ..plugins import PluginSet
from ..runs.folder import load_run, read_label_spaces, require_run_folder
from ..samples import LabelSpace
from ..utils import checksums
from ..utils.checkpoint import load_weights, save_weights, write_json
from ..utils.layout import CONFIG, EXPORT

EMBEDDING = "embedding"  # a head output that is an embedding ...
FLIP_EMBEDDING = "flip_embedding"  # ... and the output added beside it: mtkd's embedding rule
FLIP_RULE = "L2-normalise(embedding(image) + embedding(mirrored image)), as mtkd embed"
FORMATS: dict[str, str] = {"onnx": ".onnx", "torchscript": ".pt", "safetensors": ".safetensors"}
TOLERANCE = 1e-4  # max abs difference allowed between an artefact and PyTorch
INPUT_NAME = "image"
EXPORT_INFO = "export.json"
SIDECAR_VERSION = 1
_TRACE_BATCH = 2  # the example batch the graph is captured with ...
_CHECK_BATCH = 3  # ... and a different one for the check, so a fixed batch size would fail


class FlatOutputs(nn.Module):
    """``model(image)`` as a tuple of tensors in ``output_names`` order (exporters want flat).

    The structure is read from one dry forward pass: a head returning a tensor gives the
    output ``<task>``, a head returning a dict gives ``<task>.<key>`` per entry. The model is
    put in eval mode: exports are for inference (BatchNorm uses its running statistics).
    """

    def __init__(
        self, model: MultiTaskModel, image_size: int, *, flip_embedding: bool = True
    ) -> None:
        super().__init__()
        self.model = model.eval()
        self.image_size = image_size
        with torch.no_grad():
            sample = model(torch.zeros(1, 3, image_size, image_size))
        paths: list[tuple[str, str | None]] = []
        for task, value in sample.items():
            if isinstance(value, torch.Tensor):
                paths.append((task, None))
            elif isinstance(value, Mapping) and all(
                isinstance(v, torch.Tensor) for v in value.values()
            ):
                paths.extend((task, str(key)) for key in value)
            else:
                raise MtkdError(
                    f"task '{task}' returns {type(value).__name__}; export needs a tensor or a "
                    "dict of tensors per task"
                )
        self.paths: tuple[tuple[str, str | None], ...] = tuple(paths)
        # the embedding mtkd embed, Predictor.embed and verification use, inside the graph
        self.flip_tasks: tuple[str, ...] = (
            tuple(task for task, key in paths if key == EMBEDDING) if flip_embedding else ()
        )
        self.output_names: tuple[str, ...] = tuple(
            task if key is None else f"{task}.{key}" for task, key in paths
        ) + tuple(f"{task}.{FLIP_EMBEDDING}" for task in self.flip_tasks)
        self.output_shapes: tuple[tuple[int, ...], ...] = tuple(
            tuple(_pick(sample, task, key).shape[1:]) for task, key in paths
        ) + tuple(tuple(_pick(sample, task, EMBEDDING).shape[1:]) for task in self.flip_tasks)
        self.eval()

    @property
    def output_paths(self) -> tuple[tuple[str, str | None], ...]:
        """(task, key) of every output, in ``output_names`` order."""
        return self.paths + tuple((task, FLIP_EMBEDDING) for task in self.flip_tasks)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(image)
        flat = tuple(_pick(out, task, key) for task, key in self.paths)
        if not self.flip_tasks:
            return flat
        mirrored = self.model(torch.flip(image, dims=(-1,)))
        return flat + tuple(
            F.normalize(_pick(out, t, EMBEDDING) + _pick(mirrored, t, EMBEDDING), dim=1)
            for t in self.flip_tasks
        )

    def class_names(self) -> dict[str, list[str] | None]:
        """Class names along dim 1 of each output: logits-like outputs only, else None."""
        names: dict[str, list[str] | None] = {}
        for name, (task, key), shape in zip(
            self.output_names, self.output_paths, self.output_shapes, strict=True
        ):
            space = self.model.tasks[task].output_space
            logits_like = key in (None, "logits") and len(shape) >= 1
            if space is not None and space.kind == "class" and logits_like:
                names[name] = list(space.names) if shape[0] == len(space.names) else None
            else:
                names[name] = None
        return names

    def component_names(self) -> dict[str, list[str] | None]:
        """Names along dim 1 of each vector output (a regression head's ``x``, ``y``): the
        components of a ``vector`` output space whose size the output has, else None."""
        names: dict[str, list[str] | None] = {}
        for name, (task, key), shape in zip(
            self.output_names, self.output_paths, self.output_shapes, strict=True
        ):
            space = self.model.tasks[task].output_space
            vector = space is not None and space.kind == "vector" and key is None
            if space is not None and vector and len(shape) >= 1 and shape[0] == len(space.names):
                names[name] = list(space.names)
            else:
                names[name] = None
        return names


def _pick(out: Mapping[str, Any], task: str, key: str | None) -> torch.Tensor:
    value = out[task]
    return value if key is None else value[key]


def _reference_batch(image_size: int, batch: int = _CHECK_BATCH) -> torch.Tensor:
    """The same random images every time (seeded), in the model's input range [0, 1]."""
    generator = torch.Generator().manual_seed(0)
    return torch.rand(batch, 3, image_size, image_size, generator=generator)


def max_abs_diffs(
    names: Sequence[str],
    expected: Sequence[torch.Tensor],
    actual: Sequence[torch.Tensor | np.ndarray],
) -> dict[str, float]:
    """Max absolute difference per output (inf when shapes differ, so the check fails)."""
    diffs: dict[str, float] = {}
    for name, want, got in zip(names, expected, actual, strict=True):
        got_t = torch.as_tensor(np.asarray(got) if not isinstance(got, torch.Tensor) else got)
        if got_t.shape != want.shape:
            diffs[name] = float("inf")
        else:
            diffs[name] = float((got_t.float() - want.float()).abs().max()) if want.numel() else 0.0
    return diffs


def _check_parity(diffs: Mapping[str, float], what: str) -> None:
    bad = {k: v for k, v in diffs.items() if not v < TOLERANCE}  # NaN fails too
    if bad:
        shown = ", ".join(f"{k}: {v:.3g}" for k, v in bad.items())
        raise MtkdError(
            f"{what} does not match PyTorch (max abs diff ≥ {TOLERANCE:g}: {shown}); "
            "the artefact was not written"
        )


def _write_checked(
    path: Path, write: Callable[[Path], None], check: Callable[[Path], dict[str, float]]
) -> dict[str, float]:
    """Write to a temporary name, check it, then rename: no unchecked file under ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        diffs = check(tmp)
        checksums.forget(path)  # a crash before the new line leaves it unverified, not "corrupt"
        os.replace(tmp, path)
        checksums.record(path, checksums.sha256_file(path))
    finally:
        tmp.unlink(missing_ok=True)
    return diffs


def export_onnx(flat: FlatOutputs, path: Path) -> dict[str, float]:
    """ONNX through the dynamo exporter (one self-contained file), checked in onnxruntime."""
    try:
        import onnxruntime as ort
        import onnxscript  # noqa: F401  (the dynamo exporter needs it; fail early and clearly)
    except ImportError as exc:
        raise MtkdError(
            f"ONNX export needs onnx, onnxscript and onnxruntime ({exc.name} is missing): "
            "pip install onnx onnxscript onnxruntime"
        ) from exc
    names, image_size = flat.output_names, flat.image_size

    def write(tmp: Path) -> None:
        example = _reference_batch(image_size, _TRACE_BATCH)
        try:
            program = torch.onnx.export(
                flat,
                (example,),
                input_names=[INPUT_NAME],
                output_names=list(names),
                dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch")}},
                dynamo=True,
                verbose=False,
            )
        except Exception as exc:
            raise MtkdError(f"ONNX export failed: {type(exc).__name__}: {exc}") from exc
        assert program is not None
        program.model.metadata_props["mtkd.outputs"] = json.dumps(list(names))
        program.save(tmp, external_data=False)

    def check(tmp: Path) -> dict[str, float]:
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        batch = _reference_batch(image_size)
        got = session.run(list(names), {INPUT_NAME: batch.numpy()})
        with torch.no_grad():
            want = flat(batch)
        diffs = max_abs_diffs(names, want, got)
        _check_parity(diffs, "the ONNX model in onnxruntime")
        return diffs

    return _write_checked(path, write, check)


def export_torchscript(flat: FlatOutputs, path: Path) -> dict[str, float]:
    """A traced TorchScript module (output names stored in it), checked after reloading."""
    names, image_size = flat.output_names, flat.image_size

    def write(tmp: Path) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit")
            traced = torch.jit.trace(
                flat, (_reference_batch(image_size, _TRACE_BATCH),), check_trace=False
            )
            extra = {"mtkd_outputs.json": json.dumps(list(names))}
            torch.jit.save(traced, str(tmp), _extra_files=extra)

    def check(tmp: Path) -> dict[str, float]:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit")
            loaded = torch.jit.load(str(tmp), map_location="cpu")
        batch = _reference_batch(image_size)
        with torch.no_grad():
            got, want = loaded(batch), flat(batch)
        diffs = max_abs_diffs(names, want, got)
        _check_parity(diffs, "the reloaded TorchScript module")
        return diffs

    return _write_checked(path, write, check)


def sidecar_path(weights: Path) -> Path:
    """``model.safetensors`` → ``model.json``: the recipe and labels needed to rebuild."""
    return weights.with_suffix(".json")


def export_safetensors(
    flat: FlatOutputs,
    path: Path,
    config: Mapping[str, Any],
    label_spaces: Mapping[str, LabelSpace],
) -> dict[str, float]:
    """Weights plus a JSON sidecar; the check rebuilds the model from those two files alone."""
    model, image_size = flat.model, flat.image_size
    sidecar = {
        "format": "mtkd-safetensors",
        "version": SIDECAR_VERSION,
        "tasks": list(model.tasks),
        "config": dict(config),
        "label_spaces": {k: v.to_dict() for k, v in label_spaces.items()},
    }
    meta_path = sidecar_path(path)
    meta_tmp = meta_path.with_name(f".{meta_path.name}.tmp")

    def write(tmp: Path) -> None:
        save_weights(model, tmp, checksum=False)  # recorded under the real name once renamed
        write_json(meta_tmp, sidecar)

    def check(tmp: Path) -> dict[str, float]:
        rebuilt = load_exported(tmp, sidecar=meta_tmp)
        batch = _reference_batch(image_size)
        with torch.no_grad():
            got, want = FlatOutputs(rebuilt, image_size)(batch), flat(batch)
        diffs = max_abs_diffs(flat.output_names, want, got)
        _check_parity(diffs, "the model rebuilt from the safetensors export")
        os.replace(meta_tmp, meta_path)  # the weights are renamed right after this returns
        return diffs

    try:
        return _write_checked(path, write, check)
    finally:
        meta_tmp.unlink(missing_ok=True)


def load_exported(
    path: str | Path, *, sidecar: str | Path | None = None, plugins: PluginSet | None = None
) -> MultiTaskModel:
    """Rebuild a safetensors export from its weights and JSON sidecar (no run folder needed).

    The mtkd plugins that define its tasks must be installed; pretrained weights are never
    fetched, since every weight comes from the file.
    """
    path = Path(path)
    meta_path = Path(sidecar) if sidecar is not None else sidecar_path(path)
    if path.suffix in (FORMATS["onnx"], FORMATS["torchscript"]):
        raise MtkdError(
            f"'{path}': load ONNX files with onnxruntime and TorchScript files with "
            "torch.jit.load; load_exported rebuilds safetensors exports"
        )
    if not meta_path.is_file():
        raise MtkdError(f"'{path}': its sidecar '{meta_path}' (recipe and labels) is missing")
    try:
        meta = json.loads(meta_path.read_text())
        config, spaces_raw, kept = meta["config"], meta["label_spaces"], meta["tasks"]
    except (ValueError, KeyError, TypeError) as exc:
        raise MtkdError(f"'{meta_path}' is not an mtkd export sidecar: {exc}") from exc
    cfg = recipe_from_dict(config)
    cfg.encoder.pretrained = False
    cfg.encoder.weights = None
    spaces = {k: LabelSpace.from_dict(v) for k, v in spaces_raw.items()}
    model = build_model(cfg, spaces, plugins)
    model = model.without_tasks([k for k in model.tasks if k not in kept])
    load_weights(model, path)
    return model.eval()


def default_export_path(run_dir: Path, fmt: str) -> Path:
    return run_dir / EXPORT / f"model{FORMATS[fmt]}"


def _record(
    path: Path, fmt: str, run_dir: Path, flat: FlatOutputs, diffs: Mapping[str, float]
) -> None:
    """Add this artefact's entry to ``export.json`` beside it (one entry per file name)."""
    info_path = path.parent / EXPORT_INFO
    try:
        entries = json.loads(info_path.read_text()) if info_path.is_file() else {}
    except ValueError:
        entries = {}
    if not isinstance(entries, dict):
        entries = {}
    classes, components = flat.class_names(), flat.component_names()
    entries[path.name] = {
        "format": fmt,
        "file": path.name,
        "run": str(run_dir.resolve()),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "torch": torch.__version__,
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", 3, flat.image_size, flat.image_size],
            "dtype": "float32",
            "range": [0.0, 1.0],
            "channels": "RGB (normalised inside the model)",
        },
        "outputs": [
            _output_entry(name, shape, classes[name], components[name])
            for name, shape in zip(flat.output_names, flat.output_shapes, strict=True)
        ],
        "max_abs_diff": dict(diffs),
        "tolerance": TOLERANCE,
    }
    write_json(info_path, entries)


def _output_entry(
    name: str, shape: Sequence[int], classes: list[str] | None, components: list[str] | None
) -> dict[str, Any]:
    """One output in export.json: its shape, and what dim 1 holds (class names, or the
    components of a vector such as a regression's ``x``, ``y``)."""
    entry: dict[str, Any] = {"name": name, "shape": ["batch", *shape], "classes": classes}
    if components is not None:
        entry["components"] = components
    if name.endswith(f".{FLIP_EMBEDDING}"):
        entry["rule"] = FLIP_RULE
    return entry


def export_run(
    run_dir: str | Path,
    fmt: str,
    out: str | Path | None = None,
    *,
    console: Console | None = None,
    plugins: PluginSet | None = None,
    trust_plugins: bool = False,
    flip_embedding: bool = True,
) -> Path:
    """Export a run's distilled model; default ``<run>/export/model.<ext>``. Returns the file.

    Beside each ``<task>.embedding`` the artefact outputs ``<task>.flip_embedding``: the image's
    and its mirror's embeddings summed and L2-normalised, the vectors ``mtkd embed``,
    ``Predictor.embed`` and verification use (a second forward pass on the mirrored image;
    ``flip_embedding=False`` leaves it out).

    Raises ``MtkdError`` when the artefact's outputs differ from PyTorch's by ``TOLERANCE`` or
    more (nothing is written then). ``out`` may be a file or an existing folder. The file's
    SHA-256 goes into ``SHA256SUMS`` beside it. Plugins the run folder names load only with
    ``trust_plugins`` (see :mod:`mtkd.runs.trust`).
    """
    if fmt not in FORMATS:
        raise MtkdError(f"export format '{fmt}' is not one of {', '.join(FORMATS)}")
    run_dir = require_run_folder(run_dir)
    cfg = OmegaConf.load(run_dir / CONFIG)
    model = load_run(run_dir, plugins=plugins, trust_plugins=trust_plugins)
    flat = FlatOutputs(model, int(cfg.data.image_size), flip_embedding=flip_embedding)
    path = Path(out) if out is not None else default_export_path(run_dir, fmt)
    if path.is_dir():
        path = path / f"model{FORMATS[fmt]}"
    if fmt == "onnx":
        diffs = export_onnx(flat, path)
    elif fmt == "torchscript":
        diffs = export_torchscript(flat, path)
    else:
        config = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(config, dict)
        diffs = export_safetensors(
            flat, path, {str(k): v for k, v in config.items()}, read_label_spaces(run_dir)
        )
    _record(path, fmt, run_dir, flat, diffs)
    console = console if console is not None else make_console()
    for name, diff in diffs.items():
        console.print(f"max abs diff {name}: {diff:.3g}", highlight=False)
    console.print(f"exported {fmt}: {path}", highlight=False)
    return path
