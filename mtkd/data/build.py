"""Data for a run: the recipe's data-set plugin, preprocessed and cached once, split, batched."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.progress import Progress, TaskID
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from ..config import named_block, parse_options, task_entries
from ..errors import DataError, RecipeError
from ..plugins import PluginSet, plugins_for
from ..preprocess import Preprocessor
from ..samples import LabelSpace, SampleSource, collate_samples, sample_to_tensors
from ..teachers import TeacherNetwork, teacher_label_key
from ..utils import distributed
from .augment import AugmentConfig, augment_cached
from .cache import CachedSamples, DataReport, cache_key, default_cache_dir, materialize
from .cache_parallel import SharedBuild
from .splits import (
    SplitFilter,
    fixed_split_indices,
    groups_left_out,
    split_indices,
    validation_from_train,
)
from .targets import (
    ClassCentroids,
    OnlineTargets,
    TargetStore,
    Teachers,
    attach_targets,
    build_teachers,
    class_targets,
    class_targets_name,
    teacher_targets,
)
from .where import describe, resolve_where, where_mask


class TensorView(Dataset):
    """A subset of the cached samples, delivered as tensors (augmented when ``augment`` is on;
    with ``uint8``, images stay uint8 and unaugmented: see :meth:`for_device`)."""

    def __init__(
        self,
        cached: CachedSamples,
        indices: np.ndarray,
        augment: AugmentConfig | None = None,
        uint8: bool = False,
    ) -> None:
        self.cached = cached
        self.indices = indices
        self.augment = augment if augment is not None and augment.enabled else None
        self.uint8 = uint8

    def for_device(self) -> TensorView:
        """The same samples with uint8 images and no augmentation: ``data.augment_on:
        device`` converts and augments whole batches on the training device instead."""
        return TensorView(self.cached, self.indices, uint8=True)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        spaces = self.cached.label_spaces
        sample = self.cached.sample(int(self.indices[i]))
        if self.augment is None:
            return sample_to_tensors(sample, spaces, uint8=self.uint8)
        return augment_cached(sample, self.augment, spaces)


@dataclass
class DataBundle:
    """The three splits of one data set, the meaning of its labels, and what loading did."""

    cached: CachedSamples
    train: TensorView
    val: TensorView
    test: TensorView
    holdout: TensorView  # whole groups never trained on (empty unless data.split.holdout > 0)
    label_spaces: Mapping[str, LabelSpace]
    report: DataReport
    filters: list[SplitFilter] = field(default_factory=list)  # data.split.*_where, if set
    # how training batches are put together (online teachers recompute their targets here)
    train_collate: Callable[[Sequence[Any]], Any] = collate_samples

    def sizes(self) -> dict[str, int]:
        """Samples per split, and (only with a label-range filter) how many it left out."""
        views = {"train": self.train, "val": self.val, "test": self.test, "holdout": self.holdout}
        sizes = {name: len(view) for name, view in views.items()}
        sizes.update({f"{f.split}_filtered_out": f.removed for f in self.filters})
        return sizes


def build_source(cfg: DictConfig, plugins: PluginSet | None = None) -> SampleSource:
    """Instantiate the data-set plugin named by ``data.dataset.name`` with its options."""
    plugins = plugins_for(cfg, plugins)
    name, values = named_block(
        OmegaConf.to_container(cfg.data.dataset, resolve=True), "data.dataset"
    )
    source_cls = plugins.datasets.get(name, key="data.dataset.name")
    options = parse_options(source_cls.Options, values, "data.dataset")
    source = source_cls(options, image_size=cfg.data.image_size, seed=cfg.data.split.seed)
    if len(source) == 0:
        raise DataError(f"data set '{name}' has no samples")
    return source


def task_label_keys(cfg: DictConfig, plugins: PluginSet | None = None) -> frozenset[str]:
    """The label keys the recipe's tasks read (``tasks.<key>=null`` removes one); an unknown
    task name is reported here, before any sample is decoded."""
    plugins = plugins_for(cfg, plugins)
    return frozenset(
        plugins.tasks.get(entry.kind, key=entry.where).label_key_for(entry.key)
        for entry in task_entries(cfg)
    )


def build_preprocessors(cfg: DictConfig, plugins: PluginSet | None = None) -> list[Preprocessor]:
    """The steps of ``data.preprocess``, in order, each validated against its plugin."""
    plugins = plugins_for(cfg, plugins)
    steps = []
    for i, raw in enumerate(OmegaConf.to_container(cfg.data.preprocess, resolve=True) or []):
        key = f"data.preprocess[{i}]"
        name, values = named_block(raw, key)
        step_cls = plugins.preprocessors.get(name, key=f"{key}.name")
        options = parse_options(step_cls.Options, values, key)
        try:
            steps.append(step_cls(options, cfg.data.image_size))
        except RecipeError as exc:
            raise RecipeError(f"{key} ({name}): {exc}") from exc
    return steps


def split_parts(cached: CachedSamples, split: Any) -> dict[str, np.ndarray]:
    """Indices per split: the data set's own split (with validation carved out of training
    when ``data.split.val_from_train`` asks for it), else ``data.split``'s per-group split."""
    groups = None if cached.groups is None else cached.groups.tolist()
    try:
        if cached.split is None:
            return split_indices(
                groups, len(cached), split.test, split.val, split.seed, split.holdout
            )
        parts = fixed_split_indices(cached.split)
        if split.get("val_from_train", False):
            parts = validation_from_train(parts, groups, split.val, split.seed)
        return parts
    except ValueError as exc:
        raise RecipeError(f"data.split: {exc}") from exc


