"""Benchmark the imputation-family estimators (issue 14): imputation_did, two_stage_did, etwfe and
bacon_decomposition, at scale and beside diff-diff and pyfixest.

Three measurements (``--what``, repeatable; default ``big`` and ``peers``):

* ``big``: a ``--big-units`` x ``--big-periods`` panel (default 1M x 24) written by
  ``dte_dask.simulate.write_panel`` as parquet; each estimator in a fresh subprocess reads the
  directory itself (``load_panel(path)`` + the estimator + ``to_frame()``, local threaded scheduler).
* ``peers``: a ``--units`` x ``--periods`` panel (default 100k x 10) read into pandas before the
  clock; in fresh subprocesses dte_dask (``load_panel(frame)`` + estimator), diff-diff
  (``ImputationDiD``, ``TwoStageDiD``, ``WooldridgeDiD`` + its group/calendar/event-study
  aggregations, ``BaconDecomposition``; the event-study aggregation where it has one) and pyfixest
  (``did2s`` with one dummy per post-treatment horizon, as ``two_stage_did``; and
  ``event_study(estimator="saturated")``, its cohort x event-time regression, beside ``etwfe``).
  Prints the ratios and the largest difference of the overall ATT.
* ``ooc``: a ``--ooc-units`` x ``--big-periods`` panel (default 10M x 24, ``--ooc-files`` files)
  and ``imputation_did`` on a ``LocalCluster`` of ``--ooc-workers`` single-threaded workers with
  ``--ooc-memory`` each (below the panel's size in pandas), spill folder in the scratch directory.

Every measurement reports wall seconds (split into load and fit for dte_dask), the CPU seconds
(user + sys) of the subprocess and its children, the peak RSS summed over the subprocess tree
(sampled every 50 ms, and at least the subprocess's own ``ru_maxrss``) and the 1-minute load
average before and after (the machine may be shared). Imports, cluster start-up and a small warm-up
fit (numba compilation for pyfixest, lazy imports for dte_dask) happen before the clock. Panels are
written under ``--scratch`` (default: a fresh temporary directory, removed at the end).

Examples::

    python benchmarks/bench_robust_did.py                         # 1M x 24 big + 100k x 10 peers
    python benchmarks/bench_robust_did.py --what ooc              # 10M x 24 out of core
    python benchmarks/bench_robust_did.py --what peers --units 20000
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import median_timings, run_worker  # noqa: E402

ESTIMATORS = ("imputation_did", "two_stage_did", "etwfe", "bacon_decomposition")
COLS = dict(unit="unit", time="time", outcome="y", group="group")
PEERS = {  # (tool, task) -> the dte_dask estimator it is compared with
    ("diff-diff", "ImputationDiD"): "imputation_did",
    ("diff-diff", "TwoStageDiD"): "two_stage_did",
    ("diff-diff", "WooldridgeDiD"): "etwfe",
    ("diff-diff", "BaconDecomposition"): "bacon_decomposition",
    ("pyfixest", "did2s"): "two_stage_did",
    ("pyfixest", "saturated"): "etwfe",
}


# ------------------------------------------------------------------------------------ workers
def _overall(name: str, res) -> float:
    if name == "bacon_decomposition":
        return float(res.twfe)
    other = res.other
    row = other[other["type"] == "simple"] if "type" in other else other[other["term"] == "ATT"]
    return float(row["coef"].iloc[0])


def _dte_dask(src, task: str, spec: dict):
    import warnings

    import dte_dask

    fn = getattr(dte_dask, task)
    small = dte_dask.simulate_panel(300, 6, seed=1).data.compute(scheduler="sync")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fn(dte_dask.load_panel(small, **COLS)).to_frame()  # warm-up: lazy imports

    def run():
        t0 = time.perf_counter()
        panel = dte_dask.load_panel(src, **COLS, **({"npartitions": spec["npartitions"]}
                                                    if spec.get("npartitions") else {}))
        t1 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = fn(panel)
            res.to_frame()
        return {"load": t1 - t0, "fit": time.perf_counter() - t1}, _overall(task, res)
    return run


def _diff_diff(df, task: str):
    import warnings

    import diff_diff as dd

    def fit(d):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kw = dict(outcome="y", unit="unit", time="time")
            if task == "BaconDecomposition":
                return dd.BaconDecomposition().fit(d, first_treat="group", **kw).twfe_estimate
            if task == "WooldridgeDiD":
                f = dd.WooldridgeDiD(control_group="not_yet_treated").fit(d, cohort="group", **kw)
                for kind in ("group", "calendar", "event_study"):
                    f.aggregate(kind)
                return f.overall_att
            f = getattr(dd, task)().fit(d, first_treat="group", **kw)
            f.aggregate("event_study")
            return f.overall_att

    fit(df[df["unit"] < df["unit"].min() + 300].copy())  # warm-up
    return lambda: ({}, float(fit(df)))


def _pyfixest(df, task: str):
    import warnings

    import numpy as np
    import pyfixest as pf

    d = df.copy()
    if task == "did2s":
        d["D"] = ((d["group"] > 0) & (d["time"] >= d["group"])).astype(float)
        rel = np.where(d["group"] > 0, d["time"] - d["group"], -999)
        names = []
        for h in sorted(set(rel[rel >= 0].tolist())):
            d[f"h{h}"] = (rel == h).astype(float)
            names.append(f"h{h}")

    def fit(data):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if task == "did2s":
                kw = dict(yname="y", first_stage="~ 0 | unit + time", treatment="D", cluster="unit")
                pf.did2s(data, second_stage="~ " + " + ".join(n for n in names if data[n].any()), **kw)
                return float(pf.did2s(data, second_stage="~ D", **kw).coef().iloc[0])
            pf.event_study(data, yname="y", idname="unit", tname="time", gname="group", estimator="saturated")
            return float("nan")  # cohort x event-time coefficients, not ETWFE's estimand: timing only

    fit(d[d["unit"] < d["unit"].min() + 300].copy())  # warm-up: numba compilation
    return lambda: ({}, fit(d))


def _worker(spec_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    out: dict = {}
    try:

        import pandas as pd

        client = None
        if spec.get("cluster"):
            from distributed import Client, LocalCluster

            c = spec["cluster"]
            cluster = LocalCluster(n_workers=c["workers"], threads_per_worker=1, memory_limit=c["memory"],
                                   processes=True, dashboard_address=None, local_directory=c["scratch"])
            client = Client(cluster)
        src = spec["path"] if spec["source"] == "parquet" else pd.read_parquet(spec["path"])
        run = {"dte_dask": lambda: _dte_dask(src, spec["task"], spec), "diff-diff": lambda: _diff_diff(src, spec["task"]),
               "pyfixest": lambda: _pyfixest(src, spec["task"])}[spec["tool"]]()
        out["cpu0"] = sum(os.times()[:4])
        medians, value = median_timings(run, spec["repeats"])
        out.update(medians)
        out["att"] = value
        if client is not None:
            out["spill"] = _spilled(client)
            client.close()
            cluster.close()
    except BaseException as exc:  # noqa: BLE001 - record any failure as the measurement
        out["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    Path(spec["out"]).write_text(json.dumps(out))


def _spilled(client) -> dict:
    """Bytes the workers' spill buffers wrote to disk (distributed's spill metrics), summed."""
    def one(dask_worker):
        data = dask_worker.data
        fast = getattr(data, "spilled_total", None)
        return {"spilled_bytes_total": int(getattr(fast, "disk", 0) or 0) if fast is not None else 0}
    try:
        res = client.run(one)
        return {"spilled_bytes_total": sum(v["spilled_bytes_total"] for v in res.values())}
    except Exception:  # noqa: BLE001 - spill metrics are best effort
        return {}


# ------------------------------------------------------------------------------------ parent
def _dir_size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def measure(spec: dict, timeout: float, scratch: Path | None = None) -> dict:
    """Run one measurement in a fresh subprocess: its timings, CPU seconds, peak RSS and load average
    (and the peak size of ``scratch``, the spill folder, if given)."""
    load0, peak_disk = os.getloadavg()[0], [0]

    def disk() -> None:
        peak_disk[0] = max(peak_disk[0], _dir_size(scratch))

    out, usage = run_worker(__file__, spec, timeout, on_poll=disk if scratch is not None else None)
    out["cpu"] = usage.ru_utime + usage.ru_stime - out.pop("cpu0", 0.0)  # the timed runs (and the exit)
    out["load_avg"] = (load0, os.getloadavg()[0])
    if scratch is not None:
        out["peak_spill_dir_mib"] = peak_disk[0] / 2**20
    return out


def panel(scratch: Path, n: int, T: int, seed: int, files: int | None = None) -> Path:
    from dte_dask.simulate import write_panel

    path = scratch / f"panel_{n}x{T}_seed{seed}"
    if not (path / "_dte_dask.json").exists():
        write_panel(path, n, T, seed=seed, overwrite=True, **({"npartitions": files} if files else {}))
    return path


def _row(tool, task, n, T, res):
    if "seconds" not in res:
        err = res.get("error", "?").replace("\n", " ").replace("|", "/")[:200]
        return [tool, task, f"{n:,} x {T}", "error: " + err, "", "", f"{res['peak_mib']:.0f}",
                "{:.1f} / {:.1f}".format(*res["load_avg"])]
    split = f"{res['load']:.2f} + {res['fit']:.2f}" if "load" in res else ""
    la = "{:.1f} / {:.1f}".format(*res["load_avg"])
    return [tool, task, f"{n:,} x {T}", f"{res['seconds']:.2f}", split, f"{res['cpu']:.1f}",
            f"{res['peak_mib']:.0f}", la]


HEADER = ["tool", "task", "units x periods", "wall s", "load + fit", "CPU s", "peak MiB (all processes)",
          "load avg before / after"]


def _table(rows):
    print("| " + " | ".join(HEADER) + " |")
    print("|" + "|".join(["---"] * 3 + ["---:"] * 5) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--what", action="append", choices=("big", "peers", "ooc"))
    ap.add_argument("--units", type=int, default=100_000)
    ap.add_argument("--periods", type=int, default=10)
    ap.add_argument("--big-units", type=int, default=1_000_000)
    ap.add_argument("--big-periods", type=int, default=24)
    ap.add_argument("--estimators", default=",".join(ESTIMATORS))
    ap.add_argument("--ooc-units", type=int, default=10_000_000)
    ap.add_argument("--ooc-files", type=int, default=160)
    ap.add_argument("--ooc-workers", type=int, default=2)
    ap.add_argument("--ooc-memory", default="2GiB")
    ap.add_argument("--ooc-estimator", default="imputation_did")
    ap.add_argument("--ooc-partition-units", type=int, default=65536)
    ap.add_argument("--repeats", type=int, default=3, help="runs per measurement at the peers' size (median)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--scratch", help="where the panels are written (default: a temporary directory, removed)")
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._worker:
        _worker(args._worker)
        return 0
    what = args.what or ["big", "peers"]
    ests = [e for e in args.estimators.split(",") if e]
    scratch = Path(args.scratch) if args.scratch else Path(tempfile.mkdtemp(prefix="bench_robust_did_"))
    try:
        print(f"# machine: {os.cpu_count()} CPUs; load average {os.getloadavg()}", file=sys.stderr)
        if "big" in what:
            path = panel(scratch, args.big_units, args.big_periods, args.seed)
            rows = []
            for e in ests:
                res = measure({"tool": "dte_dask", "task": e, "source": "parquet", "path": str(path), "repeats": 1},
                              args.timeout)
                rows.append(_row("dte_dask", e, args.big_units, args.big_periods, res))
                print("# " + "  ".join(rows[-1]), file=sys.stderr, flush=True)
            print(f"\n### {args.big_units:,} x {args.big_periods} from parquet (local threaded scheduler)\n")
            _table(rows)
        if "peers" in what:
            path = panel(scratch, args.units, args.periods, args.seed)
            rows, results = [], {}
            plan = [("dte_dask", e) for e in ests] + [k for k, v in PEERS.items() if v in ests]
            for tool, task in plan:
                res = measure({"tool": tool, "task": task, "source": "pandas", "path": str(path),
                               "repeats": args.repeats}, args.timeout)
                results[(tool, task)] = res
                rows.append(_row(tool, task, args.units, args.periods, res))
                print("# " + "  ".join(rows[-1]), file=sys.stderr, flush=True)
            print(f"\n### {args.units:,} x {args.periods}, pandas frame in memory\n")
            _table(rows)
            print()
            for (tool, task), est in PEERS.items():
                a, b = results.get((tool, task)), results.get(("dte_dask", est))
                if a and b and "seconds" in a and "seconds" in b:
                    d = abs(a["att"] - b["att"])
                    diff = "" if d != d else f"; |overall ATT difference| = {d:.1e}"
                    print(f"{tool} {task} / dte_dask {est} (load + fit): {a['seconds'] / b['seconds']:.1f}x{diff}")
        if "ooc" in what:
            path = panel(scratch, args.ooc_units, args.big_periods, args.seed, files=args.ooc_files)
            # one task must fit a worker: ~64k-unit partitions (as the issue-6 out-of-core runs)
            os.environ.setdefault("DASK_DTE_DASK__PARTITION_UNITS", str(args.ooc_partition_units))
            spill = scratch / "dask-scratch"
            spill.mkdir(exist_ok=True)
            res = measure({"tool": "dte_dask", "task": args.ooc_estimator, "source": "parquet", "path": str(path),
                           "repeats": 1, "cluster": {"workers": args.ooc_workers, "memory": args.ooc_memory,
                                                     "scratch": str(spill)}}, args.timeout, scratch=spill)
            print(f"\n### {args.ooc_units:,} x {args.big_periods} out of core: LocalCluster "
                  f"{args.ooc_workers} x 1 thread x {args.ooc_memory}; parquet {_dir_size(path) / 2**30:.2f} GiB "
                  f"on disk in {args.ooc_files} files\n")
            _table([_row("dte_dask", args.ooc_estimator, args.ooc_units, args.big_periods, res)])
            print(f"\nspill folder peak {res.get('peak_spill_dir_mib', 0):.0f} MiB; "
                  f"spilled by the workers {res.get('spill', {}).get('spilled_bytes_total', 0) / 2**20:.0f} MiB; "
                  f"overall ATT {res.get('att')}")
    finally:
        if not args.scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
