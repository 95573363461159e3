# A single-node Slurm cluster on localhost for tests/slurm.rs (issue 15).
# Sourced by .ci/run; also usable by hand:
#   source .ci/slurm-cluster.sh && start_slurm_cluster   # exports SLURM_CONF
#   ... cargo test --release --test slurm ...
#   stop_slurm_cluster
# Works as root without cgroups (proctrack/linuxproc, task/none); state,
# logs and pid files live in one temporary folder, removed at stop.

install_slurm_if_missing() {
    if command -v sbatch >/dev/null && command -v slurmctld >/dev/null &&
        command -v slurmd >/dev/null && command -v munged >/dev/null; then
        return 0
    fi
    echo "ci: installing Slurm and munge (slurm-wlm munge)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge >/dev/null
}

# Munge is shared with any cluster already on the machine: started only when
# no munged answers, and then stopped by stop_slurm_cluster.
_slurm_munge_answers() {
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1
}

start_slurm_cluster() {
    local host dir waited
    host=$(hostname)
    dir=$(mktemp -d /tmp/delg-slurm.XXXXXX)
    SLURM_CLUSTER_DIR=$dir
    SLURM_STARTED_MUNGED=
    mkdir -p "$dir/state" "$dir/spool"
    # Slurm refuses to start when the node's memory is below RealMemory.
    local mem_mb
    mem_mb=$(awk '/MemTotal/ { print int($2 / 1024 * 0.8) }' /proc/meminfo)
    cat >"$dir/slurm.conf" <<EOF
ClusterName=delgci
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AuthType=auth/munge
MpiDefault=none
ReturnToService=2
NodeName=$host CPUs=$(nproc) RealMemory=$mem_mb State=UNKNOWN
PartitionName=main Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    export SLURM_CONF=$dir/slurm.conf

    if ! _slurm_munge_answers; then
        [ -f /etc/munge/munge.key ] || mungekey -c
        mkdir -p /run/munge && chown munge:munge /run/munge
        su -s /bin/sh munge -c /usr/sbin/munged
        SLURM_STARTED_MUNGED=1
    fi
    /usr/sbin/slurmctld
    /usr/sbin/slurmd
    waited=0
    until sinfo -h -o '%T' 2>/dev/null | grep -qx idle; do
        if [ "$waited" -ge 60 ]; then
            echo "ci: the Slurm node is not idle after 30 s; logs in $dir:" >&2
            tail -n 20 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 || true
            return 1
        fi
        sleep 0.5
        waited=$((waited + 1))
    done
    echo "ci: Slurm cluster up (SLURM_CONF=$SLURM_CONF)"
}

# Stops the daemons this script started, by their pid files, and waits for
# them to exit (slurmctld saves its state on the way out) before removing
# the folder.
stop_slurm_cluster() {
    local dir=${SLURM_CLUSTER_DIR:-}
    [ -n "$dir" ] || return 0
    local pids="" f pid waited=0
    for f in "$dir/slurmd.pid" "$dir/slurmctld.pid"; do
        [ -f "$f" ] && pids="$pids $(cat "$f")"
    done
    if [ -n "${SLURM_STARTED_MUNGED:-}" ] && [ -f /run/munge/munged.pid ]; then
        pids="$pids $(cat /run/munge/munged.pid)"
    fi
    for pid in $pids; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in $pids; do
        while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt 100 ]; do
            sleep 0.1
            waited=$((waited + 1))
        done
    done
    rm -rf "$dir"
    SLURM_CLUSTER_DIR=
}
