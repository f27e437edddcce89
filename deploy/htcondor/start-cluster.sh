#!/usr/bin/env bash
# pausdenoise on HTCondor (e.g. PIC) with the scheduler-file pattern: the dask scheduler and
# the pipeline client run here (the submit node / user interface), the workers are HTCondor
# jobs that find the scheduler through a file on the shared file system.
#
#   deploy/htcondor/start-cluster.sh CONFIG.yaml [OUT_DIR] [more `pausdenoise run` options]
#
# Environment:
#   N_WORKERS          worker jobs to submit (default 4; each asks for 1 GPU, see workers.sub)
#   PAUSDENOISE_VENV   virtual environment with pausdenoise[gpu,cluster] on the shared FS
#   PAUSDENOISE_CERTS  folder from deploy/make-certs.sh -> mutual TLS between all parties
#   DASK_SHARED_DIR    shared folder for the scheduler file and logs (default ~/.pausdenoise)
#   SCHEDULER_PORT     scheduler port (default 8786); workers must be able to reach
#                      <this host>:SCHEDULER_PORT through the site firewall
set -euo pipefail

config="${1:?usage: start-cluster.sh CONFIG.yaml [OUT_DIR] [pausdenoise run options]}"
out="${2:-pausdenoise-run}"
shift $(($# >= 2 ? 2 : 1))

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
deploy="$(cd "$here/.." && pwd)"
venv="${PAUSDENOISE_VENV:-$(cd "$deploy/.." && pwd)/.venv}"
# shellcheck disable=SC1091
source "$venv/bin/activate"
export DASK_CONFIG="$deploy"

run_dir="${DASK_SHARED_DIR:-$HOME/.pausdenoise}/htcondor-$(date +%Y%m%d-%H%M%S)-$$"
mkdir -p "$run_dir/logs"
scheduler_file="$run_dir/scheduler.json"
certs="${PAUSDENOISE_CERTS:-}"

tls=()
if [[ -n "$certs" ]]; then
    tls=(--protocol tls --tls-ca-file "$certs/ca.pem" --tls-cert "$certs/scheduler.pem"
        --tls-key "$certs/scheduler.key")
    export DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION=True
    export DASK_DISTRIBUTED__COMM__TLS__CA_FILE="$certs/ca.pem"
    export DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT="$certs/client.pem"
    export DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY="$certs/client.key"
fi

cluster_id=""
scheduler_pid=""
cleanup() {
    [[ -n "$cluster_id" ]] && condor_rm "$cluster_id" >/dev/null 2>&1 || true
    [[ -n "$scheduler_pid" ]] && kill "$scheduler_pid" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT

dask scheduler --scheduler-file "$scheduler_file" --port "${SCHEDULER_PORT:-8786}" \
    --dashboard-address 127.0.0.1:8787 "${tls[@]}" >"$run_dir/logs/scheduler.log" 2>&1 &
scheduler_pid=$!
for _ in $(seq 60); do
    [[ -s "$scheduler_file" ]] && break
    kill -0 "$scheduler_pid" 2>/dev/null || break   # the scheduler died: stop waiting
    sleep 1
done
[[ -s "$scheduler_file" ]] || { echo "scheduler did not start: $run_dir/logs/scheduler.log" >&2; exit 1; }

submit_out="$(condor_submit "$here/workers.sub" \
    "scheduler_file=$scheduler_file" "venv=$venv" "deploy=$deploy" "certs=$certs" \
    "logdir=$run_dir/logs" "n_workers=${N_WORKERS:-4}")"
echo "$submit_out"
cluster_id="$(sed -n 's/.*submitted to cluster \([0-9]*\).*/\1/p' <<<"$submit_out")"

echo "dashboard: ssh -L 8787:127.0.0.1:8787 $(hostname)  then open http://localhost:8787"
pausdenoise run --config "$config" --out "$out" --cluster "scheduler-file:$scheduler_file" "$@"
