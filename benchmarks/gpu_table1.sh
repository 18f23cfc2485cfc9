#!/usr/bin/env bash
# The paper's Table 1 (MobileNetV2-ID, ResNet-101-ID, VGG-19-ID, InceptionV3-ID,
# Seg-Distilled-ID) at the paper's scale on a CUDA machine with no internet: the generated
# data set (67 identities, 128 px, rendered locally), early stopping (patience 20, at most 125
# epochs), bf16 autocast and channels_last. Prints training images/s per recipe and the
# results table (also written to OUT_DIR/table.md).
#
#   bash benchmarks/gpu_table1.sh [OUT_DIR]                         # GPU, seeds 0 1 2
#   SEEDS=[0] bash benchmarks/gpu_table1.sh runs/gpu_table1_seed0  # one seed
#   PROFILE=cpu-smoke bash benchmarks/gpu_table1.sh /tmp/t1        # the CPU path, tiny data
#
# Needs mtkd installed (pip install -e .) or .venv/ beside this repository; resumable: run it
# again with the same OUT_DIR and finished recipes are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3
fi
OUT=${1:-runs/gpu_table1}
SEEDS=${SEEDS:-[0,1,2]}
PROFILE=${PROFILE:-gpu}

if [ "$PROFILE" = cpu-smoke ]; then
  # the same study and flags on the CPU, at smoke size (InceptionV3 needs >= 75 px)
  ARGS=(recipes/profiles/tiny.yaml data.image_size=75 data.dataset.identities=4
        data.dataset.views=8 trainer.max_epochs=1 trainer.device=cpu trainer.precision=fp32
        "study.seeds=[0]" evaluate.latency=false output.plots=false)
else
  "$PY" - <<'PYEOF'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_table1.sh: no CUDA device; PROFILE=cpu-smoke runs the CPU path")
print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
PYEOF
  ARGS=(trainer.device=cuda trainer.precision=bf16 trainer.channels_last=true
        trainer.check_finite=false data.num_workers=4 data.eval_batch_size=256
        "study.seeds=$SEEDS")
fi

"$PY" -m mtkd run recipes/table1.yaml "${ARGS[@]}" trainer.progress=false --out "$OUT"

"$PY" - "$OUT" <<'PYEOF'
import json, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = {}
for results in sorted(out.glob("*/results.json")):
    r = json.loads(results.read_text())
    rows.setdefault(r["recipe"], []).append(r)
print(f"\nthroughput ({out}):")
for recipe, runs in rows.items():
    speeds = [r["train_images_per_s"] for r in runs if r.get("train_images_per_s")]
    epochs = [r["epochs_run"] for r in runs]
    print(f"  {recipe:18s} {statistics.median(speeds):9.1f} training images/s "
          f"(median over {len(speeds)} run(s)), epochs {epochs}")
print()
print((out / "table.md").read_text())
PYEOF
