"""What an encoder's 128-d embedding is worth with no training on the target data.

Builds the recipe's model (by default ``recipes/orl_id.yaml``: real ORL faces, 64 px), loads
``--init`` into it (a zoo entry ``zoo:<name>``, a run folder or a weights file; encoder and
identification embedding, the classifier cannot fit other people), and scores the frozen
flip-summed embedding (the rule verification uses) two ways, per split seed:

- closed-set accuracy by nearest class centroid: each person's centroid is the mean of their
  training photos' embeddings, each test photo goes to the closest centroid (cosine);
- LFW-style 10-fold verification over every photo of the data set (group-disjoint folds,
  threshold tuned on 9 folds, applied to the tenth).

Without ``--init`` the model keeps its random initialisation: the floor to compare against.

    python benchmarks/frozen_embedding.py --init zoo:mobilenetv2_heads64 \
        --set tasks.identification.embedding_norm=batchnorm --seeds 0 1 2
    python benchmarks/frozen_embedding.py --set tasks.identification.embedding_norm=batchnorm
                                                                        # random weights
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

import mtkd
from mtkd.metrics.pair_generation import generate_pairs
from mtkd.metrics.pairs import pair_labels
from mtkd.metrics.verification import pair_distances, verification_accuracy
from mtkd.model.embedding import embed_with_flip
from mtkd.model.transfer import init_from

QUIET = Console(quiet=True)


def embeddings(
    model: mtkd.MultiTaskModel, view: torch.utils.data.Dataset
) -> tuple[np.ndarray, np.ndarray]:
    """Flip-summed, normalised embeddings and identities of every sample of ``view``."""
    chunks, people = [], []
    for batch in mtkd.make_loader(view, 64, shuffle=False):
        out = embed_with_flip(lambda x: model(x)["identification"]["embedding"], batch["image"])
        chunks.append(out)
        people.append(batch["identity"].numpy())
    return np.concatenate(chunks), np.concatenate(people)


def centroid_accuracy(
    train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]
) -> float:
    (x, y), (xt, yt) = train, test
    classes = np.unique(y)
    centroids = np.stack([x[y == c].mean(0) for c in classes])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True) + 1e-12
    predicted = classes[(xt @ centroids.T).argmax(1)]
    return float((predicted == yt).mean())


def score(recipe: Path, init: str | None, seed: int, overrides: list[str]) -> dict[str, float]:
    cfg = mtkd.load_recipe(recipe, [f"data.split.seed={seed}", f"trainer.seed={seed}", *overrides])
    torch.manual_seed(seed)
    data = mtkd.build_data(cfg, console=QUIET)
    model = mtkd.build_model(cfg, data.label_spaces).eval()
    if init:
        init_from(model, init, heads=True)
    everything = torch.utils.data.ConcatDataset[dict[str, Any]]([data.train, data.val, data.test])
    with torch.no_grad():
        train, test = embeddings(model, data.train), embeddings(model, data.test)
        every, people = embeddings(model, everything)
    pairs = generate_pairs(people.tolist(), 10, 300, seed=seed)
    same, folds = pair_labels(pairs)
    verification = verification_accuracy(pair_distances(every, pairs), same, folds)
    return {"centroid": centroid_accuracy(train, test), "verification": verification.mean}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", type=Path, default=Path("recipes/orl_id.yaml"))
    parser.add_argument("--init", default=None, help="zoo:<name>, a run folder or weights file")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value")
    args = parser.parse_args()
    rows = [score(args.recipe, args.init, seed, args.overrides) for seed in args.seeds]
    print(f"encoder: {args.init or 'random initialisation'}; recipe {args.recipe}")
    for seed, row in zip(args.seeds, rows, strict=True):
        print(
            f"seed {seed}: centroid {row['centroid']:.1%}  verification {row['verification']:.1%}"
        )
    for key in ("centroid", "verification"):
        values = [row[key] for row in rows]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"{key}: {statistics.mean(values):.1%} ± {spread:.1%} (mean ± sample std)")


if __name__ == "__main__":
    main()
