"""How much identity can be read from colour alone? A colour-histogram classifier as the floor.

Identity in the synthetic heads must come from geometry: a classifier that sees only the colour
distribution of the image should stay far below what a CNN reaches (aim: < 25 % with 20 people).
Features: a normalised 8x8x8 RGB histogram. Classifiers: nearest centroid (L1) and multinomial
logistic regression (numpy, full-batch gradient descent); both are printed with chance level.
Run: python benchmarks/colour_histogram_baseline.py
"""

from __future__ import annotations

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


def dataset(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Histograms, identity labels, and a per-identity 80/20 train mask over views."""
    identities = sh.sample_identities(N_IDENTITIES, seed)
    features, labels, train = [], [], []
    n_train = int(TRAIN_FRACTION * N_VIEWS)
    for person in range(N_IDENTITIES):
        for view in range(N_VIEWS):
            image, _, _ = sh.render_view(identities, person, view, SIZE, seed)
            features.append(histogram(image))
            labels.append(person)
            train.append(view < n_train)
    return np.array(features), np.array(labels), np.array(train)


def nearest_centroid(x: np.ndarray, y: np.ndarray, train: np.ndarray) -> float:
    """Test accuracy of assigning each test image to the closest class-mean histogram (L1)."""
    centroids = np.stack([x[train & (y == c)].mean(axis=0) for c in range(N_IDENTITIES)])
    distances = np.abs(x[~train][:, None, :] - centroids[None]).sum(axis=-1)
    return float((distances.argmin(axis=1) == y[~train]).mean())


def logistic_regression(
    x: np.ndarray, y: np.ndarray, train: np.ndarray, steps: int = 2000, lr: float = 0.5
) -> float:
    """Test accuracy of softmax regression on standardised features, L2-regularised."""
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
    return float((predicted == y[~train]).mean())


if __name__ == "__main__":
    n_train = int(TRAIN_FRACTION * N_VIEWS)
    print(
        f"{N_IDENTITIES} identities x {N_VIEWS} views at {SIZE} px, per identity "
        f"{n_train} train / {N_VIEWS - n_train} test views; chance {1 / N_IDENTITIES:.1%}"
    )
    scores = []
    for seed in SEEDS:
        x, y, train = dataset(seed)
        scores.append((nearest_centroid(x, y, train), logistic_regression(x, y, train)))
        print(f"seed {seed}: nearest centroid {scores[-1][0]:.1%}, logistic {scores[-1][1]:.1%}")
    centroid, logistic = np.mean(scores, axis=0)
    print(f"mean:   nearest centroid {centroid:.1%}, logistic {logistic:.1%} (8^3 RGB histogram)")
