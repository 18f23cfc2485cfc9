"""Atomic file writes: a file appears under its real name complete or not at all.

Every writer stages the file under a temporary name beside the target and renames it into
place. A failure (a full disk, a permission error) removes the staged file and stops with one
line naming the file and, for a full disk, the free space the write needed.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..errors import MtkdError


class WriteError(MtkdError):
    """A file could not be written (full disk, read-only folder, permission)."""


def megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def free_bytes(folder: Path) -> int | None:
    """Free space where ``folder`` (or its nearest existing parent) lives; None if unknown."""
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free
            except OSError:
                return None
    return None


def space_note(folder: Path, needed: int | None) -> str:
    """'it needs about X MB free, Y MB are' (as much of that as is known)."""
    free = free_bytes(folder)
    parts = []
    if needed is not None:
        parts.append(f"it needs about {megabytes(needed)} free")
    if free is not None:
        parts.append(f"{megabytes(free)} are free in '{folder}'")
    return ", ".join(parts)


def is_disk_full(exc: BaseException) -> bool:
    """An OS error for a full disk or quota, or torch's writer failing (it hides the errno)."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(exc, RuntimeError) and "write" in str(exc).lower()


def atomic_write(path: Path, write: Callable[[Path], object], size: int | None = None) -> None:
    """Call ``write(tmp)`` then rename ``tmp`` to ``path``; ``size`` (bytes) for the message."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, RuntimeError) and not is_disk_full(exc):
            raise
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        note = f"; {space_note(path.parent, size)}" if is_disk_full(exc) else ""
        raise WriteError(f"cannot write '{path}': {detail}{note}") from exc


def write_bytes_atomic(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data), size=len(data))


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def strict_json_value(data: Any, where: str = "") -> tuple[Any, list[str]]:
    """``data`` with every NaN and Inf float replaced by ``None``, and the dotted paths of
    those values: NaN and Inf are not JSON, and a bare ``NaN`` breaks every strict reader
    (browsers, jq, other languages) of what mtkd writes."""
    if isinstance(data, float) and not math.isfinite(data):
        return None, [where or "."]
    if isinstance(data, Mapping):
        out: dict[Any, Any] = {}
        bad: list[str] = []
        for key, value in data.items():
            out[key], found = strict_json_value(value, f"{where}.{key}" if where else str(key))
            bad += found
        return out, bad
    if isinstance(data, list | tuple):
        items = [strict_json_value(v, f"{where}[{i}]") for i, v in enumerate(data)]
        return [v for v, _ in items], [b for _, found in items for b in found]
    return data, []


def strict_json(data: Any, **dumps: Any) -> str:
    """``json.dumps`` that never writes NaN or Inf (they become ``null``)."""
    clean, _ = strict_json_value(data)
    return json.dumps(clean, allow_nan=False, **dumps)


def read_json_object(path: Path, what: str, error: type[MtkdError] = MtkdError) -> dict[str, Any]:
    """A JSON file that must hold an object (results, cards): one line naming ``what`` and
    the file when it cannot be read, is not JSON, or holds something else."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise error(f"{what} '{path}' is corrupt or unreadable: {exc}") from exc
    if not isinstance(data, dict):
        raise error(f"{what} '{path}' is corrupt: a JSON {type(data).__name__}, not an object")
    return data
