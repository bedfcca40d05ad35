#!/usr/bin/env bash
# Installs (when missing), configures and starts a real single-node Slurm cluster on this
# machine for the Slurm executor's tests: munged, slurmctld and slurmd from Debian's packages,
# started directly (no systemd), node and controller on 127.0.0.1.
#
# The test cluster lives entirely in its own prefix (default ~/.cache/mipipe/slurm: config,
# munge key and socket, state, spool, logs, PID files) and on its own ports (16817, 16818), so
# it never reads or touches an existing Slurm or munge installation (/etc/slurm, /etc/munge,
# /var/spool/slurm*, their daemons). Clients find it through SLURM_CONF, which this script
# prints (`eval "$(scripts/start-slurm.sh env)"`) and scripts/test.sh exports.
# Idempotent: a running, correctly configured cluster is left alone. `stop` stops it (only its
# own daemons); `status` reports it; `env` prints the SLURM_CONF line.
#
# Knobs: MIPIPE_SLURM_PREFIX (the folder), SLURM_WARMUP=0 skips the warm-up job (the first job
# after slurmctld starts waits for the first scheduling pass, about 3 s).
set -euo pipefail

PREFIX=${MIPIPE_SLURM_PREFIX:-${MIPIPE_TOOLS:-$HOME/.cache/mipipe}/slurm}
CONF=$PREFIX/slurm.conf
STATE=$PREFIX/state
SPOOL=$PREFIX/spool
LOGS=$PREFIX/log
RUN=$PREFIX/run
MUNGE=$PREFIX/munge
SOCKET=$MUNGE/munge.socket
HOST=$(hostname -s)
export SLURM_CONF=$CONF

log() { echo "start-slurm: $*" >&2; }

# A PID file's process is alive unless missing or a zombie (PID 1 here reaps late).
alive() {
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] || return 1
  local state
  state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}

# Stops this cluster's own daemons (by their PID files in the prefix), nothing else.
stop_all() {
  for name in slurmd slurmctld munged; do
    if alive "$RUN/$name.pid"; then kill "$(cat "$RUN/$name.pid")" || true; fi
  done
  sleep 0.5
}

case "${1:-start}" in
  stop) stop_all; log "stopped"; exit 0 ;;
  env) echo "export SLURM_CONF=$CONF"; exit 0 ;;
  status)
    alive "$RUN/slurmctld.pid" && alive "$RUN/slurmd.pid" && sinfo -h -o '%T' | grep -qv down && { echo "slurm running"; exit 0; }
    echo "slurm not running"; exit 1 ;;
  start) ;;
  *) echo "usage: $0 [start|stop|status|env]" >&2; exit 2 ;;
esac

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null && command -v munged >/dev/null; then
    return
  fi
  log "installing slurmctld, slurmd, slurm-client and munge"
  export DEBIAN_FRONTEND=noninteractive
  # Keep package scripts from starting services: this image has no init system for them.
  local added_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    added_policy=1
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
  if [ "$added_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
}

write_config() {
  local cpus memory
  cpus=$(nproc)
  memory=2048
  mkdir -p "$PREFIX" "$STATE" "$SPOOL" "$LOGS" "$RUN"
  local wanted
  wanted=$(cat <<CONF
# Written by mipipe's scripts/start-slurm.sh
ClusterName=mipipe-test
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=16817
SlurmdPort=16818
SlurmUser=$(id -un)
AuthType=auth/munge
AuthInfo=socket=$SOCKET
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOGS/jobcomp.log
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=256
EnforcePartLimits=ALL
MinJobAge=3600
MailProg=/bin/true
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
)
  if [ "$(cat "$CONF" 2>/dev/null)" != "$wanted" ]; then
    log "writing $CONF"
    stop_all
    printf '%s\n' "$wanted" > "$CONF"
    # State from another cluster name makes slurmctld refuse to start.
    rm -rf "${STATE:?}"/*
  fi
}

start_daemons() {
  mkdir -p "$MUNGE"
  chmod 700 "$MUNGE"
  if [ ! -s "$MUNGE/munge.key" ]; then
    dd if=/dev/urandom of="$MUNGE/munge.key" bs=1024 count=1 status=none
    chmod 400 "$MUNGE/munge.key"
  fi
  if ! alive "$RUN/munged.pid"; then
    munged --force --socket="$SOCKET" --key-file="$MUNGE/munge.key" \
      --pid-file="$RUN/munged.pid" --log-file="$LOGS/munged.log" --seed-file="$MUNGE/munged.seed"
  fi
  if ! alive "$RUN/slurmctld.pid"; then
    slurmctld -i -f "$CONF"
  fi
  if ! alive "$RUN/slurmd.pid"; then
    slurmd -N "$HOST" -f "$CONF"
  fi
}

wait_ready() {
  for _ in $(seq 1 100); do
    if sinfo -h -o '%T' 2>/dev/null | grep -Eq '^(idle|mixed|allocated)'; then
      return 0
    fi
    sleep 0.2
  done
  log "the node did not come up; see $LOGS/slurmctld.log and $LOGS/slurmd.log"
  sinfo >&2 || true
  return 1
}

install_packages
write_config
start_daemons
wait_ready
if [ "${SLURM_WARMUP:-1}" = 1 ]; then
  sbatch --wait --quiet -o /dev/null --wrap true >/dev/null
fi
echo "slurm ready (export SLURM_CONF=$CONF)"
