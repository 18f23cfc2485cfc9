"""segmentation_models_pytorch decoders (U-Net++, DeepLabV3+, FPN) fed by mtkd's encoder taps.

smp decoders take a list of features whose entry ``k`` is the stride-``2**k`` map of the
encoder (entry 0 is the input-resolution "identity" feature), with ``encoder_channels`` giving
each entry's channel count. :class:`TapPyramid` builds that list from mtkd's taps: a tap's
level is ``round(log2(reduction))`` from :class:`mtkd.FeatureInfo`, taps at one level are
concatenated, and a level that no tap reaches, or that the decoder does not read, becomes a
zero-channel placeholder. The list ends at the deepest tap's level ``L``:

- ``unetplusplus`` reads every level from 2 (stride 4) to ``L`` and, when there is a tap there,
  level 1 (stride 2; smp supports a zero-channel stride-2 entry, not a gap further down); it
  has ``L`` blocks, each upsampling x2, and ends at stride 1.
- ``deeplabv3plus`` reads level 2 (stride 4, the high-resolution branch) and level ``L`` (the
  ASPP input, ``L >= 3``); the ASPP output is upsampled by ``2**(L-2)`` (smp fixes x4 or x2,
  for its dilated encoders) and the decoder ends at stride 4.
- ``fpn`` reads the four levels ``L-3 .. L`` (lateral 1x1 convolutions cannot take a
  zero-channel map); it ends at stride ``2**(L-3)``.

smp's ``SegmentationHead`` then maps to the class count and upsamples to stride 1; the logits
are resized to the input size only when it is not a multiple of the deepest stride. The encoder
stays mtkd's timm encoder, so a head built here holds exactly the decoder and its class layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.base import initialization as smp_init
from segmentation_models_pytorch.base.heads import SegmentationHead
from segmentation_models_pytorch.decoders.deeplabv3.decoder import (
    ASPPPooling,
    DeepLabV3PlusDecoder,
)
from segmentation_models_pytorch.decoders.fpn.decoder import FPNDecoder
from segmentation_models_pytorch.decoders.unetplusplus.decoder import UnetPlusPlusDecoder
from torch import nn

import mtkd

SMP_DECODERS = ("unetplusplus", "deeplabv3plus", "fpn")
DEEPLAB_CHANNELS = 256  # smp's DeepLabV3Plus decoder_channels
DEEPLAB_ATROUS_RATES = (12, 24, 36)  # smp's DeepLabV3Plus decoder_atrous_rates
DEEPLAB_DROPOUT = 0.5  # smp's decoder_aspp_dropout
FPN_CHANNELS = (256, 128)  # smp's FPN decoder_pyramid_channels, decoder_segmentation_channels
FPN_DROPOUT = 0.2  # smp's FPN decoder_dropout
FPN_GROUPS = 32  # FPN's GroupNorm groups: segmentation channels must be a multiple


def tap_levels(features: mtkd.FeatureInfo) -> tuple[int, ...]:
    """Each tap's pyramid level: ``log2`` of its measured reduction, rounded to an integer."""
    return tuple(round(math.log2(max(1, r))) for r in features.tap_reductions)


def unetplusplus_widths(depth: int) -> list[int]:
    """smp's (256, 128, 64, 32, 16) for five blocks: 16 x the stride each block ends at."""
    return [16 * 2**level for level in range(depth - 1, -1, -1)]


def _strides(levels: Sequence[int]) -> str:
    return ", ".join(str(2**level) for level in sorted(set(levels))) or "none"


class TapPyramid(nn.Module):
    """Taps → smp's feature list: entry ``k`` is the stride-``2**k`` map, ``k = 0 .. depth``.

    Levels not in ``read`` (or without taps) are zero-channel placeholders. Entry ``k`` is
    sized ``2**(depth - k)`` x the deepest tap's size, which smp's x2 upsamplings assume; a tap
    of another size (input not a multiple of the strides) is resized to it bilinearly.
    """

    def __init__(self, levels: Sequence[int], read: set[int], depth: int) -> None:
        super().__init__()
        self.depth = depth
        self.groups = [
            tuple(i for i, level in enumerate(levels) if level == k) if k in read else ()
            for k in range(depth + 1)
        ]
        self.reference = self.groups[depth][0]  # a tap at the deepest level sets the sizes

    def channels(self, tap_channels: Sequence[int]) -> list[int]:
        """smp's ``encoder_channels``: per entry, the summed channels of its taps (0: none)."""
        return [sum(tap_channels[i] for i in group) for group in self.groups]

    def forward(self, taps: list[torch.Tensor]) -> list[torch.Tensor]:
        deepest = taps[self.reference]
        batch = deepest.shape[0]
        height, width = deepest.shape[-2:]
        pyramid = []
        for k, group in enumerate(self.groups):
            scale = 2 ** (self.depth - k)
            size = (int(height) * scale, int(width) * scale)
            if not group:
                pyramid.append(deepest.new_zeros((batch, 0, *size)))
                continue
            maps = [
                t
                if t.shape[-2:] == size
                else F.interpolate(t, size=size, mode="bilinear", align_corners=False)
                for t in (taps[i] for i in group)
            ]
            pyramid.append(maps[0] if len(maps) == 1 else torch.cat(maps, dim=1))
        return pyramid


class PooledBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm of a globally pooled (B, C, 1, 1) map that also trains on a batch of one.

    With one value per channel there are no batch statistics (plain BatchNorm raises), so such
    a batch is normalised with the running statistics, as in eval mode, and leaves them as
    they are. State-dict keys are BatchNorm2d's.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] * x.shape[2] * x.shape[3] == 1:
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        return super().forward(x)


class SmpDecoderHead(nn.Module):
    """taps → :class:`TapPyramid` → smp decoder → smp ``SegmentationHead`` → (B, classes, H, W)."""

    def __init__(
        self, pyramid: TapPyramid, decoder: nn.Module, head: nn.Module, output_size: int
    ) -> None:
        super().__init__()
        self.pyramid = pyramid
        self.decoder = decoder
        self.segmentation_head = head
        self.output_size = output_size

    def forward(self, taps: list[torch.Tensor]) -> torch.Tensor:
        x = self.segmentation_head(self.decoder(self.pyramid(taps)))
        if x.shape[-1] != self.output_size or x.shape[-2] != self.output_size:
            x = F.interpolate(x, size=(self.output_size,) * 2, mode="bilinear", align_corners=False)
        return x


def _require(
    key: str, decoder: str, needed: Sequence[int], features: mtkd.FeatureInfo, why: str
) -> None:
    """RecipeError naming ``<key>.decoder`` and the strides needed, when a level is missing."""
    levels = tap_levels(features)
    missing = [level for level in needed if level not in levels]
    if not missing:
        return
    detail = f"missing: {_strides(missing)}"
    wanted = _strides(needed)
    size = features.image_size
    if size % 2 ** max(levels):
        detail += (
            f"; data.image_size={size} is not a multiple of the deepest stride, so strides are "
            "estimated from the map sizes"
        )
    raise mtkd.RecipeError(
        f"{key}.decoder: '{decoder}' needs taps at strides {wanted} ({why}); the encoder "
        f"taps have strides {_strides(levels)} ({detail}). Add taps with encoder.taps or "
        "encoder.out_indices, or choose another decoder"
    )


def _check_channels(key: str, decoder: str, channels: Sequence[int], count: int, what: str) -> None:
    if len(channels) != count:
        raise mtkd.RecipeError(
            f"{key}.decoder_channels: '{decoder}' needs {count} width(s) ({what}), "
            f"got {list(channels)}"
        )


def build_unetplusplus(
    key: str, features: mtkd.FeatureInfo, num_classes: int, channels: Sequence[int] | None
) -> SmpDecoderHead:
    levels = tap_levels(features)
    depth = max(levels)
    _require(
        key,
        "unetplusplus",
        list(range(2, depth + 1)) or [2],
        features,
        "every stride from 4 to the deepest tap's; stride 2 is optional",
    )
    widths = list(channels) if channels is not None else unetplusplus_widths(depth)
    block_strides = ", ".join(str(2**level) for level in range(depth - 1, -1, -1))
    _check_channels(
        key, "unetplusplus", widths, depth, f"one per block, deepest first: strides {block_strides}"
    )
    pyramid = TapPyramid(levels, set(range(1, depth + 1)), depth)
    decoder = UnetPlusPlusDecoder(
        encoder_channels=pyramid.channels(features.tap_channels),
        decoder_channels=widths,
        n_blocks=depth,
    )
    head = SegmentationHead(widths[-1], num_classes, kernel_size=3)
    smp_init.initialize_decoder(decoder)  # as smp's UnetPlusPlus model initialises them
    smp_init.initialize_head(head)
    return SmpDecoderHead(pyramid, decoder, head, features.image_size)


