#!/usr/bin/env bash
# One prepared call on a machine with a CUDA GPU: what aimray does there, measured, in one JSON.
#
#   bash benchmarks/gpu_check.sh            # writes ${OUT:-benchmarks/results}/gpu_check.json (+ logs)
#
# 1. Python: the machine's own python3 when its torch sees a GPU (an image with CUDA torch); otherwise a
#    venv .venv-gpu with a CUDA torch build (needs PyPI: TORCH_INDEX, default the cu128 index).
#    aimray is installed without its dependencies where they are already there (--no-deps), so an image
#    without network uses what it has; missing packages are reported, never fatal.
# 2. The GPU-marked tests (tests/test_gpu.py: the loop and the precision probe on CUDA, tiny model).
# 3. benchmarks/perf.py --device cuda --no-ray (the real SmolLM2 when its assets are here, in $AIMRAY_HOME).
# 4. If Ray is importable: one `python -m aimray run` in a Ray Train worker on 1 GPU, and a 4-trial sweep
#    with --gpus-per-trial 0.25 (four trials share the GPU), smoke preset.
# Each step has its own time limit (the whole check fits in 8 minutes); a step that cannot run is recorded
# as skipped with the reason. Needs the offline assets ($AIMRAY_HOME: `python -m aimray.assets fetch` on a
# machine with network; on one without, carry $AIMRAY_HOME's data/ and the backbone's tokenizer files).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
: > "$LOG"
export AIMRAY_STAGE_CACHE=off

if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>>"$LOG"; then
  PY=python3
else
  python3 -m venv .venv-gpu >>"$LOG" 2>&1
  PY=.venv-gpu/bin/python
  $PY -m pip install -q torch==2.13.0 --index-url "${TORCH_INDEX:-https://download.pytorch.org/whl/cu128}" >>"$LOG" 2>&1
fi
$PY -m pip install -q --no-deps --no-build-isolation -e . >>"$LOG" 2>&1 || echo "aimray install failed" >>"$LOG"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, record status and seconds
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/gpu_$name.log" 2>&1
  local rc=$?
  echo "$name $rc $((SECONDS - t0))" >>"$OUT/gpu_steps.txt"
}
: > "$OUT/gpu_steps.txt"

step tests 120 $PY -m pytest -q -m gpu tests/test_gpu.py
if $PY -c 'from aimray import assets; assets.backbone_dir()' >>"$LOG" 2>&1; then
  step perf 180 $PY benchmarks/perf.py --device cuda --no-ray --out "$OUT/gpu_perf"
else
  echo "perf skipped: the SmolLM2 assets are not in \$AIMRAY_HOME" >>"$OUT/gpu_steps.txt"
fi
if $PY -c 'import ray, optuna' >>"$LOG" 2>&1; then
  step train 120 $PY -m aimray run --preset smoke --out "$OUT/gpu_train_run" --workers 1 --gpus-per-worker 1
  step sweep 180 $PY sweeps/tune_controller.py --config sweeps/configs/smoke.yaml --num-samples 4 \
    --gpus-per-trial 0.25 --cpus-per-trial 1 --out "$OUT/gpu_sweep"
else
  echo "ray rows skipped: ray or optuna is not installed here" >>"$OUT/gpu_steps.txt"
fi

$PY - "$OUT" <<'PYEOF'
import json, platform, sys
from pathlib import Path

out = Path(sys.argv[1])
report = {"machine": platform.node(), "steps": {}, "notes": []}
try:
    import torch

    report["torch"] = torch.__version__
    report["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    report["bf16"] = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
except ImportError as err:
    report["notes"].append(f"torch: {err}")
for line in (out / "gpu_steps.txt").read_text().splitlines():
    parts = line.split()
    if len(parts) == 3 and parts[1].lstrip("-").isdigit():
        status = "passed" if parts[1] == "0" else "timed out" if parts[1] == "124" else f"failed (exit {parts[1]})"
        report["steps"][parts[0]] = {"status": status, "seconds": int(parts[2])}
    else:
        report["notes"].append(line)
perf = out / "gpu_perf" / "perf.json"
if perf.exists():
    report["perf"] = json.loads(perf.read_text()).get("targets")
(out / "gpu_check.json").write_text(json.dumps(report, indent=1))
print(json.dumps(report, indent=1))
PYEOF
