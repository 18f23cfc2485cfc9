"""Augmentation: image and labels move together; a flip swaps left/right classes and yaw."""

from __future__ import annotations

import torch

import mtkd
from mtkd.data.augment import AugmentConfig, augment

SPACES = {
    "mask": mtkd.LabelSpace(("bg", "left_eye", "right_eye"), flip=(0.0, 2.0, 1.0)),
    "pose": mtkd.LabelSpace(("yaw", "pitch", "roll"), kind="vector", flip=(-1.0, 1.0, -1.0)),
}


def sample() -> dict[str, torch.Tensor]:
    image = torch.zeros(3, 8, 8)
    image[:, :, :2] = 1.0  # a bright stripe on the image's left
    mask = torch.zeros(8, 8, dtype=torch.long)
    mask[:, :2] = 1  # left_eye on the image's left
    return {
        "image": image,
        "mask": mask,
        "pose": torch.tensor([30.0, 10.0, 5.0]),
        "identity": torch.tensor(4),
    }


def test_flip_mirrors_pixels_swaps_left_right_classes_and_negates_yaw_and_roll() -> None:
    out = augment(sample(), AugmentConfig(hflip=1.0), SPACES)
    assert out["image"][:, :, -2:].eq(1).all() and out["image"][:, :, :-2].eq(0).all()
    assert out["mask"][:, -2:].eq(2).all() and out["mask"][:, :-2].eq(0).all()  # now right_eye
    assert out["pose"].tolist() == [-30.0, 10.0, -5.0]
    assert int(out["identity"]) == 4


def test_affine_moves_image_and_mask_together() -> None:
    torch.manual_seed(0)
    cfg = AugmentConfig(rotate=20, scale=0.2, translate=0.2)
    for _ in range(5):
        out = augment(sample(), cfg, SPACES)
        bright = out["image"][0] > 0.5
        labelled = out["mask"] == 1
        agree = (bright == labelled).float().mean()
        assert agree > 0.9  # only edge pixels (bilinear vs nearest) may disagree
        assert out["mask"].dtype == torch.long


def test_colour_jitter_changes_only_the_image_and_stays_in_range() -> None:
    torch.manual_seed(0)
    original = sample()
    out = augment(original, AugmentConfig(brightness=0.5, contrast=0.5, saturation=0.5), SPACES)
    assert out["image"].min() >= 0 and out["image"].max() <= 1
    assert torch.equal(out["mask"], original["mask"])


def test_training_split_alone_is_augmented() -> None:
    from helpers import RECIPES

    cfg = mtkd.load_recipe(
        RECIPES / "mobilenetv2_id.yaml",
        [
            "data.dataset.name=random_images",
            "data.image_size=32",
            "data.augment.hflip=1.0",
            "data.cache=memory",
        ],
    )
    data = mtkd.build_data(cfg)
    raw = data.cached.images[int(data.train.indices[0])]
    flipped = data.train[0]["image"]
    assert torch.allclose(flipped, torch.tensor(raw[:, ::-1].copy()).permute(2, 0, 1).float() / 255)
    val_raw = data.cached.images[int(data.val.indices[0])]
    assert torch.allclose(
        data.val[0]["image"], torch.tensor(val_raw).permute(2, 0, 1).float() / 255
    )
