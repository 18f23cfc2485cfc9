"""ONNX Runtime vs eager PyTorch: CPU latency of the distilled Seg-Distilled-ID model.

The model is the paper's inference model — ``mobilenetv2_100`` + the identification head,
U-Net teacher removed — randomly initialised (latency does not depend on the weights) with 67
identities, at 128 px. It is exported with ``mtkd.deploy.export.export_onnx`` (so the parity check
runs too), then both runtimes get the same inputs at batch 1 and batch 32 with the same thread
count. Runs alternate in short blocks (PyTorch, ONNX Runtime, PyTorch, ...) so background load
on a shared machine hits both alike; each figure is the median of the timed runs after warm-up.

Run: python benchmarks/onnx_vs_torch.py [--size 128] [--threads N] [--repeats 30]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from rich.console import Console
from rich.table import Table

import mtkd
from mtkd.deploy.export import FlatOutputs, export_onnx

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
MASK_CLASSES = 14  # the synthetic heads' segmentation classes (the head is removed anyway)


def distilled_model(size: int, identities: int) -> mtkd.MultiTaskModel:
    cfg = mtkd.load_recipe(RECIPES / "seg_distilled_id.yaml", [f"data.image_size={size}"])
    spaces = {
        "identity": mtkd.LabelSpace(tuple(f"person_{i:03d}" for i in range(identities))),
        "mask": mtkd.LabelSpace(tuple(f"class_{i}" for i in range(MASK_CLASSES))),
    }
    return mtkd.distill(mtkd.build_model(cfg, spaces)).eval()


def alternating_medians(
    runners: dict[str, Callable[[], object]], warmup: int, repeats: int, block: int = 5
) -> dict[str, float]:
    """Median milliseconds per call of each runner, timed in alternating blocks.

    Blocks rather than single calls: each runtime's worker threads spin for a while after a
    call, and a call of the other runtime right then would compete with them on a small CPU.
    The first call of every block is untimed for the same reason.
    """
    for _ in range(warmup):
        for run in runners.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    while min(len(v) for v in times.values()) < repeats:
        for name, run in runners.items():
            run()
            for _ in range(block):
                started = time.perf_counter()
                run()
                times[name].append((time.perf_counter() - started) * 1000)
    return {name: statistics.median(values[:repeats]) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--identities", type=int, default=67)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    console = Console()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = distilled_model(args.size, args.identities)

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        # one forward pass each: the mirrored pass of flip_embedding would double ONNX's work
        diffs = export_onnx(FlatOutputs(model, args.size, flip_embedding=False), path)
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    rows = []
    for batch in (1, 32):
        images = torch.rand(batch, 3, args.size, args.size)
        feed = {"image": images.numpy()}

        def run_torch(images: torch.Tensor = images) -> object:
            with torch.inference_mode():
                return model(images)

        def run_onnx(feed: dict[str, np.ndarray] = feed) -> object:
            return session.run(None, feed)

        repeats = args.repeats if batch == 1 else max(5, args.repeats // 3)
        ms = alternating_medians(
            {"torch": run_torch, "onnxruntime": run_onnx}, args.warmup, repeats
        )
        rows.append({"batch": batch, "repeats": repeats, **{f"{k}_ms": v for k, v in ms.items()}})

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    setting = {
        "model": f"seg_distilled_id, distilled (mobilenetv2_100 + ID head, {args.identities} ids)",
        "image_size": args.size,
        "torch_threads": torch.get_num_threads(),
        "onnxruntime_threads": args.threads,
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(load, 2),
        "max_abs_diff": diffs,
    }
    table = Table(title=f"distilled ID model, {args.size} px, {args.threads} threads, median")
    for column in ("batch", "PyTorch eager ms", "ONNX Runtime ms", "PyTorch img/s"):
        table.add_column(column, justify="right")
    table.add_column("ONNX Runtime img/s", justify="right")
    table.add_column("speed-up", justify="right")
    for row in rows:
        b, t_ms, o_ms = row["batch"], row["torch_ms"], row["onnxruntime_ms"]
        row["speedup"] = t_ms / o_ms
        table.add_row(
            str(b),
            f"{t_ms:.1f}",
            f"{o_ms:.1f}",
            f"{b * 1000 / t_ms:.0f}",
            f"{b * 1000 / o_ms:.0f}",
            f"{t_ms / o_ms:.2f}x",
        )
    console.print(table)
    console.print(
        f"threads: torch {setting['torch_threads']}, onnxruntime {args.threads}; "
        f"{setting['cpu_count']} CPUs, 1-min load {setting['load_average_1min']}; "
        f"torch {torch.__version__}, onnxruntime {ort.__version__}",
        highlight=False,
    )
    console.print(
        "max abs diff: " + ", ".join(f"{k} {v:.2g}" for k, v in diffs.items()), highlight=False
    )
    if args.json:
        args.json.write_text(json.dumps({"setting": setting, "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
