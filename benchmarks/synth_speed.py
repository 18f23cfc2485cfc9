"""Throughput of the synthetic-head generator (image + mask) on one thread.

The generator runs inside data-loader workers, so one core must make at least 200 images/s at
128 px for data generation never to be the bottleneck of training. Exits 1 below that.
Run: python benchmarks/synth_speed.py
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_name] = "1"  # before numpy is imported

import sys  # noqa: E402
import time  # noqa: E402

from mtkd_plugins.synthetic_heads import render as sh  # noqa: E402

REQUIRED_AT_128 = 200.0


def images_per_second(size: int, n_images: int = 600, n_identities: int = 50) -> float:
    """Render views of distinct identities in a loader-like order, after one warm-up pass."""
    identities = sh.sample_identities(n_identities, seed=0)
    for person in range(n_identities):  # warm-up: per-identity and per-size caches
        sh.render_view(identities, person, 0, size, seed=0)
    start = time.perf_counter()
    for index in range(n_images):
        sh.render_view(identities, index % n_identities, index + 1, size, seed=0)
    return n_images / (time.perf_counter() - start)


if __name__ == "__main__":
    rates = {size: images_per_second(size) for size in (64, 128)}
    for size, rate in rates.items():
        print(f"{size:4d} px: {rate:7.1f} images/s (with masks, 1 thread)")
    if rates[128] < REQUIRED_AT_128:
        print(f"FAIL: below {REQUIRED_AT_128:.0f} images/s at 128 px")
        sys.exit(1)
