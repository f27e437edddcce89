#!/usr/bin/env bash
# A throw-away single-node SLURM in one folder: this host is the controller and the only
# compute node. For trying the recipes and for the test suite's real-SLURM test; not for
# production (no accounting, no cgroups, no authentication between users).
#
#   deploy/slurm/single-node-slurm.sh up DIR     # start; prints `export SLURM_CONF=...`
#   deploy/slurm/single-node-slurm.sh down DIR   # cancel jobs, stop daemons (DIR is kept)
#   deploy/slurm/single-node-slurm.sh status DIR # sinfo / squeue of that cluster
#
# Needs slurmctld, slurmd and the client commands (Debian: apt-get install slurm-wlm; tested
# with 22.05.8 on Debian 12) and, with AUTH=munge, munged. Run as root (slurmd starts job
# steps as the submitting user); jobs then run as root too.
#
# Everything lives under DIR: slurm.conf, state save and spool folders, pid files, logs,
# and (AUTH=munge) a private munge key and socket. Nothing is written to /etc, /var or
# /run, and no system service is started; the daemons run in their own sessions and are
# found again through DIR/*.pid. Use the cluster from a shell with
#   export SLURM_CONF=DIR/slurm.conf
#
# Knobs (environment):
#   CPUS         CPUs of the node (default: the CPUs this process may run on)
#   MEMORY_MB    RealMemory of the node (default: 90% of MemTotal)
#   AUTH         none (default; Slurm's auth/none + cred/none plugins, still shipped with
#                22.05) or munge (a private munged on DIR/munge/munge.sock)
#   CTLD_PORT, SLURMD_PORT  TCP ports (default: two free ports picked at start)
#   UP_TIMEOUT   seconds to wait for the node to become idle (default 60)
set -euo pipefail

