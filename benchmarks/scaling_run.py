"""Scaling study, measurements: the simulated panels, the child process that times every step on a
fresh LocalCluster (task stream and graph passes recorded), and the parent that samples its RSS.

Run as ``python benchmarks/scaling_run.py SPEC.json`` only by :func:`measure`."""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_medical import run_sampled
from scaling_common import STEPS, MiB
from taskstream import flatten


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


def passes(tasks, events: list[tuple[float, int]], start: float, stop: float) -> list[dict]:
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
    import dte_dask
    from distributed import Client, LocalCluster, get_task_stream

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
                                  "passes": passes(tasks, log.events, w0, w1)}
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
        res = run_sampled([sys.executable, str(Path(__file__).resolve()), str(spec_file)],
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


if __name__ == "__main__":
    child(sys.argv[1])
