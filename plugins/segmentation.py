"""Segmentation task: a per-pixel class map from the encoder taps, by one of four decoders.

``decoder: pix2pix_unet`` (the default) is the paper's, from the TensorFlow segmentation
tutorial: from the deepest tap upwards, each block is a stride-2 3x3 transposed convolution
without bias → BatchNorm → ReLU, concatenated with the next shallower tap; a final stride-2
transposed convolution maps to the class count. Any number of taps and any timm encoder work:
block widths come from ``decoder_channels`` and the input channels from the encoder; an output
not at input resolution is resized to it.

``unetplusplus``, ``deeplabv3plus`` and ``fpn`` are segmentation_models_pytorch's decoders fed
by the same taps (:mod:`seg_decoders` maps taps to the strides each one reads); every decoder
returns logits (B, classes, H, W) at input resolution. See docs/segmentation-decoders.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn

import mtkd
from mtkd import did_you_mean, iou_summary, jaccard_per_class

from . import seg_decoders

PIX2PIX_UNET = "pix2pix_unet"
DECODERS = (PIX2PIX_UNET, *seg_decoders.SMP_DECODERS)
PIX2PIX_CHANNELS = (512, 256, 128, 64)  # the tutorial's upsample blocks, deepest first


@dataclass
class SegmentationOptions:
    decoder: str = PIX2PIX_UNET  # pix2pix_unet | unetplusplus | deeplabv3plus | fpn
    # null: the decoder's default. pix2pix_unet, unetplusplus: block widths, deepest first
    # (pix2pix [512, 256, 128, 64]; U-Net++ one per block, 16 x its output stride);
    # deeplabv3plus: [ASPP width] ([256]); fpn: [pyramid, segmentation] ([256, 128])
    decoder_channels: list[int] | None = None
    kernel_size: int = 3  # pix2pix_unet: transposed-convolution kernel
    atrous_rates: list[int] | None = None  # deeplabv3plus: three ASPP dilations ([12, 24, 36])
    dropout: float | None = None  # deeplabv3plus (ASPP, 0.5) and fpn (0.2)

    def __post_init__(self) -> None:
        if self.decoder not in DECODERS:
            hint = did_you_mean(self.decoder, DECODERS) if self.decoder else ""
            raise mtkd.OptionError(
                "decoder",
                f"unknown decoder '{self.decoder}'"
                f"{hint if hint.startswith(' (did') else ''}; valid: {', '.join(DECODERS)}",
            )
        channels = self.decoder_channels
        if channels is not None and any(c <= 0 for c in channels):
            raise mtkd.OptionError("decoder_channels", f"{list(channels)} must be positive widths")
        if self.atrous_rates is not None:
            self._check_atrous_rates(list(self.atrous_rates))
        if self.dropout is not None:
            self._check_dropout(self.dropout)

    def _check_atrous_rates(self, rates: list[int]) -> None:
        if self.decoder != "deeplabv3plus":
            raise mtkd.OptionError(
                "atrous_rates",
                f"only decoder 'deeplabv3plus' uses it (decoder is '{self.decoder}')",
            )
        if len(rates) != 3 or any(r <= 0 for r in rates):
            raise mtkd.OptionError("atrous_rates", f"{rates} must be three positive dilations")

    def _check_dropout(self, dropout: float) -> None:
        if self.decoder not in ("deeplabv3plus", "fpn"):
            raise mtkd.OptionError(
                "dropout",
                f"only decoders 'deeplabv3plus' and 'fpn' use it (decoder is '{self.decoder}')",
            )
        if not 0.0 <= dropout < 1.0:
            raise mtkd.OptionError("dropout", f"{dropout!r} must be in [0, 1)")


def upsample_block(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """pix2pix ``upsample``: ConvTranspose(stride 2, 'same') → BN → ReLU."""
    pad = (kernel_size - 1) // 2
    return nn.Sequential(
        nn.ConvTranspose2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=2,
            padding=pad,
            output_padding=kernel_size % 2,
            bias=False,
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class UNetDecoder(nn.Module):
    def __init__(
        self,
        tap_channels: tuple[int, ...],
        num_classes: int,
        decoder_channels: list[int],
        kernel_size: int,
        output_size: int,
    ) -> None:
        super().__init__()
        skips = list(reversed(tap_channels[:-1]))
        widths = list(decoder_channels[: len(skips)])
        if len(widths) < len(skips):
            widths += [widths[-1] if widths else 64] * (len(skips) - len(widths))
        self.ups = nn.ModuleList()
        channels = tap_channels[-1]
        for width, skip in zip(widths, skips, strict=True):
            self.ups.append(upsample_block(channels, width, kernel_size))
            channels = width + skip
        pad = (kernel_size - 1) // 2
        self.last = nn.ConvTranspose2d(
            channels,
            num_classes,
            kernel_size,
            stride=2,
            padding=pad,
            output_padding=kernel_size % 2,
        )
        self.output_size = output_size

    def forward(self, taps: list[torch.Tensor]) -> torch.Tensor:
        x = taps[-1]
        for up, skip in zip(self.ups, reversed(taps[:-1]), strict=True):
            x = up(x)
            if x.shape[-2:] != skip.shape[-2:]:
                x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = torch.cat([x, skip], dim=1)
        x = self.last(x)
        if x.shape[-1] != self.output_size or x.shape[-2] != self.output_size:
            x = F.interpolate(x, size=(self.output_size,) * 2, mode="bilinear", align_corners=False)
        return x


class Segmentation(mtkd.Task[SegmentationOptions]):
    name = "segmentation"
    label_key = "mask"
    uses_taps = True
    console_metrics = ("miou",)

    def build_head(self, features: mtkd.FeatureInfo) -> nn.Module:
        o = self.options
        if o.decoder == PIX2PIX_UNET:
            channels = PIX2PIX_CHANNELS if o.decoder_channels is None else o.decoder_channels
            return UNetDecoder(
                features.tap_channels,
                self.num_classes,
                list(channels),
                o.kernel_size,
                features.image_size,
            )
        return seg_decoders.build_smp_head(
            o.decoder,
            f"tasks.{self.key}",
            features,
            self.num_classes,
            channels=o.decoder_channels,
            atrous_rates=o.atrous_rates,
            dropout=o.dropout,
        )

    def loss(self, output: Any, target: torch.Tensor, head: nn.Module) -> torch.Tensor:
        return F.cross_entropy(output, target)

    def summarize(self, metrics: torchmetrics.MetricCollection) -> dict[str, Any]:
        """Adds mean IoU over the classes present, with and without background, and per class.

        torchmetrics gives 0 IoU to a class absent from both targets and predictions; the
        summary leaves such classes out instead of averaging in a meaningless 0.
        """
        values: dict[str, Any] = dict(metrics.compute())
        iou_metric: Any = metrics["iou"]
        per_class, present = jaccard_per_class(iou_metric)
        names = self.label_space.names if self.label_space else ()
        summary = iou_summary(per_class, present, names, background_index=0)
        values["miou_present"] = summary["mean_iou"]
        values["miou_no_background"] = summary["mean_iou_no_background"]
        values["iou_by_class"] = summary["per_class"]
        return values

    def metrics(self) -> torchmetrics.MetricCollection:
        n = self.num_classes
        return torchmetrics.MetricCollection(
            {
                "miou": torchmetrics.classification.MulticlassJaccardIndex(n, average="macro"),
                "iou": torchmetrics.classification.MulticlassJaccardIndex(n, average="none"),
                "pixel_accuracy": torchmetrics.classification.MulticlassAccuracy(
                    n, average="micro"
                ),
            }
        )


@mtkd.hookimpl
def register_tasks(register: Any) -> None:
    register(Segmentation)
