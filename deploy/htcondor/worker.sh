#!/usr/bin/env bash
# One dask worker inside an HTCondor job (executable of deploy/htcondor/workers.sub).
#   worker.sh SCHEDULER_FILE
# Reads the scheduler's address from SCHEDULER_FILE (written by `dask scheduler
# --scheduler-file` on the submit node; the file must be on a shared file system) and
# serves until the scheduler goes away or the job is removed.
set -euo pipefail
scheduler_file="${1:?usage: worker.sh SCHEDULER_FILE}"

# shellcheck disable=SC1091
source "${PAUSDENOISE_VENV:?PAUSDENOISE_VENV not set (workers.sub passes it)}/bin/activate"
export DASK_CONFIG="${PAUSDENOISE_DEPLOY:?}"

# HTCondor advertises what it gave the job in the machine ad; fall back to sane values.
ad="${_CONDOR_MACHINE_AD:-/dev/null}"
cpus="$(awk '/^Cpus *=/ {print $3}' "$ad" 2>/dev/null || true)"
mem_mb="$(awk '/^Memory *=/ {print $3}' "$ad" 2>/dev/null || true)"
cpus="${cpus:-${OMP_NUM_THREADS:-1}}"
scratch="${_CONDOR_SCRATCH_DIR:-${TMPDIR:-/tmp}}"

tls=()
if [[ -n "${PAUSDENOISE_CERTS:-}" ]]; then
    c="$PAUSDENOISE_CERTS"
    tls=(--tls-ca-file "$c/ca.pem" --tls-cert "$c/worker.pem" --tls-key "$c/worker.key")
fi

gpus="$(echo "${CUDA_VISIBLE_DEVICES:-}" | awk -F, '{print (NF && $1 != "") ? NF : 0}')"
common=(--scheduler-file "$scheduler_file" --local-directory "$scratch"
    --death-timeout 300 --dashboard-address 127.0.0.1:0 "${tls[@]}")
[[ -n "$mem_mb" ]] && common+=(--memory-limit "${mem_mb}MiB")

if ((gpus > 0)); then
    # one worker process per GPU that HTCondor assigned (CUDA_VISIBLE_DEVICES), each
    # pinned to its device, device memory spilling to host above 80 %
    exec dask cuda worker "${common[@]}" --nthreads 1 --device-memory-limit 0.8 \
        --resources "GPU=1"
else
    exec dask worker "${common[@]}" --nworkers 1 --nthreads "$cpus"
fi
