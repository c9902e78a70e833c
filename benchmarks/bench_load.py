"""Time ``load_panel`` alone: parquet written by ``dte_dask.simulate.write_panel`` (issues 14/16/17/18:
the load every estimator pays before fitting), and optionally a pandas frame.

Each measurement runs in a fresh subprocess after a small warm-up load (lazy imports); it prints the
wall and CPU seconds (all threads) of the load, split into user and kernel time (on a VM that hands
freed memory back to its host, the kernel time is mostly paging in fresh memory), and the
subprocess's peak RSS. The machine may be shared: user seconds are the steadier figure. The panel
is written once under ``--scratch`` (default: a fresh temporary directory, removed at the end). The subprocesses import the
``dte_dask`` of the current directory (``python -c`` puts it first on ``sys.path``): run this from
the root of the checkout to measure; compare two versions by running it from each checkout.

    python benchmarks/bench_load.py --units 1000000 --periods 24 --repeats 3
    python benchmarks/bench_load.py --units 1000000 --periods 10 --source pandas
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import pandas as pd
import dte_dask
path, warm, source = sys.argv[1:4]
kw = dict(unit="unit", time="time", outcome="y", group="group")
dte_dask.load_panel(warm, **kw)
data = pd.read_parquet(path, columns=list(kw.values())) if source == "pandas" else path
r0 = resource.getrusage(resource.RUSAGE_SELF)
t, c = time.perf_counter(), time.process_time()
p = dte_dask.load_panel(data, **kw)
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"wall": time.perf_counter() - t, "cpu": time.process_time() - c, "units": p.n_units,
                  "user": r1.ru_utime - r0.ru_utime, "sys": r1.ru_stime - r0.ru_stime,
                  "minflt": r1.ru_minflt - r0.ru_minflt,
                  "periods": p.n_periods, "partitions": p.npartitions,
                  "peak_rss_gib": r1.ru_maxrss / 2**20}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--units", type=int, default=1_000_000)
    ap.add_argument("--periods", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--source", choices=("parquet", "pandas"), default="parquet")
    ap.add_argument("--scratch", type=Path, default=None)
    args = ap.parse_args()
    from dte_dask.simulate import write_panel

    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="bench-load-"))
    try:
        path = scratch / f"panel_{args.units}x{args.periods}"
        if not (path / "_dte_dask.json").exists():
            write_panel(path, args.units, args.periods, seed=0, overwrite=True)
        warm = scratch / "warm"
        if not (warm / "_dte_dask.json").exists():
            write_panel(warm, 2000, args.periods, seed=1, overwrite=True)
        for i in range(args.repeats):
            out = subprocess.run([sys.executable, "-c", CHILD, str(path), str(warm), args.source],
                                 check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(f"[{i + 1}/{args.repeats}] load_panel({args.source}) {r['units']:,} x {r['periods']}: "
                  f"{r['wall']:.2f} s wall, {r['cpu']:.2f} s cpu ({r['user']:.2f} user, {r['sys']:.2f} kernel, "
                  f"{r['minflt']:,} minor faults), {r['partitions']} partitions, "
                  f"peak RSS {r['peak_rss_gib']:.2f} GiB", flush=True)
    finally:
        if args.scratch is None:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
