#!/usr/bin/env bash
# Start a real single-node Slurm cluster on this machine, for tests/test_slurm.py.
#
#   bash tests/slurm/start.sh    # clients find the config via /etc/slurm/slurm.conf
#   bash tests/slurm/stop.sh
#
# Idempotent: a cluster that is already up is left as it is. Needs root (it installs
# slurm-wlm and munge with apt-get when they are missing, and starts munged, slurmctld and
# slurmd). Everything Slurm writes (config, state, spool, logs, pid files) lives in one
# scratch folder, $IMMUNO_SLURM_DIR (default /tmp/immuno-slurm); /etc/slurm/slurm.conf
# becomes a link to its slurm.conf (job steps read the config from there). Without
# accounting (no slurmdbd) `sacct` does not work: Snakemake must use
# `--slurm-status-command squeue` (profiles/slurm does), and MinJobAge keeps finished jobs
# visible to squeue for 10 minutes. Known: a killed snakemake run needs `--unlock`.
# Prints `SLURM_CONF=<path>` as its last line; exits non-zero with a reason on failure.
set -euo pipefail

DIR="${IMMUNO_SLURM_DIR:-/tmp/immuno-slurm}"
CONF="$DIR/slurm.conf"
export SLURM_CONF="$CONF"

die() { echo "start.sh: $*" >&2; exit 1; }
log() { echo "start.sh: $*" >&2; }

[ "$(id -u)" -eq 0 ] || die "needs root (apt-get, munged, slurmd)"

# 1. Packages (about 15 s the first time on a fresh machine).
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
    command -v apt-get >/dev/null || die "slurm-wlm/munge missing and no apt-get to install them"
    log "installing slurm-wlm and munge with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null </dev/null || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null </dev/null \
        || die "apt-get install slurm-wlm munge failed"
fi

# 2. munge: the key (the package makes one; make it if not), then the daemon.
if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    if command -v mungekey >/dev/null; then
        mungekey --create --keyfile=/etc/munge/munge.key
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
chmod 0755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged --force
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.1
    done
    munge -n | unmunge >/dev/null || die "munged does not answer (munge -n | unmunge failed)"
fi

# 3. The host name must resolve, to the address slurmd listens on.
HOST="$(hostname -s)"
if ! getent hosts "$HOST" >/dev/null; then
    log "adding $HOST to /etc/hosts"
    echo "127.0.0.1 $HOST" >>/etc/hosts
fi

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# 4. slurm.conf, written once per scratch folder (rewritten when no daemon runs, so a
#    changed machine size is picked up).
mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
if ! alive "$DIR/slurmctld.pid" && ! alive "$DIR/slurmd.pid"; then
    CPUS="$(nproc)"
    MEM_MB="$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)"
    # A bit under the RAM slurmd measures, or it marks the node invalid.
    REAL_MB=$((MEM_MB > 2048 ? MEM_MB - 1024 : MEM_MB * 9 / 10))
    cat >"$CONF" <<CONF
# Written by tests/slurm/start.sh: a single-node test cluster, no accounting, no cgroups.
ClusterName=immunotest
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=600
MailProg=/bin/true
MpiDefault=none
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$REAL_MB State=UNKNOWN
PartitionName=test Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
fi

# 5. srun inside a job (the plugin's job step) drops SLURM_CONF and reads the config from
#    its default place, so that place must point here. A real cluster's config is never
#    replaced: start.sh refuses to run beside one.
ETC=/etc/slurm/slurm.conf
if [ -e "$ETC" ] || [ -L "$ETC" ]; then
    [ "$(readlink "$ETC" || true)" = "$CONF" ] \
        || die "$ETC exists and is not this test cluster's; not starting a second cluster"
else
    mkdir -p /etc/slurm
    ln -s "$CONF" "$ETC"
fi

# 6. Daemons: controller first, then the node daemon.
if ! alive "$DIR/slurmctld.pid"; then
    log "starting slurmctld"
    # -c: a clean start; jobs left queued by an interrupted test are dropped, not rerun.
    /usr/sbin/slurmctld -f "$CONF" -c || die "slurmctld did not start (see $DIR/log/slurmctld.log)"
fi
for _ in $(seq 100); do
    scontrol ping >/dev/null 2>&1 && break
    sleep 0.1
done
scontrol ping >/dev/null 2>&1 || die "slurmctld does not answer (see $DIR/log/slurmctld.log)"
if ! alive "$DIR/slurmd.pid"; then
    log "starting slurmd"
    /usr/sbin/slurmd -f "$CONF" || die "slurmd did not start (see $DIR/log/slurmd.log)"
fi

# 7. Ready when the node is idle (or already running jobs).
state=""
for _ in $(seq 300); do
    state="$(sinfo -h -N -n "$HOST" -o %t 2>/dev/null | head -1)"
    case "$state" in
        idle | mix | alloc) break ;;
        drain* | drng | inval | down* | fail*)
            scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 0.1
done
case "$state" in
    idle | mix | alloc) ;;
    *) die "node $HOST is '$state', not idle after 30 s (see $DIR/log/slurmd.log and slurmctld.log)" ;;
esac
log "cluster up: node $HOST $state"
echo "SLURM_CONF=$CONF"
