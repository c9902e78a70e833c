"""The arithmetic a multiplier bootstrap cannot avoid, on this machine, against the parquet-read floor.

Every draw of a multiplier bootstrap is ``sum_i V_bi psi_i`` over all units: for ``n`` units, ``B``
draws and an influence matrix of width ``w``. Two ways to compute it are measured per RNG block of
``rng-block-size`` units and scaled to a job (its CPU seconds and, on ``--cores`` cores, its
wall-time lower bound: perfect parallel efficiency, no loading, no estimation):

- dense: float64 multipliers, one chunk of :data:`~dte_dask.core.multipliers.CHUNK` draws at a
  time, times psi (single-threaded BLAS): ``n * B`` multipliers and ``2 * n * B * w`` flops;
- bits (what dte_dask runs for Rademacher weights): the stream's random bytes, all draws of a block
  at once, and :func:`dte_dask.inference.signs.signed_sums` (tables of the 256 signed sums of 8
  units, one table row added per draw and byte: ``(256 + B) * w * n / 8`` additions).

With ``--data`` it also reads the job's columns with pyarrow (the floor of ``run_medical.py``) and
prints the bounds as multiples of it.

    python benchmarks/bootstrap_floor.py --units 2800000 --draws 999 \
        --widths att_gt=120 event_study=25 stacked_did=17 [--shared-draws] [--data DATA_DIR --cold]

``--widths`` are the effective columns each estimator multiplies (``NAME=W``); ``--shared-draws``
counts the multipliers once for all estimators instead of once per estimator.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from dte_dask import config
from dte_dask.core.multipliers import CHUNK, multipliers, rademacher_bits
from dte_dask.inference.signs import SignBits


def _median_s(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(widths: dict[str, int], block: int, draws: int, repeats: int) -> dict:
    """Seconds per RNG block: dense (per chunk of draws, scaled to ``draws``) and from the bits."""
    rng = np.random.default_rng(0)
    chunks = draws / CHUNK
    with threadpool_limits(limits=1):
        draw = _median_s(lambda: multipliers(1, 0, 0, CHUNK, block, "rademacher"), repeats) * chunks
        V = multipliers(1, 0, 0, CHUNK, block, "rademacher")
        bits_draw = _median_s(lambda: rademacher_bits(1, 0, draws, block), repeats)
        packed, lead = rademacher_bits(1, 0, draws, block)
        gemm, bits = {}, {}
        for name, w in widths.items():
            S = rng.standard_normal((block, w))
            gemm[name] = _median_s(lambda S=S: V @ S, repeats) * chunks
            bits[name] = _median_s(lambda S=S: SignBits(packed, lead).matmul(0, block, S), max(3, repeats // 3))
    return {"dense": (draw, gemm), "bits": (bits_draw, bits)}


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
    m = measure(widths, block, a.draws, a.repeats)
    n_blocks = a.units / block
    n_draw_passes = 1 if a.shared_draws else len(widths)
    print(f"{a.units:,} units x {a.draws} draws, RNG blocks of {block:,}; {a.cores} cores; "
          f"multipliers drawn {n_draw_passes} time(s)")
    bound = {}
    for kind, (draw_s, prod_s) in m.items():
        cpu_draw = n_blocks * draw_s * n_draw_passes
        cpu_prod = {k: n_blocks * s for k, s in prod_s.items()}
        cpu = cpu_draw + sum(cpu_prod.values())
        bound[kind] = cpu / a.cores
        print(f"{kind:>5s}: multipliers {cpu_draw:5.1f} CPU s; products " +
              ", ".join(f"{k} (w={widths[k]}) {s:.1f}" for k, s in cpu_prod.items()) +
              f" CPU s; total {cpu:.1f} CPU s, lower bound on {a.cores} cores {bound[kind]:.1f} s")
    print(f"bits / dense: {bound['bits'] / bound['dense']:.2f}x the time")
    if a.data is not None:
        sys.path.insert(0, str(Path(__file__).parent))
        from run_medical import job_columns, read_floor

        fl = read_floor(a.data, job_columns(a.job), a.cold)
        print(f"parquet-read floor: {fl['read_s']:.2f} s ({fl['rows']:,} rows); 6x the floor = "
              f"{6 * fl['read_s']:.1f} s; the bootstrap's lower bound alone = "
              + ", ".join(f"{bound[k] / fl['read_s']:.1f}x ({k})" for k in bound) + " the floor")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
