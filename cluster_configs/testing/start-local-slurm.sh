#!/usr/bin/env bash
# start-local-slurm.sh -- single-node Slurm (munged + slurmctld + slurmd) for CI,
# no systemd, no cgroups, no docker.  Debian 12 (slurm-wlm 22.05) tested.
#
# Adapted (verbatim logic) from the project's shared CI recipe 'start-local-slurm.sh'
# (recipes/slurm.md: single-node Slurm for CI, tested on Debian 12 / slurm-wlm 22.05).
# Credit: the dte_dask CI recipes; see cluster_configs/testing/README.md for the pitfalls it handles.
# Used by .ci/services.sh; tests/test_real_clusters.py reads $LOCAL_SLURM_DIR/env.
#
# Usage (as root, or via sudo):
#   start-local-slurm.sh [start]   # idempotent; prints what it started
#   start-local-slurm.sh status
#   start-local-slurm.sh stop      # scancel all jobs, kill ONLY the PIDs we recorded
#
# Env knobs (all optional):
#   LOCAL_SLURM_DIR=/tmp/local-slurm   state/spool/logs/conf/pid file live here
#   LOCAL_SLURM_CTLD_PORT=6817 LOCAL_SLURM_SLURMD_PORT=6818
#   LOCAL_SLURM_PARTITION=debug
#   LOCAL_SLURM_INSTALL=1      apt-get install the packages if missing
#   LOCAL_SLURM_LINK_ETC=1     symlink /etc/slurm/slurm.conf -> our conf (only if
#                              no regular file is there); otherwise export SLURM_CONF
#   LOCAL_SLURM_SMOKE=1        run `srun hostname` + an `sbatch --wrap hostname` after start
#   LOCAL_SLURM_TIMEOUT=60     seconds to wait for the node to become idle
#
# After start:  source "$LOCAL_SLURM_DIR/env"   (exports SLURM_CONF)
set -euo pipefail

D=${LOCAL_SLURM_DIR:-/tmp/local-slurm}
CTLD_PORT=${LOCAL_SLURM_CTLD_PORT:-6817}
SLURMD_PORT=${LOCAL_SLURM_SLURMD_PORT:-6818}
PARTITION=${LOCAL_SLURM_PARTITION:-debug}
INSTALL=${LOCAL_SLURM_INSTALL:-1}
LINK_ETC=${LOCAL_SLURM_LINK_ETC:-1}
SMOKE=${LOCAL_SLURM_SMOKE:-1}
TIMEOUT=${LOCAL_SLURM_TIMEOUT:-60}
CONF=$D/slurm.conf
PIDS=$D/pids            # lines: "<name> <pid>"  (only processes WE started)
ETC_CONF=/etc/slurm/slurm.conf

log() { echo "[local-slurm] $*"; }
T0=$(date +%s.%N)
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }

# alive NAME PID: running (not zombie) and /proc/PID/comm == NAME
alive() {
  local name=$1 pid=$2 st
  [[ -r /proc/$pid/stat ]] || return 1
  st=$(sed 's/.*) //' "/proc/$pid/stat" | cut -d' ' -f1)
  [[ $st != Z && $st != X ]] || return 1
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]]
}

all_recorded_alive() {
  [[ -s $PIDS ]] || return 1
  local name pid
  while read -r name pid; do alive "$name" "$pid" || return 1; done < "$PIDS"
}

node_state() { SLURM_CONF=$CONF sinfo -h -N -o '%T' 2>/dev/null | head -1; }

