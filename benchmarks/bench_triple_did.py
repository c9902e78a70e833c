"""Benchmark triple differences: ``dte_dask.triple_did`` against moderndid's ``ddd``, and at scale.

``--units``: moderndid's own staggered DDD generator (``gen_ddd_mult_periods``: cohorts 2 and 3
plus never treated, two partitions, three periods, four covariates), cached as parquet under
``benchmarks/_data/``. Every measurement runs in a fresh subprocess that reads the panel and
imports its tool (``dte_dask.triple_did`` itself, so the lazy import is done) before the clock
starts and times the ATT(g,t) fit (dr, covariates, never-treated controls, universal base,
analytic SEs, no bootstrap). Tools: ``dte_dask`` (local threaded scheduler), ``moderndid`` (its
numpy backend, ``n_jobs=1``) and ``moderndid-jobs`` (``n_jobs=-1``: every core for the cells); the
table gives each moderndid figure divided by dte_dask's from the same run.

``--big N T``: an N-unit x T-period DDD simulated here with known effects (cohorts at T/4, T/2,
3T/4 plus never treated, eligibility depending on a covariate, four time-invariant covariates
with covariate-specific trends, so only conditional parallel trends hold; ATT(g,t) = 1 + 0.1 (t - g)
for eligible treated units from g on), written as unit-sorted parquet files that
``triple_did`` reads itself; the clock covers load + fit (dr, analytic SEs, no bootstrap).

``cpu_fit`` in the JSON lines is the CPU time of the timed fit (all threads of the subprocess) and
``cpu_total`` that of the whole subprocess (imports and data included): on a shared machine they
move less with the other jobs than the wall-clock seconds.

Peak memory: the largest resident set of the subprocess and all its children, polled every
50 ms, and at least the subprocess's own ``ru_maxrss`` (it includes the data and the imports).

Examples::

    python benchmarks/bench_triple_did.py --units 100000 --markdown
    python benchmarks/bench_triple_did.py --units --big 1000000 24 --markdown
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _measure import tree_rss

DATA = Path(__file__).parent / "_data"

CHILD = r"""
import json, resource, sys, time, warnings
warnings.simplefilter("ignore")
tool, path = sys.argv[1], sys.argv[2]
covs = ["cov1", "cov2", "cov3", "cov4"]
kw = dict(outcome="y", unit="id", time="time", group="group", partition="partition", covariates=covs)
if tool == "dte_dask-big":
    import dte_dask
    fit = dte_dask.triple_did  # the lazy import, before the clock
    t0, c0 = time.perf_counter(), time.process_time()
    r = fit(path, **kw, bootstrap=False)
    out = {"att": [float(a) for a in r.att], "g": [float(g) for g in r.group], "t": [float(t) for t in r.time],
           "load": r.timings["load"], "estimate": r.timings["estimate"]}
else:
    import pandas as pd
    df = pd.read_parquet(path)
    if tool == "dte_dask":
        import dte_dask
        fit = dte_dask.triple_did
        t0, c0 = time.perf_counter(), time.process_time()
        r = fit(df, **kw, bootstrap=False)
        out = {"att": [float(a) for a in r.att]}
    else:
        import polars as pl
        from moderndid import ddd
        data = pl.from_pandas(df)
        t0, c0 = time.perf_counter(), time.process_time()
        m = ddd(data, yname="y", tname="time", idname="id", gname="group", pname="partition",
                xformla="~" + "+".join(covs), boot=False, n_jobs=-1 if tool == "moderndid-jobs" else 1)
        out = {"att": [float(a) for a in m.att]}
out["seconds"], out["cpu_fit"] = time.perf_counter() - t0, time.process_time() - c0
ru = resource.getrusage(resource.RUSAGE_SELF)
out["ru_maxrss_mib"] = ru.ru_maxrss / 1024
out["cpu_total"] = ru.ru_utime + ru.ru_stime  # whole process, imports and data included
print(json.dumps(out))
"""


def panel(n: int) -> Path:
    path = DATA / f"ddd_{n}.parquet"
    if not path.exists():
        from moderndid.core.data import gen_ddd_mult_periods

        DATA.mkdir(exist_ok=True)
        gen_ddd_mult_periods(n=n, dgp_type=1, random_state=0)["data"].to_pandas().to_parquet(path)
    return path


def big_cohorts(T: int) -> list[int]:
    return [T // 4, T // 2, 3 * T // 4]


def big_panel(n: int, T: int, chunk: int = 62_500) -> Path:
    """A DDD panel with known ATT(g,t) = 1 + 0.1 (t - g), as unit-sorted parquet files."""
    import pandas as pd

    path = DATA / f"ddd_big_{n}x{T}"
    if (path / "_done").exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    ss = np.random.SeedSequence(20251)
    times = np.arange(1, T + 1)
    cohorts = np.array([0, *big_cohorts(T)])
    for c, lo in enumerate(range(0, n, chunk)):
        rng = np.random.default_rng(ss.spawn(1)[0])
        m = min(chunk, n - lo)
        x = rng.normal(size=(m, 4))
        g = cohorts[rng.integers(0, cohorts.size, m)]
        q = (rng.random(m) < 1.0 / (1.0 + np.exp(-0.5 * x[:, 0]))).astype(np.int64)
        fe = rng.normal(size=m) + 0.3 * x[:, 1]
        trend = (0.05 + 0.02 * x[:, 0] - 0.01 * x[:, 2] + 0.02 * q)[:, None] * times[None, :]
        post = (g[:, None] > 0) & (times[None, :] >= g[:, None]) & (q[:, None] == 1)
        att = np.where(post, 1.0 + 0.1 * (times[None, :] - g[:, None]), 0.0)
        y = fe[:, None] + trend + att + rng.normal(size=(m, T))
        rep = np.repeat(np.arange(m), T)
        frame = pd.DataFrame({"id": np.arange(lo + 1, lo + m + 1)[rep], "time": np.tile(times, m),
                              "y": y.ravel(), "group": g[rep], "partition": q[rep],
                              **{f"cov{k + 1}": x[rep, k] for k in range(4)}})
        frame.to_parquet(path / f"part-{c:04d}.parquet", index=False)
    (path / "_done").touch()
    return path


def measure(tool: str, path: Path, timeout: float) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, tool, str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    peak = [0]
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss(proc.pid))
            done.wait(0.05)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {"error": f"timeout after {timeout:.0f} s"}
    finally:
        done.set()
        th.join()
    if proc.returncode:
        return {"error": err.strip().splitlines()[-1] if err.strip() else f"exit {proc.returncode}"}
    res = json.loads(out.strip().splitlines()[-1])
    res["peak_mib"] = max(peak[0] / 2**20, res.pop("ru_maxrss_mib"))
    res["wall"] = time.perf_counter() - t0
    return res


def _row(r: dict, periods: int) -> str:
    head = f"| {r['units']:,} x {periods} | {r['tool']} |"
    if "error" in r:
        return f"{head} {r['error']} | | | |"
    return (f"{head} {r['seconds']:.2f} | {r['peak_mib']:.0f} | {r.get('max_att_diff', float('nan')):.1e} | "
            f"{r.get('ratio', '')} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--units", type=int, nargs="*", default=[100_000])
    ap.add_argument("--tools", nargs="+", default=["dte_dask", "moderndid", "moderndid-jobs"])
    ap.add_argument("--big", type=int, nargs=2, metavar=("UNITS", "PERIODS"), default=None)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--markdown", action="store_true")
    a = ap.parse_args()
    print(json.dumps({"load_average": os.getloadavg(), "cpus": os.cpu_count()}), flush=True)
    rows = []
    for n in a.units:
        path = panel(n)
        res = {tool: measure(tool, path, a.timeout) for tool in a.tools}
        ref = next((r["att"] for r in res.values() if "att" in r), None)
        ours = res.get("dte_dask", {}).get("seconds")
        for tool, r in res.items():
            if "att" in r:
                r["max_att_diff"] = max(abs(x - y) for x, y in zip(r.pop("att"), ref))
                if ours and tool != "dte_dask":
                    r["ratio"] = f"{r['seconds'] / ours:.1f}x"
            rows.append({"units": n, "periods": 3, "tool": tool, **r})
            print(json.dumps(rows[-1]), flush=True)
    if a.big is not None:
        n, T = a.big
        r = measure("dte_dask-big", big_panel(n, T), a.timeout)
        if "att" in r:
            g, t, att = (np.array(r.pop(k)) for k in ("g", "t", "att"))
            truth = np.where(t >= g, 1.0 + 0.1 * (t - g), 0.0)
            r["max_att_diff"] = float(np.nanmax(np.abs(att - truth)))  # vs the known effects
            for k in ("g", "t"):
                r.pop(k, None)
        rows.append({"units": n, "periods": T, "tool": "dte_dask (parquet: load + fit)", **r})
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"load_average": os.getloadavg()}), flush=True)
    if a.markdown:
        print("\n| units x periods | tool | seconds | peak RSS (MiB) | max abs ATT diff (vs dte_dask / truth) | "
              "moderndid / dte_dask |")
        print("|---|---|---:|---:|---:|---:|")
        for r in rows:
            print(_row(r, r["periods"]))


if __name__ == "__main__":
    main()
