"""Teacher-network targets: computed once per sample, cached on disk beside the sample cache.

For each task whose recipe block names a teacher network (``tasks.<key>.teacher``), the
network's output on every cached sample becomes the label ``teacher/<key>``; a sample it
abstains on lacks the label. The targets are stored under the cache folder, keyed by the
sample cache's key and the teacher's fingerprint (name, options, weights), so a second run on
the same data with the same teacher runs no teacher at all, and a changed teacher (other
weights, other options) computes them again.

``as_classes: <task key>`` in a teacher block turns an embedding teacher into a logits teacher
over that task's classes, once the split is known (:func:`class_targets`): the targets become
the scaled cosines of each sample's embedding to the class centroids of the training split.
The cached embeddings are unchanged by it, so the option costs no teacher call. An online
teacher's embeddings of each augmented batch are scored by the same centroids.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from ..config import named_block, parse_options, task_entries
from ..errors import DataError, MtkdError, PluginError, RecipeError
from ..plugins import PluginSet
from ..samples import PRESENT, Batch, LabelSpace, Sample, SampleSource, collate_samples
from ..teachers import TEACHER_KEY, TeacherNetwork, teacher_label_key
from .cache import CachedSamples

TARGETS_FOLDER = "teacher-targets"
ONLINE_KEY = "online"  # in a teacher block: run the teacher on every augmented training batch
CLASSES_KEY = "as_classes"  # in a teacher block: an embedding as logits over a task's classes
SCALE_KEY = "class_scale"  # ... those logits are cosines times this
DEFAULT_CLASS_SCALE = 10.0  # measured on ORL: 10 gained, 20 did not (docs/teacher-networks.md)
TARGETS_VERSION = 1
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class AsClasses:
    """An embedding teacher presented as a classifier over the classes of task ``task``."""

    task: str  # the recipe key of the task whose classes the logits score
    label: str  # the label key that task reads (a class per sample)
    scale: float  # logit = cosine to the class centroid x scale


@dataclass
class Teachers:
    """The recipe's teacher networks by task key, which of them run online, and which are
    turned into class logits once the training split is known."""

    networks: dict[str, TeacherNetwork] = field(default_factory=dict)
    online: set[str] = field(default_factory=set)  # keys whose training targets are live
    as_classes: dict[str, AsClasses] = field(default_factory=dict)


def build_teachers(cfg: DictConfig, plugins: PluginSet) -> Teachers:
    """The teacher network of each task that names one, loaded and checked (before any data
    is read, so a wrong name, option or weights file costs nothing). ``online: true`` in a
    teacher block (read here, for every teacher network) makes it see each augmented
    training batch instead of its cached targets; ``as_classes`` and ``class_scale`` (read
    here too, so they leave the target cache's key alone) make an embedding teacher's
    targets class logits (:func:`class_targets`)."""
    teachers = Teachers()
    entries = task_entries(cfg)
    label_keys = {
        e.key: plugins.tasks.get(e.kind, key=e.where).label_key_for(e.key) for e in entries
    }
    for entry in entries:
        key, kind, block = entry.key, entry.kind, entry.options.get(TEACHER_KEY)
        where = f"tasks.{key}.{TEACHER_KEY}"
        task_cls = plugins.tasks.get(kind, key=entry.where)
        learns = task_cls.label_key_for(key) == teacher_label_key(key)
        if learns and block is None:
            raise RecipeError(f"{where}: task '{kind}' needs a teacher network ({{name: ...}})")
        if block is None:
            continue
        if not learns:
            raise RecipeError(
                f"{where}: task '{kind}' does not learn from a teacher network "
                "(use type: network_teacher)"
            )
        name, values = named_block(block, where)
        if values.pop(ONLINE_KEY, False):
            teachers.online.add(key)
        as_classes = _as_classes(values, where, label_keys)
        network_cls = plugins.teachers.get(name, key=f"{where}.name")
        options = parse_options(network_cls.Options, values, where)
        try:
            network = teachers.networks[key] = network_cls(options, int(cfg.data.image_size))
        except MtkdError as exc:  # a missing extra stays a PluginError, the rest is the recipe's
            error = PluginError if isinstance(exc, PluginError) else RecipeError
            raise error(f"{where} ({name}): {exc}") from exc
        if as_classes is not None:
            if network.output != "embedding":
                raise RecipeError(
                    f"{where}.{CLASSES_KEY}: teacher '{name}' already outputs class logits"
                )
            teachers.as_classes[key] = as_classes
    return teachers


def _as_classes(
    values: dict[str, Any], where: str, label_keys: Mapping[str, str]
) -> AsClasses | None:
    """The teacher block's ``as_classes``/``class_scale``, checked (and taken out of it)."""
    task, scale = values.pop(CLASSES_KEY, None), values.pop(SCALE_KEY, None)
    if task is None:
        if scale is not None:
            raise RecipeError(f"{where}.{SCALE_KEY}: only means something with {CLASSES_KEY}")
        return None
    if str(task) not in label_keys:
        raise RecipeError(
            f"{where}.{CLASSES_KEY}: '{task}' is not a task of this recipe "
            f"(tasks: {', '.join(label_keys)})"
        )
    scale = DEFAULT_CLASS_SCALE if scale is None else scale
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not scale > 0:
        raise RecipeError(f"{where}.{SCALE_KEY}: must be a number > 0, got {scale!r}")
    return AsClasses(str(task), label_keys[str(task)], float(scale))


@dataclass
class TargetStore:
    """One teacher's targets for every cached sample, and why it abstained where it did."""

    values: np.ndarray  # (n, components) float32
    present: np.ndarray  # (n,) bool
    counts: dict[str, int]

    def summary(self) -> dict[str, int]:
        labelled = int(self.present.sum())
        return {"labelled": labelled, "abstained": len(self.present) - labelled, **self.counts}


def targets_folder(root: Path, sample_key: str, teacher: TeacherNetwork) -> Path:
    """Where one teacher's targets for one sample cache live."""
    blob = json.dumps(
        {"version": TARGETS_VERSION, "samples": sample_key, "teacher": teacher.fingerprint()},
        sort_keys=True,
    )
    digest = hashlib.sha1(blob.encode()).hexdigest()[:16]
    return root / TARGETS_FOLDER / f"{teacher.name}-{digest}"


def _images(
    cached: CachedSamples, source: SampleSource, teacher: TeacherNetwork
) -> Iterator[np.ndarray]:
    if teacher.sees == "cached":
        yield from (cached.images[i] for i in range(len(cached)))
        return
    if cached.rows is None:
        raise DataError(f"teacher '{teacher.name}' reads the data set, but the cache lacks rows")
    for row in cached.rows.tolist():
        yield np.asarray(source[int(row)]["image"])


def compute_targets(
    cached: CachedSamples, source: SampleSource, teacher: TeacherNetwork, progress: Progress
) -> TargetStore:
    """Run ``teacher`` over every cached sample, ``teacher.batch_size`` images at a time."""
    n, width = len(cached), len(teacher.names())  # all-zero rows where it abstains
    values = np.zeros((n, width), dtype=np.float32)
    present = np.zeros(n, dtype=bool)
    batch: list[np.ndarray] = []
    done = 0

    def flush() -> None:
        nonlocal done
        end = done + len(batch)
        values[done:end], present[done:end] = run_teacher(teacher, batch)
        done = end
        batch.clear()
        progress(done, n)

    for image in _images(cached, source, teacher):
        batch.append(image)
        if len(batch) == teacher.batch_size:
            flush()
    if batch:
        flush()
    return TargetStore(values, present, dict(teacher.counts))


def run_teacher(
    teacher: TeacherNetwork, images: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """One call of ``teacher``: its checked vectors (zeros where it abstained) and which
    images it answered for."""
    width = len(teacher.names())
    values = np.zeros((len(images), width), dtype=np.float32)
    present = np.zeros(len(images), dtype=bool)
    for i, target in enumerate(teacher.targets(images)):
        if target is not None:
            values[i], present[i] = _checked(teacher, target, width), True
    return values, present


def _checked(teacher: TeacherNetwork, target: np.ndarray, width: int) -> np.ndarray:
    array = np.asarray(target, dtype=np.float32).reshape(-1)
    if array.shape[0] != width:
        raise DataError(
            f"teacher network '{teacher.name}' returned {array.shape[0]} values for a sample, "
            f"but names {width} outputs"
        )
    if not np.isfinite(array).all():
        raise DataError(f"teacher network '{teacher.name}' returned NaN or Inf for a sample")
    return array


def _save(folder: Path, store: TargetStore, teacher: TeacherNetwork) -> None:
    """Write into a private folder, then swap it in by one rename (never half a store)."""
    partial = folder.with_name(f".{folder.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    np.save(partial / "values.npy", store.values)
    np.save(partial / "present.npy", store.present)
    meta = {
        "version": TARGETS_VERSION,
        "teacher": teacher.fingerprint(),
        "n": len(store.present),
        "counts": store.counts,
    }
    (partial / "meta.json").write_text(json.dumps(meta, sort_keys=True))
    try:
        os.replace(partial, folder)
    except OSError:  # another process stored the same targets first
        shutil.rmtree(partial, ignore_errors=True)


def _load(folder: Path, n: int, width: int) -> TargetStore | None:
    """The stored targets, or None when they are missing or do not fit (computed again)."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        values = np.load(folder / "values.npy", allow_pickle=False)
        present = np.load(folder / "present.npy", allow_pickle=False)
    except (OSError, ValueError):
        return None
    if meta.get("n") != n or values.shape != (n, width) or present.shape != (n,):
        return None
    return TargetStore(values, present.astype(bool), {k: int(v) for k, v in meta["counts"].items()})


def teacher_targets(
    cached: CachedSamples,
    source: SampleSource,
    teacher: TeacherNetwork,
    *,
    sample_key: str,
    root: Path,
    progress: Progress,
) -> tuple[TargetStore, bool]:
    """The teacher's targets (and whether they came from the store), computing them once."""
    folder = targets_folder(root, sample_key, teacher)
    found = _load(folder, len(cached), len(teacher.names()))
    if found is not None:
        return found, True
    shutil.rmtree(folder, ignore_errors=True)  # damaged or partial: computed again below
    store = compute_targets(cached, source, teacher, progress)
    _save(folder, store, teacher)
    return store, False


def attach_targets(
    cached: CachedSamples,
    teachers: Mapping[str, TeacherNetwork],
    stores: Mapping[str, TargetStore],
) -> None:
    """Make each teacher's targets the label ``teacher/<task key>`` of the cached samples."""
    for key, teacher in teachers.items():
        label = teacher_label_key(key)
        store = stores[key]
        cached.labels[label] = store.values
        cached.present[label] = store.present
        cached.label_spaces[label] = teacher.label_space()


@dataclass(frozen=True)
class ClassCentroids:
    """An embedding teacher's nearest-centroid classifier over a task's classes, fitted on
    the training split's cached embeddings: turns any embedding of that teacher (cached or
    computed online on an augmented image) into class logits."""

    mean: np.ndarray  # (components,) the usable samples' mean, which every embedding loses
    centroids: np.ndarray  # (classes, components) unit length; a class without samples: 0
    scale: float
    samples: int  # how many samples shaped the centroids
    missing: int  # classes that had none

    @classmethod
    def fit(
        cls,
        values: np.ndarray,
        usable: np.ndarray,
        classes: np.ndarray,
        num_classes: int,
        scale: float,
    ) -> ClassCentroids:
        """Centroids of the ``usable`` samples (training, with a target and a class label):
        each class's L2-normalised mean of its centred unit embeddings. Centring matters: a
        face recogniser's raw vectors share a large common part (dlib's: cosine 0.87 between
        different people)."""
        x = np.asarray(values, dtype=np.float64)
        usable = np.asarray(usable, dtype=bool)
        mean = x[usable].mean(axis=0) if usable.any() else np.zeros(x.shape[1])
        centroids = np.zeros((num_classes, x.shape[1]))
        used = np.asarray(classes)[usable].astype(np.int64)
        np.add.at(centroids, used, _unit(x[usable] - mean))
        missing = num_classes - len(np.unique(used))
        return cls(mean, _unit(centroids), float(scale), int(usable.sum()), missing)

    def logits(self, values: np.ndarray) -> np.ndarray:
        """``scale`` x the cosine between each centred embedding and each class centroid."""
        if not self.samples:
            return np.zeros((len(values), len(self.centroids)), dtype=np.float32)
        unit = _unit(np.asarray(values, dtype=np.float64) - self.mean)
        return (self.scale * unit @ self.centroids.T).astype(np.float32)

    def counts(self) -> dict[str, int]:
        """What the data report says of them."""
        return {
            "centroid samples": self.samples,
            "classes": len(self.centroids),
            "classes without a centroid": self.missing,
        }


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 1e-12)


def class_targets(
    cached: CachedSamples, as_classes: Mapping[str, AsClasses], train: np.ndarray
) -> dict[str, ClassCentroids]:
    """Replace each ``as_classes`` teacher's embeddings by class logits whose centroids come
    from the ``train`` indices only, so validation and test photos never shape their own
    targets. A sample the teacher abstained on stays unlabelled. Returns the fitted
    centroids by task key (an online teacher's batches are scored by the same ones)."""
    fitted = {}
    for key, spec in as_classes.items():
        label = teacher_label_key(key)
        space = cached.label_spaces.get(spec.label)
        classes = cached.labels.get(spec.label)
        if space is None or classes is None or space.kind != "class" or classes.ndim != 1:
            raise RecipeError(
                f"tasks.{key}.{TEACHER_KEY}.{CLASSES_KEY}: task '{spec.task}' reads "
                f"'{spec.label}', which is not one class per sample"
            )
        present = np.asarray(cached.present[label], dtype=bool)
        in_train = np.zeros(len(present), dtype=bool)
        in_train[train] = True
        usable = in_train & present & np.asarray(cached.present[spec.label], dtype=bool)
        centroids = ClassCentroids.fit(
            cached.labels[label], usable, np.asarray(classes), space.num_classes, spec.scale
        )
        logits = centroids.logits(cached.labels[label])
        logits[~present] = 0.0
        cached.labels[label] = logits
        cached.label_spaces[label] = LabelSpace(space.names, kind="logits")
        fitted[key] = centroids
    return fitted


def class_targets_name(key: str, spec: AsClasses) -> str:
    """The data report's name for the class targets of task ``key``."""
    return f"{teacher_label_key(key)} as {spec.task} classes"


def _image_digest(image: np.ndarray) -> bytes:
    digest = hashlib.blake2b(str(image.shape).encode(), digest_size=16)
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.digest()


class OnlineTargets:
    """The training loader's collate for online teachers: each batch's targets are the
    teachers' outputs on its augmented images (what they would see as uint8), replacing the
    cached ones; an ``as_classes`` teacher's embeddings are scored by the centroids fitted on
    the cached training embeddings. Costs a teacher forward per new image: an image seen
    before (a discrete augmentation such as a flip repeats itself) reuses its remembered
    output, since a teacher network is a fixed function of its input
    (docs/teacher-networks.md)."""

    MEMO_SIZE = 65_536  # remembered outputs per teacher (least recently used dropped first)

    def __init__(
        self,
        teachers: Mapping[str, TeacherNetwork],
        as_classes: Mapping[str, ClassCentroids] | None = None,
    ) -> None:
        self.teachers = dict(teachers)
        self.as_classes = dict(as_classes or {})
        self.memo: dict[str, OrderedDict[bytes, tuple[np.ndarray, bool]]] = {
            key: OrderedDict() for key in self.teachers
        }
        self.images = 0  # images seen per teacher, and of those, how many ran the teacher
        self.computed = 0

    def _outputs(self, key: str, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The teacher's vectors and presence flags for ``images``, new ones computed in one
        call and remembered."""
        memo = self.memo[key]
        digests = [_image_digest(image) for image in images]
        new = list(dict.fromkeys(d for d in digests if d not in memo))
        if new:
            where = {d: i for i, d in enumerate(digests)}
            values, present = run_teacher(self.teachers[key], [images[where[d]] for d in new])
            for d, value, flag in zip(new, values, present, strict=True):
                memo[d] = (value, bool(flag))
        self.images += len(images)
        self.computed += len(new)
        found = [memo[d] for d in digests]
        for d in digests:
            memo.move_to_end(d)
        while len(memo) > self.MEMO_SIZE:
            memo.popitem(last=False)
        return np.stack([v for v, _ in found]), np.array([p for _, p in found], dtype=bool)

    def __call__(self, samples: Sequence[Sample]) -> Batch:
        batch = collate_samples(samples)
        pixels = batch["image"].clamp(0, 1).mul(255).round().to(torch.uint8)
        images = list(pixels.permute(0, 2, 3, 1).numpy())
        for key in self.teachers:
            values, present = self._outputs(key, images)
            if key in self.as_classes:
                values = self.as_classes[key].logits(values)
            values[~present] = 0.0
            label = teacher_label_key(key)
            batch[label] = torch.from_numpy(values)
            batch[PRESENT][label] = torch.from_numpy(present)
        return batch


__all__ = [
    "AsClasses",
    "ClassCentroids",
    "OnlineTargets",
    "TargetStore",
    "Teachers",
    "attach_targets",
    "build_teachers",
    "class_targets",
    "class_targets_name",
    "compute_targets",
    "targets_folder",
    "teacher_targets",
]
