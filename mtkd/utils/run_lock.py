"""One process at a time trains a run folder.

Two processes writing the same run folder (a study started twice to use two cores or GPUs, a
``mtkd resume`` typed while the run still trains) would interleave checkpoints and results
silently. Each claim takes an exclusive, non-blocking ``flock`` on a hidden file beside the
folder (``runs/.<name>.lock``, never inside it: a new run may clear its folder), which the
kernel releases when the holder exits however it dies, so a killed run never leaves a stale
lock. The lock file is never deleted (deleting it would let two processes lock two files).
A claim is re-entrant within one process: the study holds a member's folder, and the run it
starts claims the same folder again.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import MtkdError


class RunFolderBusy(MtkdError):
    """Another live process trains this run folder."""

    def __init__(self, run_dir: Path, holder: str) -> None:
        self.run_dir = run_dir
        self.holder = holder
        super().__init__(
            f"'{run_dir}' is being trained by another process ({holder}); wait for it to "
            "finish or stop it, then run this again"
        )


_held: dict[Path, int] = {}  # folder -> how many claims this process holds on it


def lock_path(run_dir: str | Path) -> Path:
    """The lock file of a run folder: beside it, hidden."""
    path = Path(run_dir).absolute()
    return path.parent / f".{path.name}.lock"


@contextmanager
def claim_run_folder(run_dir: str | Path) -> Iterator[None]:
    """Hold ``run_dir`` for this process, or raise :class:`RunFolderBusy` naming the holder."""
    key = Path(run_dir).absolute()
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    path = lock_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "pid unknown"
            raise RunFolderBusy(Path(run_dir), holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
        _held[key] = 1
        try:
            yield
        finally:
            del _held[key]
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing the descriptor releases the lock