def build_deeplabv3plus(
    key: str,
    features: mtkd.FeatureInfo,
    num_classes: int,
    channels: Sequence[int] | None,
    atrous_rates: Sequence[int] | None,
    dropout: float | None,
) -> SmpDecoderHead:
    levels = tap_levels(features)
    depth = max(levels)
    needed = [2, depth] if depth >= 3 else [2, 3]
    _require(key, "deeplabv3plus", needed, features, "the stride-4 map and a deeper one for ASPP")
    widths = list(channels) if channels is not None else [DEEPLAB_CHANNELS]
    _check_channels(key, "deeplabv3plus", widths, 1, "the ASPP and decoder width")
    pyramid = TapPyramid(levels, {2, depth}, depth)
    decoder = DeepLabV3PlusDecoder(
        encoder_channels=pyramid.channels(features.tap_channels),
        encoder_depth=5,
        out_channels=widths[0],
        atrous_rates=tuple(atrous_rates or DEEPLAB_ATROUS_RATES),
        output_stride=16,
        aspp_separable=True,  # smp's DeepLabV3Plus default
        aspp_dropout=DEEPLAB_DROPOUT if dropout is None else dropout,
    )
    # smp's encoders are dilated to stride 16 or 8; mtkd's taps are not, so the ASPP output
    # at stride 2**depth is brought to stride 4 here.
    decoder.up = nn.Upsample(scale_factor=2 ** (depth - 2), mode="bilinear", align_corners=True)
    pooling = decoder.aspp[0].convs[-1]
    assert isinstance(pooling, ASPPPooling)
    pooling[2] = PooledBatchNorm2d(widths[0])
    head = SegmentationHead(widths[0], num_classes, kernel_size=1, upsampling=4)
    return SmpDecoderHead(pyramid, decoder, head, features.image_size)


def build_fpn(
    key: str,
    features: mtkd.FeatureInfo,
    num_classes: int,
    channels: Sequence[int] | None,
    dropout: float | None,
) -> SmpDecoderHead:
    levels = tap_levels(features)
    depth = max(levels)
    needed = list(range(max(depth, 3) - 3, max(depth, 3) + 1))
    _require(key, "fpn", needed, features, "the deepest tap's and the three strides below it")
    widths = list(channels) if channels is not None else list(FPN_CHANNELS)
    _check_channels(key, "fpn", widths, 2, "pyramid channels, segmentation channels")
    if widths[1] % FPN_GROUPS:
        raise mtkd.RecipeError(
            f"{key}.decoder_channels: fpn's segmentation channels ({widths[1]}) must be a "
            f"multiple of {FPN_GROUPS} (its GroupNorm groups)"
        )
    pyramid = TapPyramid(levels, set(needed), depth)
    decoder = FPNDecoder(
        encoder_channels=pyramid.channels(features.tap_channels),
        encoder_depth=depth,
        pyramid_channels=widths[0],
        segmentation_channels=widths[1],
        dropout=FPN_DROPOUT if dropout is None else dropout,
    )
    head = SegmentationHead(widths[1], num_classes, kernel_size=1, upsampling=2 ** (depth - 3))
    smp_init.initialize_decoder(decoder)  # as smp's FPN model initialises them
    smp_init.initialize_head(head)
    return SmpDecoderHead(pyramid, decoder, head, features.image_size)


def build_smp_head(
    decoder: str,
    key: str,
    features: mtkd.FeatureInfo,
    num_classes: int,
    *,
    channels: Sequence[int] | None = None,
    atrous_rates: Sequence[int] | None = None,
    dropout: float | None = None,
) -> SmpDecoderHead:
    """The head of ``decoder`` (one of :data:`SMP_DECODERS`); ``key`` is ``tasks.<key>``."""
    if not features.tap_reductions:
        raise mtkd.RecipeError(f"{key}.decoder: '{decoder}' reads encoder taps; none are set")
    if decoder == "unetplusplus":
        return build_unetplusplus(key, features, num_classes, channels)
    if decoder == "deeplabv3plus":
        return build_deeplabv3plus(key, features, num_classes, channels, atrous_rates, dropout)
    if decoder == "fpn":
        return build_fpn(key, features, num_classes, channels, dropout)
    raise mtkd.RecipeError(f"{key}.decoder: '{decoder}' is not one of {', '.join(SMP_DECODERS)}")
