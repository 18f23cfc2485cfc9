"""Parameter counts of each segmentation decoder on the paper's MobileNetV2 recipe.

The model is ``recipes/seg_distilled_id.yaml`` as it stands (``mobilenetv2_100``, the paper's
five U-Net taps at strides 2-32, 128 px) with the synthetic heads' label spaces (67 identities,
14 mask classes), built once per ``tasks.segmentation.decoder``. Columns: trainable parameters
of the training model, of the decoder alone (the segmentation head: what distillation
removes), and of the distilled inference model (the same for every decoder). Counting needs no
data and no training; weights are random.

Run: python benchmarks/decoder_params.py [--size 128] [--markdown]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mtkd_plugins.segmentation import DECODERS
from mtkd_plugins.synthetic_heads.source import CLASS_NAMES, SyntheticHeadsOptions
from rich.console import Console
from rich.table import Table

import mtkd

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def counts(decoder: str, size: int) -> dict[str, int]:
    cfg = mtkd.load_recipe(
        RECIPES / "seg_distilled_id.yaml",
        [f"data.image_size={size}", f"tasks.segmentation.decoder={decoder}"],
    )
    identities = SyntheticHeadsOptions().identities
    spaces = {
        "identity": mtkd.LabelSpace(tuple(f"person_{i:03d}" for i in range(identities))),
        "mask": mtkd.LabelSpace(CLASS_NAMES),
    }
    model = mtkd.build_model(cfg, spaces)
    return {
        "training": model.parameter_counts().trainable,
        "decoder": mtkd.count_parameters(model.heads["segmentation"]).trainable,
        "inference": mtkd.distill(model).parameter_counts().trainable,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size", type=int, default=128, help="input size in pixels")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()
    rows = {decoder: counts(decoder, args.size) for decoder in DECODERS}
    header = ["decoder", "training model", "decoder only", "inference model"]
    cells = [
        [name, *(f"{row[k]:,}" for k in ("training", "decoder", "inference"))]
        for name, row in rows.items()
    ]
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("| " + " | ".join(["---"] * len(header)) + " |")
        for name, *numbers in cells:
            print("| " + " | ".join([f"`{name}`", *numbers]) + " |")
        return
    table = Table(title=f"Trainable parameters, mobilenetv2_100 at {args.size} px")
    for i, column in enumerate(header):
        table.add_column(column, justify="left" if i == 0 else "right")
    for line in cells:
        table.add_row(*line)
    Console().print(table)


if __name__ == "__main__":
    main()
