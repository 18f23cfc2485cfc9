"""Sample-cache build speed with 1 and 2 processes, and the parent's peak memory by size.

Each image is a 256 x 256 PNG decoded from memory (one of 32 encoded once), so a sample costs
a real decode and resize but no disk reads; the cache is built on disk (``data.cache: disk``)
in a temporary folder. Every (size, workers) build runs in a fresh Python process so that its
peak resident memory (``ru_maxrss``, the parent only: workers are separate processes) is its
own. The 1- and 2-worker caches of each size are compared file by file.

    python benchmarks/cache_build.py --sizes 5000 50000 --image-size 128
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import mtkd
from mtkd.data.cache import materialize

ENCODED = 32  # distinct PNGs; sample i decodes PNG i % ENCODED


@dataclass
class PngOptions:
    count: int = 1000
    side: int = 256


class InMemoryPngs(mtkd.SampleSource):
    """``count`` noisy RGB PNGs decoded from memory, with an identity label."""

    name = "bench_pngs"
    Options = PngOptions

    def __init__(self, options: PngOptions, image_size: int, seed: int) -> None:
        super().__init__(options, image_size, seed)
        rng = np.random.default_rng(seed)
        self.label_spaces = {"identity": mtkd.LabelSpace(tuple(f"id{i}" for i in range(10)))}
        self.blobs = []
        for _ in range(ENCODED):
            smooth = rng.integers(0, 255, (options.side // 8, options.side // 8, 3), np.uint8)
            side = (options.side, options.side)
            image = Image.fromarray(smooth).resize(side, Image.Resampling.BILINEAR)
            out = io.BytesIO()
            image.save(out, format="PNG")
            self.blobs.append(out.getvalue())

    def __len__(self) -> int:
        return self.options.count

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = np.asarray(Image.open(io.BytesIO(self.blobs[index % ENCODED])).convert("RGB"))
        return {"image": image, "identity": index % 10}


def one_build(count: int, workers: int, image_size: int, root: Path) -> dict[str, Any]:
    """Build one cache in this process; its time, rate, peak memory and file digests."""
    source = InMemoryPngs(PngOptions(count=count), image_size, 0)
    start = time.perf_counter()
    cached, report = materialize(
        source, [], image_size, mode="disk", cache_dir=root, workers=workers
    )
    seconds = time.perf_counter() - start
    assert report.kept == count and len(cached) == count
    digests = {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        "count": count,
        "workers": workers,
        "seconds": seconds,
        "images_per_s": count / seconds,
        "peak_rss_mib": peak_kib / 1024,
        "digests": digests,
    }


def measure(count: int, workers: int, image_size: int) -> dict[str, Any]:
    """``one_build`` in a fresh interpreter (its own peak memory), in a fresh cache folder."""
    with tempfile.TemporaryDirectory(prefix="mtkd-cache-bench-") as tmp:
        args = [sys.executable, __file__, "--one", str(count), str(workers), str(image_size), tmp]
        out = subprocess.run(args, capture_output=True, text=True, check=True)
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 50000])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        count, workers, image_size, root = args.one
        print(json.dumps(one_build(int(count), int(workers), int(image_size), Path(root))))
        return
    print(f"cache build of in-memory 256 px PNGs at {args.image_size} px, on disk")
    print(f"{'images':>8} {'workers':>7} {'s':>8} {'images/s':>9} {'parent peak MiB':>15}")
    ok = True
    for count in args.sizes:
        runs = {w: measure(count, w, args.image_size) for w in (1, 2)}
        for w, run in runs.items():
            print(
                f"{count:>8} {w:>7} {run['seconds']:>8.2f} {run['images_per_s']:>9.0f} "
                f"{run['peak_rss_mib']:>15.1f}"
            )
        same = runs[1]["digests"] == runs[2]["digests"]
        ok &= same
        ratio = runs[2]["images_per_s"] / runs[1]["images_per_s"]
        print(f"{count:>8}  2 workers / 1 worker: {ratio:.2f}x; arrays identical: {same}")
    if len(args.sizes) > 1:
        small, large = args.sizes[0], args.sizes[-1]
        first = measure(small, 2, args.image_size)["peak_rss_mib"]
        last = measure(large, 2, args.image_size)["peak_rss_mib"]
        print(f"parent peak memory, 2 workers: {large} vs {small} images: {last / first:.2f}x")
    if not ok:
        sys.exit("the 1- and 2-worker caches differ")


if __name__ == "__main__":
    main()
