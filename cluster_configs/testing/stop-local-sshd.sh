#!/usr/bin/env bash
# stop-local-sshd.sh -- kill only the sshd PID recorded by start-local-sshd.sh
# Adapted from the project's shared CI recipe of the same name (credit: dte_dask CI recipes).
exec "$(dirname "$0")/start-local-sshd.sh" stop
