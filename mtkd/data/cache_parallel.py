"""The sample cache built by several processes: contiguous shards, then an ordered merge.

Which samples survive (``on_error=skip``, a preprocessor that drops) is only known once a
sample is processed, so a worker writes each kept image at its *source* row of the final
``images.npy`` and its labels into small shard-local arrays; the parent then moves the kept
image rows down in place (nothing moves when nothing was skipped), copies the labels to their
final rows and adds up the counts. The result is the one-process build byte for byte: the same
rows, the same label dtypes (taken from the first sample that has the label, as the serial
build does) and the same report. The parent holds no per-sample images, so its memory stays
flat; workers die with the parent (a killed build leaves a partial folder that the next build
removes), and a worker's error or death reaches the user as one :class:`DataError`.

A *shared* build (``shared=True``, see :mod:`.cache_shared`) is split between machines that see
one file system: each shard is claimed by creating a file (``O_EXCL``, atomic on NFS too), and
a shard writes its images into its own folder rather than into rows of a file other machines
write (page-sized writes of two machines could overwrite each other's rows); the merge copies
them into place.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing as mp
import os
import pickle
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, RecipeError
from ..preprocess import Preprocessor
from ..samples import SampleSource
from .resize import resize_image
from .rows import RowFile
from .sample_steps import DataReport, label_array, preprocess_sample, read_sample

MIN_AUTO_SHARD = 64  # with data.cache_workers: null, a worker gets at least this many samples
SHARDS_PER_WORKER = 4  # more shards than workers: a slow shard does not hold up the others
MAX_SHARD = 2048  # samples: a shard's labels are held whole, so memory stays flat in n
_NOT_FAILED = 2**62


def available_cores() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def cache_workers(setting: int | None, n: int) -> int:
    """How many processes build a cache of ``n`` samples: ``setting``, or with None the cores
    available, each with at least ``MIN_AUTO_SHARD`` samples (small sets stay in-process)."""
    if setting is None:
        return max(1, min(available_cores(), n // MIN_AUTO_SHARD))
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise RecipeError(f"data.cache_workers: '{setting}' is not a whole number >= 1 or null")
    return max(1, min(setting, n))


def _label_dtype(array: np.ndarray) -> np.dtype[Any]:
    """The serial build's dtype for a label whose first value is ``array``."""
    if array.ndim == 2:
        return np.dtype(np.uint8)  # per-pixel class ids
    return np.dtype(np.float32) if array.dtype.kind == "f" else np.dtype(np.int64)


def _local_dtype(array: np.ndarray) -> np.dtype[Any]:
    """Shard-local storage that any later cast to the final dtype reproduces exactly."""
    return np.dtype(np.uint8) if array.ndim == 2 else np.dtype(np.float64)


@dataclass
class _FirstLabel:
    index: int  # the source index of the first sample with this label, in the shard
    position: int  # its place among that sample's keys (the serial build's dict order)
    shape: tuple[int, ...]
    dtype: str  # the serial build's dtype


@dataclass
class ShardResult:
    """What one shard produced, beside the rows it wrote (pickled into its folder)."""

    kept: np.ndarray
    skipped: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)
    labels: dict[str, _FirstLabel] = field(default_factory=dict)
    preprocess_delta: list[Counter[str]] = field(default_factory=list)
    source_delta: dict[str, Any] = field(default_factory=dict)
    error: BaseException | None = None


def _delta(after: Any, before: Any) -> Any:
    """``after - before`` for report values: numbers, or dicts of them (others: ``after``)."""
    if isinstance(after, dict):
        base = before if isinstance(before, dict) else {}
        return {k: _delta(v, base.get(k)) for k, v in after.items()}
    if isinstance(after, int | float) and not isinstance(after, bool):
        return after - (before if isinstance(before, int | float) else 0)
    return after


