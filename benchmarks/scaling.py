"""Scaling study (issue 6): time and peak memory vs units, workers, and a model for big clusters.

**Measurements.** For each panel size (``--sizes`` units at ``--periods``, plus ``--big`` cases such as
``10000000x10``) and each worker layout (``--configs``, ``WxT`` = W worker processes x T threads, the
memory ``--memory`` split evenly between them), one fresh subprocess starts a ``LocalCluster``,
warms every estimator up on a tiny panel (imports, first calls), then times

* ``load``: ``load_panel`` of the parquet directory written by the simulator (medical preset; at
  other than 24 periods cohorts 4/6/8), no covariates;
* ``attgt``: Callaway-Sant'Anna ATT(g,t), dr, never-treated controls, no covariates, analytic SEs;
* ``attgt_boot``: the same with a 999-draw multiplier bootstrap (uniform bands);
* ``event_study``: TWFE event study, binned endpoints, window -6..18 (at 24 periods), CRV1 SEs;
* ``stacked_did``: stacked DiD, window -5..12 (at 24 periods), CRV1 SEs.

The parent samples the RSS of the child's whole process tree (driver = client + scheduler, and the
workers) every ``--interval`` s (``run_medical.run_sampled``) and reports the peak of the sum within
each step (it includes the loaded panel, which stays in worker memory for every estimator; the
workers' freed memory is returned to the OS with ``malloc_trim`` between steps). The child records
Dask's task stream and, through a scheduler plugin, the time of every graph submitted (every
``compute``/``persist``: one *pass*); per pass it keeps the task prefixes, their counts, summed and
largest compute times and result sizes (``nbytes``).

**Model.** From the single-threaded runs (``1x1``) the per-task time of every prefix is fitted as
``c + w * u`` (``u`` units per partition), and every pass of a step is replayed for ``N`` compute
slots, ``C`` cores and ``P`` partitions::

    pass = driver gap + submit latency + max(makespan, tasks x sched) + depth(P) x (hop + bytes / bandwidth)
    makespan = sum over waves of ceil(P / N):  a x max(1, active / C),   a = sum_p k_p (c_p + w_p U / P)

(``k_p`` tasks of prefix p per partition in the pass; the driver gap, latency and per-task
round trip ``hop`` measured per pass on ``1x1``; ``depth`` = the fan-in-8 reduction tree).
Oversubscription (more slots than cores) enters through ``max(1, active / C)``; the check run
(``--check``, e.g. 8 workers x 1 thread on 2 cores with 65,536-unit partitions) tests that
against a measurement. For 16/64/256 workers (one core each) the model is evaluated with the
default partitions (262,144 units: the parallelism stops at the partition count) and with
``npartitions = N``, capped at one RNG block (16,384 units) per partition.

Examples::

    python benchmarks/scaling.py --quick                  # 1e4, 1e5 units; 1x1 and 2x1; no check, no big case
    python benchmarks/scaling.py                          # the full study (8 min on 2 cores)
    python benchmarks/scaling.py --cores 64 --memory 256GiB --sizes 1000000 2800000 10000000 \\
        --configs 1x1 8x1 64x1 --check 256x1:1000000:16384 --big 100000000x10
    python benchmarks/scaling.py --plot-only              # model + plots from the saved measurements

Measurements accumulate in ``--results`` (default ``benchmarks/img/scaling.json``; rows with the same
size, layout and step are replaced), so the study can be run in parts.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run_medical import run_sampled
from taskstream import flatten

DATA_DIR = HERE / "_data"
IMG_DIR = HERE / "img"
ESTIMATORS = ("attgt", "attgt_boot", "event_study", "stacked_did")
STEPS = ("load", *ESTIMATORS)
REDUCE_SUFFIXES = ("-sum", "-merge", "-root")
COLORS = {"load": "k", "attgt": "C0", "attgt_boot": "C1", "event_study": "C2", "stacked_did": "C3"}
MiB = 2**20


# ------------------------------------------------------------------------------------ data
def cohorts_for(periods: int) -> list[int] | None:
    return None if periods >= 17 else [4, 6, 8]  # None: the medical preset's waves 4, 7, 10, 13, 16


def windows_for(periods: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(event-study window, stacked window): the medical job's at 24 periods."""
    if periods >= 24:
        return (-6, 18), (-5, 12)
    return (-3, periods - 4), (-3, 2)


