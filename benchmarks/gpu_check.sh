#!/usr/bin/env bash
# The GPU check, for the machine a session is lent: an H100 or H200 with no network, python3 (3.12) with a
# CUDA build of torch, transformers and peft, no Ray, no Optuna, and at most 64 MiB of files carried along.
#
#   bash benchmarks/gpu_check.sh --prepare   # here: SmolLM2's config and tokenizer into benchmarks/gpu_files
#                                            # (git-ignored; 3.5 MB), from $AIMRAY_HOME (make assets)
#   bash benchmarks/gpu_check.sh             # there (carry benchmarks/gpu_files): about 5 minutes
#
# No install: aimray runs from this tree on PYTHONPATH. Models are built from real configurations with
# random weights (benchmarks/gpu_check.py says why, and every row says so): the harness's step against a
# bare PEFT loop, the Llama-2-7B shape at batch 32 x 512 through the plan's micro-batch and checkpointing,
# scoring and generation throughput. Then the GPU-marked tests (tests/test_gpu.py: the loop on CUDA takes
# the CPU's decisions on the tiny model) where pytest, pyarrow and the offline data are there; otherwise
# that step is recorded as skipped with the reason. Ray on a GPU is not checked here (no Ray there).
# Results: benchmarks/results/gpu_check.{json,md} (OUT= to change), logs beside them.
set -uo pipefail
cd "$(dirname "$0")/.."
FILES=benchmarks/gpu_files
if [ "${1:-}" = "--prepare" ]; then
  SRC=$(python3 -c 'import sys; sys.path.insert(0, "."); from aimray import assets; print(assets.backbone_dir())' 2>/dev/null \
    || .venv/bin/python -c 'from aimray import assets; print(assets.backbone_dir())') || exit 1
  mkdir -p "$FILES/smollm2"
  cp "$SRC"/config.json "$SRC"/tokenizer.json "$SRC"/tokenizer_config.json "$FILES/smollm2/"
  du -sh "$FILES"
  exit 0
fi
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" AIMRAY_STAGE_CACHE=off AIMRAY_HOME=${AIMRAY_HOME:-/tmp/aimray-home}
[ -f "$FILES/smollm2/tokenizer.json" ] || { echo "no $FILES: run 'bash benchmarks/gpu_check.sh --prepare' here, carry it" >&2; exit 2; }
timeout 420 python3 benchmarks/gpu_check.py --files "$FILES" --out "$OUT" 2>"$OUT/gpu_check.log"
echo "gpu_check.py exit $?" >>"$OUT/gpu_check.log"
if python3 -c 'import pytest, pyarrow; from aimray import assets; assets.data_dir("wordnet")' 2>>"$OUT/gpu_check.log"; then
  timeout 90 python3 -m pytest -q -m gpu tests/test_gpu.py >"$OUT/gpu_tests.log" 2>&1
  echo "gpu tests exit $?" >>"$OUT/gpu_check.log"
else
  echo "gpu tests skipped: pytest, pyarrow or the offline data (\$AIMRAY_HOME) missing here" | tee "$OUT/gpu_tests.log"
fi
cat "$OUT/gpu_check.md"
