#!/usr/bin/env bash
# A one-node Slurm cluster (munge + slurmctld + slurmd) on this machine, for tests that submit
# real jobs. Runs as root without systemd.
#
#   scripts/slurm_local.sh install   # Debian packages, skipped when already installed
#   scripts/slurm_local.sh start     # idempotent; returns once a first job has completed
#   scripts/slurm_local.sh stop      # cancel all jobs, stop the daemons this script started
#   scripts/slurm_local.sh status
#
# The config goes to /etc/slurm/slurm.conf because that is where sbatch/squeue/scontrol look
# without SLURM_CONF, and the project calls them by name. Everything else (state, spool, pid
# files, logs, job completion file, a copy of the config) lives in $CRUCIBLE_SLURM_STATE.
set -euo pipefail

STATE=${CRUCIBLE_SLURM_STATE:-/var/tmp/crucible-slurm}
CONF=/etc/slurm/slurm.conf
MUNGE_KEY=/etc/munge/munge.key
START_TIMEOUT=${CRUCIBLE_SLURM_START_TIMEOUT:-60}

log() { echo "slurm_local: $*" >&2; }

# A daemon that has exited can stay a zombie for seconds when pid 1 reaps late: not running.
running() { local stat; stat=$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null) && [[ -n $stat && $stat != Z ]]; }

# Alive means: the pid file exists and names a running process.
alive() { [[ -s $1 ]] && running "$(cat "$1")"; }

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

cluster_up() {
    alive "$STATE/slurmctld.pid" && alive "$STATE/slurmd.pid" && munge_ok \
        && scontrol ping 2>/dev/null | grep -q UP \
        && sinfo -h -o %T 2>/dev/null | grep -Eqv 'down|drain|fail|unknown|not_responding|inval'
}

show_logs() {
    local f
    for f in "$STATE/munge/munged.log" "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log"; do
        [[ -f $f ]] && { echo "--- tail of $f"; tail -n 30 "$f"; }
    done
    echo "--- sinfo"; sinfo 2>&1 || true
}

cmd_install() {
    if command -v slurmctld >/dev/null && command -v sbatch >/dev/null; then
        log "already installed: $(slurmctld -V)"
        return
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Without --no-install-recommends the slurm packages pull ~40 more.
    apt-get install -y -qq --no-install-recommends munge slurm-client slurmctld slurmd
}

write_conf() {
    local node
    node=$(hostname -s)
    cat > "$STATE/slurm.conf" <<EOF
# Written by crucible scripts/slurm_local.sh; state lives in $STATE.
ClusterName=crucible
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
# The default MailProg does not exist here and slurmctld refuses to start without one.
MailProg=/bin/true
MpiDefault=none
# No cgroups without systemd.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
# sacct would need slurmdbd; the jobcomp file is a cheap record of finished jobs instead.
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/log/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# Lets the node advertise more CPUs than the machine has instead of draining it (INVAL).
SlurmdParameters=config_overrides
# Otherwise a dependent of a failed job pends forever.
DependencyParameters=kill_invalid_depend
# The default batch_sched_delay makes every job wait ~2 s before it starts. Jobs that become
# startable without an event (a requeued job reaching its begin time) wait for the next full
# scheduling pass: every 60 s (main) or 30 s (backfill) by default.
SchedulerParameters=batch_sched_delay=0,sched_interval=1,bf_interval=1
# Finished jobs stay visible to scontrol for an hour.
MinJobAge=3600
MaxArraySize=1001
JobRequeue=1
# A requeued job may not start again for cred_expire seconds (120 by default; 5 is the minimum).
AuthInfo=cred_expire=10
ReturnToService=2
NodeName=$node NodeAddr=127.0.0.1 CPUs=8 RealMemory=4096 State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
    install -D -m 0644 "$STATE/slurm.conf" "$CONF"
}

start_munge() {
    if munge_ok; then
        return  # ours from an earlier start, or one the machine already runs
    fi
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 "$STATE/munge"
    if [[ ! -s $MUNGE_KEY ]]; then
        install -d -o munge -g munge -m 0700 "$(dirname "$MUNGE_KEY")"
        mungekey --create --keyfile="$MUNGE_KEY"
    fi
    chown munge:munge "$MUNGE_KEY"
    chmod 0400 "$MUNGE_KEY"
    # --force: a munged killed earlier leaves its socket behind.
    runuser -u munge -- /usr/sbin/munged --force \
        --pid-file="$STATE/munge/munged.pid" --log-file="$STATE/munge/munged.log" 9>&-
    local i
    for i in $(seq 50); do munge_ok && return; sleep 0.1; done
    log "munged did not come up"; show_logs >&2; exit 1
}

