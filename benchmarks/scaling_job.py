"""Task-stream model of a whole job (issue 18, point 4): calibrate on small runs, predict big ones.

Input: runs of the job under ``taskstream.py`` (``--csv`` per-task records, ``--json`` summary),
each at its own size on this machine::

    python benchmarks/taskstream.py benchmarks/jobs/medical_policy.yaml --data DATA_300K --out OUT_300K \\
        --csv TS_300K.csv --json TS_300K.json

Model. The job's tasks are grouped by prefix (``dask.utils.key_split``). A *map* prefix runs
``k`` tasks per partition (``attgt-logit``: one per Newton pass); its task seconds are fitted as
``c + w * units per partition`` over the calibration runs (least squares, >= 2 sizes). Reductions
and picks (``-sum``, ``-merge``, ``-root``, ``-pick``, ``-meat`` picks) cost a hop each. A job on
``N`` single-threaded workers with ``P`` partitions takes

    serial + sum over map prefixes of k * (ceil(P / N) * t(U / P) + depth(P) * hop)
           + 1 ms of scheduler time per task

where ``serial`` is the time no task computes (driver: planning, the driver-side solves, checks,
saving, the report: sizes of cells, not of units), fitted as ``a + b * P`` over the calibration
runs (graph size grows with the partitions), ``depth(P) =
ceil(log8 P) + 1`` the reduction tree's levels (fan-in 8) and ``hop`` a task round trip (5 ms
between machines). Two modes:

* ``as measured``: task seconds as the task stream recorded them (this machine's contention
  included): what a run here would take; checked against a measured run of a larger size;
* ``dedicated cores``: task seconds times the share of a core the workers got (worker CPU
  seconds / task seconds over the job's stages, from its diagnosis), the serial time likewise: a
  cluster whose processes own their cores. On a contended machine
  the CPU seconds themselves grow (shared caches, steal time), so this mode is an upper bound.

    python benchmarks/scaling_job.py --calibrate TS_100K TS_300K --check TS_1M \\
        --predict 2800000 28000000 --workers 2 16 64
(each TS_X stands for the pair TS_X.csv / TS_X.json and the job's OUT folder given in the JSON run)
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from scaling_common import REDUCE_SUFFIXES  # noqa: E402

PICK_SUFFIXES = ("-pick", "-meat")
HOP = 5e-3  # s, a task's round trip between machines
SCHED = 1e-3  # s of scheduler time per task (distributed's documented overhead)
PARTITION_UNITS = 262144  # dte_dask.partition-units default


def is_map(prefix: str) -> bool:
    """A task per partition (not a reduction, nor a pick of a partition's result: ``*-meat-*``)."""
    return not prefix.endswith(REDUCE_SUFFIXES + PICK_SUFFIXES) and "-meat-" not in prefix


def load_run(stem: Path) -> dict:
    """One calibration run: its tasks, units, partitions, wall, serial time and core shares."""
    tasks = pd.read_csv(stem.with_suffix(".csv"))
    meta = json.loads(stem.with_suffix(".json").read_text())
    shape = meta["panel_shape"]
    busy = _busy_union(tasks)
    stages = {s["name"]: s for s in meta.get("stages", [])}
    cpu = sum(s["cpu_s"] or 0 for s in stages.values())
    task_s = sum(s["task_s"] or 0 for s in stages.values())
    share = cpu / task_s if task_s > 0 else 1.0  # share of a core a worker's task got
    return {"name": stem.name, "tasks": tasks, "units": shape["units"], "partitions": shape["partitions"],
            "wall": meta["wall"], "serial": max(0.0, meta["wall"] - busy), "threads": meta["threads"],
            "core_share": min(1.0, share), "driver_cpu_s": meta.get("driver_cpu_s")}


def _busy_union(tasks: pd.DataFrame) -> float:
    """Seconds during which at least one task computed."""
    iv = tasks.dropna(subset=["start", "stop"])[["start", "stop"]].sort_values("start").to_numpy()
    total, cur_a, cur_b = 0.0, None, None
    for a, b in iv:
        if cur_b is None or a > cur_b:
            if cur_b is not None:
                total += cur_b - cur_a
            cur_a, cur_b = a, b
        else:
            cur_b = max(cur_b, b)
    return total + (cur_b - cur_a if cur_b is not None else 0.0)


def calibrate(runs: list[dict], dedicated: bool = False) -> dict:
    """Per map prefix ``(k, c, w)``; the serial line ``(a, b)`` in the number of partitions."""
    pts: dict[str, list[tuple[float, float, float]]] = {}
    for r in runs:
        f = r["core_share"] if dedicated else 1.0
        for p, g in r["tasks"].groupby("prefix"):
            if is_map(p):
                pts.setdefault(p, []).append((r["units"] / r["partitions"], g["compute"].mean() * f,
                                              len(g) / r["partitions"]))
    prefixes = {}
    for p, v in pts.items():
        u, t, k = (np.array(x, dtype=float) for x in zip(*v))
        c, w = _line(u, t)
        prefixes[p] = (float(np.median(k)), c, w)
    serial = [(r["partitions"], _serial(r) if dedicated else r["serial"]) for r in runs]
    a, b = _line(*(np.array(x, dtype=float) for x in zip(*serial)))
    return {"prefixes": prefixes, "serial": (a, b), "dedicated": dedicated}


def _serial(run: dict) -> float:
    """The serial time on a machine of one's own: deflated by the core share the workers got (the
    driver competed for the same cores; its CPU seconds overlap the tasks, so they are no bound)."""
    return run["serial"] * run["core_share"]


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """``y = c + w x`` by least squares, both >= 0 (proportional if the intercept would be negative)."""
    if len(set(x.tolist())) < 2:
        return 0.0, float(np.mean(y / x))
    c, w = np.linalg.lstsq(np.c_[np.ones_like(x), x], y, rcond=None)[0]
    if c < 0:
        return 0.0, float(np.sum(x * y) / np.sum(x * x))
    if w < 0:
        return float(np.mean(y)), 0.0
    return float(c), float(w)


def default_partitions(units: int) -> int:
    return max(1, -(-units // PARTITION_UNITS))


def predict(model: dict, units: int, workers: int, partitions: int | None = None, hop: float = HOP) -> dict:
    """Seconds of the job at ``units`` on ``workers`` single-threaded workers, ``partitions`` parts."""
    P = partitions or default_partitions(units)
    a, b = model["serial"]
    serial = a + b * P
    waves = math.ceil(P / workers)
    depth = math.ceil(math.log(P, 8)) + 1 if P > 1 else 1
    compute = sched = 0.0
    by_prefix = {}
    for p, (k, c, w) in model["prefixes"].items():
        t = c + w * units / P
        s = k * (waves * t + depth * hop)
        by_prefix[p] = s
        compute += s
        sched += SCHED * k * (P + P / 7 + depth)
    total = serial + max(compute, sched)
    return {"units": units, "workers": workers, "partitions": P, "serial_s": serial, "compute_s": compute,
            "total_s": total, "top": sorted(by_prefix.items(), key=lambda kv: -kv[1])[:4]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calibrate", nargs="+", type=Path, required=True, help="task-stream stems (X for X.csv/X.json)")
    ap.add_argument("--check", nargs="*", type=Path, default=[], help="measured runs to compare with the model")
    ap.add_argument("--predict", nargs="*", type=int, default=[2_800_000, 28_000_000])
    ap.add_argument("--workers", nargs="*", type=int, default=[2, 16, 64])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    runs = [load_run(s) for s in args.calibrate]
    out = {"calibration": [{k: r[k] for k in ("name", "units", "partitions", "wall", "serial", "core_share")}
                           for r in runs], "checks": [], "predictions": []}
    print("calibration runs: " + "; ".join(f"{r['name']}: {r['units']:,} units, {r['partitions']} partitions, wall "
                                             f"{r['wall']:.1f} s, serial {r['serial']:.1f} s, core share "
                                             f"{r['core_share']:.0%}" for r in runs))
    measured = calibrate(runs)
    for s in args.check:
        r = load_run(s)
        slots = r["threads"]
        pred = predict(measured, r["units"], slots, r["partitions"])
        out["checks"].append({"name": r["name"], "units": r["units"], "measured_s": r["wall"],
                              "predicted_s": pred["total_s"], "ratio": pred["total_s"] / r["wall"]})
        print(f"check {r['name']}: {r['units']:,} units on {slots} slots, {r['partitions']} partitions: measured "
              f"{r['wall']:.1f} s, model {pred['total_s']:.1f} s (model / measured {pred['total_s'] / r['wall']:.2f})")
    for dedicated in (False, True):
        model = calibrate(runs, dedicated=dedicated)
        label = "dedicated cores" if dedicated else "as measured here"
        for u in args.predict:
            for n in args.workers:
                d = default_partitions(u)  # and a whole number of waves of n tasks
                for P in sorted({d, max(d, n), -(-d // n) * n}):
                    pred = predict(model, u, n, P)
                    out["predictions"].append({"mode": label, **{k: v for k, v in pred.items() if k != "top"}})
                    top = ", ".join(f"{p} {s:.1f}" for p, s in pred["top"])
                    print(f"[{label}] {u:>11,} units, {n:>3} workers, {P:>4} partitions: {pred['total_s']:7.1f} s "
                          f"(serial {pred['serial_s']:.1f}, tasks {pred['compute_s']:.1f}; top: {top})")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
