"""What ``import mtkd`` costs, and which heavy libraries it loads.

Each round starts a fresh interpreter (``python -X importtime``) for ``import mtkd`` alone and
for ``import mtkd`` followed by a first use of the API (``mtkd.run``); the figure is the
fastest round, the usual way to time something the machine's other work can only slow down.

    python benchmarks/import_time.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

HEAVY: tuple[str, ...] = ("torch", "timm", "torchmetrics", "torchvision", "scipy", "matplotlib")
HEAVY += ("mlflow", "tensorboard", "onnx", "onnxruntime")
CASES = {"import mtkd": "import mtkd", "import mtkd; mtkd.run": "import mtkd\nmtkd.run"}


def one_round(code: str) -> tuple[float, float, list[str]]:
    """(wall seconds, seconds the ``mtkd`` package import took, heavy modules loaded)."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", script], capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    done.check_returncode()
    package = [line for line in done.stderr.splitlines() if line.rstrip().endswith("| mtkd")]
    own = int(package[-1].split("|")[1]) / 1e6 if package else 0.0
    modules = set(json.loads(done.stdout.splitlines()[-1]))
    return wall, own, [m for m in HEAVY if m in modules]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    print("| case | wall (s) | `mtkd` package import (s) | heavy modules loaded |")
    print("| --- | --- | --- | --- |")
    for label, code in CASES.items():
        rounds = [one_round(code) for _ in range(args.rounds)]
        wall, own, heavy = min(rounds)
        print(f"| `{label}` | {wall:.2f} | {own:.3f} | {', '.join(heavy) or 'none'} |")


if __name__ == "__main__":
    main()