def ensure_data(units: int, periods: int, root: Path, files: int | None = None) -> Path:
    """The simulated panel (cached); ``files``: number of parquet files (default ~262k units each)."""
    path = root / (f"scaling_{units}x{periods}" + (f"_f{files}" if files else ""))
    if not (path / "_dte_dask.json").exists():
        from dte_dask.simulate import write_panel

        kw = {"cohorts": cohorts_for(periods)} if cohorts_for(periods) else {}
        write_panel(path, units, periods, preset="medical", seed=0, overwrite=True, num_workers=2,
                    npartitions=files, **kw)
    return path


# ------------------------------------------------------------------------------------ child
def _graph_log():
    """Scheduler plugin: wall-clock time and size of every graph submitted (one per compute/persist)."""
    from distributed.diagnostics.plugin import SchedulerPlugin

    class GraphLog(SchedulerPlugin):
        name = "scaling-graph-log"

        def __init__(self):
            self.events: list[tuple[float, int]] = []

        def update_graph(self, scheduler, *, keys=(), tasks=(), **kwargs):
            self.events.append((time.time(), len(tasks)))

    return GraphLog()


def _import_all() -> None:
    import contextlib
    import importlib
    import pkgutil

    import dte_dask

    for mod in pkgutil.walk_packages(dte_dask.__path__, "dte_dask."):
        if not mod.name.startswith(("dte_dask.service", "dte_dask.cli")):
            with contextlib.suppress(Exception):  # optional extras may be missing
                importlib.import_module(mod.name)


def _trim() -> None:
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _run_estimator(name: str, panel, periods: int, n_boot: int):
    import dte_dask

    ev, st = windows_for(periods)
    if name == "attgt":
        return dte_dask.att_gt(panel, est_method="dr", control_group="never_treated", bootstrap=False)
    if name == "attgt_boot":
        return dte_dask.att_gt(panel, est_method="dr", control_group="never_treated", bootstrap=True,
                               n_boot=n_boot, seed=1)
    if name == "event_study":
        return dte_dask.event_study(panel, window=ev, bin_endpoints=True)
    if name == "stacked_did":
        return dte_dask.stacked_did(panel, window=st)
    raise ValueError(name)


def _passes(tasks, events: list[tuple[float, int]], start: float, stop: float) -> list[dict]:
    """Group the tasks of one step by the graph submission they followed."""
    evs = sorted(t for t, _ in events if start <= t <= stop)
    if tasks.empty or not evs:
        return []
    tasks = tasks.dropna(subset=["start"])
    tasks = tasks[(tasks["start"] >= evs[0]) & (tasks["start"] <= stop)].copy()
    import numpy as np

    tasks["pass"] = np.searchsorted(np.asarray(evs), tasks["start"].to_numpy(), side="right") - 1
    out = []
    prev_end = start
    for j, t_graph in enumerate(evs):
        tj = tasks[tasks["pass"] == j]
        if tj.empty:
            continue
        prefixes = {}
        for p, g in tj.groupby("prefix"):
            prefixes[p] = {"tasks": len(g), "compute": float(g["compute"].sum()),
                           "max": float(g["compute"].max()), "nbytes": float(g["nbytes"].mean())}
        first, last = float(tj["start"].min()), float(tj["stop"].max())
        per_worker = tj.groupby("worker")["compute"].sum()
        out.append({"gap": max(0.0, t_graph - prev_end), "latency": max(0.0, first - t_graph),
                    "wall": last - t_graph, "tasks": len(tj), "compute": float(tj["compute"].sum()),
                    "workers": len(per_worker), "busiest_worker": float(per_worker.max()),
                    "prefixes": prefixes})
        prev_end = last
    if out:
        out[-1]["tail"] = max(0.0, stop - prev_end)  # driver work after the last pass (results, summaries)
    return out


