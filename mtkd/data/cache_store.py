"""The sample cache on disk: where it lives, how a folder is built safely, and its check.

A cache folder is built in a hidden ``.<name>.<pid>.partial`` folder while this process holds
a lock file beside it, then swapped in by one rename. A build that was killed leaves its
partial folder with a lock nobody holds: the next build removes it (one whose writer is alive
still holds its lock and is left alone). Opening a folder checks that every array it names is
there, whole and of the recorded shape; one that fails is rebuilt rather than read.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock, Timeout

from ..errors import DataError

PARTIAL = ".partial"
LOCK = ".lock"
# a partial folder without a lock file (written before locks existed) counts as abandoned
# once it is this old: no build takes a day
ABANDONED_AFTER_S = 24 * 3600.0
ENDED = ".ended"  # a note a failed shared build leaves for the other machines (one line)
ENDED_KEPT_S = 2 * 3600.0  # long after every machine has read it


class CacheDamaged(DataError):
    """A cache folder that fails its check: missing, truncated or inconsistent files."""

    def __init__(self, folder: Path, reason: str) -> None:
        super().__init__(f"sample cache '{folder}': {reason}")
        self.folder, self.reason = folder, reason


def default_cache_dir() -> Path:
    """``$MTKD_CACHE_DIR``, else ``$XDG_CACHE_HOME/mtkd``, else ``~/.cache/mtkd``."""
    if os.environ.get("MTKD_CACHE_DIR"):
        return Path(os.environ["MTKD_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mtkd"


def _lock_file(partial: Path) -> Path:
    return partial.with_name(partial.name + LOCK)


def _remove_if_abandoned(partial: Path, now: float) -> bool:
    """Remove ``partial`` when no live process writes it: its lock is free (or, without a
    lock file, it is older than a day). Returns whether it was removed."""
    lock_file = _lock_file(partial)
    if not lock_file.exists():
        try:
            old = now - partial.stat().st_mtime > ABANDONED_AFTER_S
        except OSError:
            return False
        if old:
            shutil.rmtree(partial, ignore_errors=True)
        return old
    lock = FileLock(lock_file)
    try:
        lock.acquire(timeout=0)
    except (Timeout, OSError):
        return False  # its writer is alive (or the lock cannot be checked): leave it
    try:
        shutil.rmtree(partial, ignore_errors=True)
    finally:
        lock.release()
        with suppress(OSError):
            lock_file.unlink()
    return True


def remove_abandoned_partials(root: Path, keep: str | None = None) -> list[Path]:
    """Partial folders of killed builds under ``root``, removed; the ones removed. A folder
    tagged ``keep`` (the shared build this machine is about to join) is never one: where
    locks are local to each machine, its builder's lock would look free from here."""
    if not root.is_dir():
        return []
    now = time.time()
    for note in root.glob(f".*{ENDED}"):
        with suppress(OSError):
            if now - note.stat().st_mtime > ENDED_KEPT_S:
                note.unlink()
    partials = sorted(root.glob(f".*{PARTIAL}"))
    if keep is not None:
        partials = [p for p in partials if not p.name.endswith(f".{keep}{PARTIAL}")]
    return [p for p in partials if _remove_if_abandoned(p, now)]


def partial_path(root: Path, name: str, tag: str) -> Path:
    """Where ``name`` is built: a hidden folder beside it, told apart by ``tag``."""
    return root / f".{name}.{tag}{PARTIAL}"


def ended_note(partial: Path) -> Path:
    """Where a failed shared build in ``partial`` says why, for the other machines."""
    return partial.with_name(partial.name.removesuffix(PARTIAL) + ENDED)


def holds_lock(partial: Path) -> bool:
    """Whether a live process (on any machine, where the file system shares locks) still
    writes ``partial``: its lock file is locked. A free one is left for the next build's
    clean-up, which removes the folder with it (see :func:`remove_abandoned_partials`)."""
    lock_file = _lock_file(partial)
    if not lock_file.exists():
        return False
    lock = FileLock(lock_file)
    try:
        lock.acquire(timeout=0)
    except (Timeout, OSError):
        return True
    lock.release()
    return False


@contextmanager
def partial_folder(root: Path, name: str, tag: str | None = None) -> Iterator[Path]:
    """An empty hidden folder to build ``name`` in (named by ``tag``, by default this
    process's id), locked for as long as this process writes it; whatever is left of it
    afterwards (nothing, once swapped in) is removed."""
    partial = partial_path(root, name, tag or str(os.getpid()))
    lock = FileLock(_lock_file(partial))
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock.acquire()
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
    except OSError as exc:
        lock.release()
        message = f"data.cache_dir: cannot write the sample cache in '{root}': {exc}"
        raise DataError(message) from exc
    try:
        yield partial
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        lock.release()
        with suppress(OSError):
            _lock_file(partial).unlink()


def discard(folder: Path) -> None:
    """Move a damaged cache folder out of the way (one rename, so a reader never sees half a
    folder), then delete it; another process may have done either already."""
    trash = folder.with_name(f".{folder.name}.{os.getpid()}.damaged")
    try:
        os.replace(folder, trash)
    except OSError:
        if not folder.exists():
            return
        trash = folder  # cannot rename: delete in place
    shutil.rmtree(trash, ignore_errors=True)


def is_complete(folder: Path) -> bool:
    """Whether ``folder`` is a swapped-in cache (its ``meta.json`` is written last)."""
    return (folder / "meta.json").is_file()


def read_meta(folder: Path) -> dict[str, Any]:
    """``meta.json`` of a cache folder, parsed; damage raises :class:`CacheDamaged`."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CacheDamaged(folder, f"meta.json cannot be read ({exc})") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("n"), int):
        raise CacheDamaged(folder, "meta.json does not describe a cache")
    return meta


def load_array(folder: Path, name: str, n: int, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """The first ``n`` rows of ``<name>.npy``, memory-mapped, after checking that the file is
    whole and holds at least ``n`` rows (of ``shape`` each, when given)."""
    path = folder / f"{name}.npy"
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError) as exc:
        raise CacheDamaged(folder, f"{path.name} cannot be read ({exc})") from exc
    if array.ndim == 0 or array.shape[0] < n or (shape is not None and array.shape[1:] != shape):
        raise CacheDamaged(
            folder, f"{path.name} holds an array of shape {array.shape}, not {n} rows of {shape}"
        )
    return array[:n]
