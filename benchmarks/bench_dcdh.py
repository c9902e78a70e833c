"""Benchmark ``did_multiplegt`` (issue 16): a multi-valued switching treatment on a large panel (time,
peak memory) and, in the same run, a smaller panel against moderndid's ``did_multiplegt`` (ratio).

    python benchmarks/bench_dcdh.py --units 1000000 --periods 24 --peer-units 100000

The large panel is written to a parquet directory in chunks of units (one file each, sorted, as
``dte-dask simulate`` writes) and read lazily from there: the driver never holds its long frame.
Peak memory is the process's peak RSS (``resource.getrusage``), measured after each stage; the load
average of the machine is printed with the figures, and the CPU time of the process during each fit
(all threads: a figure that a loaded machine inflates less than the wall time).
"""
from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
import warnings

import numpy as np
import pandas as pd


def panel(n: int, periods: int, seed: int = 0, first_id: int = 0) -> pd.DataFrame:
    """Baselines 0/1/2, one switch (up 1 or 2, or down 1) at a random period (a third never switch),
    some switching back; Y = unit + period effects + 0.5 D + noise; 1 % of outcomes missing."""
    rng = np.random.default_rng(seed)
    d0 = rng.integers(0, 3, n).astype(np.float64)
    F = np.where(rng.random(n) < 1 / 3, periods + 1, rng.integers(2, periods, n))
    step = rng.choice([-1.0, 1.0, 2.0], n)
    step[d0 + step < 0] = 1.0
    back = rng.integers(4, 2 * periods, n)
    t = np.arange(periods, dtype=np.int64)
    on = (t[None, :] >= F[:, None]) & (t[None, :] < F[:, None] + back[:, None])
    D = d0[:, None] + step[:, None] * on
    Y = rng.normal(size=(n, 1)) + 0.1 * t[None, :] + 0.5 * D + rng.normal(size=(n, periods))
    Y[rng.random((n, periods)) < 0.01] = np.nan
    return pd.DataFrame({"id": np.repeat(np.arange(first_id, first_id + n, dtype=np.int64), periods), "t": np.tile(t + 1, n),
                         "y": Y.ravel(), "d": D.ravel()})


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--units", type=int, default=1_000_000)
    ap.add_argument("--periods", type=int, default=24)
    ap.add_argument("--peer-units", type=int, default=100_000)
    ap.add_argument("--effects", type=int, default=5)
    ap.add_argument("--placebo", type=int, default=3)
    ap.add_argument("--npartitions", type=int, default=8)
    a = ap.parse_args()
    import dte_dask

    warnings.simplefilter("ignore")
    kw = dict(effects=a.effects, placebo=a.placebo)
    import moderndid as md

    # warm-up on a tiny panel: imports and first-call costs are left out of every timing
    tiny = panel(500, a.periods, seed=3)
    dte_dask.did_multiplegt(tiny, "y", "id", "t", "d", **kw)
    md.did_multiplegt(tiny, yname="y", idname="id", tname="t", dname="d", **kw)
    # the peer comparison first (its peak memory is then not counted in the large run's);
    # --peer-units 0 skips it, to measure the large run's own peak memory
    if a.peer_units:
        small = panel(a.peer_units, a.periods, seed=1)
        print(f"load average before dte_dask: {os.getloadavg()}")
        t0, c0 = time.perf_counter(), time.process_time()
        ours = dte_dask.did_multiplegt(small, "y", "id", "t", "d", npartitions=a.npartitions, **kw)
        t_ours, c_ours = time.perf_counter() - t0, time.process_time() - c0

        print(f"load average before moderndid: {os.getloadavg()}")
        t0 = time.perf_counter()
        ref = md.did_multiplegt(small, yname="y", idname="id", tname="t", dname="d", **kw)
        t_md = time.perf_counter() - t0
        diff = np.max(np.abs(ours.estimates[:a.effects] - ref.effects.estimates))
        print(f"peer panel {a.peer_units} units x {a.periods}: dte_dask {t_ours:.2f} s ({c_ours:.2f} s CPU), "
              f"moderndid (polars, "
              f"in-memory) {t_md:.2f} s, ratio {t_md / t_ours:.2f}x; max |estimate diff| {diff:.2e}")
    with tempfile.TemporaryDirectory() as tmp:
        chunk = 125_000
        for i, lo in enumerate(range(0, a.units, chunk)):
            part = panel(min(chunk, a.units - lo), a.periods, seed=100 + i, first_id=lo)
            part.to_parquet(os.path.join(tmp, f"part-{i:04d}.parquet"), index=False)
            del part
        base = peak_mib()
        print(f"load average before the large run: {os.getloadavg()}")
        t0, c0 = time.perf_counter(), time.process_time()
        res = dte_dask.did_multiplegt(tmp, "y", "id", "t", "d", npartitions=a.npartitions, **kw)
        t_big, c_big = time.perf_counter() - t0, time.process_time() - c0
    print(f"large panel {a.units} units x {a.periods} from parquet: {t_big:.2f} s ({c_big:.2f} s CPU); peak RSS "
          f"{peak_mib():.0f} MiB (before: {base:.0f} MiB); load average after {os.getloadavg()}")
    print(res.to_frame()[["horizon", "estimate", "se", "n_switchers"]].to_string(index=False))


if __name__ == "__main__":
    main()
