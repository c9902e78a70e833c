#!/usr/bin/env bash
# stop-local-slurm.sh -- scancel all jobs, then kill only the PIDs recorded by start-local-slurm.sh
# Adapted from the project's shared CI recipe of the same name (credit: dte_dask CI recipes).
exec "$(dirname "$0")/start-local-slurm.sh" stop
