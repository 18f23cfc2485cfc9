"""The sample contract between data-set plugins and the engine.

A sample is a plain dict: ``image`` (uint8 H x W x 3, or H x W grey) plus one entry per label
it carries (``identity``, ``mask``, ``pose``, ...). A label that a sample lacks is simply absent
(or ``None``); the collate step records, per label key, which samples of a batch carry it, so
each task's loss averages over exactly those samples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from .options import Configurable, OptionsT

Sample = dict[str, Any]
Batch = dict[str, Any]
PRESENT = "present"
FLOAT_KINDS = ("vector", "logits")  # label kinds held as float vectors


@dataclass(frozen=True)
class LabelSpace:
    """What the values of one label key mean: class names, a named vector for regression, or
    a teacher network's class scores (``logits``: float vectors whose names are the classes).

    ``flip`` says how a horizontal flip changes a label: for classes, the class each class
    becomes (left_eye <-> right_eye); for vectors, the sign each component takes (yaw -> -yaw).
    None means the label does not change under a flip.
    """

    names: tuple[str, ...]
    kind: str = "class"  # "class" (integer labels, per sample or per pixel), "vector", "logits"
    flip: tuple[float, ...] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "kind": self.kind, "flip": self.flip}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LabelSpace:
        flip = data.get("flip")
        return cls(
            names=tuple(data["names"]),
            kind=str(data.get("kind", "class")),
            flip=None if flip is None else tuple(flip),
        )


class SampleSource(Configurable[OptionsT]):
    """Base class of a data-set plugin: indexable samples plus the meaning of their labels.

    Subclasses set ``name`` (the registry name used as ``data.dataset.name`` in recipes), name
    the dataclass of their recipe options as the generic parameter
    (``class MyFaces(mtkd.SampleSource[MyOptions])``, which sets ``Options``), and fill
    ``label_spaces`` in ``__init__``. ``groups`` (e.g. the identity of each sample) lets the
    engine split per group without decoding any image; ``fixed_split`` lets a data set impose
    its own split.

    Labels listed in ``optional_labels`` (costly or fragile to decode, e.g. per-pixel masks)
    are read only when wanted: before any sample is read the engine sets ``wanted_labels`` to
    the label keys the recipe's tasks read, and ``__getitem__`` asks :meth:`wants`. A mask
    defect then never costs a run that reads no mask.
    """

    name: ClassVar[str] = ""  # the registry name: ``data.dataset.name`` in recipes
    # labels read only when a task wants them (costly or fragile to decode: masks)
    optional_labels: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, options: OptionsT, image_size: int, seed: int) -> None:
        """Index the samples (decode lazily, in ``__getitem__``) and fill ``label_spaces``;
        ``image_size`` is the model's input size, ``seed`` the recipe's data seed."""
        self.options = options
        self.image_size = image_size
        self.seed = seed
        self.label_spaces: dict[str, LabelSpace] = {}
        self.wanted_labels: frozenset[str] | None = None  # None: every label (library use)

    def wants(self, key: str) -> bool:
        """Whether samples should carry label ``key``: always, unless it is optional and no
        task reads it."""
        wanted = self.wanted_labels
        return wanted is None or key in wanted or key not in self.optional_labels

    def skipped_labels(self) -> list[str]:
        """The optional labels left out of the samples (part of the sample cache's key)."""
        return sorted(k for k in self.optional_labels if not self.wants(k))

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Sample:
        raise NotImplementedError

    def groups(self) -> Sequence[int] | None:
        """Stratification key per sample (e.g. identity), or None to split at random."""
        return None

    def fixed_split(self) -> Sequence[str] | None:
        """``train``/``val``/``test`` per sample when the data set defines its own split."""
        return None

    def sample_names(self) -> Sequence[str] | None:
        """A name per sample (e.g. its file stem, ``Aaron_Peirsol_0001``): how pair files such
        as LFW's ``pairs.txt`` refer to samples. None when samples have no names."""
        return None

    def report(self) -> dict[str, Any]:
        """Counts worth telling the user once per data set (e.g. off-palette mask pixels): a
        number, or a mapping of numbers (``masks_dropped: {wrong_size: 2}``) per key."""
        return {}

    def fingerprint(self) -> str:
        """What identifies the content beyond the options (e.g. file names and times), so the
        sample cache is rebuilt when it changes; options are part of the cache key already."""
        return ""


def sample_to_tensors(
    sample: Sample,
    label_spaces: Mapping[str, LabelSpace],
    *,
    mirrored: bool = False,
    uint8: bool = False,
) -> Sample:
    """A cached sample (uint8 image at the model's size, labels) as tensors; image in [0, 1]
    (or, with ``uint8``, C x H x W uint8 for the training device to convert).

    ``mirrored`` flips the image and per-pixel labels left-right on the way, before the float
    conversion (an augmentation's flip; the labels' class swaps are left to it)."""
    pixels = np.asarray(sample["image"])
    image = torch.tensor(pixels)  # a copy of our own: caches are read-only
    if mirrored:
        image = image.flip(1)  # on uint8, before the float copy: a quarter of the bytes
    image = image.permute(2, 0, 1)
    out: Sample = {"image": image if uint8 else image.float().div_(255.0)}
    height, width = pixels.shape[:2]
    for key, value in sample.items():
        if key == "image" or value is None:
            continue
        tensor = torch.tensor(np.asarray(value))
        if mirrored and tensor.shape == (height, width):
            tensor = tensor.flip(-1)  # a per-pixel label
        space = label_spaces.get(key)
        vector = (space.kind in FLOAT_KINDS) if space is not None else tensor.is_floating_point()
        out[key] = tensor.float() if vector else tensor.long()
    return out


def collate_samples(samples: Sequence[Sample]) -> Batch:
    """Stack tensor samples; a label missing from some samples gets a zero placeholder.

    ``batch["present"][key]`` is a bool vector marking the samples that really carry ``key``.
    """
    batch: Batch = {"image": torch.stack([s["image"] for s in samples])}
    keys = sorted({k for s in samples for k in s if k != "image"})
    present: dict[str, torch.Tensor] = {}
    for key in keys:
        template = next(s[key] for s in samples if key in s)
        mask = torch.tensor([key in s for s in samples], dtype=torch.bool)
        batch[key] = torch.stack(
            [s[key] if key in s else torch.zeros_like(template) for s in samples]
        )
        present[key] = mask
    batch[PRESENT] = present
    return batch


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Move tensors to the device; the ``present`` masks stay on the host (no syncs)."""
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }
