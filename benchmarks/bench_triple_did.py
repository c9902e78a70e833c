"""Benchmark triple differences: ``dte_dask.triple_did`` against moderndid's ``ddd``.

The panel is moderndid's own staggered DDD generator (``gen_ddd_mult_periods``: cohorts 2 and 3
plus never treated, two partitions, three periods, four covariates), cached as parquet under
``benchmarks/_data/``. Every measurement runs in a fresh subprocess that reads the panel and
imports its tool before the clock starts and times the ATT(g,t) fit (dr, covariates,
never-treated controls, universal base, analytic SEs, no bootstrap). Peak memory is the
subprocess's ``ru_maxrss`` (it includes the panel and the imports).

Tools: ``dte_dask`` (local threaded scheduler), ``moderndid`` (its numpy backend, ``n_jobs=1``)
and ``moderndid-jobs`` (``n_jobs=-1``: every core for the cells).

Example::

    python benchmarks/bench_triple_did.py --units 10000 100000 --markdown
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(__file__).parent / "_data"
COVS = ["cov1", "cov2", "cov3", "cov4"]

CHILD = r"""
import json, resource, sys, time, warnings
warnings.simplefilter("ignore")
import pandas as pd
tool, path = sys.argv[1], sys.argv[2]
df = pd.read_parquet(path)
covs = ["cov1", "cov2", "cov3", "cov4"]
if tool == "dte_dask":
    import dte_dask
    t0 = time.perf_counter()
    r = dte_dask.triple_did(df, outcome="y", unit="id", time="time", group="group", partition="partition",
                            covariates=covs, bootstrap=False)
    att = [float(a) for a in r.att]
else:
    import polars as pl
    from moderndid import ddd
    data = pl.from_pandas(df)
    t0 = time.perf_counter()
    m = ddd(data, yname="y", tname="time", idname="id", gname="group", pname="partition",
            xformla="~" + "+".join(covs), boot=False, n_jobs=-1 if tool == "moderndid-jobs" else 1)
    att = [float(a) for a in m.att]
secs = time.perf_counter() - t0
print(json.dumps({"seconds": secs, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "att": att}))
"""


def panel(n: int) -> Path:
    path = DATA / f"ddd_{n}.parquet"
    if not path.exists():
        from moderndid.core.data import gen_ddd_mult_periods

        DATA.mkdir(exist_ok=True)
        gen_ddd_mult_periods(n=n, dgp_type=1, random_state=0)["data"].to_pandas().to_parquet(path)
    return path


def measure(tool: str, path: Path, timeout: float) -> dict:
    t0 = time.perf_counter()
    try:
        out = subprocess.run([sys.executable, "-c", CHILD, tool, str(path)], capture_output=True, text=True,
                             timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    except subprocess.CalledProcessError as e:
        return {"error": e.stderr.strip().splitlines()[-1] if e.stderr.strip() else f"exit {e.returncode}"}
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["wall"] = time.perf_counter() - t0
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--units", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--tools", nargs="+", default=["dte_dask", "moderndid", "moderndid-jobs"])
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--markdown", action="store_true")
    a = ap.parse_args()
    rows = []
    for n in a.units:
        path = panel(n)
        ref = None
        for tool in a.tools:
            r = measure(tool, path, a.timeout)
            if "att" in r:
                ref = r["att"] if ref is None else ref
                r["max_att_diff"] = max(abs(x - y) for x, y in zip(r["att"], ref))
            rows.append({"units": n, "tool": tool, **{k: v for k, v in r.items() if k != "att"}})
            print(json.dumps(rows[-1]), flush=True)
    if a.markdown:
        print("\n| units x periods | tool | fit (s) | peak RSS (MiB) | max abs ATT diff vs first tool |")
        print("|---|---|---:|---:|---:|")
        for r in rows:
            if "error" in r:
                print(f"| {r['units']:,} x 3 | {r['tool']} | {r['error']} | | |")
            else:
                print(f"| {r['units']:,} x 3 | {r['tool']} | {r['seconds']:.2f} | {r['peak_mib']:.0f} | "
                      f"{r['max_att_diff']:.1e} |")


if __name__ == "__main__":
    main()
