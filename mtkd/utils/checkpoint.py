"""Checkpoints: weights as safetensors, optimizer state as a weights-only torch file, a JSON
sidecar for counters. Every file is written to a temporary name and renamed, so a crash never
leaves a half-written checkpoint under the real name; every weights file gets a SHA-256 line in
its folder's ``SHA256SUMS`` (see :mod:`mtkd.utils.checksums`), checked when it is loaded.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from ..errors import MtkdError
from . import checksums
from .files import (
    WriteError,
    is_disk_full,
    space_note,
    strict_json_value,
    write_bytes_atomic,
    write_text_atomic,
)
from .layout import OPTIMIZER, RNG, STATE, WEIGHTS, best_weights, previous_of

NON_FINITE = "non_finite"  # the key listing values that were NaN or Inf, written as null


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


def safetensors_bytes(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> bytes:
    """A safetensors file as bytes that depend only on the tensors and metadata.

    safetensors writes its header's metadata in hash-map order, which changes from one
    process to the next; the header is rewritten here as compact JSON with sorted keys
    (offsets are relative to the data, so the tensor bytes stay as they are)."""
    data = safetensors.torch.save(dict(tensors), metadata=dict(metadata) if metadata else None)
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the format pads its header to 8 bytes with spaces
    return len(text).to_bytes(8, "little") + text + data[8 + length :]


def _write_file(path: Path, data: bytes, checksum: bool) -> None:
    """Write ``data`` atomically; with ``checksum``, its SHA-256 line goes in ``SHA256SUMS``."""
    if not checksum:
        write_bytes_atomic(path, data)
        return
    old = checksums.expected(path)
    checksums.forget(path)  # a crash after this leaves the file unverified, never "corrupt"
    try:
        write_bytes_atomic(path, data)
    except WriteError:
        if old is not None:  # the file under the real name is still the old one
            with contextlib.suppress(MtkdError):
                checksums.record(path, old)
        raise
    checksums.record(path, checksums.sha256_bytes(data))


def save_weights(
    model: nn.Module,
    path: Path,
    metadata: dict[str, str] | None = None,
    *,
    checksum: bool = True,
) -> None:
    """The model's weights as safetensors, hashed while written (``checksum``)."""
    data = safetensors_bytes(state_dict_for_saving(model), metadata)
    _write_file(Path(path), data, checksum)


def save_tensors(obj: Any, path: Path, *, checksum: bool = True) -> None:
    """A plain-tensor torch file (read back with ``weights_only=True``), hashed while written."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    _write_file(Path(path), buffer.getvalue(), checksum)


def check_finite(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Refuse weights holding NaN or Inf: they would only show up as NaN losses or outputs."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise MtkdError(f"weights file '{path}' holds NaN or Inf values (in '{name}'): refused")


def load_safetensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A safetensors file's tensors: checked against its checksum, then for NaN and Inf.

    The file is read once: the bytes read are hashed and then parsed."""
    path = Path(path)
    if not path.is_file():
        raise MtkdError(f"weights file '{path}' not found")
    try:
        data = checksums.read_verified(path)
        state = safetensors.torch.load(data)
    except checksums.ChecksumError:
        raise
    except Exception as exc:
        raise MtkdError(f"weights file '{path}' is unreadable or corrupt: {exc}") from exc
    check_finite(state, path)
    if torch.device(device).type == "cpu":
        return state
    return {k: v.to(device) for k, v in state.items()}


