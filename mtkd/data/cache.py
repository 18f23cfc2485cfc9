"""Decode, preprocess and resize every sample once, into uint8 arrays in memory or on disk.

Epochs then only read arrays (no decoding, no face detection), and a disk cache means a second
run with the same data settings never decodes or detects again. A sample that fails to load
(``SampleError``) stops the run or is skipped and counted, as ``data.on_error`` says; a sample
a preprocessor drops is counted too. Nothing disappears without a count in the report.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data_schema import check_resize_mode
from ..errors import DataError, RecipeError
from ..preprocess import Preprocessor
from ..samples import LabelSpace, Sample, SampleSource
from ..utils.files import strict_json
from .cache_parallel import (
    MergedArrays,
    SharedBuild,
    add_counts,
    build_parallel,
    cache_workers,
    close_shared,
)
from .cache_shared import join_shared, shared_tag, telling_others_why
from .cache_store import (
    CacheDamaged,
    default_cache_dir,
    discard,
    is_complete,
    load_array,
    partial_folder,
    read_meta,
    remove_abandoned_partials,
)
from .resize import resize_image
from .rows import RowFile
from .sample_steps import DataReport, label_array, preprocess_sample, read_sample

__all__ = ["CachedSamples", "DataReport", "default_cache_dir", "materialize", "resize_image"]

CACHE_VERSION = 3  # 2: sample names are cached; 3: the source index of each row
ON_ERROR = ("fail", "skip")
MODES = ("memory", "disk")


class CachedSamples:
    """Uint8 images at the model's size, each label with a flag per sample saying it is there."""

    def __init__(
        self,
        images: np.ndarray,
        labels: dict[str, np.ndarray],
        present: dict[str, np.ndarray],
        groups: np.ndarray | None,
        split: list[str] | None,
        label_spaces: dict[str, LabelSpace],
        names: list[str] | None = None,
        rows: np.ndarray | None = None,
    ) -> None:
        self.names = names  # the data set's sample names, for pair files
        # the data set's index of each cached sample (teacher networks that read the source)
        self.rows = rows
        self.images = images
        self.labels = labels
        self.present = present
        self.groups = groups
        self.split = split
        self.label_spaces = label_spaces

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def sample(self, index: int) -> Sample:
        out: Sample = {"image": self.images[index]}
        for key, values in self.labels.items():
            if self.present[key][index]:
                out[key] = values[index]
        return out


def cache_key(
    source: SampleSource,
    preprocessors: Sequence[Preprocessor],
    size: int,
    on_error: str,
    resize: str = "squash",
) -> str:
    options = source.options
    shown = asdict(options) if is_dataclass(options) and not isinstance(options, type) else options
    settings = {
        "version": CACHE_VERSION,
        "source": source.name,
        "options": shown,
        "content": source.fingerprint(),
        "image_size": size,
        "preprocess": [p.fingerprint() for p in preprocessors],
        "on_error": on_error,
    }
    if resize != "squash":  # squash keeps the key (and so the caches) of before the option
        settings["resize"] = resize
    if source.skipped_labels():  # a cache without masks serves no run that reads them
        settings["skipped_labels"] = source.skipped_labels()
    blob = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


