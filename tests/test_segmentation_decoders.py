"""The segmentation task's decoders: pix2pix U-Net (the paper's), U-Net++, DeepLabV3+ and FPN."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from helpers import RECIPES, assert_same_identification, label_spaces
from mtkd_plugins.seg_decoders import SmpDecoderHead, TapPyramid
from mtkd_plugins.segmentation import DECODERS, UNetDecoder
from omegaconf import DictConfig

import mtkd

ENCODERS = ["test_efficientnet", "test_resnet", "mobilenetv2_035"]
SMP_DECODERS = ["unetplusplus", "deeplabv3plus", "fpn"]
CLASSES = 4


def recipe(encoder: str, decoder: str, size: int = 64, *extra: str) -> DictConfig:
    overrides = [
        f"encoder.name={encoder}",
        "encoder.taps=stages",
        f"data.image_size={size}",
        f"tasks.segmentation.decoder={decoder}",
        *extra,
    ]
    return mtkd.load_recipe(RECIPES / "seg_distilled_id.yaml", overrides)


def build(encoder: str, decoder: str, size: int = 64, *extra: str) -> mtkd.MultiTaskModel:
    return mtkd.build_model(recipe(encoder, decoder, size, *extra), label_spaces(5, CLASSES))


def seg_head(model: mtkd.MultiTaskModel) -> Any:
    return model.heads["segmentation"]


def test_the_four_decoders_are_offered_with_the_papers_first() -> None:
    assert DECODERS == ("pix2pix_unet", "unetplusplus", "deeplabv3plus", "fpn")


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("encoder", ENCODERS)
def test_every_decoder_gives_a_mask_at_input_resolution_on_three_encoders(
    encoder: str, decoder: str
) -> None:
    model = build(encoder, decoder)
    assert model.encoder.feature_info.tap_reductions == (2, 4, 8, 16, 32)
    out = model(torch.rand(2, 3, 64, 64))
    assert out["segmentation"].shape == (2, CLASSES, 64, 64)
    assert out["identification"]["logits"].shape == (2, 5)


@pytest.mark.parametrize("decoder", SMP_DECODERS)
def test_mask_is_at_input_resolution_when_the_size_is_not_a_multiple_of_32(
    decoder: str,
) -> None:
    model = build("test_efficientnet", decoder, 48)
    assert model(torch.rand(2, 3, 48, 48))["segmentation"].shape == (2, CLASSES, 48, 48)


@pytest.mark.parametrize("decoder", SMP_DECODERS)
def test_encoder_without_a_stride_2_tap_works_with_every_smp_decoder(decoder: str) -> None:
    model = build("test_convnext", decoder)
    assert model.encoder.feature_info.tap_reductions == (4, 8, 16, 32)
    assert model(torch.rand(2, 3, 64, 64))["segmentation"].shape == (2, CLASSES, 64, 64)
    head = seg_head(model)
    assert isinstance(head, SmpDecoderHead)
    assert head.pyramid.channels(model.encoder.feature_info.tap_channels)[:2] == [0, 0]


@pytest.mark.parametrize("decoder", DECODERS)
def test_distillation_removes_exactly_the_decoder(decoder: str) -> None:
    torch.manual_seed(0)
    model = build("mobilenetv2_035", decoder)
    model.train()
    model(torch.rand(4, 3, 64, 64))  # move BN statistics away from their init
    model.eval()
    student = mtkd.distill(model)
    assert set(student.tasks) == {"identification"}
    assert student.encoder.tap_names == ()
    assert not [n for n, _ in student.named_parameters() if n.startswith("heads.segmentation")]
    decoder_params = mtkd.count_parameters(seg_head(model)).trainable
    assert decoder_params > 0
    assert (
        student.parameter_counts().trainable == model.parameter_counts().trainable - decoder_params
    )
    assert_same_identification(model, student)


def blocky_batch(count: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of 8x8-pixel colour blocks; a block's class is its dominant colour, or 3 if dark."""
    generator = torch.Generator().manual_seed(seed)
    grid = torch.rand(count, 3, size // 8, size // 8, generator=generator)
    images = grid.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3)
    masks = images.argmax(dim=1)
    masks[images.max(dim=1).values < 0.4] = 3
    return images, masks