def add_counts(total: dict[str, Any], delta: dict[str, Any]) -> None:
    """Add a report delta into ``total`` (numbers summed, dicts merged key by key)."""
    for key, value in delta.items():
        if isinstance(value, dict):
            inner = total.setdefault(key, {})
            if isinstance(inner, dict):
                add_counts(inner, value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            old = total.get(key, 0)
            total[key] = (old if isinstance(old, int | float) else 0) + value
        else:
            total.setdefault(key, value)


@dataclass
class _Job:
    source: SampleSource
    steps: Sequence[Preprocessor]
    size: int
    on_error: str
    resize: str
    folder: Path  # holds images.npy (all n rows) and one shard-<i> folder per shard
    bounds: list[tuple[int, int]]
    parent: int
    next_shard: Any = None  # multiprocessing.Value
    failed: Any = None  # the lowest failed shard
    done: Any = None  # multiprocessing.Array: samples processed, per shard
    shared: bool = False  # machines split the shards by claim files (see the module's doc)
    stall_s: float = 1800.0  # a shared build waits this long for another machine's shard
    member: str = ""  # who this machine is in a shared build's claims (its rank)


def _die_with_parent(parent: int) -> None:
    """Ask Linux to kill this worker when the parent dies (and check it has not already)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        os._exit(1)


def _shard_dir(folder: Path, shard: int) -> Path:
    return folder / f"shard-{shard:05d}"


def _result_path(folder: Path, shard: int) -> Path:
    return _shard_dir(folder, shard) / "result.pickle"


FAILED = "failed"  # a shared build's marker: some shard failed, every machine stops claiming
CLAIMS = "claims"  # a shared build's folder of claim files, one per shard taken
JOB_FILE = "job.json"  # a shared build's layout, written last: other machines may join
HEARTBEAT_S = 10.0  # a shared build's worker touches its claim this often while it builds


def _claim_path(folder: Path, shard: int) -> Path:
    return folder / CLAIMS / f"shard-{shard:05d}"


def _claim(folder: Path, shard: int, member: str) -> bool:
    """Whether this process now owns ``shard`` of a shared build (the first to create its
    claim file does; the file names the member, machine and process, for whoever looks)."""
    try:
        fd = os.open(_claim_path(folder, shard), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except (FileExistsError, FileNotFoundError):  # taken, or the build is being merged
        return False
    with os.fdopen(fd, "w") as out:
        out.write(f"{member or socket.gethostname()}\t{socket.gethostname()} {os.getpid()}\n")
    return True


def claimed_by(folder: Path) -> dict[int, tuple[str, str]]:
    """Who claimed each shard of a shared build: (member, ``host pid``), by shard."""
    claims = {}
    for path in sorted((folder / CLAIMS).glob("shard-*")):
        member, _, process = path.read_text().strip().partition("\t")
        claims[int(path.name.removeprefix("shard-"))] = (member, process)
    return claims


def close_shared(folder: Path) -> Counter[str]:
    """Remove a merged shared build's claims and layout (so the folder holds what the
    one-process build writes); the shards each member built."""
    built = Counter(member for member, _ in claimed_by(folder).values())
    (folder / JOB_FILE).unlink(missing_ok=True)  # (an empty data set is built in-process)
    shutil.rmtree(folder / CLAIMS, ignore_errors=True)
    return built


def _next_shard(job: _Job) -> int | None:
    """The next shard this worker builds, or None when none is left (or one failed)."""
    while True:
        with job.next_shard.get_lock():
            shard = job.next_shard.value
            job.next_shard.value += 1
        if shard >= len(job.bounds) or job.failed.value < shard:
            return None
        if not job.shared:
            return shard
        if (job.folder / FAILED).exists():
            return None
        if _claim(job.folder, shard, job.member):
            return shard


class _ShardLabels:
    """A shard's labels: their values in shard-local files, and which rows have each."""

    def __init__(self, folder: Path, lo: int, hi: int, result: ShardResult) -> None:
        self.folder, self.lo, self.hi, self.result = folder, lo, hi, result
        self.values: dict[str, RowFile] = {}
        self.present: dict[str, np.ndarray] = {}

    def put(
        self, index: int, sample: dict[str, Any], image_shape: tuple[int, ...], job: _Job
    ) -> None:
        for position, (key, value) in enumerate(sample.items()):
            if key == "image" or value is None:
                continue
            array = label_array(value, image_shape, job.size, job.resize)
            if key not in self.values:
                self.result.labels[key] = _FirstLabel(
                    index, position, tuple(array.shape), _label_dtype(array).str
                )
                shape = (self.hi - self.lo, *array.shape)
                self.values[key] = RowFile(
                    self.folder / f"label-{key}.npy", _local_dtype(array), shape
                )
                self.present[key] = np.zeros(self.hi - self.lo, bool)
            if array.shape != self.values[key].shape[1:]:
                raise DataError(
                    f"label '{key}' has shape {array.shape} here but "
                    f"{self.values[key].shape[1:]} in earlier samples"
                )
            self.values[key][index - self.lo] = array
            self.present[key][index - self.lo] = True

    def close(self) -> None:
        for key, flags in self.present.items():
            self.values[key].close()
            np.save(self.folder / f"present-{key}.npy", flags)


