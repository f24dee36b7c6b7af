#!/usr/bin/env bash
# The GPU figures of the trainer's speed paths in one run that ends within a time budget: the matmul
# peak, the plain loop, the eager bf16 baseline and `bench/mfu_bench.py --suite speed` on the 1B preset
# (document masking through FlexAttention, FP8, selective recomputation and the 200-step FP8 loss check
# first; then SDPA masking, causal, full recomputation and row-wise FP8 while the budget lasts).
# Every run's figures are written to OUTDIR/mfu.json as it ends, so a run cut short keeps them.
#
#   bench/gpu_suite.sh SHARDS OUTDIR [BUDGET_SECONDS [MFU_BENCH_ARGS...]]   (budget default 480)
#   WHEELS=DIR bench/gpu_suite.sh ...   first install the wheels of scripts/wheelhouse.sh (offline node)
#   PYTHON=... bench/gpu_suite.sh ...   the interpreter that holds PyTorch (default python3)
set -euo pipefail
shards=${1:?usage: bench/gpu_suite.sh SHARDS OUTDIR [BUDGET_SECONDS [MFU_BENCH_ARGS...]]}
out=${2:?usage: bench/gpu_suite.sh SHARDS OUTDIR [BUDGET_SECONDS [MFU_BENCH_ARGS...]]}
budget=${3:-480}
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
mkdir -p "$out"
if [ -n "${WHEELS:-}" ]; then
    site=$(mktemp -d)
    "$python" -m pip install --quiet --no-index --no-deps --no-compile --target "$site" "$WHEELS"/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >"$out/gpu.csv"
fi
"$python" "$root/bench/mfu_bench.py" --shards "$shards" --suite speed --budget "$budget" --warmup 3 --steps 6 \
    --json-out "$out/mfu.json" "${@:4}" 2>&1 | tee "$out/mfu.log"