def load_weights(model: nn.Module, path: Path, strict: bool = True) -> None:
    """Load safetensors weights; a mismatch names the file and the differing keys."""
    state = load_safetensors(Path(path))
    result = model.load_state_dict(state, strict=False)
    if strict and (result.missing_keys or result.unexpected_keys):
        raise MtkdError(
            f"weights file '{path}' does not fit the model: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )


def load_best_state(
    run_dir: Path, device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor] | None:
    """The best weights so far of a run being resumed (``checkpoints/best.safetensors``).

    None when the run has none yet. A corrupt file (checksum, NaN/Inf, unreadable) stops the
    resume with one line: continuing would end the run with weights that are not its best.
    """
    path = best_weights(run_dir)
    if not path.is_file():
        checksums.forget(path)  # deleted (as the message below advises): its line goes too
        return None
    try:
        return load_safetensors(path, device)
    except MtkdError as exc:
        raise MtkdError(
            f"cannot resume: {exc}. The best weights so far are lost; delete that file to "
            "resume anyway (the run then ends with the best of the epochs still to come, "
            "or with the last epoch's weights if none is left), "
            "or start the run afresh with --force"
        ) from exc


def write_json(path: Path, data: Any, *, list_non_finite: bool = False) -> None:
    """Strict JSON, written atomically: NaN and Inf become ``null``; with ``list_non_finite``
    (an object only) their dotted keys are listed under ``non_finite``, as in metrics.jsonl,
    so a reader can tell "not finite" from "not measured"."""
    clean, bad = strict_json_value(data)
    if list_non_finite and bad and isinstance(clean, dict):
        clean[NON_FINITE] = bad
    text = json.dumps(clean, indent=2, sort_keys=False, default=str, allow_nan=False)
    write_text_atomic(Path(path), text + "\n")


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a (nested) state: about what a checkpoint of it takes."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _checkpoint_error(directory: Path, exc: BaseException, needed: int) -> MtkdError:
    """One line: what failed, where, the free space needed, and what is kept."""
    cause = exc.__cause__ if isinstance(exc, WriteError) and exc.__cause__ else exc
    detail = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause)
    space = f"; {space_note(directory.parent, needed)}" if is_disk_full(cause) else ""
    kept = (
        f"'{directory}' still holds the last good one"
        if directory.exists()
        else "no earlier checkpoint is kept"
    )
    return MtkdError(f"cannot write a checkpoint in '{directory.parent}': {detail}{space}; {kept}")


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
    message (and the free space needed) while the last good checkpoint stays untouched.
    """
    staging = directory.with_name(directory.name + ".tmp")
    optimizer_state = {"optimizer": optimizer.state_dict(), **(extra or {})}
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        save_weights(model, staging / WEIGHTS)
        save_tensors(optimizer_state, staging / OPTIMIZER)
        save_tensors(rng_state or {}, staging / RNG)
        write_json(staging / STATE, state)
    except (OSError, RuntimeError, WriteError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, RuntimeError) and not is_disk_full(exc):
            raise
        needed = _tensor_bytes(model.state_dict()) + _tensor_bytes(optimizer_state)
        raise _checkpoint_error(directory, exc, needed) from exc
    previous = previous_of(directory)
    shutil.rmtree(previous, ignore_errors=True)
    if directory.exists():
        os.replace(directory, previous)
    os.replace(staging, directory)


def _read_state(path: Path, required: Sequence[str]) -> dict[str, Any]:
    """``state.json``, which must be an object holding ``required`` (else ValueError)."""
    state = json.loads(path.read_text())
    if not isinstance(state, dict):
        raise ValueError(f"'{path}' is not a JSON object")
    missing = [key for key in required if key not in state]
    if missing:
        raise ValueError(f"'{path}' lacks {', '.join(missing)}")
    return state


def load_checkpoint(
    directory: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    required: Sequence[str] = (),
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], list[str]]:
    """(state, extra, rng state, notes) of the newest readable checkpoint.

    ``directory`` is tried first, then ``<directory>.previous``; ``notes`` says why a
    checkpoint was passed over (truncated or corrupt files, a checksum mismatch, a
    ``state.json`` without the ``required`` keys). Tensors load with ``weights_only=True``:
    a file that would run code is refused, never executed.
    """
    notes: list[str] = []
    for candidate in (directory, previous_of(directory)):
        if not (candidate / STATE).is_file():
            notes.append(f"'{candidate}': no checkpoint there")
            continue
        try:
            state = _read_state(candidate / STATE, required)
            load_weights(model, candidate / WEIGHTS)
            saved = _load_tensors(candidate / OPTIMIZER)
            if optimizer is not None:
                optimizer.load_state_dict(saved.pop("optimizer"))
            return state, saved, _load_tensors(candidate / RNG), notes
        except (MtkdError, ValueError, OSError, KeyError) as exc:
            notes.append(f"'{candidate}' is unreadable: {exc}")
    raise MtkdError("no usable checkpoint: " + "; ".join(notes))


def _load_tensors(path: Path) -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True``: a file that would run code is refused."""
    data = checksums.read_verified(path)  # a mismatch is its own error, named as such
    try:
        return dict(torch.load(io.BytesIO(data), weights_only=True))
    except Exception as exc:
        raise MtkdError(
            f"checkpoint file '{path}' refused: not a plain tensor file ({type(exc).__name__})"
        ) from exc
