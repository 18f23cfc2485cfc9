"""``data.augment_on: device``: the batched augmentation does what the per-sample one does
(same outputs for the same parameters, same parameter distributions, masks aligned, left/right
swaps), the loader hands uint8 images that become the host path's floats, and a run augmented
on the device resumes bit for bit."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from helpers import RECIPES, tiny_overrides
from omegaconf import DictConfig
from rich.console import Console

import mtkd
from mtkd.data import augment as host
from mtkd.data.augment import AugmentConfig
from mtkd.data.batch_augment import (
    AugmentParams,
    DeviceAugment,
    augment_batch,
    augment_place,
    draw_params,
)
from mtkd.samples import collate_samples

SPACES = {
    "mask": mtkd.LabelSpace(("bg", "left_eye", "right_eye", "nose"), flip=(0.0, 2.0, 1.0, 3.0)),
    "side": mtkd.LabelSpace(("left", "right", "centre"), flip=(1.0, 0.0, 2.0)),
    "pose": mtkd.LabelSpace(("yaw", "pitch", "roll"), kind="vector", flip=(-1.0, 1.0, -1.0)),
    "identity": mtkd.LabelSpace(("a", "b", "c")),
}
EVERYTHING = AugmentConfig(0.5, 0.3, 0.3, 0.3, 15, 0.15, 0.1)


def samples(n: int, size: int = 16, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        {
            "image": torch.rand(3, size, size, generator=generator),
            "mask": torch.randint(0, 4, (size, size), generator=generator),
            "side": torch.randint(0, 3, (), generator=generator),
            "pose": torch.randn(3, generator=generator) * 30,
            "identity": torch.randint(0, 3, (), generator=generator),
        }
        for _ in range(n)
    ]


def host_draws(seed: int, cfg: AugmentConfig) -> list[float]:
    """What :func:`mtkd.data.augment.augment` draws after ``manual_seed(seed)``, in its order."""
    torch.manual_seed(seed)
    flip = float(float(torch.rand(())) < cfg.hflip) if cfg.hflip > 0 else 0.0
    geometry = [host._uniform(s) for s in (cfg.rotate, cfg.scale, cfg.translate, cfg.translate)]
    colour = [host._uniform(s) for s in (cfg.brightness, cfg.contrast, cfg.saturation)]
    return [flip, *geometry, *colour]


def test_given_the_same_parameters_a_batch_is_augmented_as_each_sample_would_be() -> None:
    cfg, batch = EVERYTHING, samples(12)
    expected, draws = [], []
    for i, sample in enumerate(batch):
        draws.append(host_draws(100 + i, cfg))
        torch.manual_seed(100 + i)
        expected.append(host.augment(sample, cfg, SPACES))
    d = torch.tensor(draws, dtype=torch.float64)
    params = AugmentParams(
        flip=d[:, 0] > 0, angle=d[:, 1], zoom=1 + d[:, 2], shift_x=d[:, 3], shift_y=d[:, 4],
        brightness=1 + d[:, 5], contrast=1 + d[:, 6], saturation=1 + d[:, 7],
    )  # fmt: skip
    assert 0 < int(params.flip.sum()) < len(batch)  # both kinds of sample are in the batch
    out = augment_batch(collate_samples(batch), params, cfg, SPACES)
    want = collate_samples(expected)
    assert (out["image"] - want["image"]).abs().max() < 1e-5
    for key in ("mask", "side", "pose", "identity"):
        assert out[key].dtype == want[key].dtype
        assert torch.equal(out[key], want[key]), key


def test_a_flip_mirrors_pixels_swaps_left_right_classes_and_negates_yaw_and_roll() -> None:
    batch = samples(4)
    cfg = AugmentConfig(hflip=1.0)
    out = DeviceAugment(cfg, SPACES)(collate_samples(batch))
    want = collate_samples([host.augment(s, cfg, SPACES) for s in batch])
    for key in ("image", "mask", "side", "pose", "identity"):
        assert torch.equal(out[key], want[key]), key
    left = batch[0]["mask"][:, :8] == 1  # left_eye on the left half: right_eye on the right
    assert out["mask"][0][:, 8:].flip(-1)[left].eq(2).all()
    assert out["pose"][:, 0].tolist() == [-s["pose"][0].item() for s in batch]
    assert out["side"].tolist() == [[1, 0, 2][int(s["side"])] for s in batch]


def test_masks_stay_aligned_with_the_image_after_affine_and_flip() -> None:
    """An image whose brightness encodes the mask's class (blocks of 8 x 8 pixels): after
    flip + rotate + scale + shift the class read back from the image is the mask's (swapped
    left/right where the sample was flipped), except at block edges."""
    n, size = 16, 32
    blocks = torch.randint(
        0, 4, (n, size // 8, size // 8), generator=torch.Generator().manual_seed(1)
    )
    mask = blocks.repeat_interleave(8, 1).repeat_interleave(8, 2)
    image = (mask.float() / 3)[:, None].expand(n, 3, size, size).contiguous()
    batch = {"image": image, "mask": mask, "present": {}}
    cfg = AugmentConfig(hflip=0.5, rotate=20, scale=0.2, translate=0.1)
    torch.manual_seed(3)
    params = draw_params(n, cfg)
    out = augment_batch(batch, params, cfg, SPACES)
    level = out["image"][:, 0] * 3
    read = level.round().long()
    clean = (level - read).abs() < 0.02  # sampled inside one block (not blended at an edge)
    table = torch.tensor([0, 2, 1, 3])
    expected = torch.where(params.flip.view(-1, 1, 1), table[read], read)
    assert clean.float().mean() > 0.6
    assert (expected == out["mask"])[clean].float().mean() > 0.99
    assert (read == out["mask"])[clean].float().mean() < 0.95  # the swaps were needed
    assert not torch.equal(out["mask"], mask)  # it did move


def test_parameters_follow_the_host_distributions() -> None:
    """Flip rate and colour factors measured from the outputs of both paths on the same image
    (left half 0.3, right half 0.5): brightness = 2.5 x the mean, contrast from the halves'
    difference."""
    cfg, n = AugmentConfig(hflip=0.3, brightness=0.2, contrast=0.4), 3000
    image = torch.full((3, 4, 4), 0.3)
    image[:, :, 2:] = 0.5
    torch.manual_seed(0)
    one = torch.stack([host.augment({"image": image}, cfg, {})["image"] for _ in range(n)])
    batch = {"image": image.expand(n, 3, 4, 4).contiguous(), "present": {}}
    many = DeviceAugment(cfg, {})(batch)["image"]

    def measured(out: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
        left, right = out[:, 0, 0, 0], out[:, 0, 0, -1]
        flipped = (left > right).float().mean().item()
        brightness = out.mean((1, 2, 3)) / 0.4
        contrast = (right - left).abs() / (0.2 * brightness)
        return flipped, brightness, contrast

    (rate_a, b_a, c_a), (rate_b, b_b, c_b) = measured(one), measured(many)
    assert abs(rate_a - 0.3) < 0.03 and abs(rate_b - 0.3) < 0.03
    for a, b, spread in ((b_a, b_b, 0.2), (c_a, c_b, 0.4)):
        assert abs(a.mean() - 1) < 0.01 and abs(b.mean() - 1) < 0.01
        sd = spread / 3**0.5  # a uniform's standard deviation
        assert abs(a.std() / sd - 1) < 0.05 and abs(b.std() / sd - 1) < 0.05
        for values in (a, b):
            assert 1 - spread - 1e-4 <= values.min() and values.max() <= 1 + spread + 1e-4


def test_geometry_parameters_are_uniform_over_the_configured_ranges() -> None:
    torch.manual_seed(0)
    p = draw_params(20000, AugmentConfig(rotate=10, scale=0.2, translate=0.1))
    for values, low, high in (
        (p.angle, -10, 10), (p.zoom, 0.8, 1.2), (p.shift_x, -0.1, 0.1), (p.shift_y, -0.1, 0.1),
    ):  # fmt: skip
        assert low <= values.min() < low + 0.01 * (high - low)
        assert high - 0.01 * (high - low) < values.max() <= high
        assert abs(values.mean() - (low + high) / 2) < 0.01 * (high - low)
    assert not p.flip.any()  # hflip off


def test_parameters_come_from_the_global_generator_in_one_draw_per_batch() -> None:
    cfg = EVERYTHING
    torch.manual_seed(5)
    first = draw_params(8, cfg)
    after = torch.rand(())
    torch.manual_seed(5)
    torch.rand(8, 8)  # one call of 8 x 8 values: the same position in the stream
    assert torch.equal(torch.rand(()), after)
    torch.manual_seed(5)
    assert torch.equal(draw_params(8, cfg).angle, first.angle)


def tiny_cfg(tmp_path: Path, *extra: str) -> DictConfig:
    return mtkd.load_recipe(
        RECIPES / "seg_distilled_id.yaml",
        tiny_overrides(
            tmp_path,
            **{
                "encoder.name": "mobilenetv2_035",
                "data.batch_size": 8,  # 2 steps an epoch
                "data.cache": "memory",
                "trainer.max_epochs": 1,
                "data.augment.hflip": 0.5,
                "data.augment.rotate": 10,
                "data.augment.scale": 0.1,
                "data.augment.brightness": 0.2,
            },
        )
        + list(extra),
    )


def test_the_device_loader_hands_uint8_images_that_become_the_host_floats(tmp_path: Path) -> None:
    cfg = tiny_cfg(tmp_path, "data.augment.hflip=0", "data.augment.rotate=0",
                   "data.augment.scale=0", "data.augment.brightness=0")  # fmt: skip
    data = mtkd.build_data(cfg, console=Console(quiet=True))
    raw = collate_samples([data.train.for_device()[i] for i in range(4)])
    assert raw["image"].dtype == torch.uint8
    floats = collate_samples([data.train[i] for i in range(4)])
    out = DeviceAugment(AugmentConfig(), data.label_spaces)(raw)
    assert torch.equal(out["image"], floats["image"])
    assert torch.equal(out["mask"], floats["mask"])


def test_auto_picks_the_device_on_a_gpu_and_the_host_on_a_cpu_or_with_online_teachers() -> None:
    assert augment_place("auto", torch.device("cuda")) == "device"
    assert augment_place("auto", torch.device("cpu")) == "host"
    assert augment_place("auto", torch.device("cuda"), online_teachers=True) == "host"
    assert augment_place("device", torch.device("cpu")) == "device"
    with pytest.raises(mtkd.RecipeError, match=r"data\.augment_on: 'device'.*online teacher"):
        augment_place("device", torch.device("cuda"), online_teachers=True)


def test_an_unknown_augment_on_is_a_one_line_recipe_error() -> None:
    with pytest.raises(mtkd.RecipeError) as caught:
        mtkd.load_recipe(RECIPES / "mobilenetv2_id.yaml", ["data.augment_on=gpu"])
    message = str(caught.value)
    assert "data.augment_on" in message and "'gpu'" in message and "\n" not in message


class StopAt:
    """Sends this process SIGINT after a given step: the loop checkpoints and stops."""

    def __init__(self, step: int) -> None:
        self.step = step

    @mtkd.hookimpl
    def on_step_end(self, context: object, step: int) -> None:
        if step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def train(
    cfg: DictConfig, run_dir: Path | None, stop_at: int = 0, resume: bool = False
) -> tuple[mtkd.MultiTaskModel, mtkd.TrainContext]:
    torch.manual_seed(0)
    data = mtkd.build_data(cfg, console=Console(quiet=True))
    model = mtkd.build_model(cfg, data.label_spaces)
    plugins = mtkd.load_plugins(objects=[("stop", StopAt(stop_at))])
    ctx = mtkd.train(model, data, cfg, plugins=plugins, run_dir=run_dir,
                     console=Console(quiet=True), resume=resume)  # fmt: skip
    return model, ctx


def test_a_run_augmented_on_the_device_resumes_bit_for_bit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    original = DeviceAugment.__call__

    def counted(self: DeviceAugment, batch: dict) -> dict:
        calls.append(len(batch["image"]))
        return original(self, batch)

    monkeypatch.setattr(DeviceAugment, "__call__", counted)
    cfg = tiny_cfg(tmp_path, "data.augment_on=device", "trainer.device=cpu")
    straight, _ = train(cfg, tmp_path / "straight")
    assert calls  # the step augmented on the device
    with pytest.raises(mtkd.Interrupted):
        train(cfg, tmp_path / "stopped", stop_at=1)  # mid-epoch: checkpointed, RNG saved
    resumed, _ = train(cfg, tmp_path / "stopped", resume=True)
    assert_same_weights(straight, resumed)


def assert_same_weights(a: mtkd.MultiTaskModel, b: mtkd.MultiTaskModel) -> None:
    want, got = a.state_dict(), b.state_dict()
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key


def test_without_augmentation_uint8_batches_train_and_validate_exactly_as_floats(
    tmp_path: Path,
) -> None:
    """The only difference left is where images become floats: weights and validation
    figures are the same bit for bit."""
    off = ["data.augment.hflip=0", "data.augment.rotate=0", "data.augment.scale=0",
           "data.augment.brightness=0", "trainer.device=cpu"]  # fmt: skip
    runs = {
        place: train(tiny_cfg(tmp_path, *off, f"data.augment_on={place}"), None)
        for place in ("host", "device")
    }
    assert_same_weights(runs["host"][0], runs["device"][0])
    history = [[{k: v for k, v in r.items() if not k.startswith("time")} for r in ctx.history]
               for _, ctx in runs.values()]  # fmt: skip
    assert history[0] == history[1] and "val/loss" in history[0][0]
