#!/usr/bin/env bash
# .ci/services.sh -- start (or stop) the services the real-cluster tests need:
#   * a single-node Slurm (munged + slurmctld + slurmd)        -> tests marked `slurm`
#   * a private sshd on 127.0.0.1 with a throw-away key          -> tests marked `ssh`
# Idempotent: running it again while the services are up only checks them.
# A FRESH Debian/Ubuntu machine works: missing apt packages (slurm, munge, openssh, numactl,
# openssl) and Python packages (dask-jobqueue, asyncssh, cryptography) are installed first.
#
# Usage:   .ci/services.sh [start|stop|status]        (root, or a user with sudo)
# Knobs:   DTE_SERVICES="slurm ssh"   which services to handle (default both)
#          DTE_SERVICES_INSTALL=1     install missing packages (0: fail instead)
#          PYTHON=python              interpreter whose site-packages get the pip packages
#          LOCAL_SLURM_DIR / LOCAL_SSHD_DIR / LOCAL_SSHD_PORT ...  see cluster_configs/testing/*.sh
# After start the tests find the services on their own (they read $LOCAL_SLURM_DIR/env and
# $LOCAL_SSHD_DIR/env, default /tmp/local-slurm and /tmp/local-sshd); for a shell:
#          source /tmp/local-slurm/env; source /tmp/local-sshd/env
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
TESTING=$ROOT/cluster_configs/testing
ACTION=${1:-start}
SERVICES=${DTE_SERVICES:-slurm ssh}
INSTALL=${DTE_SERVICES_INSTALL:-1}
PY=${PYTHON:-python}
command -v "$PY" >/dev/null || PY=python3

log() { echo "[services] $*"; }
has() { [[ " $SERVICES " == *" $1 "* ]]; }
# daemons live in /usr/sbin, which is not on a normal user's PATH
have() { command -v "$1" >/dev/null 2>&1 || [[ -x /usr/sbin/$1 || -x /sbin/$1 ]]; }

SUDO=()
if [[ $EUID != 0 ]]; then
  command -v sudo >/dev/null || { log "needs root or sudo"; exit 1; }
  SUDO=(sudo -E)
fi

install_apt() {
  local pkgs=()
  if has slurm; then
    have munged || pkgs+=(munge)
    have slurmctld || pkgs+=(slurmctld)
    have slurmd || pkgs+=(slurmd)
    have sbatch || pkgs+=(slurm-client)
  fi
  if has ssh; then
    [[ -x /usr/sbin/sshd ]] || pkgs+=(openssh-server)
    { have ssh && have ssh-keygen; } || pkgs+=(openssh-client)
  fi
  have numactl || pkgs+=(numactl)
  have openssl || pkgs+=(openssl)
  [[ ${#pkgs[@]} == 0 ]] && return 0
  [[ $INSTALL == 1 ]] || { log "missing packages ${pkgs[*]} and DTE_SERVICES_INSTALL=0"; exit 1; }
  command -v apt-get >/dev/null || { log "missing ${pkgs[*]} and no apt-get; install them yourself"; exit 1; }
  log "apt-get install ${pkgs[*]}"
  # the postinst scripts try to start services; without systemd that prints
  # "policy-rc.d denied execution of start" -- harmless, we start the daemons ourselves
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
}

install_pip() {
  local want=() mod spec
  for pair in "dask_jobqueue:dask-jobqueue>=0.8" "asyncssh:asyncssh>=2.14" \
              "cryptography:cryptography>=41"; do
    mod=${pair%%:*}; spec=${pair#*:}
    "$PY" -c "import $mod" 2>/dev/null || want+=("$spec")
  done
  [[ ${#want[@]} == 0 ]] && return 0
  [[ $INSTALL == 1 ]] || { log "missing python packages ${want[*]} and DTE_SERVICES_INSTALL=0"; exit 1; }
  log "pip install ${want[*]}"
  "$PY" -m pip install -q "${want[@]}"
}

case $ACTION in
  start)
    install_apt
    install_pip
    if has slurm; then "${SUDO[@]}" bash "$TESTING/start-local-slurm.sh" start; fi
    if has ssh; then "${SUDO[@]}" bash "$TESTING/start-local-sshd.sh" start; fi
    log "ready: $SERVICES"
    ;;
  stop)
    if has slurm; then "${SUDO[@]}" bash "$TESTING/start-local-slurm.sh" stop || true; fi
    if has ssh; then "${SUDO[@]}" bash "$TESTING/start-local-sshd.sh" stop || true; fi
    ;;
  status)
    if has slurm; then "${SUDO[@]}" bash "$TESTING/start-local-slurm.sh" status || true; fi
    if has ssh; then "${SUDO[@]}" bash "$TESTING/start-local-sshd.sh" status || true; fi
    ;;
  *) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac
