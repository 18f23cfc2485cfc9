"""How well a teacher network identifies people by itself, on exactly a recipe's splits.

For a recipe with a ``network_teacher`` task (by default ``recipes/face_id_dlib.yaml`` on the
ORL faces), per split seed: build the data (the teacher's targets come from the target cache,
or are computed once and timed), take each person's centroid of their training photos'
targets, and give each test photo the person of the closest centroid (Euclidean, dlib's own
metric). A test photo the teacher abstained on counts as wrong. This is the bar a student
distilled from that teacher is measured against (docs/teacher-networks.md).

    python benchmarks/teacher_nearest_centroid.py --seeds 0 1 2
    python benchmarks/teacher_nearest_centroid.py --recipe recipes/kd_resnet101.yaml \
        --set tasks.kd.teacher.path=runs/resnet101_id

With pose labels (generated heads) it also prints, per yaw bin, how many test images the
teacher labelled and how many it identified: dlib on the generator's default people under
the cross-pose split (trained on near-frontal views, tested over +-90 degrees; the override
replaces face_id's folder data set; docs/results.md, "dlib at profile"):

    python benchmarks/teacher_nearest_centroid.py --overlay recipes/profiles/cross_pose.yaml \
        --set "data.dataset={name: synthetic_heads}" init_from=null --bin-width 30
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import numpy as np
from rich.console import Console

import mtkd

ORL = "../shared/data/orl_faces"
ORL_SPLIT = ["data.split.test=0.2", "data.split.val=0.125"]


def nearest_centroid(data: mtkd.DataBundle, key: str, identity: str = "identity") -> float:
    """Closed-set accuracy of the teacher's targets by nearest training centroid."""
    cached = data.cached
    values, present = np.asarray(cached.labels[key]), np.asarray(cached.present[key], bool)
    people = np.asarray(cached.labels[identity])
    train = np.asarray(data.train.indices)
    train = train[present[train]]
    classes = np.unique(people[train])
    centroids = np.stack([values[train][people[train] == c].mean(0) for c in classes])
    test = np.asarray(data.test.indices)
    right = 0
    for i in test.tolist():
        if present[i]:
            guess = classes[np.linalg.norm(centroids - values[i], axis=1).argmin()]
            right += int(guess == people[i])
    return right / len(test)


def by_yaw(data: mtkd.DataBundle, key: str, width: float) -> list[str]:
    """Per yaw bin of the test split: images, labelled by the teacher, identified correctly
    by nearest centroid (an abstained image counts as wrong)."""
    cached = data.cached
    values, present = np.asarray(cached.labels[key]), np.asarray(cached.present[key], bool)
    people, yaw = np.asarray(cached.labels["identity"]), np.asarray(cached.labels["pose"])[:, 0]
    train = np.asarray(data.train.indices)
    train = train[present[train]]
    classes = np.unique(people[train])
    centroids = np.stack([values[train][people[train] == c].mean(0) for c in classes])
    lines = ["| yaw | test images | labelled | identified |", "| --- | --- | --- | --- |"]
    test = np.asarray(data.test.indices)
    edges = np.arange(-90.0, 90.0 + width, width)
    for lo, hi in itertools.pairwise(edges):
        inside = test[(yaw[test] >= lo) & ((yaw[test] < hi) | ((hi >= 90) & (yaw[test] <= hi)))]
        if not len(inside):
            continue
        labelled = inside[present[inside]]
        guesses = classes[
            np.linalg.norm(values[labelled][:, None] - centroids[None], axis=2).argmin(1)
        ]
        right = int((guesses == people[labelled]).sum())
        n = len(inside)
        lines.append(f"| {lo:+.0f}…{hi:+.0f}° | {n} | {len(labelled) / n:.0%} | {right / n:.0%} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/face_id_dlib.yaml")
    parser.add_argument("--task", default=None, help="the network_teacher task's key")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", nargs="*", default=None, help="recipe overrides")
    parser.add_argument("--overlay", nargs="*", default=[], help="recipe profiles to apply")
    parser.add_argument("--bin-width", type=float, default=0, help="a table by yaw (degrees)")
    args = parser.parse_args()
    overrides = args.set if args.set is not None else [f"data.dataset.root={ORL}", *ORL_SPLIT]
    scores = []
    for seed in args.seeds:
        seeded = [*overrides, f"data.split.seed={seed}"]
        cfg = mtkd.load_recipe(args.recipe, seeded, args.overlay)
        task = args.task or next(k for k, v in cfg.tasks.items() if v and "teacher" in v)
        teacher = cfg.tasks[task].teacher  # the network's own vectors, not class targets
        teacher.as_classes = teacher.class_scale = None  # made from them (as_classes)
        start = time.perf_counter()
        data = mtkd.build_data(cfg, console=Console(quiet=True))
        elapsed = time.perf_counter() - start
        key = mtkd.teacher_label_key(task)
        counts = next(v for k, v in data.report.preprocess_counts.items() if k.startswith(key))
        accuracy = nearest_centroid(data, key)
        scores.append(accuracy)
        print(
            f"seed {seed}: nearest-centroid top-1 {accuracy:.1%} on {len(data.test)} test "
            f"images; teacher {counts}; data built in {elapsed:.1f}s"
        )
        if args.bin_width and "pose" in data.cached.labels:
            print("\n".join(by_yaw(data, key, args.bin_width)))
    if len(scores) > 1:
        mean, sd = statistics.mean(scores), statistics.stdev(scores)
        print(f"mean {mean:.1%} ± {sd:.1%} (sd over {len(scores)} seeds)")


if __name__ == "__main__":
    main()
