"""Checkpoints: weights as safetensors, optimizer state as a weights-only torch file, a JSON
sidecar for counters. Every file is written to a temporary name and renamed, so a crash never
leaves a half-written checkpoint under the real name.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import MtkdError


def _atomic(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def state_dict_for_saving(model: nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies; tied tensors are cloned so safetensors accepts them."""
    seen: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        ptr = tensor.data_ptr()
        t = tensor.detach().cpu()
        out[name] = t.clone().contiguous() if ptr in seen else t.contiguous()
        seen.add(ptr)
    return out


def save_weights(model: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    state = state_dict_for_saving(model)
    _atomic(path, lambda tmp: save_file(state, str(tmp), metadata=metadata))


def load_weights(model: nn.Module, path: Path, strict: bool = True) -> None:
    """Load safetensors weights; a mismatch names the file and the differing keys."""
    if not path.is_file():
        raise MtkdError(f"weights file '{path}' not found")
    try:
        state = load_file(str(path))
    except Exception as exc:
        raise MtkdError(f"weights file '{path}' is unreadable or corrupt: {exc}") from exc
    result = model.load_state_dict(state, strict=False)
    if strict and (result.missing_keys or result.unexpected_keys):
        raise MtkdError(
            f"weights file '{path}' does not fit the model: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )


def write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, sort_keys=False, default=str)
    _atomic(path, lambda tmp: tmp.write_text(text + "\n"))


def previous_of(directory: Path) -> Path:
    """Where the checkpoint before ``directory``'s current one is kept."""
    return directory.with_name(directory.name + ".previous")


def save_checkpoint(
    directory: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    extra: dict[str, Any] | None = None,
    rng_state: dict[str, Any] | None = None,
) -> None:
    """``model.safetensors``, ``optimizer.pt`` (+ ``extra``), ``rng.pt`` and ``state.json``.

    The files are written into a sibling staging folder that then takes ``directory``'s place;
    the checkpoint it replaces is kept as ``<directory>.previous``. A crash at any moment
    leaves a complete checkpoint, and a full disk or a permission error stops the run with a
    message while the last good checkpoint stays untouched.
    """
    staging = directory.with_name(directory.name + ".tmp")
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        save_weights(model, staging / "model.safetensors")
        optimizer_state = {"optimizer": optimizer.state_dict(), **(extra or {})}
        torch.save(optimizer_state, staging / "optimizer.pt")
        torch.save(rng_state or {}, staging / "rng.pt")
        write_json(staging / "state.json", state)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        kept = f"'{directory}' still holds the last good one" if directory.exists() else "none"
        raise MtkdError(f"cannot write a checkpoint next to '{directory}': {exc}; {kept}") from exc
    previous = previous_of(directory)
    shutil.rmtree(previous, ignore_errors=True)
    if directory.exists():
        os.replace(directory, previous)
    os.replace(staging, directory)


def load_checkpoint(
    directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], list[str]]:
    """(state, extra, rng state, notes) of the newest readable checkpoint.

    ``directory`` is tried first, then ``<directory>.previous``; ``notes`` says why a
    checkpoint was passed over (truncated or corrupt files). Tensors load with
    ``weights_only=True``: a file that would run code is refused, never executed.
    """
    notes: list[str] = []
    for candidate in (directory, previous_of(directory)):
        if not (candidate / "state.json").is_file():
            notes.append(f"'{candidate}': no checkpoint there")
            continue
        try:
            state = json.loads((candidate / "state.json").read_text())
            load_weights(model, candidate / "model.safetensors")
            saved = _load_tensors(candidate / "optimizer.pt")
            if optimizer is not None:
                optimizer.load_state_dict(saved.pop("optimizer"))
            return state, saved, _load_tensors(candidate / "rng.pt"), notes
        except (MtkdError, ValueError, OSError, KeyError) as exc:
            notes.append(f"'{candidate}' is unreadable: {exc}")
    raise MtkdError("no usable checkpoint: " + "; ".join(notes))


def _load_tensors(path: Path) -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True``: a file that would run code is refused."""
    try:
        return dict(torch.load(path, weights_only=True))
    except Exception as exc:
        raise MtkdError(
            f"checkpoint file '{path}' refused: not a plain tensor file ({type(exc).__name__})"
        ) from exc