class _Writer:
    """Preallocated arrays (in memory, or .npy files being written) filled sample by sample.

    On disk each array is a :class:`RowFile` (a small mapped window of rows), so the build's
    resident memory does not grow with the data set."""

    def __init__(self, n: int, size: int, folder: Path | None, resize: str = "squash") -> None:
        self.n, self.size, self.folder, self.resize = n, size, folder, resize
        self.images = self._alloc("images", (n, size, size, 3), np.dtype(np.uint8))
        self.labels: dict[str, Any] = {}
        self.present: dict[str, Any] = {}

    def _alloc(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> Any:
        if self.folder is None:
            return np.zeros(shape, dtype=dtype)
        return RowFile(self.folder / f"{name}.npy", dtype, shape)

    def put(self, row: int, sample: Sample) -> None:
        image = np.asarray(sample["image"])
        self.images[row] = resize_image(image, self.size, self.resize)
        for key, value in sample.items():
            if key == "image" or value is None:
                continue
            array = label_array(value, image.shape, self.size, self.resize)
            if key not in self.labels:
                dtype: np.dtype[Any]
                if array.ndim == 2:
                    dtype = np.dtype(np.uint8)  # per-pixel class ids
                elif array.dtype.kind == "f":
                    dtype = np.dtype(np.float32)
                else:
                    dtype = np.dtype(np.int64)
                self.labels[key] = self._alloc(f"label-{key}", (self.n, *array.shape), dtype)
                self.present[key] = self._alloc(f"present-{key}", (self.n,), np.dtype(bool))
            if array.shape != self.labels[key].shape[1:]:
                raise DataError(
                    f"label '{key}' has shape {array.shape} here but "
                    f"{self.labels[key].shape[1:]} in earlier samples"
                )
            self.labels[key][row] = array
            self.present[key][row] = True

    def finish(self) -> None:
        """Arrays from here on: a disk build's files, memory-mapped read-only."""
        if self.folder is None:
            return
        self.images = self.images.array()
        self.labels = {key: rows.array() for key, rows in self.labels.items()}
        self.present = {key: rows.array() for key, rows in self.present.items()}


def _build(
    source: SampleSource,
    preprocessors: Sequence[Preprocessor],
    size: int,
    on_error: str,
    folder: Path | None,
    progress: Any,
    resize: str = "squash",
    workers: int = 1,
    shared: SharedBuild | None = None,
) -> tuple[CachedSamples, DataReport, list[int]]:
    if workers > 1 or (shared is not None and len(source) > 0):  # (an empty set has no shards)
        return _build_parallel(
            source, preprocessors, (size, on_error, resize), folder, progress, workers, shared
        )
    n = len(source)
    writer = _Writer(n, size, folder, resize)
    report = DataReport(source=source.name, total=n)
    skipped: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    kept: list[int] = []
    for index in range(n):
        progress(index, n)
        sample = read_sample(source, index, on_error, skipped, report)
        sample = preprocess_sample(sample, preprocessors, dropped)
        if sample is not None:
            writer.put(len(kept), sample)
            kept.append(index)
    writer.finish()
    report.kept = len(kept)
    report.skipped, report.dropped = dict(skipped), dict(dropped)
    _finish_report(report, dict(source.report()), preprocessors)
    return _kept_samples(source, writer, kept), report, kept


def _sorted_counts(counts: dict[str, Any]) -> dict[str, Any]:
    """Counts in key order (inner dicts keep theirs, e.g. bins): a one-process build and a
    sharded one, whose shards meet the keys in another order, write the same bytes."""
    return dict(sorted(counts.items()))


def _finish_report(
    report: DataReport, source_counts: dict[str, Any], preprocessors: Sequence[Preprocessor]
) -> None:
    report.source_counts = _sorted_counts(source_counts)
    report.preprocess_counts = {
        p.name: _sorted_counts(dict(p.counts)) for p in preprocessors if p.counts
    }


def _build_parallel(
    source: SampleSource,
    preprocessors: Sequence[Preprocessor],
    settings: tuple[int, str, str],
    folder: Path | None,
    progress: Any,
    workers: int,
    shared: SharedBuild | None = None,
) -> tuple[CachedSamples, DataReport, list[int]]:
    """The serial build's result from ``workers`` processes (see :mod:`.cache_parallel`):
    the shards' counts are added up in sample order, into the preprocessors' counts too."""
    source_counts = dict(source.report())
    merged, kept_rows, results = build_parallel(
        source, preprocessors, settings, folder, progress, workers, shared
    )
    report = DataReport(source=source.name, total=len(source), kept=int(kept_rows.size))
    skipped: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    for result in results:
        skipped.update(result.skipped)
        dropped.update(result.dropped)
        report.skipped_examples += result.examples[: 3 - len(report.skipped_examples)]
        add_counts(source_counts, result.source_delta)
        for step, delta in zip(preprocessors, result.preprocess_delta, strict=True):
            for key, value in delta.items():
                step.counts[key] += value
    report.skipped, report.dropped = dict(skipped), dict(dropped)
    _finish_report(report, source_counts, preprocessors)
    kept = [int(i) for i in kept_rows]
    return _kept_samples(source, merged, kept), report, kept


def _kept_samples(
    source: SampleSource, writer: _Writer | MergedArrays, kept: list[int]
) -> CachedSamples:
    """The written rows, with the groups, fixed split and names of the samples kept."""
    k = len(kept)
    groups_all, split_all, names_all = source.groups(), source.fixed_split(), source.sample_names()
    groups = np.asarray([groups_all[i] for i in kept], dtype=np.int64) if groups_all else None
    split = [str(split_all[i]) for i in kept] if split_all is not None else None
    return CachedSamples(
        writer.images[:k],
        {key: values[:k] for key, values in writer.labels.items()},
        {key: flags[:k] for key, flags in writer.present.items()},
        groups,
        split,
        dict(source.label_spaces),
        [str(names_all[i]) for i in kept] if names_all is not None else None,
        np.asarray(kept, dtype=np.int64),
    )


def _save_meta(folder: Path, cached: CachedSamples, report: DataReport) -> None:
    meta = {
        "version": CACHE_VERSION,
        "n": len(cached),
        "labels": sorted(cached.labels),
        "groups": None if cached.groups is None else cached.groups.tolist(),
        "split": cached.split,
        "names": cached.names,
        "rows": None if cached.rows is None else cached.rows.tolist(),
        "label_spaces": {k: v.to_dict() for k, v in cached.label_spaces.items()},
        "report": asdict(report),
    }
    (folder / "meta.json").write_text(strict_json(meta))


def _check_meta(folder: Path, meta: dict[str, Any]) -> None:
    """The parts of ``meta.json`` that list one value per sample must list ``n`` of them."""
    n = meta["n"]
    if meta.get("version") != CACHE_VERSION:
        raise CacheDamaged(folder, f"version {meta.get('version')}, expected {CACHE_VERSION}")
    for name in ("groups", "split", "names", "rows"):
        values = meta.get(name)
        if values is not None and len(values) != n:
            raise CacheDamaged(folder, f"meta.json lists {len(values)} {name} for {n} samples")


def _load(folder: Path, size: int) -> tuple[CachedSamples, DataReport]:
    """A cache folder's arrays (memory-mapped) and report, after checking them: a folder with
    missing, truncated or inconsistent files raises :class:`CacheDamaged`."""
    meta = read_meta(folder)
    n = meta["n"]
    try:
        _check_meta(folder, meta)
        labels = [str(key) for key in meta["labels"]]
        groups = None if meta["groups"] is None else np.asarray(meta["groups"], dtype=np.int64)
        spaces = {k: LabelSpace.from_dict(v) for k, v in meta["label_spaces"].items()}
        report = DataReport(**meta["report"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CacheDamaged(folder, f"meta.json is inconsistent ({exc!r})") from exc
    cached = CachedSamples(
        load_array(folder, "images", n, (size, size, 3)),
        {key: load_array(folder, f"label-{key}", n) for key in labels},
        {key: load_array(folder, f"present-{key}", n, ()) for key in labels},
        groups,
        meta["split"],
        spaces,
        meta.get("names"),
        None if meta.get("rows") is None else np.asarray(meta["rows"], dtype=np.int64),
    )
    report.from_cache = True
    return cached, report


def _open_or_discard(
    folder: Path, size: int, notify: Callable[[str], None]
) -> tuple[CachedSamples, DataReport] | None:
    """The cached samples and report of ``folder``; None when there is no complete cache
    there (a damaged one is said so and moved out of the way, to be rebuilt)."""
    if not folder.exists():
        return None
    try:
        if not is_complete(folder):
            raise CacheDamaged(folder, "meta.json is missing")
        return _load(folder, size)
    except CacheDamaged as exc:
        notify(f"{exc}: rebuilding it")
        discard(folder)
        return None


def _build_on_disk(
    source: SampleSource,
    preprocessors: Sequence[Preprocessor],
    settings: tuple[int, str, str],
    folder: Path,
    progress: Any,
    workers: int = 1,
    shared: SharedBuild | None = None,
    tell: Callable[[str], None] = lambda _line: None,
) -> None:
    """Build the cache of ``source`` into a locked partial folder and swap it in as ``folder``
    (with ``shared``, other machines build shards of it in the same folder)."""
    size, on_error, resize = settings
    tag = shared_tag(shared) if shared is not None else None
    failing = telling_others_why(folder, shared) if shared is not None else nullcontext()
    with failing, partial_folder(folder.parent, folder.name, tag) as partial:
        cached, report, _ = _build(
            source, preprocessors, size, on_error, partial, progress, resize, workers, shared
        )
        built = close_shared(partial) if shared is not None else None
        if built:
            shares = ", ".join(f"{member} {count}" for member, count in sorted(built.items()))
            machines = f"{len(built)} machine{'s' if len(built) != 1 else ''}"
            tell(f"sample cache: {sum(built.values())} shards built by {machines} ({shares})")
        _save_meta(partial, cached, report)
        del cached
        if not is_complete(folder):  # else another process finished it first
            try:
                os.replace(partial, folder)
            except OSError:
                if not is_complete(folder):
                    raise


def materialize(
    source: SampleSource,
    preprocessors: Sequence[Preprocessor],
    size: int,
    *,
    on_error: str = "fail",
    mode: str = "memory",
    cache_dir: Path | None = None,
    progress: Any = None,
    resize: str = "squash",
    notify: Callable[[str], None] | None = None,
    workers: int | None = 1,
    shared: SharedBuild | None = None,
) -> tuple[CachedSamples, DataReport]:
    """Every sample of ``source``, preprocessed and resized to ``size``, as cached arrays.

    ``notify`` hears what happened to the disk cache on the way (a damaged one rebuilt).
    ``workers`` processes build it (None: the cores available; 1: this process alone); the
    arrays are the same whatever the number. With ``shared`` (disk caches only), several
    machines split the build of one cache folder (see :mod:`.cache_shared`)."""
    if on_error not in ON_ERROR:
        raise RecipeError(f"data.on_error: '{on_error}' is not one of {', '.join(ON_ERROR)}")
    if mode not in MODES:
        raise RecipeError(f"data.cache: '{mode}' is not one of {', '.join(MODES)}")
    check_resize_mode(resize)
    tick = progress or (lambda _i, _n: None)
    procs = cache_workers(workers, len(source))
    if mode == "memory":
        cached, report, _ = _build(source, preprocessors, size, on_error, None, tick, resize, procs)
        return cached, report
    tell = notify or (lambda _line: None)
    root = cache_dir or default_cache_dir()
    keep = shared_tag(shared) if shared is not None else None
    for partial in remove_abandoned_partials(root, keep):
        tell(f"removed '{partial}', left by a cache build that was killed")
    key = cache_key(source, preprocessors, size, on_error, resize)
    folder = root / f"{source.name}-{size}px-{key}"
    found = _open_or_discard(folder, size, tell)
    if found is not None:
        return found
    settings = (size, on_error, resize)
    if shared is None or shared.coordinator:
        _build_on_disk(source, preprocessors, settings, folder, tick, procs, shared, tell)
    else:
        join_shared(source, preprocessors, settings, folder, tick, procs, shared)
    try:
        cached, report = _load(folder, size)
    except CacheDamaged as exc:
        raise DataError(f"{exc} (just written: is the disk full or failing?)") from exc
    report.from_cache = False
    return cached, report
