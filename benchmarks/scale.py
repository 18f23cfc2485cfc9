"""How far the host side goes on a big folder data set (issue 26): cache build, memory, loader.

Writes once (and reuses) a generated ``identity_folder`` data set, ``root/<person>/<n>.jpg``:
``--images`` JPEGs of ``--side`` px (smooth random colour fields, one of 97 encoded variants
per person tint, so each costs a real decode and resize), plus a ``--small`` one for the
memory comparison. Then, each measurement in a fresh Python process (its own peak memory,
``ru_maxrss``: the building process and, separately, the largest worker process):

- (a) the sample-cache build (``data.cache: disk``) with 1 and 2 worker processes
  (``data.cache_workers``): images/s, the ratio, and whether the two caches are the same
  bytes;
- (b) the peak resident memory of a build of ``--small`` and of ``--images`` images;
- (c) the training loader's images/s on one core (torch threads 1, ``num_workers=0``) at
  ``--image-size`` px, with the host augmentation of the recipes (flip, colour, small affine)
  and without, for today's code and for the path of before (``benchmarks/host_path_v1.py``),
  in alternating blocks, medians;
- (d) the bytes of one batch moved to the device: float32 images as today, against uint8;
- (e) the same build split between two "machines" that share the cache folder
  (``data.cache_fs: shared``): two processes, one cache worker each, started together, against
  the 1- and 2-worker builds of (a); the time is the coordinator's, from start to swap-in.

Ratios from one run are the figures to quote: the machine may be shared.

    OMP_NUM_THREADS=1 python benchmarks/scale.py                      # 50,000 images
    OMP_NUM_THREADS=1 python benchmarks/scale.py --images 2000 --small 500   # a quick look
    OMP_NUM_THREADS=1 python benchmarks/scale.py --shared-rounds 3   # (a) against (e) only
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

PER_PERSON = 50  # images per identity folder
VARIANTS = 97  # distinct encoded images per data set
AUGMENT = {  # the zoo recipe's host augmentation: flip, colour, a small affine
    "hflip": 0.5,
    "brightness": 0.25,
    "contrast": 0.25,
    "saturation": 0.5,
    "rotate": 10,
    "scale": 0.1,
    "translate": 0.05,
}


def _variants(side: int, seed: int) -> list[bytes]:
    """JPEG bytes of smooth random colour fields (compressible, as photos are)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(VARIANTS):
        coarse = rng.integers(0, 256, (6, 6, 3), np.uint8)
        image = Image.fromarray(coarse).resize((side, side), Image.Resampling.BICUBIC)
        blob = io.BytesIO()
        image.save(blob, format="JPEG", quality=90)
        out.append(blob.getvalue())
    return out


def write_folder(root: Path, count: int, side: int) -> Path:
    """``root/<count>x<side>``: ``count`` JPEGs in identity folders, written once (a
    ``complete`` file marks a whole set; a set without it is written again)."""
    folder = root / f"{count}x{side}"
    marker = folder / ".complete"
    if marker.is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    blobs = _variants(side, seed=count)
    for index in range(count):
        person = folder / f"person{index // PER_PERSON:05d}"
        if index % PER_PERSON == 0:
            person.mkdir(parents=True)
        (person / f"{index % PER_PERSON:03d}.jpg").write_bytes(blobs[index % VARIANTS])
    marker.write_text(f"{count} {side}\n")
    return folder


def _peaks() -> dict[str, float]:
    """This process's peak resident memory and its largest (waited-for) child's, in MiB,
    and the CPU seconds of both (user + system)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "peak_mib": own.ru_maxrss / 1024,
        "worker_peak_mib": children.ru_maxrss / 1024,
        "cpu_s": own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime,
    }


def _source(folder: Path, image_size: int) -> Any:
    import mtkd

    cfg = mtkd.recipe_from_dict(
        {"data": {"dataset": {"name": "identity_folder", "root": str(folder)}}}
    )
    cfg.data.image_size = image_size
    return mtkd.build_source(cfg)


def _wait_for_go(sync: Path, member: int) -> None:
    """Say this process is ready (imported, indexed), then wait for the parent's go."""
    (sync / f"ready-{member}").touch()
    while not (sync / "go").exists():
        time.sleep(0.01)


