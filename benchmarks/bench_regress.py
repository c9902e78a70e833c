"""Benchmark the regression estimators (issue 4): dte_dask beside pyfixest on the same panels.

Panels come from ``dte_dask.simulate.write_panel`` (columns ``unit, time, y, group, ...``; the
default cohorts; 30% never treated) and are cached as parquet directories under
``benchmarks/_data/``. Every measurement runs in a fresh subprocess that reads its input and imports
its tool (and runs a tiny warm-up fit: numba compilation for pyfixest, lazy imports for dte_dask)
*before* the clock starts, then times ``--repeats`` runs and reports the median. Peak memory is the
larger of the subprocess's ``ru_maxrss`` and the sampled RSS of its process tree; it includes the
data, the imports and everything else in that process.

Measurements (``task``):

* ``event_study`` (window=None: every event time, CRV1 by unit) — pyfixest
  ``feols("y ~ i(rel, treated, ref=-1) | unit + time", vcov={"CRV1": "unit"})`` on the pandas frame
  (``rel``/``treated`` prepared before the clock), and dte_dask ``load_panel(frame)`` +
  ``event_study(panel)`` (source ``pandas``; ``fit`` is the event study alone);
* at the big size dte_dask reads the parquet directory itself (source ``parquet``: the panel is never
  held as one pandas frame): ``event_study`` and ``stacked_did(window=(-3, 3))``.

The coefficients of dte_dask and pyfixest on the same panel are compared (``max |diff|``).

Examples::

    python benchmarks/bench_regress.py                    # 100k x 10 both tools, 1M x 24 dte_dask
    python benchmarks/bench_regress.py --big-units 0      # skip the big panel
    python benchmarks/bench_regress.py --peer-big         # also pyfixest at the big size (slow)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import median_timings, run_worker  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA_DIR = HERE / "_data"


def panel_dir(n_units: int, n_periods: int, seed: int) -> Path:
    path = DATA_DIR / f"regress_{n_units}x{n_periods}_seed{seed}"
    if not (path / "_dte_dask.json").exists():
        from dte_dask.simulate import write_panel

        write_panel(path, n_units, n_periods, seed=seed, overwrite=True)
    return path


# ------------------------------------------------------------------------------------ worker
def _pyfixest(df, task):
    import warnings

    import numpy as np
    import pyfixest as pf

    if task != "event_study":
        raise NotImplementedError(task)
    df["treated"] = (df["group"] > 0).astype(float)
    df["rel"] = np.where(df["group"] > 0, df["time"] - df["group"], -1000)

    def fit(data):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the all-zero never-treated dummy is dropped
            m = pf.feols("y ~ i(rel, treated, ref=-1) | unit + time", data=data, vcov={"CRV1": "unit"})
        return {int(k.split("::")[1].split(":")[0]): float(v) for k, v in m.coef().items()}

    fit(df.head(2000).copy())  # warm-up: numba compilation
    return lambda: ({}, fit(df))


def _dte_dask(df_or_path, task, source):
    import dte_dask

    cols = dict(unit="unit", time="time", outcome="y", group="group")
    fit_fn = {"event_study": lambda p: dte_dask.event_study(p),
              "stacked_did": lambda p: dte_dask.stacked_did(p, window=(-3, 3))}[task]
    small = dte_dask.simulate_panel(500, 10, seed=1).data.compute()
    fit_fn(dte_dask.load_panel(small, **cols))  # warm-up: lazy imports

    def run():
        t0 = time.perf_counter()
        panel = dte_dask.load_panel(df_or_path, **cols)
        t1 = time.perf_counter()
        res = fit_fn(panel)
        t2 = time.perf_counter()
        return {"load": t1 - t0, "fit": t2 - t1}, dict(zip(res.event_time.tolist(), res.coef.tolist()))
    return run


def _worker(spec_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    out: dict = {}
    try:
        import pandas as pd

        src = spec["path"] if spec["source"] == "parquet" else pd.read_parquet(spec["path"])
        if spec["tool"] == "pyfixest":
            run = _pyfixest(src, spec["task"])
        else:
            run = _dte_dask(src, spec["task"], spec["source"])
        medians, coefs = median_timings(run, spec["repeats"])
        out.update(medians)
        out["coefs"] = {str(k): v for k, v in coefs.items()}
    except BaseException as exc:  # noqa: BLE001 - record any failure as the measurement
        out["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    Path(spec["out"]).write_text(json.dumps(out))


# ------------------------------------------------------------------------------------ parent


def measure(tool: str, task: str, source: str, path: Path, repeats: int, timeout: float) -> dict:
    """Run one measurement in a fresh subprocess; return its timings, coefficients and peak MiB."""
    spec = {"tool": tool, "task": task, "source": source, "path": str(path), "repeats": repeats}
    return run_worker(__file__, spec, timeout)[0]


def _row(tool, task, source, n, T, res):
    sec = f"{res['seconds']:.2f}" if "seconds" in res else "error: " + res.get("error", "?")
    split = f"{res['load']:.2f} + {res['fit']:.2f}" if "load" in res else ""
    return [tool, task, source, f"{n:,}", str(T), sec, split, f"{res['peak_mib']:.0f}"]


HEADER = ["tool", "task", "input", "units", "periods", "seconds", "load + fit", "peak MiB"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--units", type=int, default=100_000)
    ap.add_argument("--periods", type=int, default=10)
    ap.add_argument("--big-units", type=int, default=1_000_000, help="0 skips the big panel")
    ap.add_argument("--big-periods", type=int, default=24)
    ap.add_argument("--peer-big", action="store_true", help="also run pyfixest on the big panel")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=1200)
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._worker:
        _worker(args._worker)
        return 0

    plan = [("pyfixest", "event_study", "pandas", args.units, args.periods),
            ("dte_dask", "event_study", "pandas", args.units, args.periods)]
    if args.big_units:
        if args.peer_big:
            plan.append(("pyfixest", "event_study", "pandas", args.big_units, args.big_periods))
        plan += [("dte_dask", "event_study", "parquet", args.big_units, args.big_periods),
                 ("dte_dask", "stacked_did", "parquet", args.big_units, args.big_periods)]
    rows, results = [], {}
    for tool, task, source, n, T in plan:
        path = panel_dir(n, T, args.seed)
        res = measure(tool, task, source, path, args.repeats if n <= 200_000 else 1, args.timeout)
        results[(tool, task, n, T)] = res
        rows.append(_row(tool, task, source, n, T, res))
        print("# " + "  ".join(rows[-1]), file=sys.stderr, flush=True)
    print("| " + " | ".join(HEADER) + " |")
    print("|" + "|".join(["---"] * 5 + ["---:"] * 3) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    for n, T in {(p[3], p[4]) for p in plan}:
        a, b = results.get(("pyfixest", "event_study", n, T)), results.get(("dte_dask", "event_study", n, T))
        if a and b and "coefs" in a and "coefs" in b:
            diff = max(abs(a["coefs"][k] - b["coefs"][k]) for k in a["coefs"])
            print(f"\n{n:,} x {T}: pyfixest / dte_dask (load + fit) = {a['seconds'] / b['seconds']:.1f}x; "
                  f"max |coef difference| = {diff:.2e} over {len(a['coefs'])} event times")
    return 0


if __name__ == "__main__":
    sys.exit(main())
