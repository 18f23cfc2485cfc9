"""Contact sheet of synthetic heads: identities (rows) by yaw (columns), image and mask overlay.

Used to check by eye that the generator makes recognisable heads with parts where they belong
(eyes on the face, ears on the sides, hair on top, the far eye vanishing at profile).
Run: python benchmarks/contact_sheet.py [output.png] [--identity-cues geometry]
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
from mtkd_plugins.synthetic_heads import render as sh
from PIL import Image

YAWS = (-90.0, -60.0, -30.0, 0.0, 30.0, 60.0, 90.0)
SIZE = 128
OUTPUT = Path(__file__).resolve().parents[1] / "docs/images/synthetic_heads_contact_sheet.png"


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Blend the palette colour of each labelled pixel over the image."""
    colours = sh.mask_to_rgb(mask).astype(np.float32)
    weight = np.where(mask[..., None] > 0, alpha, 0.0)
    return (image * (1 - weight) + colours * weight).astype(np.uint8)


def contact_sheet(n_identities: int = 6, seed: int = 0, cues: str = "all") -> np.ndarray:
    """One row per identity: for each yaw, the image above its mask overlay."""
    identities = sh.sample_identities(n_identities, seed, cues)
    rows = []
    for index, identity in enumerate(identities):
        rng = np.random.default_rng([seed, index])
        base = sh.sample_nuisance(rng, pitch_range=(-10.0, 10.0), roll_range=(-5.0, 5.0))
        cells = []
        for yaw in YAWS:
            image, mask = sh.render(identity, replace(base, yaw=yaw), SIZE)
            cells.append(np.concatenate([image, overlay(image, mask)], axis=0))
        rows.append(np.concatenate(cells, axis=1))
    return np.concatenate(rows, axis=0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output", nargs="?", type=Path, default=OUTPUT)
    parser.add_argument("--identity-cues", default="all", help="all (default) or geometry")
    args = parser.parse_args()
    Image.fromarray(contact_sheet(cues=args.identity_cues)).save(args.output)
    print(f"wrote {args.output}")