usage() {
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

cmd="${1:-}"
dir="${2:-}"
[[ -n "$dir" && "$cmd" =~ ^(up|down|status)$ ]] || usage
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
conf="$dir/slurm.conf"
export SLURM_CONF="$conf"

log() { echo "single-node-slurm: $*" >&2; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

pid_alive() { [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_pidfile() {  # SIGTERM, wait up to 10 s, then SIGKILL
    local file="$1" pid i
    [[ -s "$file" ]] || return 0
    pid="$(cat "$file")"
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$file"
}

node_state() { sinfo -h -N -o '%t' 2>/dev/null | head -n1; }

dump_logs() {
    local f
    for f in "$dir"/log/*.log; do
        [[ -f "$f" ]] || continue
        echo "--- $f ---" >&2
        tail -n 30 "$f" >&2
    done
}

up() {
    local t0 cpus mem_mb ctld_port slurmd_port host auth node state i timeout
    t0="$(date +%s.%N)"
    for exe in slurmctld slurmd sinfo; do
        command -v "$exe" >/dev/null || { log "$exe not found on PATH (apt-get install slurm-wlm)"; exit 1; }
    done
    if pid_alive "$dir/slurmctld.pid" || pid_alive "$dir/slurmd.pid"; then
        log "already running in $dir (run: $0 down $dir)"
        exit 1
    fi
    cpus="${CPUS:-$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)}"  # nproc obeys OMP_*
    mem_mb="${MEMORY_MB:-$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)}"
    ctld_port="${CTLD_PORT:-$(free_port)}"
    slurmd_port="${SLURMD_PORT:-$(free_port)}"
    host="$(hostname -s)"
    node="${NODE_NAME:-localnode}"
    auth="${AUTH:-none}"
    timeout="${UP_TIMEOUT:-60}"
    rm -rf "$dir/state" "$dir/spool" "$dir/log"
    mkdir -p "$dir/state" "$dir/spool" "$dir/log"
    chmod 755 "$dir"

    local auth_lines
    case "$auth" in
        none)
            auth_lines="AuthType=auth/none
CredType=cred/none" ;;
        munge)
            command -v munged >/dev/null || { log "munged not found (apt-get install munge)"; exit 1; }
            mkdir -p "$dir/munge"
            chmod 700 "$dir/munge"
            [[ -s "$dir/munge/munge.key" ]] || dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
            chmod 400 "$dir/munge/munge.key"
            setsid munged --force --foreground \
                --socket="$dir/munge/munge.sock" --key-file="$dir/munge/munge.key" \
                --pid-file="$dir/munge/munged.pid" --seed-file="$dir/munge/munged.seed" \
                --log-file="$dir/log/munged.log" </dev/null >>"$dir/log/munged.log" 2>&1 &
            echo $! >"$dir/munged.pid"
            for i in $(seq 50); do [[ -S "$dir/munge/munge.sock" ]] && break; sleep 0.1; done
            [[ -S "$dir/munge/munge.sock" ]] || { log "munged did not start"; dump_logs; exit 1; }
            auth_lines="AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.sock" ;;
        *) log "AUTH must be none or munge, got '$auth'"; exit 2 ;;
    esac

    cat >"$conf" <<EOF
# single-node-slurm.sh: throw-away one-node cluster; everything under $dir
ClusterName=pausdenoise-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=$(id -un)
SlurmdUser=$(id -un)
$auth_lines
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.daemon.pid
SlurmdPidFile=$dir/slurmd.daemon.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$dir/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
# consider pending jobs every second (defaults: 60 s / 30 s), so a second job of a burst
# of submissions need not wait half a minute
SchedulerParameters=sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=300
MailProg=/bin/true
NodeName=$node NodeHostname=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
    : >"$dir/plugstack.conf"  # not the system's /etc/slurm/plugstack.conf

    setsid slurmctld -D -i -f "$conf" </dev/null >>"$dir/log/slurmctld.stderr.log" 2>&1 &
    echo $! >"$dir/slurmctld.pid"
    setsid slurmd -D -f "$conf" -N "$node" </dev/null >>"$dir/log/slurmd.stderr.log" 2>&1 &
    echo $! >"$dir/slurmd.pid"

    # bounded wait for the node to register and become idle
    state=""
    for i in $(seq $((timeout * 5))); do
        state="$(node_state || true)"
        [[ "$state" == idle ]] && break
        if ! pid_alive "$dir/slurmctld.pid" || ! pid_alive "$dir/slurmd.pid"; then
            log "a daemon exited during start-up"
            dump_logs
            down_daemons
            exit 1
        fi
        sleep 0.2
    done
    if [[ "$state" != idle ]]; then
        log "node not idle after ${timeout}s (state: '${state:-none}')"
        sinfo -N -l >&2 || true
        dump_logs
        down_daemons
        exit 1
    fi
    log "up in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}') s: node $node, $cpus CPUs, ${mem_mb} MB, auth/$auth, slurmctld :$ctld_port, slurmd :$slurmd_port"
    echo "export SLURM_CONF=$conf"
}

down_daemons() {
    stop_pidfile "$dir/slurmd.pid"
    stop_pidfile "$dir/slurmctld.pid"
    stop_pidfile "$dir/munged.pid"
}

down() {
    local i
    if [[ -f "$conf" ]] && pid_alive "$dir/slurmctld.pid"; then
        # cancel every job of this cluster and wait (bounded) until their steps are gone,
        # so that no slurmstepd or job process outlives the daemons
        scancel --quiet --full --signal=TERM --user="$(id -un)" 2>/dev/null || true
        scancel --quiet --user="$(id -un)" 2>/dev/null || true
        for i in $(seq 75); do
            [[ -z "$(squeue -h -t all -o '%i %t' 2>/dev/null | awk '$2 != "CD" && $2 != "CA" && $2 != "F" && $2 != "TO"')" ]] && break
            sleep 0.2
        done
    fi
    down_daemons
    log "stopped ($dir)"
}

case "$cmd" in
    up) up ;;
    down) down ;;
    status) sinfo -N -l; squeue ;;
    *) usage ;;
esac