def child(spec_file: str) -> None:
    import warnings

    warnings.simplefilter("ignore")
    spec = json.loads(Path(spec_file).read_text())
    import dask
    from distributed import Client, LocalCluster, get_task_stream

    import dte_dask

    if spec.get("partition_units"):
        dask.config.set({"dte_dask.partition-units": int(spec["partition_units"])})
    out: dict = {"steps": {}}
    cluster = LocalCluster(n_workers=spec["workers"], threads_per_worker=spec["threads"],
                           memory_limit=spec["memory_limit"], processes=True, host="127.0.0.1",
                           dashboard_address="127.0.0.1:0")
    client = Client(cluster)
    log = _graph_log()
    cluster.scheduler.add_plugin(log, name=log.name)
    try:
        cols = {"unit": "unit", "time": "time", "outcome": "sbp", "group": "group"}
        small = dte_dask.simulate_panel(4000, spec["periods"], preset="medical", seed=3,
                                        **({"cohorts": cohorts_for(spec["periods"])} if cohorts_for(spec["periods"]) else {}))
        client.run(_import_all)  # every worker, not only those the warm-up tasks land on
        slots = spec["workers"] * spec["threads"]
        warm = dte_dask.load_panel(small.data.compute(), **cols, rng_block_size=16, npartitions=2 * slots)
        for est in spec["estimators"]:
            _run_estimator(est, warm, spec["periods"], 19)
        del warm
        client.run(_trim)
        time.sleep(0.5)
        with get_task_stream(client) as ts:
            marks = {}
            t, w = time.monotonic(), time.time()
            panel = dte_dask.load_panel(spec["data"], **cols)
            marks["load"] = (t, time.monotonic(), w, time.time())
            out["partitions"] = panel.npartitions
            out["rng_blocks"] = panel.n_rng_blocks
            out["rows"] = panel.n_rows
            client.run(_trim)
            time.sleep(0.5)
            for est in spec["estimators"]:
                t, w = time.monotonic(), time.time()
                _run_estimator(est, panel, spec["periods"], spec["n_boot"])
                marks[est] = (t, time.monotonic(), w, time.time())
                client.run(_trim)
                time.sleep(0.5)
        tasks = flatten(ts.data)
        out["block_bytes"] = float(tasks.loc[tasks["prefix"] == "panel-layout", "nbytes"].sum())
        for step, (m0, m1, w0, w1) in marks.items():
            out["steps"][step] = {"t0": m0, "t1": m1, "seconds": m1 - m0,
                                  "passes": _passes(tasks, log.events, w0, w1)}
    finally:
        client.close()
        cluster.close()
    Path(spec["out"]).write_text(json.dumps(out))


# ------------------------------------------------------------------------------------ parent
def parse_config(cfg: str) -> tuple[int, int]:
    w, t = cfg.lower().split("x")
    return int(w), int(t)


def measure(units: int, periods: int, config: str, *, data_root: Path, memory: int, n_boot: int,
            estimators, interval: float, timeout: float, partition_units: int | None = None) -> list[dict]:
    import numpy as np
    import psutil

    workers, threads = parse_config(config)
    # with small partitions, write as many files: the loader reads one task per file, and the blocks
    # of a file stay on the worker that read it (locality), so fewer files than workers idles workers
    files = -(-units // partition_units) if partition_units else None
    data = ensure_data(units, periods, data_root, files)
    with tempfile.TemporaryDirectory(prefix="dte_scaling_") as tmp:
        spec = {"data": str(data), "periods": periods, "workers": workers, "threads": threads,
                "memory_limit": memory // workers, "estimators": list(estimators), "n_boot": n_boot,
                "partition_units": partition_units, "out": str(Path(tmp) / "out.json")}
        spec_file = Path(tmp) / "spec.json"
        spec_file.write_text(json.dumps(spec))
        env = dict(os.environ, DASK_TEMPORARY_DIRECTORY=tmp)
        load0 = os.getloadavg()[0]
        res = run_sampled([sys.executable, str(Path(__file__).resolve()), "--_child", str(spec_file)],
                          env=env, interval=interval, scratch=Path(tmp), timeout=timeout,
                          log_file=Path(tmp) / "log.txt")
        load1 = os.getloadavg()[0]
        out = json.loads(Path(spec["out"]).read_text()) if Path(spec["out"]).exists() else None
        if out is None:
            tail = (Path(tmp) / "log.txt").read_text(errors="replace")[-1500:]
            print(tail, file=sys.stderr)
            return [{"units": units, "periods": periods, "config": config, "step": s, "error":
                     f"exit {res['returncode']}{' (timeout)' if res['timed_out'] else ''}"} for s in STEPS
                    if s == "load" or s in estimators]
    trace = np.array(res["trace"], dtype=float) if res["trace"] else np.zeros((0, 5))
    rows = []
    for step, st in out["steps"].items():
        a, b = st["t0"] - res["t0_monotonic"], st["t1"] - res["t0_monotonic"]
        sel = trace[(trace[:, 0] >= a - interval) & (trace[:, 0] <= b + interval)] if len(trace) else trace
        rows.append({
            "units": units, "periods": periods, "config": config, "workers": workers, "threads": threads,
            "memory_limit": memory, "partition_units": partition_units, "step": step,
            "seconds": st["seconds"], "peak_mib": float(sel[:, 1].max() / MiB) if len(sel) else None,
            "peak_workers_mib": float(sel[:, 3].max() / MiB) if len(sel) else None,
            "partitions": out["partitions"], "rng_blocks": out["rng_blocks"], "rows": out["rows"],
            "block_bytes": out["block_bytes"], "passes": st["passes"], "cores": psutil.cpu_count(),
            "loadavg": [round(load0, 2), round(load1, 2)],
        })
    return rows


def merge_rows(path: Path, new: list[dict]) -> list[dict]:
    old = json.loads(path.read_text()) if path.exists() else []
    key = lambda r: (r["units"], r["periods"], r["config"], r.get("partition_units"), r["step"])
    fresh = {key(r) for r in new}
    rows = [r for r in old if key(r) not in fresh] + new
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=0))
    return rows