def _split_conditions(split: Any) -> list[tuple[str, str, Any]]:
    """(split, recipe key, condition) per filtered split. Validation follows
    ``train_where`` unless ``val_where`` is set (``{}``: every validation sample)."""
    train = split.get("train_where") or None
    val = split.get("val_where")
    found = []
    if train:
        found.append(("train", "data.split.train_where", train))
    if val is None and train:
        found.append(("val", "data.split.train_where", train))
    elif val:
        found.append(("val", "data.split.val_where", val))
    return found


def restrict_splits(
    cached: CachedSamples, parts: dict[str, np.ndarray], split: Any
) -> tuple[dict[str, np.ndarray], list[SplitFilter]]:
    """Training and validation samples inside ``data.split.train_where``/``val_where``;
    test and holdout keep every sample, so a filtered run is tested on exactly the images an
    unfiltered run of the same seed is. No condition: ``parts`` as they are (same order).

    A sample without the label a condition reads is left out of the filtered split (and
    counted); a condition that leaves a group with no training sample is an error.
    """
    out, done = dict(parts), []
    for name, key, raw in _split_conditions(split):
        ranges = resolve_where(raw, key, cached.label_spaces)
        inside, unlabelled = where_mask(ranges, cached, parts[name])
        out[name] = parts[name][inside]
        counts = (len(parts[name]), int(inside.sum()), int(unlabelled.sum()))
        done.append(SplitFilter(name, key, describe(raw), *counts))
    if done and done[0].split == "train":
        _check_every_group_trains(cached, parts["train"], out["train"], done[0])
    return out, done


def _check_every_group_trains(
    cached: CachedSamples, before: np.ndarray, after: np.ndarray, applied: SplitFilter
) -> None:
    groups = None if cached.groups is None else cached.groups.tolist()
    left = groups_left_out(groups, before, after)
    if not left:
        return
    if groups is None:
        raise RecipeError(f"{applied.key} {applied.where}: leaves no training sample")
    total = len({groups[i] for i in before.tolist()})
    shown = ", ".join(map(str, left[:5])) + (", ..." if len(left) > 5 else "")
    raise RecipeError(
        f"{applied.key} {applied.where}: leaves {len(left)} of {total} groups (people) with no "
        f"training sample (group {shown}); widen the range or give each group more samples"
    )


def _train_collate(
    teachers: Teachers, centroids: Mapping[str, ClassCentroids]
) -> Callable[[Sequence[Any]], Any]:
    online = {k: t for k, t in teachers.networks.items() if k in teachers.online}
    scored = {k: c for k, c in centroids.items() if k in online}
    return OnlineTargets(online, scored) if online else collate_samples


def _advance(progress: Progress, bar: TaskID, done: int, _total: int) -> None:
    progress.update(bar, completed=done)


def _add_teacher_targets(
    cached: CachedSamples,
    source: SampleSource,
    teachers: Mapping[str, TeacherNetwork],
    sample_key: str,
    cfg: DictConfig,
    report: DataReport,
    console: Console,
) -> None:
    """Each teacher network's targets as a label of the cached samples, counted in the report
    (computed once, then read from the target cache)."""
    root = Path(cfg.data.cache_dir) if cfg.data.cache_dir else default_cache_dir()
    stores: dict[str, TargetStore] = {}
    for key, teacher in teachers.items():
        label = teacher_label_key(key)
        with Progress(console=console, transient=True) as progress:
            bar = progress.add_task(f"{label}: {teacher.name} targets", total=len(cached))
            store, stored = teacher_targets(
                cached,
                source,
                teacher,
                sample_key=sample_key,
                root=root,
                progress=partial(_advance, progress, bar),
            )
        name = f"{label} ({teacher.name}{', from the target cache' if stored else ''})"
        report.preprocess_counts[name] = store.summary()
        stores[key] = store
    attach_targets(cached, teachers, stores)