def child_build(
    folder: Path, cache: Path, workers: int, image_size: int, shared: list[str] | None = None
) -> dict[str, Any]:
    """One disk cache build in this (fresh) process: time, rate, peaks, a digest per file.
    ``shared``: [sync folder, member, members] of a build split between processes."""
    from mtkd.data.cache import materialize
    from mtkd.data.cache_parallel import SharedBuild

    source = _source(folder, image_size)
    split = None
    if shared is not None:
        sync, member, members = Path(shared[0]), int(shared[1]), int(shared[2])
        split = SharedBuild(sync.name, member == 0, members, member=f"machine {member}")
        _wait_for_go(sync, member)
    before = _peaks()["cpu_s"]
    indexed = _peaks()["peak_mib"]  # the data set's index of files, before any image
    start = time.perf_counter()
    cached, report = materialize(
        source, [], image_size, mode="disk", cache_dir=cache, workers=workers, shared=split
    )
    seconds = time.perf_counter() - start
    result: dict[str, Any] = {"seconds": seconds, "images": len(cached), **_peaks()}
    result["cpu_s"] -= before
    result["indexed_mib"] = indexed
    assert report.kept == len(source), report.lines()
    del cached
    digests = {}
    for path in sorted(p for p in cache.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with path.open("rb") as stream:
            while chunk := stream.read(1 << 22):
                digest.update(chunk)
        digests[str(path.relative_to(cache))] = digest.hexdigest()
    result["digests"] = digests
    return result


class _OldView:
    """The training samples as the path of before gives them (benchmarks/host_path_v1.py)."""

    def __init__(self, view: Any) -> None:
        self.view = view

    def __len__(self) -> int:
        return len(self.view)

    def __getitem__(self, i: int) -> Any:
        import host_path_v1

        view = self.view
        return host_path_v1.get_item(view.cached, int(view.indices[i]), view.augment)


def _rate(loader: Any, images: int) -> tuple[float, float]:
    """Images per second of wall time and per second of this process's CPU time, drawing
    ``images`` samples (whole batches) from ``loader``. On a shared machine the CPU time is
    the honest per-core figure: waiting for a core is not counted."""
    done, wall, cpu = 0, time.perf_counter(), time.process_time()
    while done < images:
        for batch in loader:
            done += int(batch["image"].shape[0])
            if done >= images:
                break
    return done / (time.perf_counter() - wall), done / (time.process_time() - cpu)


def child_loader(
    folder: Path, cache: Path, image_size: int, images: int, batch: int, rounds: int
) -> dict[str, Any]:
    """Loader images/s on one core, today's path and the old one, with and without
    augmentation (alternating blocks, medians), and the bytes of one batch."""
    import torch

    import mtkd
    from mtkd.data.build import TensorView, make_train_loader
    from mtkd.samples import collate_samples

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import host_path_v1

    torch.set_num_threads(1)
    cfg = mtkd.recipe_from_dict(
        {
            "data": {
                "dataset": {"name": "identity_folder", "root": str(folder)},
                "image_size": image_size,
                "cache": "disk",
                "cache_dir": str(cache),
                "augment": AUGMENT,
            }
        }
    )
    bundle = mtkd.build_data(cfg)
    train = bundle.train
    plain = TensorView(train.cached, train.indices)
    variants = {
        ("augmented", "today"): (train, collate_samples),
        ("augmented", "before"): (_OldView(train), host_path_v1.collate_samples),
        ("plain", "today"): (plain, collate_samples),
        ("plain", "before"): (_OldView(plain), host_path_v1.collate_samples),
    }
    loaders = {
        key: make_train_loader(view, batch, seed=0, collate=collate)  # type: ignore[arg-type]
        for key, (view, collate) in variants.items()
    }
    rates: dict[tuple[str, str], list[tuple[float, float]]] = {key: [] for key in loaders}
    for loader in loaders.values():
        _rate(loader, batch * 2)  # warm up (first-use caches, page faults)
    keys = list(loaders)
    for round_ in range(rounds):  # the order turns each round: none always goes first
        for key in keys[round_ % len(keys) :] + keys[: round_ % len(keys)]:
            # unaugmented batches come ~8x faster: 8x the images for as long a block
            count = images * (8 if key[0] == "plain" else 1)
            rates[key].append(_rate(loaders[key], count))
    one = next(iter(loaders[("augmented", "today")]))
    pixels = one["image"].numel()
    labels = sum(
        v.numel() * v.element_size()
        for k, v in one.items()
        if k not in ("image",) and isinstance(v, torch.Tensor)
    )
    return {
        "wall": {f"{a}/{b}": statistics.median(w for w, _ in r) for (a, b), r in rates.items()},
        "cpu": {f"{a}/{b}": statistics.median(c for _, c in r) for (a, b), r in rates.items()},
        "batch": int(one["image"].shape[0]),
        "float32_bytes": pixels * one["image"].element_size(),
        "uint8_bytes": pixels,
        "label_bytes": labels,
        "train_samples": len(train),
    }


def _child(*args: str) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if out.returncode != 0:
        sys.exit(f"benchmark child {args[0]} failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _build(folder: Path, workers: int, image_size: int, keep: Path | None = None) -> dict[str, Any]:
    """A build in a fresh process, in a fresh cache folder (``keep``: there, left in place)."""
    if keep is not None:
        return _child("build", str(folder), str(keep), str(workers), str(image_size))
    with tempfile.TemporaryDirectory(prefix="mtkd-scale-cache-") as tmp:
        return _child("build", str(folder), tmp, str(workers), str(image_size))


def _shared_build(folder: Path, image_size: int, members: int = 2) -> dict[str, Any]:
    """(e): ``members`` processes, one cache worker each, build one cache folder together."""
    with (
        tempfile.TemporaryDirectory(prefix="mtkd-scale-shared-") as tmp,
        tempfile.TemporaryDirectory(prefix="job") as sync,
    ):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        child = [sys.executable, __file__, "--child", "shared", str(folder), tmp, str(image_size)]
        procs = [
            subprocess.Popen(
                [*child, sync, str(member), str(members)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            for member in range(members)
        ]
        while not all((Path(sync) / f"ready-{m}").exists() for m in range(members)):
            if any(proc.poll() not in (None, 0) for proc in procs):
                break
            time.sleep(0.01)
        (Path(sync) / "go").touch()
        outs = [proc.communicate() for proc in procs]
        if any(proc.returncode for proc in procs):
            sys.exit("shared build failed:\n" + "\n".join(err[-2000:] for _, err in outs))
        results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    coordinator: dict[str, Any] = results[0]
    return coordinator


def _run_child(args: list[str]) -> None:
    kind, *rest = args
    if kind == "build":
        folder, cache, workers, size = rest
        result = child_build(Path(folder), Path(cache), int(workers), int(size))
    elif kind == "shared":
        folder, cache, size, *shared = rest
        result = child_build(Path(folder), Path(cache), 1, int(size), shared)
    else:
        folder, cache, size, images, batch, rounds = rest
        result = child_loader(
            Path(folder), Path(cache), int(size), int(images), int(batch), int(rounds)
        )
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50_000, help="images of the big set")
    parser.add_argument("--small", type=int, default=5_000, help="images of the memory baseline")
    parser.add_argument("--side", type=int, default=160, help="side of the written JPEGs")
    parser.add_argument("--image-size", type=int, default=128, help="the model's image size")
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "mtkd-scale")
    parser.add_argument("--loader-images", type=int, default=1024, help="per timed block")
    parser.add_argument("--rounds", type=int, default=5, help="alternating loader blocks")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument(
        "--shared-rounds",
        type=int,
        default=0,
        help="only the builds of (a) and (e), in this many alternating rounds",
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _run_child(args.child)
        return
    if args.shared_rounds:
        shared_rounds(write_folder(args.root, args.images, args.side), args)
        return
    start = time.perf_counter()
    big = write_folder(args.root, args.images, args.side)
    small = write_folder(args.root, args.small, args.side)
    print(f"data sets under {args.root} ({time.perf_counter() - start:.0f} s to write/find)")
    size = args.image_size
    with tempfile.TemporaryDirectory(prefix="mtkd-scale-kept-") as kept:
        builds = {1: _build(big, 1, size), 2: _build(big, 2, size, Path(kept))}
        memory = {w: _build(small, w, size) for w in (1, 2)}
        builds_shared = _shared_build(big, size)
        loader = _child(
            "loader",
            str(big),
            kept,
            str(size),
            str(args.loader_images),
            str(args.batch),
            str(args.rounds),
        )
    report(args, builds, memory, loader, builds_shared)


def shared_rounds(folder: Path, args: argparse.Namespace) -> None:
    """(a) and (e) alternated: 1 worker, 2 workers, 2 processes x 1 worker sharing a folder."""
    seconds: dict[str, list[float]] = {"1 worker": [], "2 workers": [], "shared 2 x 1": []}
    print(f"{args.images} JPEGs of {args.side} px -> {args.image_size} px (seconds)")
    for round_ in range(args.shared_rounds):
        one = _build(folder, 1, args.image_size)
        two = _build(folder, 2, args.image_size)
        shared = _shared_build(folder, args.image_size)
        if not one["digests"] == two["digests"] == shared["digests"]:
            sys.exit("the caches differ")
        for key, build in zip(seconds, (one, two, shared), strict=True):
            seconds[key].append(build["seconds"])
        print(f"round {round_}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in seconds.items()))
    median = {key: statistics.median(values) for key, values in seconds.items()}
    print(
        f"medians: shared 2 x 1 = {median['1 worker'] / median['shared 2 x 1']:.2f}x the "
        f"1-worker rate, {median['2 workers'] / median['shared 2 x 1']:.2f}x the 2-worker "
        "rate; every cache byte-identical"
    )


def report(
    args: argparse.Namespace,
    builds: dict[int, dict[str, Any]],
    memory: dict[int, dict[str, Any]],
    loader: dict[str, Any],
    shared: dict[str, Any],
) -> None:
    """The table of figures and ratios of this run."""
    n, small, size = args.images, args.small, args.image_size
    rate = {w: b["images"] / b["seconds"] for w, b in builds.items()}
    same = builds[1]["digests"] == builds[2]["digests"]
    cpu = {w: b["images"] / b["cpu_s"] for w, b in builds.items()}
    print(f"\n(a) cache build, {n} JPEGs of {args.side} px -> {size} px, on disk")
    print(
        f"{'workers':>8} {'seconds':>9} {'images/s':>9} {'per CPU-s':>10} "
        f"{'building MiB':>13} {'worker MiB':>11}"
    )
    for w, b in builds.items():
        worker = f"{b['worker_peak_mib']:>11.0f}" if w > 1 else f"{'-':>11}"
        print(
            f"{w:>8} {b['seconds']:>9.1f} {rate[w]:>9.0f} {cpu[w]:>10.0f} "
            f"{b['peak_mib']:>13.0f} {worker}"
        )
    print(
        f"2 workers / 1 worker: {rate[2] / rate[1]:.2f}x wall-clock, {cpu[2] / cpu[1]:.2f}x "
        f"per CPU-second; byte-identical caches: {same}"
    )
    print(f"\n(b) peak resident memory (MiB) of a build, {small} against {n} images")
    print(f"{'workers':>8} {'process':>10} {small:>9} {n:>9} {'ratio':>7}")
    for w in (1, 2):
        for key, name in (("peak_mib", "building"), ("worker_peak_mib", "worker")):
            if w == 1 and key == "worker_peak_mib":
                continue
            low, high = memory[w][key], builds[w][key]
            print(f"{w:>8} {name:>10} {low:>9.0f} {high:>9.0f} {high / low:>6.2f}x")
    low, high = memory[1]["indexed_mib"], builds[1]["indexed_mib"]
    print(f"{'':>8} {'index':>10} {low:>9.0f} {high:>9.0f} {high / low:>6.2f}x")
    print("(index: the building process once the data set has listed its files, before any")
    print(" image is read; what a build adds on top of it is the cache build's own memory)")
    print(f"\n(c) training loader on one core, {size} px, batch {args.batch} (images/s, medians)")
    print(f"{'':>20} {'per CPU-second':>30} {'per wall-second':>30}")
    print(f"{'':>20}" + f" {'before':>9} {'today':>9} {'ratio':>9}" * 2)
    for kind, label in (("augmented", "flip+colour+affine"), ("plain", "no augmentation")):
        row = f"{label:>20}"
        for clock in ("cpu", "wall"):
            before, today = loader[clock][f"{kind}/before"], loader[clock][f"{kind}/today"]
            row += f" {before:>9.0f} {today:>9.0f} {today / before:>8.2f}x"
        print(row)
    f32, u8 = loader["float32_bytes"], loader["uint8_bytes"]
    print(f"\n(d) one batch of {loader['batch']} moved to the device")
    print(f"images float32 {f32 / 2**20:.2f} MiB, as uint8 {u8 / 2**20:.2f} MiB ({f32 / u8:.0f}x);")
    print(f"labels {loader['label_bytes']} bytes")
    shared_rate = shared["images"] / shared["seconds"]
    shared_same = shared["digests"] == builds[1]["digests"]
    print(
        "\n(e) the build of (a) split between 2 processes sharing the cache folder, 1 worker each"
    )
    print(
        f"{shared['seconds']:.1f} s, {shared_rate:.0f} images/s: {shared_rate / rate[1]:.2f}x "
        f"the 1-worker build, {shared_rate / rate[2]:.2f}x the 2-worker build (the same "
        f"cores); byte-identical to them: {shared_same}"
    )
    if not same or not shared_same:
        sys.exit("the caches differ")


if __name__ == "__main__":
    main()