stop() {
  # only talk to slurmctld if OUR slurmctld is alive (squeue against a dead
  # controller retries for ~10 s before failing)
  local cpid
  cpid=$(awk '$1=="slurmctld"{print $2}' "$PIDS" 2>/dev/null || true)
  if [[ -n $cpid ]] && alive slurmctld "$cpid"; then
    local jobs
    jobs=$(SLURM_CONF=$CONF squeue -h -o '%i' 2>/dev/null || true)
    if [[ -n $jobs ]]; then
      # jobs outlive slurmd (slurmstepd is reparented to init); if our slurmd died,
      # restart it so it re-attaches to the running steps and scancel can kill them
      local dpid
      dpid=$(awk '$1=="slurmd"{print $2}' "$PIDS")
      if [[ -n $dpid ]] && ! alive slurmd "$dpid"; then
        rm -f "$D/slurmd.pid"; slurmd -f "$CONF"
        for _ in $(seq 1 50); do [[ -s $D/slurmd.pid ]] && break; sleep 0.1; done
        sed -i "s/^slurmd .*/slurmd $(cat "$D/slurmd.pid")/" "$PIDS"
        log "restarted slurmd (pid $(cat "$D/slurmd.pid")) to cancel running jobs"; sleep 1
      fi
      log "scancel $(echo $jobs)"
      SLURM_CONF=$CONF scancel $jobs || true
      for _ in $(seq 1 30); do
        [[ -z $(SLURM_CONF=$CONF squeue -h -o '%i' 2>/dev/null) ]] && break; sleep 0.5
      done
    fi
  fi
  if [[ -s $PIDS ]]; then
    # reverse order: slurmd, slurmctld, munged
    tac "$PIDS" | while read -r name pid; do
      if alive "$name" "$pid"; then
        log "stopping $name pid $pid"; kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 40); do alive "$name" "$pid" || break; sleep 0.25; done
        if alive "$name" "$pid"; then log "SIGKILL $name $pid"; kill -KILL "$pid" 2>/dev/null || true; fi
      else
        log "$name pid $pid not running"
      fi
    done
    rm -f "$PIDS"
  else
    log "no pid file ($PIDS); nothing to stop"
  fi
  if [[ -L $ETC_CONF && $(readlink "$ETC_CONF") == "$CONF" ]]; then
    rm -f "$ETC_CONF"; log "removed symlink $ETC_CONF"
  fi
}

status() {
  if [[ -s $PIDS ]]; then
    while read -r name pid; do
      if alive "$name" "$pid"; then s=running; else s=DEAD; fi
      log "$name pid $pid $s"
    done < "$PIDS"
  else
    log "no pid file"
  fi
  SLURM_CONF=$CONF sinfo 2>&1 || true
}

install_pkgs() {
  local missing=0 b
  for b in munged slurmctld slurmd sinfo srun sbatch; do command -v "$b" >/dev/null || missing=1; done
  [[ $missing == 0 ]] && return 0
  [[ $INSTALL == 1 ]] || { log "slurm/munge binaries missing and LOCAL_SLURM_INSTALL=0"; exit 1; }
  log "installing slurmctld slurmd slurm-client munge (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # postinst tries to start services; without systemd invoke-rc.d just says "denied"/"runlevel" - harmless
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
}

start_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "munged already running (not started by us); reusing it"
    return 0
  fi
  if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating /etc/munge/munge.key"
    install -d -o munge -g munge -m 0700 /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
  fi
  # no systemd => nobody creates /run/munge; munged must run as the key owner (munge),
  # running it as root fails with "Keyfile is insecure ... should be owned by UID 0"
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
  rm -f /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 1 40); do [[ -s /run/munge/munged.pid ]] && break; sleep 0.1; done
  local pid; pid=$(cat /run/munge/munged.pid)
  echo "munged $pid" >> "$PIDS"
  munge -n | unmunge >/dev/null
  log "started munged pid $pid"
}