# ------------------------------------------------------------------------------------ model
def _is_reduce(prefix: str) -> bool:
    return prefix.endswith(REDUCE_SUFFIXES)


def fit_costs(rows: list[dict], step: str, periods: int) -> dict[str, tuple[float, float]]:
    """Per prefix ``(c, w)``: task seconds = c + w * units per partition, from the 1x1 runs."""
    import numpy as np

    pts: dict[str, list[tuple[float, float, float]]] = {}
    for r in rows:
        if r["step"] != step or r["periods"] != periods or r["config"] != "1x1" or "error" in r:
            continue
        u = r["units"] / r["partitions"]
        for ps in r["passes"]:
            for p, d in ps["prefixes"].items():
                if not _is_reduce(p):
                    pts.setdefault(p, []).append((u, d["compute"] / d["tasks"], d["tasks"]))
    costs = {}
    for p, v in pts.items():
        u, t, n = (np.array(x, dtype=float) for x in zip(*v))
        if len(set(u)) < 2:
            costs[p] = (0.0, float(np.average(t, weights=n) / u.mean()))
            continue
        A = np.c_[np.ones_like(u), u] * np.sqrt(n)[:, None]
        c, w = np.linalg.lstsq(A, t * np.sqrt(n), rcond=None)[0]
        if c < 0:  # no measurable fixed cost: proportional
            c, w = 0.0, float(np.sum(n * t * u) / np.sum(n * u * u))
        costs[p] = (float(c), float(max(w, 0.0)))
    return costs


def reference(rows: list[dict], step: str, periods: int, units: int | None = None) -> dict | None:
    """The 1x1 run of ``step`` used as the pass template: the one nearest to ``units`` (log scale),
    the largest if ``units`` is None."""
    cand = [r for r in rows if r["step"] == step and r["periods"] == periods and r["config"] == "1x1"
            and "error" not in r and not r.get("partition_units")]
    if not cand:
        return None
    if units is None:
        return max(cand, key=lambda r: r["units"])
    return min(cand, key=lambda r: (abs(math.log(r["units"] / units)), -r["units"]))


def contention(rows: list[dict], step: str, periods: int) -> float:
    """Slow-down of the tasks when every core is busy: summed compute of the widest single-threaded
    layout (``Cx1``, C = cores) over that of ``1x1``, at the largest size measured with both."""
    def compute(r):
        return sum(d["compute"] for ps in r["passes"] for p, d in ps["prefixes"].items() if not _is_reduce(p))

    best = None
    for r in rows:
        if (r["step"] != step or r["periods"] != periods or "error" in r or r.get("partition_units")
                or r["threads"] != 1 or r["workers"] != r["cores"] or r["workers"] < 2):
            continue
        ref = [q for q in rows if q["step"] == step and q["periods"] == periods and q["config"] == "1x1"
               and q["units"] == r["units"] and "error" not in q and not q.get("partition_units")]
        if ref and (best is None or r["units"] > best[0]):
            best = (r["units"], compute(r) / compute(ref[0]))
    return max(1.0, best[1]) if best else 1.0


def predict(ref: dict, costs: dict, *, units: int, partitions: int, slots: int, cores: int,
            bandwidth: float = 1.25e9, hop: float | None = None, kappa: float = 1.0,
            sched: float = 1e-3) -> float:
    """Seconds for the step of ``ref`` at ``units`` with ``partitions`` on ``slots`` compute slots.

    ``kappa``: slow-down of a task while more than one core computes (shared memory bandwidth);
    ``sched``: seconds of the (single) scheduler's time per task (distributed documents about 1 ms);
    ``bandwidth``: bytes/s between workers for the reduction tree (10 GbE).
    """
    P_ref = ref["partitions"]
    total = 0.0
    for ps in ref["passes"]:
        n_red = sum(d["tasks"] for p, d in ps["prefixes"].items() if _is_reduce(p))
        n_map = ps["tasks"] - n_red
        # measured per-task round trip on one thread: wall not spent computing, per task
        rt = max(0.0, (ps["wall"] - ps["latency"] - ps["compute"]) / max(1, ps["tasks"]))
        h = rt if hop is None else hop
        a = 0.0
        out_bytes = 0.0
        for p, d in ps["prefixes"].items():
            if _is_reduce(p):
                continue
            k = d["tasks"] / P_ref
            c, w = costs.get(p, (0.0, d["compute"] / d["tasks"] / (ref["units"] / P_ref)))
            a += k * (c + w * units / partitions)
        # what travels up the tree: the partial sums (about the size of the reduction's own results);
        # the big per-partition intermediates (scores, long frames) stay on their worker
        out_bytes = max([d["nbytes"] for p, d in ps["prefixes"].items() if _is_reduce(p)], default=0.0)
        a += h * (n_map / P_ref)  # a partition's tasks follow each other, one round trip each
        makespan, left = 0.0, partitions
        while left > 0:
            active = min(slots, left)
            makespan += a * max(1.0, active / cores) * (kappa if min(active, cores) > 1 else 1.0)
            left -= active
        depth = math.ceil(math.log(partitions, 8)) + 1 if partitions > 1 else (1 if n_red else 0)
        reduce_t = depth * (h + 8 * out_bytes / bandwidth) if n_red else 0.0
        n_tasks = partitions * n_map / P_ref + (partitions / 7 + depth) * (n_red > 0)
        sched_t = sched * n_tasks  # the scheduler handles one task at a time, overlapping the compute
        total += ps["gap"] + ps["latency"] + max(makespan, sched_t) + reduce_t
        total += ps.get("tail", 0.0)
    return total


MODEL_KW: dict = {}


def predict_step(rows, step, periods, units, partitions, slots, cores, **kw):
    ref = reference(rows, step, periods, units)
    if ref is None:
        return None
    kw = {**MODEL_KW, **kw}
    kw.setdefault("kappa", contention(rows, step, periods))
    return predict(ref, fit_costs(rows, step, periods), units=units, partitions=partitions, slots=slots,
                   cores=cores, **kw)


