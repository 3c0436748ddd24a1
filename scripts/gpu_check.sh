#!/usr/bin/env bash
# The GPU checks, as one script for a lent CUDA machine (README, Performance: "On a GPU"), run from the
# repository root: the CUDA tests, the Llama-3.1-8B-shaped index, the GPT-2-small bench in
# bf16 and a profile of the stream. Each step has its own time limit so one slow step
# leaves the others their time; logs go to $OUT (default /tmp/gpu-out).
#   bash scripts/gpu_check.sh [LLAMA_TOKENS]
set -u
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TQDM_MININTERVAL=10 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python3}
step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s) $(date +%T)"
  local t0=$SECONDS
  timeout -k 5 "$limit" "$@" > "$OUT/$name.log" 2>&1; local rc=$?
  echo "=== $name: exit $rc in $((SECONDS - t0)) s"; tail -n "${TAIL:-25}" "$OUT/$name.log" | cut -c1-400
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# the GPU's memory every 2 s, so a step stopped at its limit still has its peak
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -l 2 > "$OUT/gpu-memory-mib.log" 2>&1 &
smi=$!
$PY -c "import torch, transformers, numba, pyarrow, transformer_lens; print('torch', torch.__version__, 'transformers', transformers.__version__, 'numba', numba.__version__, 'pyarrow', pyarrow.__version__)"
step tests 150 $PY -m pytest -q -p no:cacheprovider -x tests/unit/test_cuda.py tests/integration/test_cuda_runs.py tests/unit/test_recorders.py tests/unit/test_sample_windows.py tests/unit/test_torch_syncs.py
TAIL=40 step llama 250 $PY scripts/gpu_llama.py --tokens "${1:-1000000}"
TAIL=60 step bench 120 $PY -m indexer.cli bench --model gpt2-small-random --dtype bfloat16 --tokens 65536 --rounds 2 --no-memory
TAIL=70 step profile 60 $PY scripts/gpu_profile.py --tokens 32768
kill "$smi" 2>/dev/null
echo "peak GPU memory used over all steps: $(sort -n "$OUT/gpu-memory-mib.log" | tail -n 1) MiB"
