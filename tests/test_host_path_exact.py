"""The faster host-side sample path (issue 26) gives exactly the tensors of the path it
replaced, for the same RNG state: compared with the frozen copy in benchmarks/host_path_v1.py."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

import mtkd
from mtkd.data import augment as augment_module
from mtkd.data.augment import AugmentConfig, augment
from mtkd.data.build import TensorView
from mtkd.data.cache import CachedSamples
from mtkd.samples import collate_samples

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SPACES = {
    "identity": mtkd.LabelSpace(tuple(f"p{i}" for i in range(7))),
    "mask": mtkd.LabelSpace(("bg", "left_eye", "right_eye", "nose"), flip=(0.0, 2.0, 1.0, 3.0)),
    "pose": mtkd.LabelSpace(("yaw", "pitch", "roll"), kind="vector", flip=(-1.0, 1.0, -1.0)),
}
CONFIGS = {
    "every option": AugmentConfig(0.5, 0.25, 0.25, 0.5, 10, 0.1, 0.05),
    "flip only": AugmentConfig(hflip=0.5),
    "colour only": AugmentConfig(brightness=0.3, contrast=0.3, saturation=0.3),
    "contrast and saturation": AugmentConfig(contrast=0.4, saturation=0.6),
    "saturation only": AugmentConfig(saturation=0.6),
    "affine only": AugmentConfig(rotate=15, scale=0.2, translate=0.1),
    "flip and translate": AugmentConfig(hflip=0.7, translate=0.2, brightness=0.1),
}


def _frozen() -> ModuleType:
    if "host_path_v1" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "host_path_v1", BENCHMARKS / "host_path_v1.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["host_path_v1"] = module
        spec.loader.exec_module(module)
    return sys.modules["host_path_v1"]


def _cached(n: int, side: int) -> CachedSamples:
    """Smooth images (as photos are: neighbours alike), a mask on some samples, a pose on
    others, an identity on all."""
    rng = np.random.default_rng(side)
    coarse = rng.integers(0, 256, (n, side // 4 + 1, side // 4 + 1, 3), np.uint8)
    images = np.repeat(np.repeat(coarse, 4, 1), 4, 2)[:, :side, :side].copy()
    masks = rng.integers(0, 4, (n, side, side), np.uint8)
    poses = rng.normal(0, 30, (n, 3)).astype(np.float32)
    labels = {"identity": np.arange(n, dtype=np.int64) % 7, "mask": masks, "pose": poses}
    present = {
        "identity": np.ones(n, bool),
        "mask": np.arange(n) % 3 != 0,
        "pose": np.arange(n) % 2 == 0,
    }
    images.flags.writeable = False  # as a memory-mapped cache is
    return CachedSamples(images, labels, present, None, None, SPACES)


def _assert_same(old: dict[str, Any], new: dict[str, Any]) -> None:
    assert sorted(old) == sorted(new)
    for key, value in old.items():
        if isinstance(value, dict):  # the present flags of a batch
            _assert_same(value, new[key])
            continue
        assert new[key].dtype == value.dtype, key
        assert torch.equal(new[key], value), key


@pytest.mark.parametrize(
    ("name", "side"), [(name, 21) for name in sorted(CONFIGS)] + [("every option", 128)]
)
def test_training_samples_and_batches_equal_the_old_path_for_the_same_seed(
    name: str, side: int
) -> None:
    old, cfg, cached = _frozen(), CONFIGS[name], _cached(10, side)
    view = TensorView(cached, np.arange(10), cfg)
    for seed in (0, 1, 7):
        torch.manual_seed(seed)
        before = [old.get_item(cached, i, cfg) for i in range(10)]
        old_state = torch.get_rng_state()
        torch.manual_seed(seed)
        after = [view[i] for i in range(10)]
        assert torch.equal(torch.get_rng_state(), old_state)  # the same draws, no more
        for one, two in zip(before, after, strict=True):
            _assert_same(one, two)
        _assert_same(old.collate_samples(before), collate_samples(after))


def test_unaugmented_samples_equal_the_old_conversion() -> None:
    old, cached = _frozen(), _cached(6, 32)
    view = TensorView(cached, np.arange(6))
    for i in range(6):
        _assert_same(old.get_item(cached, i, None), view[i])


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_augment_on_tensors_equals_the_old_one_and_leaves_its_input_alone(name: str) -> None:
    old, cfg, cached = _frozen(), CONFIGS[name], _cached(8, 40)
    for i in range(8):
        sample = old.sample_to_tensors(cached.sample(i), SPACES)
        sample["image"] = sample["image"].contiguous() if i % 2 else sample["image"]
        kept = {k: v.clone() for k, v in sample.items()}
        torch.manual_seed(i)
        expected = old.augment(sample, cfg, SPACES)
        torch.manual_seed(i)
        _assert_same(expected, augment(sample, cfg, SPACES))
        _assert_same(kept, sample)


def test_the_affine_grid_without_a_matrix_product_is_bit_for_bit_affine_grids() -> None:
    generator = torch.Generator().manual_seed(3)
    for side in (128, 64, 37):
        assert augment_module._exact_products(side, side)
        for _ in range(20):
            theta = torch.empty(1, 2, 3).uniform_(-1.5, 1.5, generator=generator)
            expected = torch.nn.functional.affine_grid(
                theta, [1, 3, side, side], align_corners=False
            )
            assert torch.equal(augment_module._affine_grid(theta, side, side), expected)


def test_where_the_products_differ_the_matrix_product_is_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    old, cfg, cached = _frozen(), CONFIGS["every option"], _cached(4, 24)
    monkeypatch.setattr(augment_module, "_exact_products", lambda _h, _w: False)
    view = TensorView(cached, np.arange(4), cfg)
    torch.manual_seed(5)
    expected = [old.get_item(cached, i, cfg) for i in range(4)]
    torch.manual_seed(5)
    for i, one in enumerate(expected):
        _assert_same(one, view[i])