write_conf() {
  local H line
  H=$(hostname -s)
  # exact hardware line as slurmd sees it (CPUs, Boards, Sockets, Cores, Threads, RealMemory);
  # configuring MORE memory than this makes the node 'inval' ("Low RealMemory")
  line=$(slurmd -C | head -1)
  # DefMemPerCPU: without it a job that does not pass --mem gets the whole node's memory
  # under CR_Core_Memory, so only one such job could run at a time
  cat > "$CONF" <<EOF
# generated by start-local-slurm.sh
ClusterName=localci
SlurmctldHost=$H(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
# --- no cgroups / no systemd ---
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
# --- scheduling ---
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=512
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=30
KillWait=5
Waittime=0
$line NodeAddr=127.0.0.1 NodeHostname=$H State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  echo "export SLURM_CONF=$CONF" > "$D/env"
  log "wrote $CONF ($line)"
}

start() {
  [[ $EUID == 0 ]] || { echo "must run as root (use sudo)" >&2; exit 1; }
  if all_recorded_alive && [[ $(node_state) =~ ^(idle|mixed|allocated)$ ]]; then
    log "already running:"; status; return 0
  fi
  [[ -s $PIDS ]] && { log "stale/partial previous start; cleaning up"; stop; }
  install_pkgs
  mkdir -p "$D"
  rm -rf "$D/state" "$D/spool"; mkdir -p "$D/state" "$D/spool" "$D/log"
  : > "$PIDS"
  start_munge
  write_conf
  if [[ $LINK_ETC == 1 ]]; then
    if [[ ! -e $ETC_CONF || -L $ETC_CONF ]]; then
      mkdir -p /etc/slurm; ln -sfn "$CONF" "$ETC_CONF"; log "linked $ETC_CONF -> $CONF"
    else
      log "NOTE: $ETC_CONF is a regular file; left alone. Use: source $D/env"
    fi
  fi
  rm -f "$D/slurmctld.pid" "$D/slurmd.pid"
  slurmctld -f "$CONF"          # daemonizes; pid -> SlurmctldPidFile
  for _ in $(seq 1 50); do [[ -s $D/slurmctld.pid ]] && break; sleep 0.1; done
  [[ -s $D/slurmctld.pid ]] || { log "slurmctld did not start"; tail -20 "$D/log/slurmctld.log"; exit 1; }
  echo "slurmctld $(cat "$D/slurmctld.pid")" >> "$PIDS"
  log "started slurmctld pid $(cat "$D/slurmctld.pid") (port $CTLD_PORT)"
  slurmd -f "$CONF"
  for _ in $(seq 1 50); do [[ -s $D/slurmd.pid ]] && break; sleep 0.1; done
  [[ -s $D/slurmd.pid ]] || { log "slurmd did not start"; tail -20 "$D/log/slurmd.log"; exit 1; }
  echo "slurmd $(cat "$D/slurmd.pid")" >> "$PIDS"
  log "started slurmd pid $(cat "$D/slurmd.pid") (port $SLURMD_PORT)"
  local s="" i
  for ((i = 0; i < TIMEOUT * 4; i++)); do
    s=$(node_state); [[ $s == idle ]] && break; sleep 0.25
  done
  if [[ $s != idle ]]; then
    log "node not idle after ${TIMEOUT}s (state='$s')"; SLURM_CONF=$CONF sinfo -N -o '%N %T %E' || true
    tail -20 "$D/log/slurmctld.log" "$D/log/slurmd.log" || true
    exit 1
  fi
  log "node $(hostname -s) idle after $(elapsed)s"
  if [[ $SMOKE == 1 ]]; then
    (cd "$D" && SLURM_CONF=$CONF srun -t 1 hostname | sed 's/^/[local-slurm] srun: /')
    # (sbatch --wait polls slowly - up to ~10 s extra - so poll squeue ourselves)
    local jid
    jid=$(cd "$D" && SLURM_CONF=$CONF sbatch --parsable -t 1 -o "$D/log/smoke-%j.out" --wrap hostname)
    for ((i = 0; i < TIMEOUT * 5; i++)); do
      [[ -z $(SLURM_CONF=$CONF squeue -h -j "$jid" 2>/dev/null) ]] && break; sleep 0.2
    done
    [[ -s $D/log/smoke-$jid.out ]] || { log "sbatch smoke job $jid produced no output"; exit 1; }
    log "sbatch job $jid ok: $(tail -1 "$D/log/smoke-$jid.out")"
  fi
  log "ready in $(elapsed)s; PIDs in $PIDS; 'source $D/env' for SLURM_CONF"
}

case ${1:-start} in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac
