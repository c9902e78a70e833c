"""The arithmetic a multiplier bootstrap cannot avoid, on this machine, against the parquet-read floor.

Every draw of a multiplier bootstrap is ``sum_i V_bi psi_i`` over all units: for ``n`` units, ``B``
draws and an influence matrix of width ``w`` that is ``n * B`` multipliers to generate and
``2 * n * B * w`` floating-point operations to apply them, whatever the task graph. This script
measures both kernels as dte_dask runs them (one RNG block of ``rng-block-size`` units times one
chunk of :data:`~dte_dask.core.multipliers.CHUNK` draws, single-threaded BLAS, float64) and scales
them to a job: the bootstrap's CPU seconds and, on ``--cores`` cores, its wall-time lower bound
(perfect parallel efficiency, no loading, no estimation). With ``--data`` it also reads the job's
columns with pyarrow (the floor of ``run_medical.py``) and prints the bound as a multiple of it.

    python benchmarks/bootstrap_floor.py --units 2800000 --draws 999 \
        --widths att_gt=120 event_study=25 stacked_did=17 [--shared-draws] [--data DATA_DIR --cold]

``--widths`` are the effective columns each estimator multiplies (``NAME=W``); ``--shared-draws``
counts the multipliers once for all estimators instead of once per estimator.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from dte_dask import config
from dte_dask.core.multipliers import CHUNK, multipliers


def _median_s(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(widths: dict[str, int], block: int, repeats: int) -> dict:
    """Seconds per (RNG block, chunk of draws): drawing the multipliers and each estimator's product."""
    rng = np.random.default_rng(0)
    with threadpool_limits(limits=1):
        draw = _median_s(lambda: multipliers(1, 0, 0, CHUNK, block, "rademacher"), repeats)
        V = multipliers(1, 0, 0, CHUNK, block, "rademacher")
        gemm = {}
        for name, w in widths.items():
            S = rng.standard_normal((block, w))
            gemm[name] = _median_s(lambda S=S: V @ S, repeats)
    return {"draw_s": draw, "gemm_s": gemm}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--units", type=int, default=2_800_000)
    ap.add_argument("--draws", type=int, default=999)
    ap.add_argument("--widths", nargs="+", default=["att_gt=120", "event_study=25", "stacked_did=17"],
                    metavar="NAME=W")
    ap.add_argument("--shared-draws", action="store_true", help="draw the multipliers once for all estimators")
    ap.add_argument("--cores", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--data", type=Path, default=None, help="parquet panel: also measure the read floor")
    ap.add_argument("--job", type=Path, default=Path(__file__).with_name("jobs") / "medical_policy.yaml")
    ap.add_argument("--cold", action="store_true", help="evict the files from the page cache before the read")
    a = ap.parse_args(argv)
    widths = {k: int(v) for k, v in (w.split("=", 1) for w in a.widths)}
    block = int(config.get("rng-block-size"))
    m = measure(widths, block, a.repeats)
    pairs = math.ceil(a.units / block) * (a.draws / CHUNK)  # (RNG block, chunk) products, last chunk pro rata
    n_draw_passes = 1 if a.shared_draws else len(widths)
    cpu_draw = pairs * m["draw_s"] * n_draw_passes
    cpu_gemm = {k: pairs * s for k, s in m["gemm_s"].items()}
    cpu = cpu_draw + sum(cpu_gemm.values())
    flops = sum(2.0 * a.units * a.draws * w for w in widths.values())
    print(f"{a.units:,} units x {a.draws} draws, RNG blocks of {block:,}, chunks of {CHUNK}; {a.cores} cores")
    print(f"per (block, chunk): multipliers {m['draw_s'] * 1e3:.2f} ms; products " +
          ", ".join(f"{k} (w={widths[k]}) {s * 1e3:.2f} ms" for k, s in m["gemm_s"].items()))
    print(f"multipliers: {n_draw_passes} pass(es), {cpu_draw:.1f} CPU s")
    for k, s in cpu_gemm.items():
        print(f"products {k:>14s}: {s:6.1f} CPU s  ({2.0 * a.units * a.draws * widths[k] / s / 1e9 if s else 0:.1f} "
              "GFlop/s per core)")
    print(f"bootstrap arithmetic: {cpu:.1f} CPU s, {flops / 1e12:.2f} TFlop; lower bound on {a.cores} cores: "
          f"{cpu / a.cores:.1f} s")
    if a.data is not None:
        sys.path.insert(0, str(Path(__file__).parent))
        from run_medical import job_columns, read_floor

        fl = read_floor(a.data, job_columns(a.job), a.cold)
        print(f"parquet-read floor: {fl['read_s']:.2f} s ({fl['rows']:,} rows); 6x the floor = "
              f"{6 * fl['read_s']:.1f} s; the bootstrap's lower bound alone = {cpu / a.cores / fl['read_s']:.1f}x "
              "the floor")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
