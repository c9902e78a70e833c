"""Benchmark continuous_did (dose-response, parametric B-splines) against moderndid ``cont_did``.

Each measurement runs in a fresh subprocess that builds its panel and imports its tool before the
clock starts and reports wall seconds and peak RSS (MiB, ``ru_maxrss`` of the subprocess). Panels
come from ``moderndid.gen_cont_did_data(n, num_time_periods, seed=0)``: uniform doses, cohorts
2..T plus never treated, ATT(d) = 0.5 d. Both tools: dose aggregation, cubic B-spline without
interior knots, not-yet-treated controls, multiplier bootstrap with ``--n-boot`` draws (moderndid
always bootstraps the dose curves; ``biters``).

Examples::

    python benchmarks/bench_contdid.py --units 100000 --periods 4
    python benchmarks/bench_contdid.py --tools dte_dask --units 1000000 --periods 24
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import warnings

CHILD = r"""
import json, resource, sys, time, warnings
warnings.filterwarnings("ignore")
tool, n, T, B = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
import numpy as np, moderndid
small = moderndid.gen_cont_did_data(n=500, num_time_periods=T, seed=1)  # warm-up (lazy imports, JIT)
d = moderndid.gen_cont_did_data(n=n, num_time_periods=T, seed=0)
if tool == "dte_dask":
    import dte_dask
    kw = dict(outcome="Y", unit="id", time="time_period", group="G", dose="D", n_boot=B, seed=1)
    dte_dask.continuous_did(small.to_pandas(), **kw)
    df = d.to_pandas()
    t0, c0 = time.perf_counter(), time.process_time()
    r = dte_dask.continuous_did(df, **kw)
    est, ov = r.estimates, r.overall
else:
    import polars as pl  # moderndid 0.x filters a Float64 column with an int64 array; polars >= 2 refuses
    _is_in = pl.Expr.is_in
    pl.Expr.is_in = lambda self, o, *a, **k: _is_in(self, o.astype(float) if isinstance(o, np.ndarray)
                                                    and o.dtype.kind in "iu" else o, *a, **k)
    moderndid.cont_did(small, yname="Y", tname="time_period", idname="id", gname="G", dname="D", biters=B)
    t0, c0 = time.perf_counter(), time.process_time()
    r = moderndid.cont_did(d, yname="Y", tname="time_period", idname="id", gname="G", dname="D",
                           biters=B, random_state=1)
    est, ov = r.att_d, {"att": r.overall_att, "acrt": r.overall_acrt}
sec, cpu = time.perf_counter() - t0, time.process_time() - c0
print(json.dumps({"seconds": sec, "cpu_seconds": cpu,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "att_d": list(map(float, est)), "overall": ov}))
"""


def run(tool: str, n: int, T: int, B: int, timeout: float) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, tool, str(n), str(T), str(B)], capture_output=True,
                         text=True, timeout=timeout)
    if out.returncode != 0:
        return {"error": out.stderr[-400:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--units", type=int, default=100_000)
    p.add_argument("--periods", type=int, default=4)
    p.add_argument("--n-boot", type=int, default=999)
    p.add_argument("--tools", nargs="+", default=["dte_dask", "moderndid"])
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--timeout", type=float, default=1800)
    a = p.parse_args()
    warnings.filterwarnings("ignore")
    res = {}
    for tool in a.tools:
        runs = [run(tool, a.units, a.periods, a.n_boot, a.timeout) for _ in range(a.repeat)]
        res[tool] = runs
        for r in runs:
            ok = (f"{r['seconds']:.2f} s (cpu {r['cpu_seconds']:.2f} s, all threads), peak {r['peak_mib']:.0f} MiB"
                  if "seconds" in r else r["error"])
            print(f"{tool:10s} units={a.units} periods={a.periods} n_boot={a.n_boot}: {ok}")
    if "dte_dask" in res and "moderndid" in res and all("att_d" in r for r in res["dte_dask"] + res["moderndid"]):
        import numpy as np

        a_, m_ = res["dte_dask"][0], res["moderndid"][0]
        diff = float(np.max(np.abs(np.array(a_["att_d"]) - np.array(m_["att_d"]))))
        t_ours = min(r["seconds"] for r in res["dte_dask"])
        t_md = min(r["seconds"] for r in res["moderndid"])
        print(f"speed-up {t_md / t_ours:.1f}x; max |ATT(d) diff| {diff:.2e}")


if __name__ == "__main__":
    main()
