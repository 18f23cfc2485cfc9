"""How much identity can be read from colour alone? A colour-histogram classifier as the floor.

Identity in the synthetic heads must come from geometry: a classifier that sees only the colour
distribution of the image should stay far below what a CNN reaches (aim: < 25 % with 20 people).
Features: a normalised 8x8x8 RGB histogram. Classifiers: nearest centroid (L1) and multinomial
logistic regression (numpy, full-batch gradient descent); both are printed with chance level.
With ``--train-yaw 30`` the classifiers learn from the training views with |yaw| <= 30 only
(the cross-pose protocol) and their test accuracy is shown per 30-degree yaw bin too;
``--identity-cues geometry`` draws the people whose skin, hair and head outline are shared.
Run: python benchmarks/colour_histogram_baseline.py [--identity-cues geometry] [--train-yaw 30]
"""

from __future__ import annotations

import argparse
import itertools
import os

for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_name, "1")  # small matrices: threads only fight other processes


import numpy as np  # noqa: E402
from mtkd_plugins.synthetic_heads import render as sh  # noqa: E402

N_IDENTITIES, N_VIEWS, SIZE = 20, 60, 64
SEEDS = (0, 1, 2)  # independent populations: one split of 240 test images is noisy (+-3 %)
TRAIN_FRACTION = 0.8


def histogram(image: np.ndarray, bins: int = 8) -> np.ndarray:
    """Normalised joint RGB histogram, flattened."""
    index = (image // (256 // bins)).astype(np.int64)
    flat = (index[..., 0] * bins + index[..., 1]) * bins + index[..., 2]
    counts = np.bincount(flat.ravel(), minlength=bins**3).astype(np.float64)
    return counts / counts.sum()


def dataset(seed: int, cues: str = "all") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Histograms, identity labels, a per-identity 80/20 train mask over views, and yaws."""
    identities = sh.sample_identities(N_IDENTITIES, seed, cues)
    features, labels, train, yaws = [], [], [], []
    n_train = int(TRAIN_FRACTION * N_VIEWS)
    for person in range(N_IDENTITIES):
        for view in range(N_VIEWS):
            image, _, nuisance = sh.render_view(identities, person, view, SIZE, seed)
            features.append(histogram(image))
            labels.append(person)
            train.append(view < n_train)
            yaws.append(nuisance.yaw)
    return np.array(features), np.array(labels), np.array(train), np.array(yaws)


def nearest_centroid(x: np.ndarray, y: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Per test image (not ``train``): is the closest class-mean histogram (L1) its own?"""
    centroids = np.stack([x[train & (y == c)].mean(axis=0) for c in range(N_IDENTITIES)])
    distances = np.abs(x[~train][:, None, :] - centroids[None]).sum(axis=-1)
    return np.asarray(distances.argmin(axis=1) == y[~train])


def logistic_regression(
    x: np.ndarray, y: np.ndarray, train: np.ndarray, steps: int = 2000, lr: float = 0.5
) -> np.ndarray:
    """Per test image: is softmax regression (standardised features, L2) right?"""
    mean, std = x[train].mean(axis=0), x[train].std(axis=0) + 1e-6
    z = (x - mean) / std
    onehot = np.eye(N_IDENTITIES)[y[train]]
    weights = np.zeros((z.shape[1], N_IDENTITIES))
    bias = np.zeros(N_IDENTITIES)
    for _ in range(steps):
        logits = z[train] @ weights + bias
        prob = np.exp(logits - logits.max(axis=1, keepdims=True))
        prob /= prob.sum(axis=1, keepdims=True)
        grad = (prob - onehot) / len(onehot)
        weights -= lr * (z[train].T @ grad + 1e-3 * weights)
        bias -= lr * grad.sum(axis=0)
    predicted = (z[~train] @ weights + bias).argmax(axis=1)
    return np.asarray(predicted == y[~train])


def by_yaw(hits: list[np.ndarray], yaws: list[np.ndarray]) -> str:
    """Accuracy per 30-degree yaw bin, all populations' test images pooled."""
    hit, yaw = np.concatenate(hits), np.concatenate(yaws)
    edges = np.arange(-90, 91, 30)
    cells = []
    for low, high in itertools.pairwise(edges):
        inside = (yaw >= low) & ((yaw < high) | (high == 90))
        cells.append(f"[{low:+d}, {high:+d}) {hit[inside].mean():.0%} ({inside.sum()})")
    return "  ".join(cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--identity-cues", default="all", help="all (default) or geometry")
    parser.add_argument("--train-yaw", type=float, help="train on views with |yaw| <= this")
    args = parser.parse_args()
    n_train = int(TRAIN_FRACTION * N_VIEWS)
    print(
        f"{N_IDENTITIES} identities x {N_VIEWS} views at {SIZE} px ({args.identity_cues} "
        f"identity cues), per identity {n_train} train / {N_VIEWS - n_train} test views"
        + (f", training views with |yaw| <= {args.train_yaw:g}" if args.train_yaw else "")
        + f"; chance {1 / N_IDENTITIES:.1%}"
    )
    hits: dict[str, list[np.ndarray]] = {"nearest centroid": [], "logistic": []}
    yaws = []
    for seed in SEEDS:
        x, y, train, yaw = dataset(seed, args.identity_cues)
        usable = train & (np.abs(yaw) <= args.train_yaw) if args.train_yaw else train
        keep = usable | ~train  # training views outside the range are not used at all
        x, y, usable, yaw = x[keep], y[keep], usable[keep], yaw[keep]
        hits["nearest centroid"].append(nearest_centroid(x, y, usable))
        hits["logistic"].append(logistic_regression(x, y, usable))
        yaws.append(yaw[~usable])
        shown = ", ".join(f"{k} {v[-1].mean():.1%}" for k, v in hits.items())
        print(f"seed {seed}: {shown}")
    for name, found in hits.items():
        print(f"mean {name}: {np.mean([h.mean() for h in found]):.1%} (8^3 RGB histogram)")
        print(f"  by yaw: {by_yaw(found, yaws)}")


if __name__ == "__main__":
    main()
