"""The base of the folder data sets: entries indexed once in ``__init__``, decoded on demand.

Subclasses say how entries are found (``index``) and how a label file becomes a mask
(``load_mask``); label spaces, groups, fixed splits, the report and image decoding live here
once, so the four plugins behave the same way.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

import mtkd

from .catalog import find_entries, open_catalog
from .images import read_image
from .index import Entry, compile_pattern, natural_key, unique_files
from .masks import mirror_table
from .options import KEY, check_mask_options, required_folder
from .pairing import MaskFinder, attach_masks

POSE_NAMES = ("yaw", "pitch", "roll")
POSE_FLIP = (-1.0, 1.0, -1.0)  # a mirror image turns and rolls the other way


def no_images_error(folder: Path, counts: Counter[str]) -> mtkd.DataError:
    """The error for an index that found nothing, with what was passed over and why."""
    passed = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if v)
    return mtkd.DataError(
        f"no usable images found in '{folder}'" + (f" ({passed})" if passed else "")
    )


def mask_size_verdict(mask: np.ndarray, image: np.ndarray, entry: Entry, options: Any) -> str:
    """``same``, ``resize`` or ``drop`` for a label image against its image, as the options'
    ``mask_size`` policy says; a mismatch the policy does not take is a SampleError."""
    if mask.shape[:2] == image.shape[:2]:
        return "same"
    policy = getattr(options, "mask_size", "fail")
    if policy == "drop_mask":
        return "drop"
    (mh, mw), (ih, iw) = mask.shape[:2], image.shape[:2]
    off = max(abs(mh - ih) / ih, abs(mw - iw) / iw)
    tolerance = getattr(options, "mask_size_tolerance", 0.0)
    if policy == "resize" and off <= tolerance:
        return "resize"
    limit = (
        f"beyond {KEY}.mask_size_tolerance={tolerance:g}"
        if policy == "resize"
        else f"{KEY}.mask_size=fail"
    )
    raise mtkd.SampleError(
        entry.mask,
        "mask is not the size of its image",
        f"{mw}x{mh} pixels, its image {entry.image} {iw}x{ih}: {off:.1%} off, {limit}; "
        f"{KEY}.bad_masks=drop keeps the image without its mask",
    )


class FolderSource(mtkd.SampleSource):
    """Samples from image files: ``image``, ``identity``, and ``mask``/``pose`` where known."""

    has_masks: ClassVar[bool] = False
    optional_labels = frozenset({"mask"})  # decoded only when a task reads masks

    def __init__(self, options: Any, image_size: int, seed: int) -> None:
        super().__init__(options, image_size, seed)
        check_mask_options(options)
        self.counts: Counter[str] = Counter()
        self._mask_sizes: dict[int, str] = {}  # per sample: resize or drop (decoded once)
        self._masks_dropped: dict[int, str] = {}  # per sample: why its mask was dropped
        self.entries: list[Entry] = unique_files(self.index(), lambda e: e.image, self.counts)
        splits = [e.split for e in self.entries]
        if any(splits) and not all(splits):
            missing = next(e for e in self.entries if e.split is None)
            raise mtkd.DataError(
                f"{missing.image}: no split, but other images have one "
                f"(from {KEY}.pattern or the 'split' column of {KEY}.csv)"
            )
        names = sorted({e.identity for e in self.entries if e.identity}, key=natural_key)
        self._identity_ids = {name: i for i, name in enumerate(names)}
        self.label_spaces = {}
        if names:
            self.label_spaces["identity"] = mtkd.LabelSpace(tuple(names))
        mask_names = self.mask_names()
        if mask_names and any(e.mask is not None for e in self.entries):
            self.label_spaces["mask"] = self.mask_space(mask_names)
        if any(e.pose is not None for e in self.entries):
            self.label_spaces["pose"] = mtkd.LabelSpace(POSE_NAMES, kind="vector", flip=POSE_FLIP)

    # --- what subclasses provide -----------------------------------------------------------

    def index(self) -> list[Entry]:
        """Entries from the common options, with masks paired when the plugin has masks."""
        options = self.options
        root = required_folder(options.root, "root")
        pattern = compile_pattern(options.pattern)
        catalog = open_catalog(options, root, pattern, self.counts)
        finder = None
        if self.has_masks and not (catalog.csv and "mask" in catalog.csv.columns):
            finder = MaskFinder(root, options.masks, options.mask_pattern, self.counts)
        skip = (finder.folder,) if finder is not None and finder.folder is not None else ()
        located = find_entries(catalog, skip, self.counts)
        if self.has_masks:
            entries = attach_masks(located, finder, options.require_masks, self.counts)
        else:
            self.counts["ignored_csv_masks"] += sum(e.mask is not None for e, _ in located)
            entries = [e if e.mask is None else replace(e, mask=None) for e, _ in located]
        if not entries:
            raise no_images_error(catalog.images, self.counts)
        return entries

    def mask_names(self) -> tuple[str, ...] | None:
        """Class names of the masks (None: this plugin has no masks)."""
        return None

    def mask_space(self, names: tuple[str, ...]) -> mtkd.LabelSpace:
        """Mask classes, with the left/right swaps a flip augmentation needs."""
        return mtkd.LabelSpace(names, flip=mirror_table(names))

    def load_mask(self, index: int, entry: Entry, image: np.ndarray) -> np.ndarray | None:
        """The class-id mask (uint8 H x W) of ``entry``, checked against its image (None: the
        mask is dropped, see :meth:`fit_mask`)."""
        raise NotImplementedError

    def fit_mask(self, index: int, mask: np.ndarray, image: np.ndarray, entry: Entry) -> str:
        """Whether the decoded label ``mask`` is used as it is (``same``), resized to its image
        (``resize``) or dropped (``drop``), as ``mask_size`` says; counted once per sample."""
        try:
            verdict = mask_size_verdict(mask, image, entry, self.options)
        except mtkd.SampleError as exc:
            self.bad_mask(index, exc, "wrong_size")
            return "drop"
        if verdict == "drop":
            self._masks_dropped[index] = "wrong_size"
        elif verdict == "resize":
            self._mask_sizes[index] = verdict
        return verdict

    def bad_mask(self, index: int, error: mtkd.SampleError, why: str) -> None:
        """A mask that cannot be used: with ``bad_masks: drop`` (the default) it is dropped
        and counted, and the sample keeps its image and identity; with ``fail``, the error."""
        if getattr(self.options, "bad_masks", "fail") != "drop":
            raise error
        self._masks_dropped[index] = why

    # --- the SampleSource contract ---------------------------------------------------------

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self.entries):
            raise IndexError(index)
        entry = self.entries[index]
        image = read_image(entry.image)
        sample: dict[str, Any] = {"image": image}
        if entry.identity:
            sample["identity"] = self._identity_ids[entry.identity]
        if entry.pose is not None:
            sample["pose"] = np.asarray(entry.pose, dtype=np.float32)
        if entry.mask is not None and self.wants("mask"):
            mask = self.load_mask(index, entry, image)
            if mask is not None:
                sample["mask"] = mask
        return sample

    def groups(self) -> Sequence[int] | None:
        if not self._identity_ids:
            return None
        return [self._identity_ids[e.identity] if e.identity else -1 for e in self.entries]

    def sample_names(self) -> Sequence[str]:
        """File stems: LFW's pairs.txt names ``Aaron_Peirsol 1`` the file Aaron_Peirsol_0001."""
        return [e.image.stem for e in self.entries]

    def fixed_split(self) -> Sequence[str] | None:
        splits = [e.split for e in self.entries]
        return [s for s in splits if s] if all(splits) else None

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self._identity_ids:
            out["identities"] = len(self._identity_ids)
        if "mask" in self.label_spaces:
            out["samples_with_mask"] = sum(e.mask is not None for e in self.entries)
            if not self.wants("mask"):
                out["masks_not_read"] = out["samples_with_mask"]  # no task reads masks
        if "pose" in self.label_spaces:
            out["samples_with_pose"] = sum(e.pose is not None for e in self.entries)
        out.update({k: v for k, v in sorted(self.counts.items()) if v})
        if self._mask_sizes:
            out["masks_resized"] = len(self._mask_sizes)
        if self._masks_dropped:  # the images stay, with their identities
            out["masks_dropped"] = dict(sorted(Counter(self._masks_dropped.values()).items()))
        return out

    def fingerprint(self) -> str:
        """Every file's name, size and time and every label read from an index, so a disk
        cache of decoded samples notices edited files and edited CSV/XML indexes."""
        digest = hashlib.sha1()
        for entry in self.entries:
            digest.update(f"{entry.identity}|{entry.pose}|{entry.split}\n".encode())
            for path in (entry.image, entry.mask):
                if path is None:
                    continue
                try:
                    stat = path.stat()
                    digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
                except OSError:
                    digest.update(f"{path}|missing\n".encode())
        return digest.hexdigest()