def _run_shard(job: _Job, shard: int) -> ShardResult:
    lo, hi = job.bounds[shard]
    local = _shard_dir(job.folder, shard)
    local.mkdir()
    if job.shared:  # this shard's own file, kept rows first
        images = RowFile(local / "images.npy", np.dtype(np.uint8), (hi - lo, job.size, job.size, 3))
    else:  # the final file, at the samples' source rows
        images = RowFile(job.folder / "images.npy", create=False)
    counts_before = [Counter(p.counts) for p in job.steps]
    source_before = dict(job.source.report())
    report = DataReport(source=job.source.name, total=0)
    result = ShardResult(kept=np.zeros(0, np.int64))
    labels = _ShardLabels(local, lo, hi, result)
    kept: list[int] = []
    beat = time.monotonic()
    for index in range(lo, hi):
        if os.getppid() != job.parent:
            os._exit(1)  # the parent is gone (where the kernel cannot tell us)
        if job.shared and time.monotonic() - beat > HEARTBEAT_S:
            os.utime(_claim_path(job.folder, shard))  # still at it: see _Elsewhere
            beat = time.monotonic()
        if job.failed.value < shard:
            break  # an earlier shard failed: the build is lost anyway
        sample = read_sample(job.source, index, job.on_error, result.skipped, report)
        sample = preprocess_sample(sample, job.steps, result.dropped)
        job.done[shard] = index - lo + 1
        if sample is None:
            continue
        image = np.asarray(sample["image"])
        images[len(kept) if job.shared else index] = resize_image(image, job.size, job.resize)
        labels.put(index, sample, image.shape, job)
        kept.append(index)
    images.close()
    labels.close()
    result.kept = np.asarray(kept, np.int64)
    result.examples = report.skipped_examples
    result.preprocess_delta = [
        Counter({k: v - before.get(k, 0) for k, v in p.counts.items()})
        for p, before in zip(job.steps, counts_before, strict=True)
    ]
    result.source_delta = _delta(dict(job.source.report()), source_before)
    return result


def _save_result(job: _Job, shard: int, result: ShardResult) -> None:
    path = _result_path(job.folder, shard)
    path.parent.mkdir(exist_ok=True)
    try:
        blob = pickle.dumps(result)
        pickle.loads(blob)
    except Exception:  # an exception that does not pickle: its message still does
        result.error = DataError(str(result.error))
        blob = pickle.dumps(result)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(blob)
    os.replace(tmp, path)


