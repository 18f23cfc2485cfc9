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
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import pickle
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
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


def _run_shard(job: _Job, shard: int) -> ShardResult:
    lo, hi = job.bounds[shard]
    local = _shard_dir(job.folder, shard)
    local.mkdir()
    images = RowFile(job.folder / "images.npy", create=False)
    counts_before = [Counter(p.counts) for p in job.steps]
    source_before = dict(job.source.report())
    report = DataReport(source=job.source.name, total=0)
    result = ShardResult(kept=np.zeros(0, np.int64))
    values: dict[str, RowFile] = {}
    present: dict[str, np.ndarray] = {}
    kept: list[int] = []
    for index in range(lo, hi):
        if os.getppid() != job.parent:
            os._exit(1)  # the parent is gone (where the kernel cannot tell us)
        if job.failed.value < shard:
            break  # an earlier shard failed: the build is lost anyway
        sample = read_sample(job.source, index, job.on_error, result.skipped, report)
        sample = preprocess_sample(sample, job.steps, result.dropped)
        job.done[shard] = index - lo + 1
        if sample is None:
            continue
        image = np.asarray(sample["image"])
        images[index] = resize_image(image, job.size, job.resize)
        for position, (key, value) in enumerate(sample.items()):
            if key == "image" or value is None:
                continue
            array = label_array(value, image.shape, job.size, job.resize)
            if key not in values:
                result.labels[key] = _FirstLabel(
                    index, position, tuple(array.shape), _label_dtype(array).str
                )
                values[key] = RowFile(
                    local / f"label-{key}.npy", _local_dtype(array), (hi - lo, *array.shape)
                )
                present[key] = np.zeros(hi - lo, bool)
            if array.shape != values[key].shape[1:]:
                raise DataError(
                    f"label '{key}' has shape {array.shape} here but "
                    f"{values[key].shape[1:]} in earlier samples"
                )
            values[key][index - lo] = array
            present[key][index - lo] = True
        kept.append(index)
    images.close()
    for key, flags in present.items():
        values[key].close()
        np.save(local / f"present-{key}.npy", flags)
    result.kept = np.asarray(kept, np.int64)
    result.examples = report.skipped_examples
    result.preprocess_delta = [
        Counter({k: v - before.get(k, 0) for k, v in p.counts.items()})
        for p, before in zip(job.steps, counts_before, strict=True)
    ]
    result.source_delta = _delta(dict(job.source.report()), source_before)
    return result


def _save_result(job: _Job, shard: int, result: ShardResult) -> None:
    path = _shard_dir(job.folder, shard) / "result.pickle"
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
        with job.next_shard.get_lock():
            shard = job.next_shard.value
            job.next_shard.value += 1
        if shard >= len(job.bounds) or job.failed.value < shard:
            return
        try:
            result = _run_shard(job, shard)
        except Exception as exc:  # handed to the parent, raised there
            result = ShardResult(kept=np.zeros(0, np.int64), error=exc)
        _save_result(job, shard, result)
        if result.error is not None:
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


def _run_workers(job: _Job, workers: int, progress: Callable[[int, int], None]) -> None:
    """Start the workers and wait for them, telling ``progress`` about every sample in order
    (as the serial build does); a worker that died raises :class:`DataError`."""
    ctx = _context()
    job.next_shard = ctx.Value("q", 0)
    job.failed = ctx.Value("q", _NOT_FAILED)
    job.done = ctx.Array("q", len(job.bounds), lock=False)
    procs = [ctx.Process(target=_worker, args=(job,), daemon=True) for _ in range(workers)]
    n = job.bounds[-1][1]
    told = 0
    try:
        for proc in procs:
            proc.start()
        while True:
            alive = any(p.is_alive() for p in procs)
            told = _tell(job, progress, told, n)
            if not alive:
                break
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


def _results(job: _Job) -> list[ShardResult]:
    """Every shard's result in order; the first error (in sample order) is raised."""
    out = []
    for shard in range(len(job.bounds)):
        path = _shard_dir(job.folder, shard) / "result.pickle"
        if not path.is_file():
            raise DataError(f"data set '{job.source.name}': a cache-build worker left no result")
        result: ShardResult = pickle.loads(path.read_bytes())
        if result.error is not None:
            raise result.error
        out.append(result)
    return out


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


def _merge(job: _Job, results: list[ShardResult]) -> tuple[MergedArrays, np.ndarray]:
    n = job.bounds[-1][1]
    kept = np.concatenate([r.kept for r in results]) if results else np.zeros(0, np.int64)
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
        for key in result.labels:
            local = _shard_dir(job.folder, shard)
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


def build_parallel(
    source: SampleSource,
    steps: Sequence[Preprocessor],
    settings: tuple[int, str, str],
    folder: Path | None,
    progress: Callable[[int, int], None],
    workers: int,
) -> tuple[MergedArrays, np.ndarray, list[ShardResult]]:
    """Build every sample of ``source`` with ``workers`` processes into ``folder`` (a
    temporary folder, read into memory, when None): the final arrays, kept rows, results."""
    if folder is None:
        with tempfile.TemporaryDirectory(prefix="mtkd-cache-") as tmp:
            merged, kept, results = build_parallel(
                source, steps, settings, Path(tmp), progress, workers
            )
            merged.images = np.array(merged.images)
            merged.labels = {k: np.array(v) for k, v in merged.labels.items()}
            merged.present = {k: np.array(v) for k, v in merged.present.items()}
            return merged, kept, results
    size, on_error, resize = settings
    n = len(source)
    RowFile(folder / "images.npy", np.dtype(np.uint8), (n, size, size, 3)).close()
    job = _Job(source, steps, size, on_error, resize, folder, _shards(n, workers), os.getpid())
    _run_workers(job, workers, progress)
    results = _results(job)
    merged, kept = _merge(job, results)
    return merged, kept, results
