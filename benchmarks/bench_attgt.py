"""Benchmark ATT(g,t) + aggregations: dte_dask against the Python Callaway–Sant'Anna peers.

One synthetic panel is generated per size (units x periods, four cohorts plus never-treated, a
staggered dynamic effect; columns ``unit, time, y, group``) and cached as parquet under
``benchmarks/_data/``. Every measurement then runs in a fresh subprocess that reads the panel and
imports its tool *before* the clock starts, and times

* ``fit``: the ATT(g,t) estimation (dr, no covariates, never-treated controls, varying base), and
* ``aggregate``: the simple / dynamic / group / calendar aggregations (diff-diff has no calendar),

with analytic influence-function SEs (mode ``analytic``) or a multiplier bootstrap with
``--n-boot`` draws (mode ``bootstrap``). For dte_dask, mode ``load`` times
``dte_dask.load_panel(df, ...)`` and ``analytic(panel)`` the fit on that loaded Panel. Peak memory
is the larger of the subprocess's ``ru_maxrss`` and the sampled RSS of its whole process tree
(which covers moderndid's dask workers); it includes the panel itself and the imports.

Notes: the bootstrap runs use each tool's default band setting (uniform sup-t bands on where the
tool has them). ``moderndid-dask`` starts a ``LocalCluster`` (``--dask-workers`` processes, one
thread each) before the clock; in moderndid 0.2.0 its per-cohort thread pool occasionally hangs
(seen once in ~10 runs on 2 cores), which the per-measurement ``--timeout`` turns into an error
row. Timings include each library's first-call overheads (JIT, thread pools): every measurement
is a fresh interpreter.

Examples::

    python benchmarks/bench_attgt.py --units 10000 --big            # peers at 10k, no big sizes
    python benchmarks/bench_attgt.py                                 # the full default grid
    python benchmarks/bench_attgt.py --tools dte_dask --units --big 1000000 5000000 --markdown
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import tree_rss  # noqa: E402

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
DATA_DIR = HERE / "_data"
TOOLS = ("dte_dask", "csdid", "moderndid", "moderndid-dask", "diff-diff", "differences")
MODES = ("analytic", "bootstrap")


# ------------------------------------------------------------------------------------ data


def make_panel(n_units: int, n_periods: int, seed: int = 0) -> pd.DataFrame:
    """A balanced long panel with about four equally sized cohorts and 25% never treated.

    Cohorts first treated in periods spread over ``3..n_periods`` (periods are ``1..T``), a unit
    effect correlated with the cohort, a common linear trend plus noise, and a treatment effect
    ``(1 + 0.1 * (t - g)) * s_g`` for ``t >= g`` (``s_g`` differs by cohort).
    """
    if n_periods < 4:
        raise ValueError("need at least 4 periods")
    rng = np.random.default_rng(seed)
    cohorts = np.unique(np.round(np.linspace(3, n_periods, 4)).astype(np.int64))
    shares = np.r_[0.25, np.full(len(cohorts), 0.75 / len(cohorts))]
    group = rng.choice(np.r_[0, cohorts], size=n_units, p=shares)
    unit_fe = rng.normal(size=n_units) + 0.2 * (group > 0)
    scale = {g: 0.5 + 0.25 * k for k, g in enumerate(cohorts)}

    t = np.arange(1, n_periods + 1, dtype=np.int64)
    unit = np.repeat(np.arange(1, n_units + 1, dtype=np.int64), n_periods)
    time_ = np.tile(t, n_units)
    g_long = np.repeat(group, n_periods)
    s_long = np.repeat(np.array([scale.get(g, 0.0) for g in group]), n_periods)
    treated = (g_long > 0) & (time_ >= g_long)
    effect = np.where(treated, (1.0 + 0.1 * (time_ - g_long)) * s_long, 0.0)
    y = (np.repeat(unit_fe, n_periods) + 0.1 * time_ + effect
         + rng.normal(size=n_units * n_periods))
    return pd.DataFrame({"unit": unit, "time": time_, "y": y, "group": g_long})


def panel_path(n_units: int, n_periods: int, seed: int) -> Path:
    return DATA_DIR / f"panel_{n_units}x{n_periods}_seed{seed}.parquet"


def ensure_panel(n_units: int, n_periods: int, seed: int) -> Path:
    path = panel_path(n_units, n_periods, seed)
    if not path.exists():
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        make_panel(n_units, n_periods, seed).to_parquet(tmp, index=False)
        tmp.replace(path)
    return path


# ------------------------------------------------------------------------------------ worker


def _worker(spec_file: str) -> None:
    """Run one measurement (in a fresh interpreter) and write the timings as JSON."""
    spec = json.loads(Path(spec_file).read_text())
    result: dict = {}
    try:
        sys.path.insert(0, str(HERE))
        import _peers

        df = pd.read_parquet(spec["path"])
        runner = _peers.RUNNERS[spec["tool"]]
        n_boot = spec["n_boot"] if spec["mode"] == "bootstrap" else None
        kwargs = {"seed": spec["seed"]}
        if spec["tool"] == "dte_dask":
            import dte_dask

            # import before the clock, as for the peers (the package namespace is lazy)
            dte_dask.att_gt, dte_dask.load_panel  # noqa: B018

            kwargs["load"] = spec["mode"] == "load"
        else:
            __import__(_peers.PEER_MODULES[spec["tool"]])
        if spec["tool"] == "moderndid-dask":
            kwargs["workers"] = spec.get("dask_workers")
        result["timings"] = runner(df, n_boot, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - record any failure as the measurement
        result["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        result["traceback"] = traceback.format_exc()
    Path(spec["out"]).write_text(json.dumps(result))


# ------------------------------------------------------------------------------------ parent


def _kill_tree(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)  # the worker leads its own process group
    except ProcessLookupError:
        pass


def measure(tool: str, mode: str, path: Path, *, n_boot: int, seed: int, timeout: float,
            threads: int | None, dask_workers: int | None) -> dict:
    """Run one measurement in a fresh subprocess; return timings, peak MiB and status."""
    with tempfile.TemporaryDirectory(prefix="bench_attgt_") as tmp:
        spec_file, out_file = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_file.write_text(json.dumps({
            "tool": tool, "mode": mode,
            "path": str(path), "n_boot": n_boot, "seed": seed, "out": str(out_file),
            "dask_workers": dask_workers,
        }))
        env = dict(os.environ)
        if threads:
            for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
                env[var] = str(threads)
        with open(Path(tmp) / "stderr.txt", "w+b") as err:
            proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--_worker", str(spec_file)],
                stdout=subprocess.DEVNULL, stderr=err, env=env, start_new_session=True)
            start, peak, timed_out, status, usage = time.monotonic(), 0, False, None, None
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                peak = max(peak, tree_rss(proc.pid))
                if time.monotonic() - start > timeout:
                    timed_out = True
                    _kill_tree(proc.pid)
                    _, status, usage = os.wait4(proc.pid, 0)
                    break
                time.sleep(0.05)
            _kill_tree(proc.pid)  # leftover grandchildren (e.g. dask workers)
            proc.returncode = os.waitstatus_to_exitcode(status)
            err.seek(0)
            stderr_tail = err.read().decode(errors="replace")[-2000:]
        peak_mib = max(peak, usage.ru_maxrss * 1024) / 2**20
        out = json.loads(out_file.read_text()) if out_file.exists() else {}
    if timed_out:
        out = {"error": f"timeout after {timeout:g} s"}
    elif not out:
        out = {"error": f"worker died (exit {proc.returncode}): "
                        + (stderr_tail.strip().splitlines() or ["no output"])[-1][:200]}
    out["peak_mib"] = peak_mib
    return out


def _rows_for(tool, units, periods, mode, res):
    """Turn one measurement into table rows (the load measurement gives two)."""
    base = {"tool": tool, "units": units, "periods": periods, "peak_mib": res["peak_mib"]}
    if "error" in res:
        return [{**base, "mode": mode, "seconds": None, "status": "error: " + res["error"]}]
    t = res["timings"]
    if mode == "load":
        return [{**base, "mode": "load", "seconds": t["load"], "status": "ok"},
                {**base, "mode": "analytic(panel)", "seconds": t["fit"] + t["aggregate"],
                 "status": "ok", "fit": t["fit"], "aggregate": t["aggregate"]}]
    return [{**base, "mode": mode, "seconds": t["fit"] + t["aggregate"], "status": "ok",
             "fit": t["fit"], "aggregate": t["aggregate"]}]


def _add_ratios(rows):
    ref = {(r["units"], r["periods"], r["mode"]): r["seconds"]
           for r in rows if r["tool"] == "dte_dask" and r["seconds"]}
    for r in rows:
        d = ref.get((r["units"], r["periods"], r["mode"]))
        r["ratio"] = r["seconds"] / d if d and r["seconds"] else None
    return rows


def _fmt(r):
    sec = f"{r['seconds']:.2f}" if r["seconds"] is not None else r["status"]
    ratio = f"{r['ratio']:.2f}x" if r.get("ratio") is not None else "n/a"
    split = (f"{r['fit']:.2f} + {r['aggregate']:.2f}"
             if r.get("fit") is not None else "")
    return [r["tool"], f"{r['units']:,}", str(r["periods"]), r["mode"], sec, split,
            f"{r['peak_mib']:.0f}", ratio]


HEADER = ["tool", "units", "periods", "mode", "seconds", "fit + agg", "peak MiB",
          "vs dte_dask"]


def print_table(rows, markdown=False):
    body = [_fmt(r) for r in rows]
    if markdown:
        print("| " + " | ".join(HEADER) + " |")
        print("|" + "|".join("---" if i < 4 else "---:" for i in range(len(HEADER))) + "|")
        for line in body:
            print("| " + " | ".join(line) + " |")
        return
    widths = [max(len(x) for x in col) for col in zip(HEADER, *body, strict=False)]
    print("  ".join(h.ljust(w) for h, w in zip(HEADER, widths, strict=True)))
    for line in body:
        print("  ".join(x.ljust(w) for x, w in zip(line, widths, strict=True)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--units", type=int, nargs="*", default=[10_000, 100_000],
                    help="panel sizes (units) for dte_dask and the peers")
    ap.add_argument("--periods", type=int, nargs="+", default=[10])
    ap.add_argument("--big", type=int, nargs="*", default=[1_000_000, 5_000_000],
                    help="extra sizes (units) run with dte_dask alone")
    ap.add_argument("--tools", nargs="+", default=list(TOOLS), choices=TOOLS)
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--n-boot", type=int, default=999)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=600, help="seconds per measurement")
    ap.add_argument("--threads", type=int, default=None,
                    help="BLAS/OpenMP threads per measurement (default: library defaults)")
    ap.add_argument("--dask-workers", type=int, default=None,
                    help="worker processes for moderndid-dask (default: CPU count)")
    ap.add_argument("--no-load", action="store_true", help="skip dte_dask's load measurement")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._worker:
        _worker(args._worker)
        return 0

    plan = []
    for periods in args.periods:
        for units in args.units:
            for tool in args.tools:
                plan += [(tool, units, periods, m) for m in args.modes]
                if tool == "dte_dask" and not args.no_load:
                    plan.append((tool, units, periods, "load"))
        if "dte_dask" in args.tools:
            for units in args.big:
                plan += [("dte_dask", units, periods, m) for m in args.modes]
                if not args.no_load:
                    plan.append(("dte_dask", units, periods, "load"))

    rows = []
    for tool, units, periods, mode in plan:
        path = ensure_panel(units, periods, args.seed)
        res = measure(tool, mode, path, n_boot=args.n_boot, seed=args.seed,
                      timeout=args.timeout, threads=args.threads,
                      dask_workers=args.dask_workers)
        new = _rows_for(tool, units, periods, mode, res)
        rows += new
        for r in new:
            sec = f"{r['seconds']:.2f} s" if r["seconds"] is not None else r["status"]
            print(f"# {tool:15s} {units:>9,} x {periods:<3d} {r['mode']:16s} {sec}  "
                  f"{r['peak_mib']:.0f} MiB", file=sys.stderr, flush=True)
    _add_ratios(rows)
    print_table(rows, markdown=args.markdown)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
