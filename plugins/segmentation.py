"""Segmentation task: a per-pixel class map, by the pix2pix U-Net decoder of the paper.

The decoder (TensorFlow segmentation tutorial): from the deepest tap upwards, each block is a
stride-2 3x3 transposed convolution without bias → BatchNorm → ReLU, concatenated with the
next shallower tap; a final stride-2 transposed convolution maps to the class count. Any
number of taps and any timm encoder work: block widths come from ``decoder_channels`` and the
input channels from the encoder; an output not at input resolution is resized to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn

import mtkd
from mtkd.seg_metrics import iou_summary, jaccard_per_class


@dataclass
class SegmentationOptions:
    decoder_channels: list[int] = field(default_factory=lambda: [512, 256, 128, 64])
    kernel_size: int = 3


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


class Segmentation(mtkd.Task):
    name = "segmentation"
    label_key = "mask"
    uses_taps = True
    Options = SegmentationOptions

    def build_head(self, features: mtkd.FeatureInfo) -> nn.Module:
        return UNetDecoder(
            features.tap_channels,
            self.num_classes,
            list(self.options.decoder_channels),
            self.options.kernel_size,
            features.image_size,
        )

    def loss(self, output: Any, target: torch.Tensor) -> torch.Tensor:
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