NARROW = {  # decoder_channels that keep the training test quick on a CPU
    "pix2pix_unet": "[64,32,16,16]",
    "unetplusplus": "[64,32,16,8,8]",
    "deeplabv3plus": "[64]",
    "fpn": "[64,32]",
}


@pytest.mark.parametrize("decoder", DECODERS)
def test_short_training_lowers_the_segmentation_loss(decoder: str) -> None:
    torch.manual_seed(0)
    channels = f"tasks.segmentation.decoder_channels={NARROW[decoder]}"
    model = build("test_efficientnet", decoder, 32, channels)
    images, masks = blocky_batch(8, 32, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for _ in range(20):
        loss = model.task_loss("segmentation", model(images)["segmentation"], masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.7 * first, f"{decoder}: seg loss {first:.3f} → {last:.3f}"


def test_deeplabv3plus_trains_on_a_batch_of_one_image() -> None:
    """Its ASPP pooling branch normalises one value per channel: no batch statistics."""
    model = build("test_efficientnet", "deeplabv3plus")  # 2 x 2 at stride 32: the encoder's BN
    model.train()
    out = model(torch.rand(1, 3, 64, 64))["segmentation"]
    out.mean().backward()
    assert out.shape == (1, CLASSES, 64, 64)


def test_unknown_decoder_name_is_a_recipe_error_listing_the_valid_names() -> None:
    with pytest.raises(mtkd.RecipeError) as error:
        build("test_efficientnet", "unet")
    message = str(error.value)
    assert message.startswith("tasks.segmentation.decoder: unknown decoder 'unet'")
    assert "pix2pix_unet, unetplusplus, deeplabv3plus, fpn" in message
    with pytest.raises(mtkd.RecipeError, match=r"did you mean 'deeplabv3plus'"):
        build("test_efficientnet", "deeplabv3+")


@pytest.mark.parametrize(
    ("decoder", "out_indices", "needed", "missing"),
    [
        ("deeplabv3plus", "[2,3,4]", "4, 32", "4"),
        ("unetplusplus", "[1,4]", "4, 8, 16, 32", "8, 16"),
        ("fpn", "[0,2,3,4]", "4, 8, 16, 32", "4"),
        ("fpn", "[0,1]", "1, 2, 4, 8", "1, 8"),
    ],
)
def test_taps_missing_a_needed_stride_are_a_recipe_error_naming_the_strides(
    decoder: str, out_indices: str, needed: str, missing: str
) -> None:
    cfg = recipe("test_efficientnet", decoder, 64, f"encoder.out_indices={out_indices}")
    with pytest.raises(mtkd.RecipeError) as error:
        mtkd.build_model(cfg, label_spaces(5, CLASSES))
    message = str(error.value)
    assert message.startswith(f"tasks.segmentation.decoder: '{decoder}' needs taps at strides")
    assert f"strides {needed} (" in message
    assert f"(missing: {missing})" in message


@pytest.mark.parametrize(
    ("decoder", "extra", "match"),
    [
        ("unetplusplus", "decoder_channels=[64,32]", r"decoder_channels: 'unetplusplus' needs 5"),
        ("deeplabv3plus", "decoder_channels=[64,32]", r"decoder_channels: 'deeplabv3plus' needs 1"),
        ("fpn", "decoder_channels=[64,48]", r"decoder_channels: .*multiple of 32"),
        ("fpn", "decoder_channels=[64,0]", r"decoder_channels: \[64, 0\] must be positive"),
        ("fpn", "atrous_rates=[1,2,3]", r"atrous_rates: only decoder 'deeplabv3plus'"),
        ("deeplabv3plus", "atrous_rates=[1,2]", r"atrous_rates: \[1, 2\] must be three"),
        ("pix2pix_unet", "dropout=0.1", r"dropout: only decoders 'deeplabv3plus' and 'fpn'"),
        ("fpn", "dropout=1.5", r"dropout: 1.5 must be in \[0, 1\)"),
    ],
)
def test_bad_decoder_options_are_recipe_errors_naming_the_option(
    decoder: str, extra: str, match: str
) -> None:
    cfg = recipe("test_efficientnet", decoder, 64, f"tasks.segmentation.{extra}")
    with pytest.raises(mtkd.RecipeError, match=r"^tasks\.segmentation\." + match):
        mtkd.build_model(cfg, label_spaces(5, CLASSES))


def test_decoder_channels_set_the_smp_decoder_widths() -> None:
    default = build("test_efficientnet", "unetplusplus")
    narrow = build(
        "test_efficientnet", "unetplusplus", 64, "tasks.segmentation.decoder_channels=[32,16,8,8,8]"
    )
    count = mtkd.count_parameters
    assert count(seg_head(narrow)).trainable < count(seg_head(default)).trainable
    assert seg_head(narrow).decoder.blocks["x_0_4"].conv2[0].out_channels == 8
    fpn = build("test_efficientnet", "fpn", 64, "tasks.segmentation.decoder_channels=[64,32]")
    assert seg_head(fpn).decoder.p5.out_channels == 64
    assert seg_head(fpn).segmentation_head[0].in_channels == 32
    aspp = build(
        "test_efficientnet", "deeplabv3plus", 64, "tasks.segmentation.decoder_channels=[48]"
    )
    assert seg_head(aspp).segmentation_head[0].in_channels == 48


def test_default_decoder_is_the_papers_pix2pix_unet() -> None:
    cfg = mtkd.load_recipe(RECIPES / "seg_distilled_id.yaml")
    spaces = label_spaces(identities=67, classes=14)
    torch.manual_seed(0)
    default = mtkd.build_model(cfg, spaces)
    assert isinstance(default.heads["segmentation"], UNetDecoder)
    assert default.parameter_counts().trainable == 7_072_657  # docs/benchmarks.md
    named = mtkd.load_recipe(
        RECIPES / "seg_distilled_id.yaml",
        ["tasks.segmentation.decoder=pix2pix_unet", "tasks.segmentation.decoder_channels=null"],
    )
    torch.manual_seed(0)
    explicit = mtkd.build_model(named, spaces)
    for (name, a), (_, b) in zip(
        default.state_dict().items(), explicit.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_tap_pyramid_concatenates_taps_of_one_stride_and_pads_missing_levels() -> None:
    pyramid = TapPyramid(levels=(1, 2, 2, 4), read={1, 2, 3, 4}, depth=4)
    assert pyramid.channels([5, 6, 7, 8]) == [0, 5, 13, 0, 8]
    taps = [torch.rand(2, c, 32 // 2**level, 32 // 2**level) for c, level in ((5, 1), (6, 2))]
    taps += [torch.rand(2, 7, 8, 8), torch.rand(2, 8, 2, 2)]
    shapes = [tuple(t.shape) for t in pyramid(taps)]
    assert shapes == [(2, 0, 32, 32), (2, 5, 16, 16), (2, 13, 8, 8), (2, 0, 4, 4), (2, 8, 2, 2)]
    odd = [torch.rand(2, 5, 13, 13), torch.rand(2, 6, 7, 7), torch.rand(2, 7, 7, 7)]
    odd.append(torch.rand(2, 8, 2, 2))  # a 26-px input: every level is resized to 2 x 2**k
    assert [tuple(t.shape[-2:]) for t in pyramid(odd)][1:3] == [(16, 16), (8, 8)]
