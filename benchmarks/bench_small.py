"""Small panels side by side in one process (issue 18, targets 2 and 3): the ratios in one run.

* ``att_gt`` from a pandas DataFrame (dr, never-treated controls, analytic SEs, + simple / dynamic /
  group / calendar aggregations) beside diff-diff's ``CallawaySantAnna`` (+ its three
  aggregations), on ``bench_attgt.make_panel``'s panel;
* ``event_study`` (load from pandas + fit, unit and time fixed effects, clustered by unit) beside
  pyfixest's ``feols("y ~ i(rel, treated, ref=-1) | unit + time", vcov={"CRV1": "unit"})``, on
  ``bench_regress.panel_dir``'s panel read into pandas.

Both tools are imported and warmed up (a first full call each) before any clock starts; then the
calls alternate (ours, peer, ours, peer, ...) ``--repeats`` times so that load from other
processes hits both alike, and the medians and the ratio of medians are printed. The machine
this runs on is shared: only ratios from one run are comparable. Numbers are checked too: the
largest |difference| of the ATT(g,t) / event-study coefficients between the two tools.

    python benchmarks/bench_small.py --units 100000 --periods 10 --repeats 7
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _peers  # noqa: E402
import bench_attgt  # noqa: E402
import bench_regress  # noqa: E402


def _attgt_pair(n: int, T: int):
    import dte_dask

    df = bench_attgt.make_panel(n, T)

    def ours():
        return sum(_peers.run_dte_dask(df, None).values())

    def peer():
        return sum(_peers.run_diff_diff(df, None).values())

    from diff_diff import CallawaySantAnna

    a = dte_dask.att_gt(df, outcome="y", unit="unit", time="time", group="group", est_method="dr", bootstrap=False)
    b = CallawaySantAnna(control_group="never_treated", estimation_method="dr", base_period="varying",
                         n_bootstrap=0).fit(df, outcome="y", unit="unit", time="time", first_treat="group")
    fr = a.to_frame()
    mine = {(float(g), float(t)): float(v) for g, t, v in zip(fr["group"], fr["time"], fr["estimate"])}
    theirs = {(float(g), float(t)): float(e["effect"]) for (g, t), e in b.group_time_effects.items()}
    diff = max(abs(mine[k] - theirs[k]) for k in theirs if k in mine)
    return ours, peer, float(diff), len(set(mine) & set(theirs)), None


def _es_pair(n: int, T: int):
    import pandas as pd

    df = pd.read_parquet(bench_regress.panel_dir(n, T, 0))
    run_ours = bench_regress._dte_dask(df, "event_study", "pandas")  # noqa: SLF001 - the shared harness
    run_peer = bench_regress._pyfixest(df.copy(), "event_study")  # noqa: SLF001
    _, mine = run_ours()
    _, theirs = run_peer()
    diff = max(abs(mine[k] - theirs[k]) for k in theirs if k in mine)

    def ours():
        t = time.perf_counter()
        run_ours()
        return time.perf_counter() - t

    def peer():
        t = time.perf_counter()
        run_peer()
        return time.perf_counter() - t

    return ours, peer, float(diff), len(set(mine) & set(theirs)), None


def side_by_side(name: str, peer_name: str, pair, repeats: int) -> dict:
    ours, peer, diff, k, _ = pair
    ours(), peer()  # warm-up
    a, b = [], []
    for _ in range(repeats):
        a.append(ours())
        b.append(peer())
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"{name:<12} dte_dask {ma:7.3f} s  {peer_name} {mb:7.3f} s  ratio {mb / ma:5.1f}x  "
          f"(per-repeat ratios {' '.join(f'{y / x:.1f}' for x, y in zip(a, b))}; "
          f"max |coef diff| {diff:.1e} over {k} coefficients)", flush=True)
    return {"ours": ma, "peer": mb, "ratio": mb / ma, "max_diff": diff}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--units", type=int, default=100_000)
    ap.add_argument("--periods", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--tasks", nargs="+", default=["att_gt", "event_study"], choices=["att_gt", "event_study"])
    args = ap.parse_args()
    print(f"{args.units:,} units x {args.periods} periods, {args.repeats} alternating repeats, "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}, {os.cpu_count()} CPUs", flush=True)
    if "att_gt" in args.tasks:
        side_by_side("att_gt", "diff-diff", _attgt_pair(args.units, args.periods), args.repeats)
    if "event_study" in args.tasks:
        side_by_side("event_study", "pyfixest", _es_pair(args.units, args.periods), args.repeats)
    print(f"load average at the end {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
