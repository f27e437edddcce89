#!/usr/bin/env bash
# pausdenoise on one multi-GPU machine: dask_cuda.LocalCUDACluster, one worker per GPU.
#
#   deploy/local-gpu-node/run.sh CONFIG.yaml [OUT_DIR] [more `pausdenoise run` options]
#
# Environment:
#   CUDA_VISIBLE_DEVICES   GPUs to use (default: all); one dask worker per listed GPU
#   DEVICE_MEMORY_LIMIT    per-GPU spill threshold, bytes or fraction (default 0.8)
#   HOST_MEMORY_LIMIT      host memory per worker (default: total / number of GPUs)
#   PAUSDENOISE_VENV       virtual environment with pausdenoise[gpu] (default: ./.venv)
#   PAUSDENOISE_SCRATCH    node-local disk for spilled data (default: $TMPDIR or /tmp)
set -euo pipefail

config="${1:?usage: run.sh CONFIG.yaml [OUT_DIR] [pausdenoise run options]}"
out="${2:-pausdenoise-run}"
shift $(($# >= 2 ? 2 : 1))

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${PAUSDENOISE_VENV:-$here/../../.venv}"
if [[ -f "$venv/bin/activate" ]]; then
    # shellcheck disable=SC1091
    source "$venv/bin/activate"
fi
export DASK_CONFIG="$here/.."   # deploy/dask.yaml: spill thresholds, timeouts, dashboard

if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
else
    echo "run.sh: nvidia-smi not found; is this a GPU node?" >&2
fi
scratch="${PAUSDENOISE_SCRATCH:-${TMPDIR:-/tmp}}/pausdenoise-dask-$$"
mkdir -p "$scratch"
trap 'rm -rf "$scratch"' EXIT

# The dashboard binds to 127.0.0.1 (printed at start); from your laptop:
#   ssh -L 8787:127.0.0.1:<port> <this node>
pausdenoise run --config "$config" --out "$out" --cluster cuda \
    --set "cluster.cuda.device_memory_limit=${DEVICE_MEMORY_LIMIT:-0.8}" \
    --set "cluster.memory_limit=${HOST_MEMORY_LIMIT:-auto}" \
    --set "cluster.local_directory=$scratch" \
    --set "cluster.threads_per_worker=1" \
    "$@"
