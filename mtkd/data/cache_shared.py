"""A sample cache built by several machines that see one file system (``data.cache_fs:
shared`` under torchrun), each with its own cores.

Global rank 0's machine, the coordinator, builds in a partial folder named after the launch
(``.<cache>.shared-<job>.partial``), locked as any build is, and writes its layout
(``job.json``) there once the folder is ready. Every other machine waits for that file (or for
the finished cache), claims and builds shards with its own worker processes until none is left
unclaimed, then waits for the coordinator to merge them and swap the cache in. A failed shard
stops every machine with that shard's error; a coordinator that fails leaves its error in a
one-line note beside the cache (``.<cache>.shared-<job>.ended``) for the others to repeat, and
one that dies (its lock comes free, and its heartbeat stops) ends the others' wait with an
error that says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from ..errors import DataError
from ..preprocess import Preprocessor
from ..samples import SampleSource
from . import cache_parallel
from .cache_parallel import FAILED, JOB_FILE, SharedBuild, first_error, join_parallel
from .cache_store import ended_note, holds_lock, is_complete, partial_path

POLL_S = 0.2


def shared_tag(shared: SharedBuild) -> str:
    """The partial folder's tag: the same on every machine of one launch."""
    return f"shared-{shared.job}"


@contextmanager
def telling_others_why(folder: Path, shared: SharedBuild) -> Iterator[None]:
    """The coordinator's build: when it fails, a one-line note beside the cache says why, so
    that every other machine stops with the same line (even one that arrives after the
    coordinator has cleaned up)."""
    try:
        yield
    except BaseException as exc:
        note = ended_note(partial_path(folder.parent, folder.name, shared_tag(shared)))
        with suppress(OSError):
            note.write_text(str(exc) or type(exc).__name__)
        raise


def _check_ended(folder: Path, partial: Path) -> None:
    """Raise the coordinator's own error, when it left one (see :func:`telling_others_why`)."""
    note = ended_note(partial)
    if note.is_file() and not is_complete(folder):
        try:
            why = note.read_text().strip()
        except OSError:
            why = "see its log"
        raise DataError(
            f"sample cache '{folder}': the machine of rank 0 stopped the shared build: {why}"
        )


def _wait_for_layout(folder: Path, partial: Path, shared: SharedBuild) -> bool:
    """Wait until the coordinator has laid its build out (True) or finished it (False)."""
    deadline = time.monotonic() + shared.timeout_s
    while not (partial / JOB_FILE).is_file():
        if is_complete(folder):
            return False
        _check_ended(folder, partial)
        if time.monotonic() > deadline:
            raise DataError(
                f"sample cache '{folder}': waited {shared.timeout_s:.0f} s for the machine of "
                f"rank 0 to start the shared build in '{partial}'. Is data.cache_dir on a file "
                "system every machine sees? If not, set data.cache_fs=local"
            )
        time.sleep(POLL_S)
    return True


class _Coordinator:
    """Whether the coordinator still builds ``partial``. Where file locks are shared between
    machines (it holds its lock when this machine joins), a free lock means it is gone; where
    they are not (NFS mounted with ``local_lock``, some cloud file stores), its heartbeat is
    the sign: the layout file touched lately (see :class:`.cache_parallel.Heartbeat`), as this
    machine's own clock measures."""

    def __init__(self, folder: Path, partial: Path) -> None:
        self.folder, self.partial = folder, partial
        self.locks_shared = holds_lock(partial)
        self.seen: int | None = None
        self.changed = self.checked = time.monotonic()

    def _beating(self) -> bool:
        try:
            mtime: int | None = (self.partial / JOB_FILE).stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if mtime != self.seen:
            self.seen, self.changed = mtime, time.monotonic()
        return time.monotonic() - self.changed < 2.5 * cache_parallel.HEARTBEAT_S

    def check(self) -> None:
        """Raise when the coordinator has stopped without a cache (looks once a second)."""
        if time.monotonic() - self.checked < 1.0:
            return
        self.checked = time.monotonic()
        _check_ended(self.folder, self.partial)
        alive = holds_lock(self.partial) if self.locks_shared else self._beating()
        if not alive and not is_complete(self.folder):
            raise DataError(
                f"sample cache '{self.folder}': the machine of rank 0 ended the shared build "
                f"in '{self.partial}' without a cache; its log says why"
            )


def _wait_for_cache(folder: Path, partial: Path, shards: int, coordinator: _Coordinator) -> None:
    """Wait until the coordinator has swapped the cache in; a shard's error, or the
    coordinator's end without a cache, is raised here too."""
    while not is_complete(folder):
        if (partial / FAILED).exists():
            error = first_error(partial, shards)
            if error is not None:
                raise error
        coordinator.check()
        time.sleep(POLL_S)


def join_shared(
    source: SampleSource,
    steps: Sequence[Preprocessor],
    settings: tuple[int, str, str],
    folder: Path,
    progress: Callable[[int, int], None],
    workers: int,
    shared: SharedBuild,
) -> None:
    """Help the coordinator build the cache ``folder``; return once it is there."""
    partial = partial_path(folder.parent, folder.name, shared_tag(shared))
    if not _wait_for_layout(folder, partial, shared):
        return
    coordinator = _Coordinator(folder, partial)
    try:
        shards = join_parallel(
            source,
            steps,
            settings,
            partial,
            progress,
            workers,
            shared,
            watch=coordinator.check,
        )
    except FileNotFoundError:  # its layout is gone: merged already, or its builder died
        shards = 0
    except DataError:
        if partial.exists():
            raise  # this machine's own failure (a worker died)
        shards = 0  # the folder went away under our workers: the wait below says why
    _wait_for_cache(folder, partial, shards, coordinator)
