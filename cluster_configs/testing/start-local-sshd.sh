#!/usr/bin/env bash
# start-local-sshd.sh -- private sshd on 127.0.0.1:2222 with throw-away host/user keys,
# for distributed.SSHCluster tests in CI.  No systemd, no PAM, no docker.
# Debian 12 (OpenSSH 9.2p1) tested.
#
# Adapted (verbatim logic) from the project's shared CI recipe 'start-local-sshd.sh'
# (recipes/ssh.md: private loopback sshd for distributed.SSHCluster, tested on Debian 12 / OpenSSH 9.2).
# Credit: the dte_dask CI recipes; see cluster_configs/testing/README.md for the pitfalls it handles.
# Used by .ci/services.sh; tests/test_real_clusters.py reads $LOCAL_SSHD_DIR/env.
#
# Usage (as root, or via sudo):
#   start-local-sshd.sh [start]    # idempotent; prints what it started
#   start-local-sshd.sh status
#   start-local-sshd.sh stop       # kills ONLY the sshd PID we recorded
#
# Env knobs (all optional):
#   LOCAL_SSHD_DIR=/tmp/local-sshd
#   LOCAL_SSHD_PORT=2222  LOCAL_SSHD_ADDR=127.0.0.1
#   LOCAL_SSHD_USER=<login user>   default: $SUDO_USER, else the current user
#   LOCAL_SSHD_INSTALL=1           apt-get install openssh-server if sshd is missing
#   LOCAL_SSHD_UNLOCK=1            if LUSER's /etc/shadow password starts with '!'
#                                  (useradd default = "locked"), set it to '*' - with
#                                  UsePAM no, sshd refuses even key logins for locked
#                                  accounts ("User X not allowed because account is locked")
#
# After start:  source "$LOCAL_SSHD_DIR/env"  ->  LOCAL_SSHD_{HOST,PORT,USER,KEY,KNOWN_HOSTS}
#               ssh -F "$LOCAL_SSHD_DIR/ssh_config" localci true
set -euo pipefail

D=${LOCAL_SSHD_DIR:-/tmp/local-sshd}
PORT=${LOCAL_SSHD_PORT:-2222}
ADDR=${LOCAL_SSHD_ADDR:-127.0.0.1}
LUSER=${LOCAL_SSHD_USER:-${SUDO_USER:-$(id -un)}}
INSTALL=${LOCAL_SSHD_INSTALL:-1}
UNLOCK=${LOCAL_SSHD_UNLOCK:-1}
U=$D/user                      # owned by LUSER: private key + authorized_keys
PIDS=$D/pids

log() { echo "[local-sshd] $*"; }
T0=$(date +%s.%N)
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }

alive() {   # alive NAME PID : running, not a zombie, comm matches
  local name=$1 pid=$2 st
  [[ -r /proc/$pid/stat ]] || return 1
  st=$(sed 's/.*) //' "/proc/$pid/stat" | cut -d' ' -f1)
  [[ $st != Z && $st != X ]] || return 1
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]]
}

probe() {   # can LUSER log in with the generated key?
  local cmd=(ssh -F "$D/ssh_config" -o ConnectTimeout=3 localci true)
  if [[ $(id -un) == "$LUSER" ]]; then "${cmd[@]}"; else runuser -u "$LUSER" -- "${cmd[@]}"; fi
}

stop() {
  if [[ -s $PIDS ]]; then
    while read -r name pid; do
      if alive "$name" "$pid"; then
        log "stopping $name pid $pid"; kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 40); do alive "$name" "$pid" || break; sleep 0.25; done
        if alive "$name" "$pid"; then log "SIGKILL $name $pid"; kill -KILL "$pid" 2>/dev/null || true; fi
      else
        log "$name pid $pid not running"
      fi
    done < "$PIDS"
    rm -f "$PIDS"
  else
    log "no pid file ($PIDS); nothing to stop"
  fi
}

status() {
  if [[ -s $PIDS ]]; then
    while read -r name pid; do
      if alive "$name" "$pid"; then log "$name pid $pid running"; else log "$name pid $pid DEAD"; fi
    done < "$PIDS"
  else
    log "no pid file"
  fi
}