def default_partitions(units: int, partition_units: int = 262144, block: int = 16384) -> int:
    n_blocks = -(-units // block)
    return -(-n_blocks // (partition_units // block))


# ------------------------------------------------------------------------------------ report
def memory_projection(rows: list[dict], units: int, periods: int, workers: int) -> dict | None:
    """Peak MiB per worker for N single-threaded workers, from the 1x1 run at ``units``:
    an idle worker (the smallest 1x1 measurement's worker RSS) + the panel blocks / N + the transient
    of the most demanding step (1x1 peak - idle - blocks), scaled by the partition size."""
    r1 = [r for r in rows if r["config"] == "1x1" and r["units"] == units and r["periods"] == periods
          and "error" not in r and not r.get("partition_units")]
    tiny = [r for r in rows if r["config"] == "1x1" and "error" not in r and r.get("peak_workers_mib")]
    if not r1 or not tiny:
        return None
    idle = min(r["peak_workers_mib"] for r in tiny)
    blocks = r1[0]["block_bytes"] / MiB
    transient = max(r["peak_workers_mib"] for r in r1) - idle - blocks
    p_def = r1[0]["partitions"]
    p_n = min(max(workers, p_def), -(-units // 16384))
    return {"workers": workers, "idle": idle, "blocks": blocks,
            "default": idle + blocks / min(workers, p_def) + transient,
            "scaled": idle + blocks / min(workers, p_n) + transient * p_def / p_n, "partitions": p_n}


def table(rows: list[dict]) -> str:
    lines = ["| units | periods | workers x threads | step | seconds | peak MiB (all processes) | partitions |",
             "|---:|---:|---|---|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["periods"], r["units"], r["config"], r.get("partition_units") or 0,
                                         STEPS.index(r["step"]))):
        cfg = r["config"] + (f" (partitions of {r['partition_units']:,})" if r.get("partition_units") else "")
        if "error" in r:
            lines.append(f"| {r['units']:,} | {r['periods']} | {cfg} | {r['step']} | {r['error']} | | |")
            continue
        lines.append(f"| {r['units']:,} | {r['periods']} | {cfg} | {r['step']} | {r['seconds']:.2f} | "
                     f"{r['peak_mib']:.0f} | {r['partitions']} |")
    return "\n".join(lines)


def model_rows(rows, periods: int, cores_model=(16, 64, 256), units_list=None):
    """Predictions of every step for the model's cluster sizes (one core per worker)."""
    out = []
    sizes = units_list or sorted({r["units"] for r in rows if r["periods"] == periods})
    for units in sizes:
        for step in STEPS:
            for n in sorted({1, 2, 4, 8, 32, 128, *cores_model}):
                p_def = default_partitions(units)
                p_max = -(-units // 16384)
                p_n = min(max(n, p_def), p_max)
                t_def = predict_step(rows, step, periods, units, p_def, n, n)
                t_n = predict_step(rows, step, periods, units, p_n, n, n)
                if t_def is not None:
                    out.append({"units": units, "periods": periods, "step": step, "workers": n,
                                "partitions_default": p_def, "seconds_default": t_def,
                                "partitions_scaled": p_n, "seconds_scaled": t_n})
    return out


def checks(rows, periods_list):
    """Model vs measurement for every non-1x1 run (the model has seen only 1x1 runs)."""
    out = []
    for r in rows:
        if r["config"] == "1x1" or "error" in r:
            continue
        w, t = r["workers"], r["threads"]
        pred = predict_step(rows, r["step"], r["periods"], r["units"], r["partitions"], w * t, r["cores"])
        if pred is not None:
            out.append({**{k: r[k] for k in ("units", "periods", "config", "step", "partitions", "seconds")},
                        "partition_units": r.get("partition_units"), "predicted": pred})
    return out


def plots(rows, model, chk, img: Path, command: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img.mkdir(parents=True, exist_ok=True)
    written = []
    ok = [r for r in rows if "error" not in r and not r.get("partition_units")]
    configs = sorted({r["config"] for r in ok})
    t24 = [r for r in ok if r["periods"] == 24]
    for what, fname, ylabel in (("seconds", "scaling_time.png", "seconds"),
                                ("peak_mib", "scaling_memory.png", "peak RSS, all processes (MiB)")):
        fig, axes = plt.subplots(1, len(STEPS), figsize=(4 * len(STEPS), 3.6), sharey=(what == "peak_mib"))
        for ax, step in zip(axes, STEPS):
            for i, cfg in enumerate(configs):
                pts = sorted((r["units"], r[what]) for r in t24 if r["step"] == step and r["config"] == cfg)
                if pts:
                    ax.plot(*zip(*pts), ("-o", "--s", ":^", "-.v")[i % 4], color=f"C{i}",
                            label=f"{cfg} (workers x threads)")
                big = [r for r in ok if r["periods"] != 24 and r["step"] == step and r["config"] == cfg]
                for r in big:
                    ax.plot([r["units"]], [r[what]], "*", color=f"C{i}", ms=11,
                            label=f"{r['units']:.0e} units x {r['periods']} periods, {cfg}")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(step)
            ax.set_xlabel("units (24 periods; stars: 10 periods)")
            ax.grid(True, which="both", alpha=0.3)
        axes[0].set_ylabel(ylabel)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"dte_dask scaling on this machine: {ylabel} vs panel size", fontsize=11)
        fig.text(0.01, 0.005, command, fontsize=7, family="monospace")
        fig.tight_layout(rect=(0, 0.06, 1, 0.95))
        fig.savefig(img / fname, dpi=110)
        plt.close(fig)
        written.append(img / fname)

    if model:
        units = max(m["units"] for m in model if m["periods"] == 24)
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
        ax = axes[0]
        for step, c in COLORS.items():
            ms = sorted((m for m in model if m["units"] == units and m["step"] == step), key=lambda m: m["workers"])
            ax.plot([m["workers"] for m in ms], [m["seconds_scaled"] for m in ms], "-o", color=c,
                    label=f"{step}, npartitions = workers")
            ax.plot([m["workers"] for m in ms], [m["seconds_default"] for m in ms], ":", color=c)
        meas = [r for r in ok if r["units"] == units and r["periods"] == 24 and r["threads"] == 1]
        for r in meas:
            ax.plot([r["workers"]], [r["seconds"]], "kx", ms=8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("workers (1 core each)")
        ax.set_ylabel("seconds")
        ax.set_title(f"model at {units:,} units x 24 (dotted: default partitions; x: measured)", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        ax = axes[1]
        if chk:
            for r in chk:
                mk = "o" if not r.get("partition_units") else "s"
                ax.plot(r["seconds"], r["predicted"], mk, color=COLORS[r["step"]], alpha=0.8)
            lim = [min(min(r["seconds"], r["predicted"]) for r in chk) * 0.7,
                   max(max(r["seconds"], r["predicted"]) for r in chk) * 1.4]
            ax.plot(lim, lim, "k-", lw=0.8)
            ax.plot(lim, [x * 1.25 for x in lim], "k:", lw=0.6)
            ax.plot(lim, [x / 1.25 for x in lim], "k:", lw=0.6)
            ax.set_xscale("log")
            ax.set_yscale("log")
            for step in STEPS:
                ax.plot([], [], "o", color=COLORS[step], label=step)
            ax.plot([], [], "s", color="grey", label="squares: many small workers (oversubscribed)")
            ax.legend(fontsize=7)
        ax.set_xlabel("measured seconds (configs other than 1x1)")
        ax.set_ylabel("model seconds (from the 1x1 runs + kappa)")
        ax.set_title("model check (dotted: +-25%)", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        fig.text(0.01, 0.005, command, fontsize=7, family="monospace")
        fig.tight_layout(rect=(0, 0.07, 1, 1))
        fig.savefig(img / "scaling_model.png", dpi=110)
        plt.close(fig)
        written.append(img / "scaling_model.png")
    return written


def caption(rows, command: str) -> str:
    """The commands that measured the rows (in order of first use) and the one that drew the plot."""
    made = list(dict.fromkeys(r.get("command") for r in rows if r.get("command")))
    text = "measured by: " + " ; ".join(made) if made else ""
    if command not in made:
        text += ("\n" if text else "") + "drawn by: " + command
    return text


def report(rows, args, command: str) -> None:
    command = caption(rows, command)
    periods_list = sorted({r["periods"] for r in rows})
    print(table(rows))
    model = [m for p in periods_list for m in model_rows(rows, p, tuple(args.model_workers))]
    chk = checks(rows, periods_list)
    kap = {st: round(contention(rows, st, args.periods), 2) for st in STEPS}
    print(f"\nkappa (task slow-down with every core busy) per step at {args.periods} periods: {kap}")
    if chk:
        print("\nmodel check (fitted on the 1x1 runs; kappa, the 2-core slow-down, from the widest layout "
              "at the largest size):\n")
        print("| units | config | step | partitions | measured s | model s | model / measured |")
        print("|---:|---|---|---:|---:|---:|---:|")
        for r in chk:
            cfg = r["config"] + (f" (partitions of {r['partition_units']:,})" if r.get("partition_units") else "")
            print(f"| {r['units']:,} x {r['periods']} | {cfg} | {r['step']} | {r['partitions']} | {r['seconds']:.2f} "
                  f"| {r['predicted']:.2f} | {r['predicted'] / r['seconds']:.2f} |")
    if model:
        print("\nmodel: seconds per step for N workers x 1 thread (one core each); "
              "default partitions / npartitions = N (capped at one RNG block each):\n")
        ns = [1, 2, *args.model_workers]
        print("| units | step | " + " | ".join(f"N={n}" for n in ns) + " |")
        print("|---:|---|" + "---:|" * len(ns))
        big = sorted({(m["units"], m["periods"]) for m in model})[-2:]
        for units, periods in big:
            for step in (*STEPS, "total"):
                cells = []
                for n in ns:
                    ms = [m for m in model if m["units"] == units and m["periods"] == periods and m["workers"] == n
                          and (step == "total" or m["step"] == step)]
                    if not ms:
                        cells.append("")
                        continue
                    d = sum(m["seconds_default"] for m in ms)
                    s = sum(m["seconds_scaled"] for m in ms)
                    cells.append(f"{d:.1f} / {s:.1f} ({ms[0]['partitions_scaled']})" if n > 2 else f"{d:.1f}")
                print(f"| {units:,} x {periods} | {step} | " + " | ".join(cells) + " |")
    if model:
        units, periods = max((m["units"], m["periods"]) for m in model if m["periods"] == args.periods) \
            if any(m["periods"] == args.periods for m in model) else (None, None)
        proj = [memory_projection(rows, units, periods, n) for n in (1, 2, *args.model_workers)] if units else []
        if proj and proj[0]:
            print(f"\nmemory per worker at {units:,} x {periods} (MiB; idle worker {proj[0]['idle']:.0f}, "
                  f"panel blocks {proj[0]['blocks']:.0f} in all): default partitions / npartitions = N\n")
            print("| workers | " + " | ".join(str(m["workers"]) for m in proj) + " |")
            print("|---|" + "---:|" * len(proj))
            print("| MiB per worker | " + " | ".join(f"{m['default']:.0f} / {m['scaled']:.0f}" for m in proj) + " |")
    if not args.no_plots:
        for p in plots(rows, model, chk, args.img, command):
            print(f"wrote {p}")
    if args.model_json:
        args.model_json.write_text(json.dumps({"model": model, "checks": chk}, indent=0))


def main(argv=None) -> int:
    import dask.utils
    import psutil

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cores", type=int, default=os.cpu_count(), help="cores to use (default: all)")
    ap.add_argument("--memory", default=None,
                    help="memory for the workers in all, e.g. 16GiB (default: 60%% of RAM, at most 16 GiB)")
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000, 2_800_000],
                    help="units (at --periods)")
    ap.add_argument("--periods", type=int, default=24)
    ap.add_argument("--big", nargs="*", default=["10000000x10"],
                    help="extra UNITSxPERIODS cases, run on the widest config only (nothing: skip)")
    ap.add_argument("--configs", nargs="*", default=None,
                    help="WORKERSxTHREADS layouts (default: 1x1 and CORESx1)")
    ap.add_argument("--check", nargs="*", default=None,
                    help="many-small-workers runs WORKERSxTHREADS:UNITS:PARTITION_UNITS "
                         "(default: 4*CORES x 1 at 1e6 units, 65,536-unit partitions, one file each)")
    ap.add_argument("--estimators", nargs="+", default=list(ESTIMATORS), choices=ESTIMATORS)
    ap.add_argument("--n-boot", type=int, default=999)
    ap.add_argument("--repeat", type=int, default=1,
                    help="run every measurement this many times and keep, per step, the fastest (shared machines)")
    ap.add_argument("--model-workers", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--sched-ms", type=float, default=1.0,
                    help="model: scheduler time per task (ms; distributed documents ~1 ms)")
    ap.add_argument("--bandwidth", default="1.25GB", help="model: bytes/s between workers (10 GbE)")
    ap.add_argument("--quick", action="store_true", help="1e4 and 1e5 units, no big case, no check run")
    ap.add_argument("--plot-only", action="store_true", help="no runs: model, tables and plots from --results")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--results", type=Path, default=IMG_DIR / "scaling.json")
    ap.add_argument("--model-json", type=Path, default=None, help="also write the model's predictions")
    ap.add_argument("--img", type=Path, default=IMG_DIR)
    ap.add_argument("--data-dir", type=Path, default=DATA_DIR, help="where the simulated panels are cached")
    ap.add_argument("--interval", type=float, default=0.2, help="RSS sampling period (s)")
    ap.add_argument("--timeout", type=float, default=590, help="seconds per subprocess")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        child(args._child)
        return 0
    command = "python benchmarks/scaling.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    MODEL_KW.update(sched=args.sched_ms / 1e3, bandwidth=float(dask.utils.parse_bytes(args.bandwidth)))
    if args.plot_only:
        report(json.loads(args.results.read_text()), args, command)
        return 0
    cores = args.cores
    total = psutil.virtual_memory().total
    memory = dask.utils.parse_bytes(args.memory) if args.memory else min(int(0.6 * total), 16 * 2**30)
    configs = args.configs or ["1x1", f"{cores}x1"]
    if args.quick:
        args.sizes = [s for s in args.sizes if s <= 100_000] or [10_000, 100_000]
        args.big, args.check = [], []
    check = args.check if args.check is not None else [f"{4 * cores}x1:1000000:65536"]
    plan = [(u, args.periods, c, None) for u in args.sizes for c in configs]
    widest = max(configs, key=lambda c: math.prod(parse_config(c)))
    for b in args.big:
        u, p = (int(x) for x in b.lower().split("x"))
        plan.append((u, p, widest, None))
        if "1x1" in configs and p != args.periods:
            plan.append((u, p, "1x1", None))  # a reference for the model at these periods
    for c in check:
        cfg, u, pu = c.split(":")
        plan.append((int(u), args.periods, cfg, int(pu)))
    rows: list[dict] = []
    for units, periods, cfg, pu in plan:
        t = time.perf_counter()
        tries = [measure(units, periods, cfg, data_root=args.data_dir, memory=memory, n_boot=args.n_boot,
                         estimators=args.estimators, interval=args.interval, timeout=args.timeout,
                         partition_units=pu) for _ in range(max(1, args.repeat))]
        new = []
        for i, step_row in enumerate(tries[0]):
            cands = [t[i] for t in tries if "error" not in t[i]] or [step_row]
            best = min(cands, key=lambda r: r.get("seconds", math.inf))
            new.append({**best, "repeats": len(tries), "all_seconds": [t[i].get("seconds") for t in tries],
                        "command": command})
        rows = merge_rows(args.results, new)
        desc = ", ".join(f"{r['step']} {r['seconds']:.1f}s/{r['peak_mib']:.0f}MiB" if "error" not in r
                         else f"{r['step']} {r['error']}" for r in new)
        print(f"# {units:,} x {periods} {cfg}{f' pu={pu}' if pu else ''} ({time.perf_counter() - t:.0f} s): {desc}",
              file=sys.stderr, flush=True)
    report(rows, args, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
