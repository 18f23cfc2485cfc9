"""Data for a run: the recipe's data-set plugin, split, turned into tensors and batched."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset

from .build import plugins_for
from .config import parse_options
from .errors import DataError, RecipeError
from .plugins import PluginSet
from .samples import LabelSpace, SampleSource, SampleToTensors, collate_samples
from .splits import fixed_split_indices, split_indices


class TensorView(Dataset):
    """A subset of a sample source, delivered as tensors."""

    def __init__(self, source: SampleSource, indices: np.ndarray, image_size: int) -> None:
        self.source = source
        self.indices = indices
        self.to_tensors = SampleToTensors(image_size, source.label_spaces)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.to_tensors(self.source[int(self.indices[i])])


@dataclass
class DataBundle:
    """The three splits of one data set and the meaning of its labels."""

    source: SampleSource
    train: TensorView
    val: TensorView
    test: TensorView
    label_spaces: Mapping[str, LabelSpace]

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def build_source(cfg: DictConfig, plugins: PluginSet | None = None) -> SampleSource:
    """Instantiate the data-set plugin named by ``data.dataset.name`` with its options."""
    plugins = plugins_for(cfg, plugins)
    raw = OmegaConf.to_container(cfg.data.dataset, resolve=True)
    if not isinstance(raw, dict) or "name" not in raw:
        raise RecipeError("data.dataset: needs a 'name' (the data-set plugin; see `mtkd plugins`)")
    values = dict(raw)
    name = str(values.pop("name"))
    source_cls = plugins.datasets.get(name, key="data.dataset.name")
    options = parse_options(source_cls.Options, values, "data.dataset")
    source = source_cls(options, image_size=cfg.data.image_size, seed=cfg.data.split.seed)
    if len(source) == 0:
        raise DataError(f"data set '{name}' has no samples")
    return source


def build_data(cfg: DictConfig, plugins: PluginSet | None = None) -> DataBundle:
    """The recipe's data set, split per group as ``data.split`` says."""
    source = build_source(cfg, plugins)
    fixed = source.fixed_split()
    split = cfg.data.split
    try:
        if fixed is not None:
            parts = fixed_split_indices(list(fixed))
        else:
            parts = split_indices(source.groups(), len(source), split.test, split.val, split.seed)
    except ValueError as exc:
        raise RecipeError(f"data.split: {exc}") from exc
    if len(parts["train"]) == 0:
        raise DataError(f"data set '{source.name}': the split leaves no training samples")
    size = cfg.data.image_size
    return DataBundle(
        source=source,
        train=TensorView(source, parts["train"], size),
        val=TensorView(source, parts["val"], size),
        test=TensorView(source, parts["test"], size),
        label_spaces=dict(source.label_spaces),
    )


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