start() {
  [[ $EUID == 0 ]] || { echo "must run as root (use sudo)" >&2; exit 1; }
  if [[ -s $PIDS ]] && alive sshd "$(awk '{print $2}' "$PIDS")" && probe 2>/dev/null; then
    log "already running"; status; return 0
  fi
  [[ -s $PIDS ]] && { log "stale previous start; cleaning up"; stop; }
  if [[ ! -x /usr/sbin/sshd ]] || ! command -v ssh >/dev/null; then
    [[ $INSTALL == 1 ]] || { log "sshd missing and LOCAL_SSHD_INSTALL=0"; exit 1; }
    log "installing openssh-server openssh-client (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends openssh-server openssh-client >/dev/null
  fi
  id "$LUSER" >/dev/null
  if [[ $(getent shadow "$LUSER" | cut -d: -f2) == '!'* ]]; then
    if [[ $UNLOCK == 1 ]]; then
      usermod -p '*' "$LUSER"; log "account $LUSER was locked ('!'); set password field to '*' (no password, key login allowed)"
    else
      log "WARNING: account $LUSER is locked; sshd (UsePAM no) will refuse it. Set LOCAL_SSHD_UNLOCK=1"
    fi
  fi
  install -d -m 0711 "$D"
  install -d -m 0700 -o "$LUSER" "$U"
  [[ -s $D/host_ed25519 ]] || ssh-keygen -q -t ed25519 -N '' -C localci-host -f "$D/host_ed25519"
  if [[ ! -s $U/id_ed25519 ]]; then
    ssh-keygen -q -t ed25519 -N '' -C localci-user -f "$U/id_ed25519"
  fi
  cp "$U/id_ed25519.pub" "$U/authorized_keys"
  chown "$LUSER" "$U"/id_ed25519 "$U"/id_ed25519.pub "$U"/authorized_keys
  chmod 600 "$U/id_ed25519" "$U/authorized_keys"
  echo "[$ADDR]:$PORT $(cut -d' ' -f1,2 "$D/host_ed25519.pub")" > "$D/known_hosts"
  chmod 644 "$D/known_hosts"

  # StrictModes no: the key files live under /tmp (mode 1777), and StrictModes
  #   rejects them: "Authentication refused: bad ownership or modes for directory /tmp"
  # UsePAM no: no PAM stack needed; a fixed AuthorizedKeysFile path is used for every user
  cat > "$D/sshd_config" <<EOF
# generated by start-local-sshd.sh
ListenAddress $ADDR
Port $PORT
HostKey $D/host_ed25519
PidFile $D/sshd.pid
AuthorizedKeysFile $U/authorized_keys
AllowUsers $LUSER
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
LogLevel VERBOSE
Subsystem sftp internal-sftp
EOF
  cat > "$D/ssh_config" <<EOF
Host localci
  HostName $ADDR
  Port $PORT
  User $LUSER
  IdentityFile $U/id_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile $D/known_hosts
  StrictHostKeyChecking yes
  BatchMode yes
  LogLevel ERROR
EOF
  chmod 644 "$D/ssh_config"
  cat > "$D/env" <<EOF
export LOCAL_SSHD_HOST=$ADDR LOCAL_SSHD_PORT=$PORT LOCAL_SSHD_USER=$LUSER
export LOCAL_SSHD_KEY=$U/id_ed25519 LOCAL_SSHD_KNOWN_HOSTS=$D/known_hosts
EOF
  # privilege-separation dir: normally created by systemd/tmpfiles; without it sshd
  # exits with "Missing privilege separation directory: /run/sshd"
  install -d -m 0755 /run/sshd
  /usr/sbin/sshd -t -f "$D/sshd_config"
  rm -f "$D/sshd.pid"
  /usr/sbin/sshd -f "$D/sshd_config" -E "$D/sshd.log"   # absolute path required (re-exec)
  for _ in $(seq 1 50); do [[ -s $D/sshd.pid ]] && break; sleep 0.1; done
  [[ -s $D/sshd.pid ]] || { log "sshd did not start"; tail -20 "$D/sshd.log"; exit 1; }
  echo "sshd $(cat "$D/sshd.pid")" > "$PIDS"
  log "started sshd pid $(cat "$D/sshd.pid") on $ADDR:$PORT for user $LUSER"
  for _ in $(seq 1 50); do probe 2>/dev/null && break; sleep 0.1; done
  probe || { log "ssh probe failed"; tail -20 "$D/sshd.log"; exit 1; }
  log "ssh -F $D/ssh_config localci true: ok; ready in $(elapsed)s"
  log "key=$U/id_ed25519 known_hosts=$D/known_hosts; 'source $D/env'"
}

case ${1:-start} in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac
