#!/usr/bin/env bash
# Stop the test cluster started by tests/slurm/start.sh (idempotent): slurmd, then
# slurmctld, each by its pid file in $IMMUNO_SLURM_DIR (default /tmp/immuno-slurm), and
# remove the /etc/slurm/slurm.conf link start.sh made.
# munged is left running (it is cheap, shared, and start.sh reuses it). The scratch
# folder is kept for its logs unless --clean is given.
set -euo pipefail

DIR="${IMMUNO_SLURM_DIR:-/tmp/immuno-slurm}"

stop() {  # stop NAME PIDFILE: SIGTERM, wait up to 10 s, then SIGKILL
    local name="$1" pidfile="$2" pid
    [ -s "$pidfile" ] || return 0
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
        echo "stop.sh: stopping $name ($pid)" >&2
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

# Jobs of this test cluster still queued or running (an interrupted test) are cancelled
# first, so that no job step outlives its slurmd.
if [ -s "$DIR/slurmctld.pid" ] && kill -0 "$(cat "$DIR/slurmctld.pid")" 2>/dev/null; then
    export SLURM_CONF="$DIR/slurm.conf"
    jobs="$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')"
    if [ -n "${jobs// /}" ]; then
        echo "stop.sh: cancelling jobs $jobs" >&2
        # shellcheck disable=SC2086
        scancel $jobs 2>/dev/null || true
        sleep 1
    fi
fi

stop slurmd "$DIR/slurmd.pid"
stop slurmctld "$DIR/slurmctld.pid"
# The link start.sh made; a real cluster's /etc/slurm/slurm.conf is never touched.
if [ -L /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" = "$DIR/slurm.conf" ]; then
    rm -f /etc/slurm/slurm.conf
fi
if [ "${1:-}" = "--clean" ]; then
    rm -rf "$DIR"
fi
