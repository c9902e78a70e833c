#!/usr/bin/env bash
# Simulator benchmark (issue 2): 1,000,000 units x 10 periods -> parquet directory.
# Usage: benchmarks/simulate_1m.sh [OUT_DIR]   (default: $TMPDIR/sim1m or /tmp/sim1m)
# Records wall time and peak RSS with GNU time (apt-get install time).
set -euo pipefail
OUT="${1:-${TMPDIR:-/tmp}/sim1m}"
/usr/bin/time -v dte-dask simulate --units 1000000 --periods 10 --out "$OUT" --overwrite