def shared_cache_build(cfg: DictConfig) -> SharedBuild | None:
    """How this launch splits the sample cache's build between machines (``data.cache_fs:
    shared`` under torchrun, disk caches), or None. Every rank must call it: the launch's
    build id is rank 0's, sent to all (so no stale folder of an earlier launch is joined)."""
    data = cfg.data
    if data.get("cache_fs", "local") != "shared" or data.cache != "disk":
        return None
    if not distributed.is_active():
        return None
    job = distributed.broadcast_object(uuid.uuid4().hex[:16])
    machines = max(1, distributed.world_size() // distributed.local_world_size())
    rank = distributed.rank()
    timeout = distributed.collective_timeout().total_seconds()  # as long as a collective waits
    return SharedBuild(job, rank == 0, machines, timeout, member=f"rank {rank}")


def build_data(
    cfg: DictConfig,
    plugins: PluginSet | None = None,
    console: Console | None = None,
    shared: SharedBuild | None = None,
) -> DataBundle:
    """The recipe's data set: preprocessed and cached once, then split per group (``shared``:
    from :func:`shared_cache_build`, when machines split the cache build)."""
    plugins = plugins_for(cfg, plugins)
    source = build_source(cfg, plugins)
    # only the labels a task reads are decoded where decoding is optional (masks of an
    # identification-only run): a defect in a label no task reads costs nothing. A recipe
    # with no task (data built on its own) gets every label.
    source.wanted_labels = task_label_keys(cfg, plugins) or None
    steps = build_preprocessors(cfg, plugins)
    teachers = build_teachers(cfg, plugins)
    data = cfg.data
    console = console or Console(quiet=True)
    with Progress(console=console, transient=True) as progress:
        bar = progress.add_task(f"preparing {source.name}", total=len(source))
        cached, report = materialize(
            source,
            steps,
            data.image_size,
            on_error=data.on_error,
            mode=data.cache,
            cache_dir=Path(data.cache_dir) if data.cache_dir else None,
            progress=lambda i, _n: progress.update(bar, completed=i + 1) if i % 64 == 0 else None,
            resize=data.get("resize", "squash"),
            notify=lambda line: console.print(line, highlight=False, markup=False),
            workers=data.get("cache_workers"),
            shared=shared,
        )
    if teachers.networks:
        key = cache_key(source, steps, data.image_size, data.on_error, data.get("resize", "squash"))
        _add_teacher_targets(cached, source, teachers.networks, key, cfg, report, console)
    for line in report.lines():
        console.print(line, highlight=False)
    if len(cached) == 0:
        raise DataError(f"data set '{source.name}': no sample is left after loading")
    parts, filters = restrict_splits(cached, split_parts(cached, data.split), data.split)
    # centroids of the training split only, once it is known
    centroids = class_targets(cached, teachers.as_classes, parts["train"])
    for key, fitted in centroids.items():
        name, counts = class_targets_name(key, teachers.as_classes[key]), fitted.counts()
        report.preprocess_counts[name] = counts
        shown = ", ".join(f"{k} {v}" for k, v in counts.items())
        console.print(f"  {name}: {shown}", highlight=False, markup=False)
    gallery_where = cfg.get("evaluate", {}).get("gallery_where")  # checked before training
    resolve_where(gallery_where, "evaluate.gallery_where", cached.label_spaces)
    for applied in filters:
        console.print(applied.line(), highlight=False, markup=False)
    if len(parts["train"]) == 0:
        raise DataError(f"data set '{source.name}': the split leaves no training samples")
    augment_cfg: AugmentConfig = OmegaConf.to_object(data.augment)  # type: ignore[assignment]
    return DataBundle(
        cached=cached,
        train=TensorView(cached, parts["train"], augment_cfg),
        val=TensorView(cached, parts["val"]),
        test=TensorView(cached, parts["test"]),
        holdout=TensorView(cached, parts["holdout"]),
        label_spaces=dict(cached.label_spaces),
        report=report,
        filters=filters,
        train_collate=_train_collate(teachers, centroids),
    )


class EpochSampler(Sampler[int]):
    """A fresh shuffle per epoch drawn from (seed, epoch) alone, and a starting offset, so a
    run resumed mid-epoch sees exactly the samples the uninterrupted run would have seen.

    Under torchrun each rank takes its share of every global batch of ``global_batch``
    samples (see :func:`mtkd.utils.distributed.shard`); the order itself is the same everywhere.
    With ``min_batch`` above 1 (a model whose BatchNorm cannot train on one sample), an epoch's
    last batch is left out when it would give a rank fewer than ``min_batch`` samples: those
    few samples, a different few each epoch, wait for the next epoch's shuffle.
    """

    def __init__(
        self, n: int, seed: int, global_batch: int | None = None, min_batch: int = 1
    ) -> None:
        self.n, self.seed, self.global_batch, self.min_batch = n, seed, global_batch, min_batch
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def used(self) -> int:
        """How many of the shuffled samples an epoch uses (all, unless the last batch is short)."""
        batch = self.global_batch or self.n
        short = self.n % batch if batch else 0
        if 0 < short < self.min_batch * distributed.world_size():
            return self.n - short
        return self.n

    def _order(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=generator).tolist()[: self.used()]
        return distributed.shard(order, self.global_batch or self.n)

    def length(self) -> int:
        """Samples this rank sees in a whole epoch."""
        return len(distributed.shard(list(range(self.used())), self.global_batch or self.n))

    def __iter__(self) -> Iterator[int]:
        return iter(self._order()[self.start :])

    def __len__(self) -> int:
        return self.length() - self.start


def check_train_batches(n: int, batch_size: int, min_batch: int, seed: int = 0) -> EpochSampler:
    """The sampler of ``n`` training samples, once batches of ``batch_size`` are known to
    train a model that needs ``min_batch`` (one line naming the key otherwise)."""
    per_rank = max(1, batch_size // distributed.world_size())
    if per_rank < min_batch:
        raise RecipeError(
            f"data.batch_size: {batch_size} gives batches of {per_rank} per process, but the "
            f"model's BatchNorm layers need at least {min_batch} samples to train; raise it"
        )
    sampler = EpochSampler(n, seed, batch_size, min_batch)
    if n and sampler.length() == 0:
        raise DataError(
            f"{n} training sample(s): the model's BatchNorm layers need batches of at least "
            f"{min_batch} to train; add samples or lower data.split.test / data.split.val"
        )
    return sampler


def make_train_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    seed: int = 0,
    num_workers: int = 0,
    min_batch: int = 1,
    collate: Callable[[Sequence[Any]], Any] = collate_samples,
    pin_memory: bool = False,
) -> DataLoader:
    """The training loader: shuffled by an :class:`EpochSampler` (resumable), partial labels.

    ``batch_size`` is the global batch: under torchrun each rank loads its share of it.
    Its own generator seeds worker processes, so starting an epoch draws nothing from the
    global RNG (which augmentation uses, and a checkpoint restores mid-epoch). ``min_batch``
    is the smallest batch the model trains on (2 for one whose BatchNorm sees a single value
    per channel: see :func:`mtkd.model.probe.smallest_train_batch`); a shorter last batch is
    left out of each epoch. ``pin_memory`` (for a CUDA device) lets the step's copy overlap.
    """
    n = len(dataset)  # type: ignore[arg-type]
    sampler = check_train_batches(n, batch_size, min_batch, seed)
    return DataLoader(
        dataset,
        batch_size=max(1, batch_size // distributed.world_size()),
        sampler=sampler,
        generator=torch.Generator().manual_seed(seed),
        num_workers=num_workers,
        collate_fn=collate,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
    )


def rank_share(dataset: Dataset) -> Dataset:
    """This rank's strided share of an evaluation set (the whole set in one process)."""
    ranks = distributed.world_size()
    if ranks == 1:
        return dataset
    return Subset(dataset, range(distributed.rank(), len(dataset), ranks))  # type: ignore[arg-type]


def make_loader(
    dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0, num_workers: int = 0
) -> DataLoader:
    """A loader that collates partial labels; shuffling is seeded for reproducible runs."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        collate_fn=collate_samples,
        generator=generator,
        persistent_workers=num_workers > 0,
    )


def make_eval_loader(dataset: Dataset, data_cfg: Any) -> DataLoader:
    """A loader for evaluation (validation, test, verification, gallery): in order, in
    batches of ``data.eval_batch_size``, or ``data.batch_size`` when that is unset."""
    return make_loader(dataset, data_cfg.eval_batch_size or data_cfg.batch_size, shuffle=False)
