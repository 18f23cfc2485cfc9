"""``mtkd synth OUT_DIR``: write the generated data set to disk as a palette-mask folder.

Layout: ``images/<person>/<view>.png``, ``masks/<person>/<view>.png`` (RGB palette colours),
``index.csv`` (image, mask, identity, yaw, pitch, roll) and ``dataset.yaml``: a recipe overlay
that reads the folder back with the ``palette_folder`` adapter
(``mtkd run recipes/seg_distilled_id.yaml OUT_DIR/dataset.yaml``).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import yaml
from PIL import Image
from rich.console import Console
from rich.progress import Progress

import mtkd

from .identity import IDENTITY_CUES
from .labels import CLASS_NAMES, PALETTE, mask_to_rgb
from .source import (
    SyntheticHeads,
    SyntheticHeadsOptions,
    effective_spread,
    views_per_identity,
)


def write_dataset(
    out_dir: Path, options: SyntheticHeadsOptions, size: int, console: Console
) -> int:
    """Render every sample of ``options`` at ``size`` px into ``out_dir``; returns the count."""
    source = SyntheticHeads(options, image_size=size, seed=options.seed)
    names = source.label_spaces["identity"].names
    if (out_dir / "index.csv").exists():
        raise mtkd.MtkdError(f"'{out_dir}' already holds a data set (index.csv); choose another")
    rows = []
    with Progress(console=console, transient=True) as progress:
        bar = progress.add_task("rendering", total=len(source))
        for index in range(len(source)):
            sample = source[index]
            person = names[sample["identity"]]
            stem = f"{person}/{index:06d}.png"
            for folder, array in (
                ("images", sample["image"]),
                ("masks", mask_to_rgb(sample["mask"])),
            ):
                path = out_dir / folder / stem
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(path)
            yaw, pitch, roll = (round(float(v), 3) for v in sample["pose"])
            rows.append([f"images/{stem}", f"masks/{stem}", person, yaw, pitch, roll])
            progress.update(bar, completed=index + 1)
    with (out_dir / "index.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "mask", "identity", "yaw", "pitch", "roll"])
        writer.writerows(rows)
    palette = {name: list(colour) for name, colour in zip(CLASS_NAMES, PALETTE, strict=True)}
    dataset = {"name": "palette_folder", "root": str(out_dir.resolve()), "csv": "index.csv"}
    overlay = {"data": {"dataset": {**dataset, "palette": palette}}}
    (out_dir / "dataset.yaml").write_text(
        "# A recipe overlay: mtkd run RECIPE this-file.yaml\n"
        + yaml.safe_dump(overlay, sort_keys=False, default_flow_style=None)
    )
    return len(rows)


class SynthCommand(mtkd.Command):
    name = "synth"
    help = "write the generated synthetic_heads data set to a folder (images, masks, index.csv)"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        defaults = SyntheticHeadsOptions()
        parser.add_argument("out_dir", type=Path, help="folder to create")
        parser.add_argument("--identities", type=int, default=defaults.identities)
        parser.add_argument("--views", type=int, default=defaults.views, help="mean views each")
        parser.add_argument("--views-spread", type=int, default=defaults.views_spread)
        parser.add_argument("--size", type=int, default=128, help="image side in pixels")
        parser.add_argument("--seed", type=int, default=defaults.seed)
        parser.add_argument(
            "--identity-cues",
            default=defaults.identity_cues,
            choices=IDENTITY_CUES,
            help="all, or geometry: people told apart by their face's shape alone",
        )

    def run(self, args: argparse.Namespace, console: Console) -> int:
        options = SyntheticHeadsOptions(
            identities=args.identities,
            views=args.views,
            views_spread=args.views_spread,
            seed=args.seed,
            identity_cues=args.identity_cues,
        )
        if args.size < 1:
            raise mtkd.RecipeError(f"--size: must be 1 or more, got {args.size}")
        count = write_dataset(args.out_dir, options, args.size, console)
        console.print(f"wrote {count} images with masks to {args.out_dir}")
        for line in count_lines(options):
            console.print(line, highlight=False)
        return 0


def count_lines(options: SyntheticHeadsOptions) -> list[str]:
    """Views per person, and the spread actually used when the asked one was clipped."""
    counts = views_per_identity(options)
    spread = effective_spread(options)
    lines = [
        f"views per person: {min(counts)}-{max(counts)} (mean {sum(counts) / len(counts):.1f})"
    ]
    if spread != options.views_spread:
        lines.append(
            f"views spread {options.views_spread} clipped to {spread} (at most views - 1, so "
            f"each person has {options.views} views on average)"
        )
    lines.append("  " + ", ".join(f"person_{i:03d} {n}" for i, n in enumerate(counts)))
    return lines