submit_probe() {
    # slurmctld takes a moment before it accepts submissions.
    local i id
    for i in $(seq 50); do
        if id=$(sbatch --parsable --chdir="$STATE" --output=/dev/null --job-name=crucible-probe \
            --wrap true 2>/dev/null); then
            echo "${id%%;*}"; return
        fi
        sleep 0.2
    done
    return 1
}

cmd_start() {
    if cluster_up; then
        log "already up"
        return
    fi
    # A half-started cluster (one daemon dead) is restarted whole.
    if alive "$STATE/slurmctld.pid" || alive "$STATE/slurmd.pid" || alive "$STATE/munge/munged.pid"; then
        cmd_stop
    fi
    mkdir -p "$STATE"/{ctld,spool,log}
    chmod 0755 "$STATE" "$STATE/log"
    write_conf
    start_munge
    # -c: jobs and node states of an earlier run do not come back (job ids still keep counting).
    slurmctld -c 9>&-
    slurmd -c 9>&-

    local id deadline state=""
    if ! id=$(submit_probe); then
        log "slurmctld never accepted a job"; show_logs >&2; exit 1
    fi
    # The first job is what proves the node is usable: sinfo says idle seconds earlier.
    deadline=$((SECONDS + START_TIMEOUT))
    while ((SECONDS < deadline)); do
        state=$(scontrol show job -o "$id" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2 || true)
        case $state in
            COMPLETED) log "up: probe job $id completed after ${SECONDS}s"; return ;;
            FAILED|CANCELLED|TIMEOUT|NODE_FAIL|BOOT_FAIL|OUT_OF_MEMORY)
                log "probe job $id ended $state"; show_logs >&2; exit 1 ;;
        esac
        sleep 0.2
    done
    log "probe job $id did not complete within ${START_TIMEOUT}s (state: ${state:-unknown})"
    scontrol show job "$id" >&2 || true
    show_logs >&2
    exit 1
}

# Sends TERM to the process in pid file $1 and waits for it to exit, then KILL.
stop_pid() {
    local pidfile=$1 pid i
    alive "$pidfile" || { rm -f "$pidfile"; return 0; }
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for i in $(seq 50); do running "$pid" || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$pidfile"
}

stop_daemons() {
    stop_pid "$STATE/slurmd.pid"
    stop_pid "$STATE/slurmctld.pid"
    stop_pid "$STATE/munge/munged.pid"
}

queue_empty_within() {
    local i
    for i in $(seq $(($1 * 5))); do
        [[ -z $(squeue -h -o %i 2>/dev/null) ]] && return 0
        sleep 0.2
    done
    return 1
}

cmd_stop() {
    if alive "$STATE/slurmctld.pid" && command -v squeue >/dev/null; then
        # Job processes outlive slurmd, so end every user's jobs first.
        local user
        for user in $(squeue -h -o %u 2>/dev/null | sort -u); do
            scancel --user="$user" || true
        done
        # A job that ignores SIGTERM gets SIGKILL only after KillWait (30 s): kill its processes,
        # which slurmd lists by pid, ourselves.
        if ! queue_empty_within 5 && alive "$STATE/slurmd.pid"; then
            scontrol listpids 2>/dev/null | awk 'NR > 1 {print $1}' | xargs -r kill -KILL 2>/dev/null || true
            queue_empty_within 5 || log "jobs still in the queue: $(squeue -h -o %i | paste -sd' ')"
        fi
    fi
    stop_daemons
    log "stopped"
}

cmd_status() {
    if cluster_up; then
        echo "up"
        sinfo
    else
        echo "down"
        return 1
    fi
}

# Test sessions running side by side may all call start. The daemons must not inherit fd 9,
# or they would hold the lock for good.
locked() {
    mkdir -p "$STATE"
    exec 9> "$STATE/slurm_local.lock"
    flock 9
    "$@"
}

case ${1:-} in
    install) cmd_install ;;
    start) locked cmd_start ;;
    stop) locked cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
