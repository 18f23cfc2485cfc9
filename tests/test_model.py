"""Composing timm encoders with task heads, taps, distillation and parameter counts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import RECIPES, assert_same_identification, label_spaces
from omegaconf import DictConfig
from timm.models.convnext import ConvNeXt
from timm.models.efficientnet import EfficientNet
from timm.models.resnet import ResNet

import mtkd

TINY_ENCODERS = ["test_efficientnet", "test_resnet", "test_convnext", "mobilenetv2_035"]


def recipe(encoder: str, *extra: str) -> DictConfig:
    overrides = [f"encoder.name={encoder}", "encoder.taps=stages", "data.image_size=64", *extra]
    return mtkd.load_recipe(RECIPES / "seg_distilled_id.yaml", overrides)


@pytest.mark.parametrize("encoder", TINY_ENCODERS)
def test_any_timm_encoder_composes_with_both_heads(encoder: str) -> None:
    model = mtkd.build_model(recipe(encoder), label_spaces(identities=5, classes=4))
    out = model(torch.rand(2, 3, 64, 64))
    assert out["identification"]["logits"].shape == (2, 5)
    assert out["identification"]["embedding"].shape == (2, 128)
    assert out["segmentation"].shape == (2, 4, 64, 64)  # at input resolution
    info = model.encoder.feature_info
    trunk = model.encoder.trunk
    assert isinstance(trunk, EfficientNet | ResNet | ConvNeXt), type(trunk)
    assert len(info.tap_channels) == len(trunk.feature_info)


def test_channel_counts_are_measured_from_the_encoder() -> None:
    cfg = mtkd.load_recipe(RECIPES / "seg_distilled_id.yaml")
    model = mtkd.build_model(cfg, label_spaces())
    info = model.encoder.feature_info
    assert info.tap_channels == (96, 144, 192, 576, 320)  # the pix2pix U-Net skips
    assert info.tap_reductions == (2, 4, 8, 16, 32)
    assert info.final_channels == 1280


def test_out_indices_select_stages_and_reject_bad_indices() -> None:
    model = mtkd.build_model(
        recipe("test_efficientnet", "encoder.out_indices=[1,-1]"), label_spaces()
    )
    assert model.encoder.tap_names == ("blocks.1", "blocks.4")
    with pytest.raises(mtkd.RecipeError, match=r"out_indices: index 7 is out of range"):
        mtkd.build_model(recipe("test_efficientnet", "encoder.out_indices=[7]"), label_spaces())


def test_unknown_tap_module_is_named_with_a_suggestion() -> None:
    cfg = recipe("test_efficientnet", "encoder.taps=[blocks.1,blocks.9]")
    with pytest.raises(mtkd.RecipeError, match=r"encoder\.taps\[1\]: module 'blocks\.9'"):
        mtkd.build_model(cfg, label_spaces())


def test_token_encoders_are_refused_clearly() -> None:
    cfg = mtkd.load_recipe(
        RECIPES / "mobilenetv2_id.yaml", ["encoder.name=test_vit", "data.image_size=32"]
    )
    with pytest.raises(mtkd.RecipeError, match=r"need \(batch, channels, height, width\)"):
        mtkd.build_model(cfg, label_spaces())


def test_distillation_keeps_identification_outputs_identical() -> None:
    torch.manual_seed(0)
    model = mtkd.build_model(recipe("mobilenetv2_035"), label_spaces())
    model.train()
    model(torch.rand(4, 3, 64, 64))  # move BN statistics away from their init
    model.eval()
    student = mtkd.distill(model)
    assert set(student.tasks) == {"identification"}
    assert student.encoder.tap_names == ()  # no remaining head reads taps
    assert set(model.tasks) == {"identification", "segmentation"}  # original untouched
    assert_same_identification(model, student)


def test_paper_recipe_parameter_counts_at_128px_with_67_identities() -> None:
    cfg = mtkd.load_recipe(RECIPES / "seg_distilled_id.yaml")
    model = mtkd.build_model(cfg, label_spaces(identities=67, classes=14))
    training = model.parameter_counts()
    inference = mtkd.distill(model).parameter_counts()
    print(f"training model: {training}; inference model: {inference}")
    assert abs(inference.trainable - 2_400_000) <= 50_000
    assert inference.trainable == 2_396_483  # design notes: mobilenetv2_100 + 1280→128→67
    assert training.trainable > inference.trainable + 4_000_000  # the U-Net decoder


def test_pix2pix_unet_matches_the_tutorial_keras_count() -> None:
    """Tutorial U-Net (3 classes, 128 px): 6,504,227 Keras parameters = encoder up to
    block_16_project's conv + decoder. Our encoder goes on to the ID head's features
    (block_16's BN, conv_head 1280, bn2): those layers are left out of this count."""
    cfg = mtkd.load_recipe(RECIPES / "seg_distilled_id.yaml")
    model = mtkd.build_model(cfg, label_spaces(identities=67, classes=3))
    trunk = model.encoder.trunk
    head_only = mtkd.count_parameters(
        torch.nn.ModuleList(
            [trunk.get_submodule(name) for name in ("blocks.6.0.bn3", "conv_head", "bn2")]
        )
    )
    unet = (
        mtkd.count_parameters(model.encoder).keras
        - head_only.keras
        + mtkd.count_parameters(model.heads["segmentation"]).keras
    )
    assert unet == 6_504_227


def test_vgg_trunk_drops_fc6_fc7_as_in_the_paper() -> None:
    cfg = mtkd.load_recipe(RECIPES / "vgg19_id.yaml", ["data.image_size=32"])
    model = mtkd.build_model(cfg, label_spaces(identities=67))
    assert model.parameter_counts().trainable == 20_098_691  # design notes, section 1


@pytest.mark.parametrize("suffix", ["safetensors", "pth"])
def test_encoder_loads_a_local_weights_file_without_network(tmp_path: Path, suffix: str) -> None:
    import timm
    from safetensors.torch import save_file

    reference = timm.create_model("test_efficientnet")
    path = tmp_path / f"weights.{suffix}"
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    save_file(state, str(path)) if suffix == "safetensors" else torch.save(state, path)
    cfg = recipe("test_efficientnet", f"encoder.weights={path}")
    model = mtkd.build_model(cfg, label_spaces())
    torch.testing.assert_close(
        model.encoder.trunk.get_parameter("conv_stem.weight"),
        reference.get_parameter("conv_stem.weight"),
    )