def _worker(job: _Job) -> None:
    """Take shards until none is left (or one failed), saving each shard's result."""
    _die_with_parent(job.parent)
    while True:
        shard = _next_shard(job)
        if shard is None:
            return
        try:
            result = _run_shard(job, shard)
        except Exception as exc:  # handed to the parent, raised there
            result = ShardResult(kept=np.zeros(0, np.int64), error=exc)
        if job.shared and not job.folder.exists():
            return  # the shared build ended elsewhere (failed): nothing to hand in
        _save_result(job, shard, result)
        if result.error is not None:
            if job.shared:
                (job.folder / FAILED).touch()
            with job.failed.get_lock():
                job.failed.value = min(job.failed.value, shard)
            return


def _context() -> Any:
    methods = mp.get_all_start_methods()
    return mp.get_context("fork" if "fork" in methods else "spawn")


def _shards(n: int, workers: int) -> list[tuple[int, int]]:
    count = min(n, max(workers * SHARDS_PER_WORKER, -(-n // MAX_SHARD)))
    edges = np.linspace(0, n, count + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(edges) if b > a]


def _run_workers(
    job: _Job,
    workers: int,
    progress: Callable[[int, int], None],
    *,
    await_all: bool = True,
    watch: Callable[[], None] | None = None,
) -> None:
    """Start the workers and wait for them, telling ``progress`` about every sample in order
    (as the serial build does); a worker that died raises :class:`DataError`. In a shared
    build with ``await_all``, wait on until other machines have finished their shards too.
    ``watch`` is called 20 times a second (it keeps its own pace): what it raises stops the
    workers."""
    ctx = _context()
    job.next_shard = ctx.Value("q", 0)
    job.failed = ctx.Value("q", _NOT_FAILED)
    job.done = ctx.Array("q", len(job.bounds), lock=False)
    procs = [ctx.Process(target=_worker, args=(job,), daemon=True) for _ in range(workers)]
    elsewhere = _Elsewhere(job) if job.shared and await_all else None
    n = job.bounds[-1][1]
    told = 0
    try:
        for proc in procs:
            proc.start()
        while True:
            if watch is not None:
                watch()
            alive = any(p.is_alive() for p in procs)
            waiting = elsewhere is not None and not elsewhere.finished()
            told = _tell(job, progress, told, n)
            if not alive and not waiting:
                break
            if not alive and any(p.exitcode for p in procs):
                break  # a dead worker of ours: no use waiting for the others
            time.sleep(0.05)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
            proc.join()
    dead = [p.exitcode for p in procs if p.exitcode]
    if dead and job.failed.value == _NOT_FAILED:
        raise DataError(
            f"data set '{job.source.name}': a cache-build worker process died (exit code "
            f"{dead[0]}: killed, or out of memory?); its partial cache was removed, run again "
            "or set data.cache_workers=1"
        )


class _Elsewhere:
    """A shared build's shards as seen from one machine: which have a result (from any
    machine), checked four times a second. A build that goes ``job.stall_s`` without a new
    result or a heartbeat (a claim file touched by the worker building it) fails, naming
    the shards it waits for and who claimed them."""

    def __init__(self, job: _Job) -> None:
        self.job = job
        self.pending = set(range(len(job.bounds)))
        self.checked = self.progressed = self.beats_checked = time.monotonic()
        self.beats: dict[int, int] = {}

    def finished(self) -> bool:
        now = time.monotonic()
        if now - self.checked < 0.25:
            return not self.pending
        self.checked = now
        for shard in sorted(self.pending):
            if _result_path(self.job.folder, shard).is_file():
                self.pending.discard(shard)
                lo, hi = self.job.bounds[shard]
                self.job.done[shard] = hi - lo
                self.progressed = now
        if (self.job.folder / FAILED).exists():
            return True  # the results say which shard failed
        if self.pending and now - self.beats_checked > HEARTBEAT_S / 2:
            self.beats_checked = now
            if self._heard_beats():
                self.progressed = now
        if self.pending and now - self.progressed > self.job.stall_s:
            self._fail()
        return not self.pending

    def _heard_beats(self) -> bool:
        """Whether a pending shard's claim was touched (or made) since the last look."""
        heard = False
        for shard in self.pending:
            try:
                mtime = _claim_path(self.job.folder, shard).stat().st_mtime_ns
            except FileNotFoundError:
                continue
            heard |= self.beats.get(shard) != mtime
            self.beats[shard] = mtime
        return heard

    def _fail(self) -> None:
        owners = claimed_by(self.job.folder)
        late = [
            f"{s} ({' on '.join(owners[s]) if s in owners else 'unclaimed'})"
            for s in sorted(self.pending)[:3]
        ]
        raise DataError(
            f"data set '{self.job.source.name}': the shared cache build in "
            f"'{self.job.folder}' has waited {self.job.stall_s:.0f} s for shards "
            f"{', '.join(late)}: did a machine die? Run again (the build restarts)"
        )


def _tell(job: _Job, progress: Callable[[int, int], None], told: int, n: int) -> int:
    """Report the samples done since ``told``, counting only the finished prefix of shards."""
    reached = 0
    for (lo, hi), done in zip(job.bounds, job.done, strict=True):
        reached = lo + done
        if lo + done < hi:
            break
    for index in range(told, reached):
        progress(index, n)
    return max(told, reached)


class MergedArrays:
    """The final arrays of a parallel build (the serial writer's ``images``/``labels``)."""

    def __init__(self) -> None:
        self.images: np.ndarray = np.zeros(0)
        self.labels: dict[str, np.ndarray] = {}
        self.present: dict[str, np.ndarray] = {}


def _found_results(folder: Path, shards: int, *, contiguous: bool) -> dict[int, ShardResult]:
    """The shards' saved results, by shard (``contiguous``: up to the first one missing)."""
    found: dict[int, ShardResult] = {}
    for shard in range(shards):
        path = _result_path(folder, shard)
        if path.is_file():
            found[shard] = pickle.loads(path.read_bytes())
        elif contiguous:
            break
    return found


def _first_error(found: dict[int, ShardResult]) -> BaseException | None:
    return next((found[s].error for s in sorted(found) if found[s].error is not None), None)


def _results(job: _Job) -> list[ShardResult]:
    """Every shard's result in order; the first error (in sample order) is raised. In a
    shared build, where shards after a failed one may never have been built, the first
    error among the results there is raised."""
    found = _found_results(job.folder, len(job.bounds), contiguous=not job.shared)
    error = _first_error(found)
    if error is not None:
        raise error
    if len(found) < len(job.bounds):
        raise DataError(f"data set '{job.source.name}': a cache-build worker left no result")
    return [found[shard] for shard in range(len(job.bounds))]


def _first_labels(
    results: list[ShardResult],
) -> dict[str, _FirstLabel]:
    """Each label's first appearance over all shards, in the serial build's key order; a
    shard whose first value of a label has another shape fails as the serial build would."""
    first: dict[str, _FirstLabel] = {}
    for result in results:
        for key, seen in sorted(result.labels.items(), key=lambda kv: kv[1].position):
            if key not in first:
                first[key] = seen
            elif seen.shape != first[key].shape:
                raise DataError(
                    f"label '{key}' has shape {seen.shape} here but "
                    f"{first[key].shape} in earlier samples"
                )
    return dict(sorted(first.items(), key=lambda kv: (kv[1].index, kv[1].position)))


def _compact(images: RowFile, kept: np.ndarray, block: int = 256) -> None:
    """Move the kept rows of ``images`` (in source order) down to rows 0..k-1 and zero the
    rest, in place: each block reads rows at or after the ones it writes."""
    n, k = len(images), kept.size
    moved = np.flatnonzero(kept != np.arange(k))
    start = int(moved[0]) if moved.size else k
    for at in range(start, k, block):
        end = min(at + block, k)
        images.write(at, images.take(kept[at:end]))
    for at in range(k, n, block):
        images.write(at, np.zeros((min(block, n - at), *images.shape[1:]), images.dtype))


def _copy_rows(path: Path, into: RowFile, at: int, count: int) -> None:
    """Rows 0..count-1 of the .npy file at ``path``, written at row ``at`` of ``into``: one
    byte range, copied by the kernel (by the server, on NFS 4.2) where it can."""
    source = RowFile(path, create=False)
    into.close()  # nothing of ours is left in a mapped window
    size = count * into.row_bytes
    with path.open("rb") as src, into.path.open("r+b") as dst:
        read_at, write_at = source.offset, into.offset + at * into.row_bytes
        done = 0
        while done < size:
            try:
                step = os.copy_file_range(
                    src.fileno(), dst.fileno(), size - done, read_at + done, write_at + done
                )
            except (AttributeError, OSError):  # not on this system or file system
                chunk = os.pread(src.fileno(), min(size - done, 1 << 23), read_at + done)
                step = os.pwrite(dst.fileno(), chunk, write_at + done)
            if step <= 0:
                raise DataError(f"'{path}' ends before its {count} rows")
            done += step


def _merge(
    job: _Job, results: list[ShardResult], beat: Callable[[], None] = lambda: None
) -> tuple[MergedArrays, np.ndarray]:
    n = job.bounds[-1][1]
    kept = np.concatenate([r.kept for r in results]) if results else np.zeros(0, np.int64)
    if job.shared:  # each shard's images are in its own folder, kept rows first
        images = RowFile(job.folder / "images.npy", np.dtype(np.uint8), (n, job.size, job.size, 3))
    else:
        images = RowFile(job.folder / "images.npy", create=False)
        _compact(images, kept)
    labels: dict[str, RowFile] = {}
    present: dict[str, RowFile] = {}
    for key, first in _first_labels(results).items():
        shape = (n, *first.shape)
        labels[key] = RowFile(job.folder / f"label-{key}.npy", np.dtype(first.dtype), shape)
        present[key] = RowFile(job.folder / f"present-{key}.npy", np.dtype(bool), (n,))
    at = 0
    for shard, result in enumerate(results):
        lo = job.bounds[shard][0]
        rows = result.kept - lo
        local = _shard_dir(job.folder, shard)
        beat()
        if job.shared and rows.size:
            _copy_rows(local / "images.npy", images, at, rows.size)
        for key in result.labels:
            values = np.load(local / f"label-{key}.npy", mmap_mode="r")
            flags = np.load(local / f"present-{key}.npy")
            labels[key].write(at, values[rows].astype(labels[key].dtype, casting="unsafe"))
            present[key].write(at, flags[rows])
            del values
        at += rows.size
    for shard in range(len(job.bounds)):
        shutil.rmtree(_shard_dir(job.folder, shard), ignore_errors=True)
    merged = MergedArrays()
    merged.images = images.array()
    merged.labels = {key: rows.array() for key, rows in labels.items()}
    merged.present = {key: rows.array() for key, rows in present.items()}
    return merged, kept


@dataclass(frozen=True)
class SharedBuild:
    """One cache build split between machines that see one file system (``data.cache_fs:
    shared`` under torchrun): the same ``job`` on every machine, new for every launch; the
    ``coordinator`` (global rank 0's machine) lays the build out, merges and swaps it in."""

    job: str
    coordinator: bool
    machines: int = 1
    timeout_s: float = 1800.0  # waiting for another machine (to start, or a stalled shard)
    member: str = ""  # this machine's name in the claims (its rank; by default its host name)


def build_parallel(
    source: SampleSource,
    steps: Sequence[Preprocessor],
    settings: tuple[int, str, str],
    folder: Path | None,
    progress: Callable[[int, int], None],
    workers: int,
    shared: SharedBuild | None = None,
) -> tuple[MergedArrays, np.ndarray, list[ShardResult]]:
    """Build every sample of ``source`` with ``workers`` processes into ``folder`` (a
    temporary folder, read into memory, when None): the final arrays, kept rows, results.
    With ``shared``, other machines' processes build a share of the shards (see
    :func:`join_parallel`)."""
    if folder is None:
        with tempfile.TemporaryDirectory(prefix="mtkd-cache-") as tmp:
            merged, kept, results = build_parallel(
                source, steps, settings, Path(tmp), progress, workers, shared
            )
            merged.images = np.array(merged.images)
            merged.labels = {k: np.array(v) for k, v in merged.labels.items()}
            merged.present = {k: np.array(v) for k, v in merged.present.items()}
            return merged, kept, results
    size, on_error, resize = settings
    n = len(source)
    if shared is None:
        RowFile(folder / "images.npy", np.dtype(np.uint8), (n, size, size, 3)).close()
        bounds = _shards(n, workers)
    else:
        bounds = _shards(n, workers * max(1, shared.machines))
        (folder / CLAIMS).mkdir()
        layout = folder / f"{JOB_FILE}.tmp"
        layout.write_text(json.dumps({"job": shared.job, "n": n, "bounds": bounds}))
        os.replace(layout, folder / JOB_FILE)
    job = _Job(source, steps, size, on_error, resize, folder, bounds, os.getpid())
    if shared is None:
        _run_workers(job, workers, progress)
        results = _results(job)
        merged, kept = _merge(job, results)
        return merged, kept, results
    job.shared, job.stall_s, job.member = True, shared.timeout_s, shared.member
    beat = Heartbeat(folder / JOB_FILE)  # the others see this machine is alive, merge included
    _run_workers(job, workers, progress, watch=beat)
    results = _results(job)
    merged, kept = _merge(job, results, beat)
    return merged, kept, results


class Heartbeat:
    """Touches ``path`` when called, at most every ``HEARTBEAT_S``: a sign of life other
    machines can see where file locks are local to each machine (NFS mounted with
    ``local_lock``, some cloud file stores). Called from the loops that wait and merge (no
    thread: the cache workers are forked)."""

    def __init__(self, path: Path) -> None:
        self.path, self.last = path, time.monotonic()

    def __call__(self) -> None:
        if time.monotonic() - self.last >= HEARTBEAT_S:
            with suppress(OSError):
                os.utime(self.path)
            self.last = time.monotonic()


def join_parallel(
    source: SampleSource,
    steps: Sequence[Preprocessor],
    settings: tuple[int, str, str],
    folder: Path,
    progress: Callable[[int, int], None],
    workers: int,
    shared: SharedBuild,
    watch: Callable[[], None] | None = None,
) -> int:
    """Build shards of another machine's shared build in ``folder`` (laid out in its
    ``job.json``) until none is left unclaimed; that machine merges them. Returns the
    number of shards. ``watch`` raises when that machine is gone (see :func:`_run_workers`)."""
    layout = json.loads((folder / JOB_FILE).read_text())
    n = len(source)
    if layout["n"] != n:
        raise DataError(
            f"data set '{source.name}': this machine reads {n} samples, but the machine that "
            f"started the shared cache build in '{folder}' reads {layout['n']}: every machine "
            "needs the same data (or set data.cache_fs=local)"
        )
    size, on_error, resize = settings
    bounds = [(int(lo), int(hi)) for lo, hi in layout["bounds"]]
    job = _Job(source, steps, size, on_error, resize, folder, bounds, os.getpid())
    job.shared, job.stall_s, job.member = True, shared.timeout_s, shared.member
    _run_workers(job, workers, progress, await_all=False, watch=watch)
    return len(bounds)


def first_error(folder: Path, shards: int) -> BaseException | None:
    """The error of the first failed shard of a shared build in ``folder``, if any."""
    return _first_error(_found_results(folder, shards, contiguous=False))
