"""Checkpoints: weights as safetensors, optimizer state as a weights-only torch file, a JSON
sidecar for counters. Every file is written to a temporary name and renamed, so a crash never
leaves a half-written checkpoint under the real name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import MtkdError


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


def save_checkpoint(
    directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """``model.safetensors`` + ``optimizer.pt`` + ``state.json`` in ``directory``."""
    save_weights(model, directory / "model.safetensors")
    _atomic(directory / "optimizer.pt", lambda tmp: torch.save(optimizer.state_dict(), tmp))
    write_json(directory / "state.json", state)


def load_checkpoint(
    directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> dict[str, Any]:
    load_weights(model, directory / "model.safetensors")
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(directory / "optimizer.pt", weights_only=True))
    return json.loads((directory / "state.json").read_text())
