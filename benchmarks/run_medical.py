"""Headline benchmark (issue 6): the medical policy job end to end, timed and memory-sampled.

Launches ``dte-dask run JOB --data DATA --out OUT [--profile P]`` as a subprocess (its own session)
and samples the RSS of **every process of its tree** every ``--interval`` seconds (default 0.5):
the driver (the ``dte-dask run`` process, which holds the client, the scheduler and the nannies of
a LocalCluster) and the worker processes it spawns. Reported:

* wall time of the whole command, from parquet on disk (``--cold`` first evicts the data files from
  the page cache with ``posix_fadvise(DONTNEED)``, so the files are really read from disk);
* peak total RSS of the tree (the sum at one sampling instant), peak RSS of the driver and of each
  worker process (each its own maximum over time);
* spilling: the workers' scratch space is a fresh directory (``DASK_TEMPORARY_DIRECTORY``), whose
  size is sampled (peak bytes on disk), and the bytes the worker processes wrote to / read from
  storage (``/proc/PID/io`` ``write_bytes`` / ``read_bytes``, as last seen before each exited);
* the **parquet-read floor** measured in the same run, before the job: the job's columns (unit,
  time, outcome, group, covariates) of every file read with ``pyarrow.parquet.read_table``, the
  fastest of ``--floor-repeats`` reads (default 3; each cold with ``--cold``, and the files are
  evicted again before the job), and the job's wall time as a multiple of it (issue 18: <= 6x);
* the job's CPU time split into user and kernel time, with the tree's minor page faults, and the
  rate at which a new process of this machine fills memory it has just allocated, the first time
  and again (on a VM whose host takes freed guest memory back, paging in costs the job kernel
  time the floor's reader, which reuses its buffers, does not pay);
* the job's own step timings (``OUT/summary.json``), and
* the **truth check**: the simulator's true dynamic effect at each event time e (the
  cohort-size-weighted mean over cohorts of ``att(g, g+e)``, truth from ``DATA/_truth.csv``, sizes
  from ``DATA/_dte_dask.json`` ``cohort_counts``, over the cohorts that have period ``g+e``) against
  the CS dynamic aggregation's 95% uniform band (``OUT/estimators/att_gt.dynamic.csv``,
  ``band_lower``/``band_upper`` of the result schema).

Examples (``DATA_DIR`` from ``dte-dask simulate --preset medical --units 2800000 --periods 24
--out DATA_DIR``; ``--simulate`` writes it first if it is missing; ``--patients`` sets the size)::

    python benchmarks/run_medical.py --data DATA_DIR --out OUT_DIR --cold
    python benchmarks/run_medical.py --data DATA_DIR --out OUT_DIR --profile benchmarks/profiles/ooc_2x3g.yaml
    python benchmarks/run_medical.py --patients 300000 --simulate --data DATA_300K --out OUT_DIR
    # issue 18 point 4: 28M patients out of core, 2 workers x 1 thread with 4 GiB each (8 GiB < the data)
    python benchmarks/run_medical.py --patients 28000000 --simulate --sim-npartitions 428 --data DATA_28M \
        --out OUT_DIR --cold --workers 2 --threads 1 --memory-limit 4GiB \
        --env DASK_DTE_DASK__PARTITION_UNITS=65536 --timeout 36000 --target-ratio 0 --target-gib 10

``--workers/--threads/--memory-limit`` write a ``local`` cluster profile into ``OUT_DIR`` and run the
job on it (a LocalCluster whose workers spill beyond the memory limit).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_attgt import _kill_tree

JOB = HERE / "jobs" / "medical_policy.yaml"
GiB = 2**30


# ------------------------------------------------------------------------------------ data
def ensure_data(path: Path, units: int, periods: int, simulate: bool, npartitions: int | None = None) -> dict:
    """The simulator metadata of ``path`` (checked against units/periods); simulate if asked."""
    meta_file = path / "_dte_dask.json"
    if not meta_file.exists():
        if not simulate:
            raise SystemExit(f"{path}: no _dte_dask.json (use --simulate to write the panel)")
        cmd = ["dte-dask", "simulate", "--preset", "medical", "--units", str(units),
               "--periods", str(periods), "--out", str(path), "--overwrite"]
        subprocess.run(cmd + (["--npartitions", str(npartitions)] if npartitions else []), check=True)
    meta = json.loads(meta_file.read_text())
    if (meta["n_units"], meta["n_periods"]) != (units, periods):
        raise SystemExit(f"{path} holds {meta['n_units']} x {meta['n_periods']}, not {units} x {periods}")
    return meta


def evict_page_cache(path: Path) -> int:
    """Drop the data files from the page cache (this process's files only); returns the bytes."""
    total = 0
    os.sync()  # dirty pages (a panel just written) cannot be dropped
    for f in sorted(path.glob("*.parquet")):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            total += os.fstat(fd).st_size
        finally:
            os.close(fd)
    return total


def job_columns(job: Path) -> list[str]:
    """The columns the job reads: its unit, time, outcome, group and covariates."""
    import yaml

    data = yaml.safe_load(job.read_text())["data"]
    cols = [data[k] for k in ("unit", "time", "outcome", "group", "treatment", "weights", "cluster") if data.get(k)]
    return cols + list(data.get("covariates") or [])


def read_floor(path: Path, columns: list[str], cold: bool, repeats: int = 1) -> dict:
    """Seconds to read ``columns`` of every parquet file of ``path`` with pyarrow (the job's
    input, nothing else): the floor a job that reads its data cannot go below.

    Read ``repeats`` times (each cold with ``cold``); the floor is the fastest read, the one whose
    figures are returned, with every read's seconds in ``reads_s``. On a VM the same read can take
    three times longer from one minute to the next (pyarrow's buffers are paged in at the rate
    the host gives), while the job's time moves far less: a single slow read would make the ratio
    look met."""
    import pyarrow.parquet as pq

    runs = []
    for _ in range(max(1, repeats)):
        if cold:
            evict_page_cache(path)
        t, cpu = time.perf_counter(), time.process_time()
        rows = nbytes = 0
        for f in sorted(path.glob("*.parquet")):
            tab = pq.read_table(f, columns=columns)
            rows += tab.num_rows
            nbytes += tab.nbytes
            del tab
        runs.append({"read_s": time.perf_counter() - t, "cpu_s": time.process_time() - cpu, "rows": rows,
                     "arrow_bytes": nbytes, "columns": columns, "cold": cold})
    return {**min(runs, key=lambda r: r["read_s"]), "reads_s": [r["read_s"] for r in runs]}


_TOUCH = """
import json, sys, time
import numpy as np
n = int(sys.argv[1]) * 2**20 // 8
t = time.perf_counter(); a = np.empty(n); a.fill(1.0); first = time.perf_counter() - t
t = time.perf_counter(); a.fill(2.0); again = time.perf_counter() - t
print(json.dumps([first, again]))
"""


def fresh_memory_rate(mib: int = 128) -> dict:
    """GiB/s at which a new process fills ``mib`` MiB of memory it has just allocated, the first
    time (the kernel pages it in: on a VM whose host takes back freed guest memory this costs
    tens of times what touching it again does) and again. The job pays the first rate for every
    byte its processes page in; the floor's reader reuses one buffer pool, file after file."""
    out = subprocess.run([sys.executable, "-c", _TOUCH, str(mib)], capture_output=True, text=True, check=True)
    first, again = json.loads(out.stdout)
    return {"mib": mib, "first_gib_s": mib / 1024 / first, "again_gib_s": mib / 1024 / again}


def write_profile(out: Path, workers: int, threads: int, memory_limit: str | None) -> Path:
    """A ``local`` cluster profile with this layout, written into ``out``."""
    import yaml

    cluster = {"n_workers": workers, "threads_per_worker": threads, "processes": True, "host": "127.0.0.1",
               "scheduler_port": 0, "dashboard_address": "127.0.0.1:0"}
    if memory_limit:
        cluster["memory_limit"] = memory_limit
    prof = {"version": 1, "kind": "local", "wait_timeout": 120, "cluster": cluster,
            "description": f"run_medical: {workers} workers x {threads} threads, {memory_limit or 'default'} each"}
    path = out / "run_medical_profile.yaml"
    path.write_text(yaml.safe_dump(prof, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------ truth
def true_dynamic(data_dir: Path) -> pd.Series:
    """True dynamic effect by event time: cohort-size-weighted mean of att(g, g+e)."""
    meta = json.loads((data_dir / "_dte_dask.json").read_text())
    sizes = {int(g): n for g, n in meta["cohort_counts"].items() if int(g) > 0}
    truth = pd.read_csv(data_dir / "_truth.csv")
    truth = truth[truth["group"].isin(list(sizes))].copy()
    truth["w"] = truth["group"].map(sizes).astype(float)
    agg = truth.groupby("event_time").apply(
        lambda d: float(np.average(d["att"], weights=d["w"])), include_groups=False)
    agg.name = "truth"
    return agg


def truth_check(data_dir: Path, out_dir: Path, name: str = "att_gt") -> pd.DataFrame:
    """The truth beside the CS dynamic aggregation and its uniform band, one row per event time."""
    est = pd.read_csv(out_dir / "estimators" / f"{name}.dynamic.csv")
    est = est.set_index("event_time")
    tab = est[["estimate", "band_lower", "band_upper"]].join(true_dynamic(data_dir), how="left")
    tab["inside"] = (tab["truth"] >= tab["band_lower"]) & (tab["truth"] <= tab["band_upper"])
    return tab


# ------------------------------------------------------------------------------------ sampler
def _dir_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def _role(proc, root_pid: int) -> str | None:
    """'driver' (client + scheduler + nannies), 'worker' or None (helpers such as the resource tracker)."""
    if proc.pid == root_pid:
        return "driver"
    try:
        cmd = " ".join(proc.cmdline())
    except Exception:  # noqa: BLE001 - gone
        return None
    if "resource_tracker" in cmd or "semaphore_tracker" in cmd:
        return "helper"
    return "worker"


def run_sampled(cmd: list[str], *, env: dict, interval: float, scratch: Path, timeout: float,
                log_file: Path) -> dict:
    """Run ``cmd``; sample the tree's RSS every ``interval`` s; return timings, peaks and a trace.

    ``trace`` rows are ``(seconds since t0_monotonic, total, driver, workers, scratch bytes)``;
    ``time.monotonic()`` is system-wide, so a child can mark phases on the same clock.
    """
    import resource

    import psutil

    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    peaks: dict[int, dict] = {}
    trace = []
    peak_total = peak_scratch = 0
    with open(log_file, "wb") as log:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        root = psutil.Process(proc.pid)
        timed_out = False
        while proc.poll() is None:
            now = time.monotonic() - t0
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                procs = []
            total, by_role = 0, {"driver": 0, "worker": 0, "helper": 0}
            for p in procs:
                try:
                    rss = p.memory_info().rss
                except psutil.Error:
                    continue
                rec = peaks.setdefault(p.pid, {"role": _role(p, proc.pid), "peak": 0, "io": None})
                rec["peak"] = max(rec["peak"], rss)
                if rec["role"] == "worker":
                    try:
                        io = p.io_counters()
                        rec["io"] = {"read_bytes": io.read_bytes, "write_bytes": io.write_bytes}
                    except (psutil.Error, AttributeError):
                        pass
                total += rss
                by_role[rec["role"] or "helper"] += rss
            scratch_bytes = _dir_bytes(scratch)
            peak_total = max(peak_total, total)
            peak_scratch = max(peak_scratch, scratch_bytes)
            trace.append((round(now, 2), total, by_role["driver"], by_role["worker"], scratch_bytes))
            if now > timeout:
                timed_out = True
                _kill_tree(proc.pid)
                break
            time.sleep(interval)
        proc.wait()
        wall = time.monotonic() - t0
    _kill_tree(proc.pid)  # leftovers, if any
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the tree's processes, as each was reaped
    user_s, sys_s = ru1.ru_utime - ru0.ru_utime, ru1.ru_stime - ru0.ru_stime
    cpu_s = user_s + sys_s
    workers = [r for r in peaks.values() if r["role"] == "worker"]
    driver = [r for r in peaks.values() if r["role"] == "driver"]
    return {
        "cmd": cmd, "t0_monotonic": t0, "returncode": proc.returncode, "timed_out": timed_out, "wall_s": wall,
        "cpu_s": cpu_s, "user_s": user_s, "sys_s": sys_s, "minor_faults": ru1.ru_minflt - ru0.ru_minflt,
        "peak_total_bytes": peak_total,
        "peak_driver_bytes": driver[0]["peak"] if driver else 0,
        "peak_worker_bytes": sorted((r["peak"] for r in workers), reverse=True),
        "worker_processes": len(workers),
        "peak_scratch_bytes": peak_scratch,
        "worker_write_bytes": sum((r["io"] or {}).get("write_bytes", 0) for r in workers),
        "worker_read_bytes": sum((r["io"] or {}).get("read_bytes", 0) for r in workers),
        "trace": trace,
    }


def public(text: str, args) -> str:
    """``text`` with this machine's paths replaced by the placeholders of the docs."""
    root = str(HERE.parent) + os.sep
    named = [(args.data, "DATA_DIR"), (args.out, "OUT_DIR")]
    named += [(p, p.name) for p in (args.json, args.plot) if p is not None]  # the artefacts: file names only
    for path, name in named:
        text = text.replace(str(path.resolve()), name).replace(str(path), name)
    return text.replace(root, "")


def plot_trace(res: dict, path: Path, command: str) -> None:
    """RSS of the driver, the workers and all processes, and the spill folder, over the run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tr = np.array(res["trace"], dtype=float)
    fig, ax = plt.subplots(figsize=(9, 3.8))
    ax.plot(tr[:, 0], tr[:, 1] / GiB, "k-", label="all processes")
    ax.plot(tr[:, 0], tr[:, 3] / GiB, "C0-", label="workers")
    ax.plot(tr[:, 0], tr[:, 2] / GiB, "C1-", label="driver (client + scheduler + nannies)")
    if tr[:, 4].max() > 0:
        ax.plot(tr[:, 0], tr[:, 4] / GiB, "C3--", label="spilled to disk")
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in (res.get("job_timings") or {}).items() if k != "cluster_start")
    ax.set_title(f"wall {res['wall_s']:.0f} s, peak {res['peak_total_bytes'] / GiB:.2f} GiB; steps: {steps}", fontsize=9)
    ax.set_xlabel("seconds since launch")
    ax.set_ylabel("GiB")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    import textwrap

    fig.text(0.01, 0.01, "\n".join(textwrap.wrap(command, 150)), fontsize=7, family="monospace")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="the medical panel (parquet directory)")
    ap.add_argument("--out", type=Path, required=True, help="the job's output folder")
    ap.add_argument("--job", type=Path, default=JOB)
    ap.add_argument("--profile", default=None, help="cluster profile (name or YAML) for dte-dask run")
    ap.add_argument("--units", "--patients", dest="units", type=int, default=2_800_000,
                    help="patients in the panel (checked against DATA; written with --simulate)")
    ap.add_argument("--periods", type=int, default=24)
    ap.add_argument("--simulate", action="store_true", help="write the panel first if it is missing")
    ap.add_argument("--sim-npartitions", type=int, default=None, help="files the simulator writes (--simulate)")
    ap.add_argument("--workers", type=int, default=None, help="run on a local profile with this many workers")
    ap.add_argument("--threads", type=int, default=1, help="threads per worker (with --workers)")
    ap.add_argument("--memory-limit", default=None, help="memory limit per worker (with --workers), e.g. 4GiB")
    ap.add_argument("--no-floor", action="store_true", help="skip the parquet-read floor")
    ap.add_argument("--floor-repeats", type=int, default=3,
                    help="read the data this many times for the floor (each cold with --cold); the fastest counts")
    ap.add_argument("--cold", action="store_true", help="evict the parquet files from the page cache first")
    ap.add_argument("--interval", type=float, default=0.5, help="RSS sampling period (s)")
    ap.add_argument("--timeout", type=float, default=590, help="kill the run after this many seconds")
    ap.add_argument("--scratch", type=Path, default=None,
                    help="workers' scratch (spill) folder; default a fresh temporary folder, removed after")
    ap.add_argument("--env", action="append", default=[], metavar="K=V",
                    help="extra environment for the run (e.g. DASK_DISTRIBUTED__WORKER__MEMORY__TARGET=0.5)")
    ap.add_argument("--json", type=Path, default=None, help="write the measurement (with the RSS trace)")
    ap.add_argument("--plot", type=Path, default=None, help="write a PNG of the RSS trace")
    ap.add_argument("--target-s", type=float, default=300)
    ap.add_argument("--target-gib", type=float, default=3, help="peak RSS target, all processes (issue 18: 3)")
    ap.add_argument("--target-ratio", type=float, default=6,
                    help="wall-time target as a multiple of the parquet-read floor (issue 18: 6; 0: none)")
    args = ap.parse_args(argv)

    ensure_data(args.data, args.units, args.periods, args.simulate, args.sim_npartitions)
    args.out.mkdir(parents=True, exist_ok=True)
    floor = None if args.no_floor else read_floor(args.data, job_columns(args.job), args.cold, args.floor_repeats)
    memory = fresh_memory_rate()
    evicted = evict_page_cache(args.data) if args.cold else 0
    cmd = ["dte-dask", "run", str(args.job), "--data", str(args.data), "--out", str(args.out), "--no-progress"]
    if args.workers:
        if args.profile:
            raise SystemExit("give --profile or --workers, not both")
        args.profile = str(write_profile(args.out, args.workers, args.threads, args.memory_limit))
    if args.profile:
        cmd += ["--profile", str(args.profile)]
    own_scratch = args.scratch is None
    scratch = Path(tempfile.mkdtemp(prefix="dte_medical_scratch_")) if own_scratch else args.scratch
    scratch.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, DASK_TEMPORARY_DIRECTORY=str(scratch))
    for kv in args.env:
        k, _, v = kv.partition("=")
        env[k] = v
    log_file = args.out / "run_medical.log"
    load_before = os.getloadavg()
    try:
        res = run_sampled(cmd, env=env, interval=args.interval, scratch=scratch, timeout=args.timeout,
                          log_file=log_file)
    finally:
        if own_scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    res["evicted_bytes"] = evicted
    res["read_floor"] = floor
    res["fresh_memory"] = memory
    res["floor_ratio"] = res["wall_s"] / floor["read_s"] if floor else None
    # CPU seconds of the job's process tree over those of the read: the ratio a busy machine distorts least
    res["floor_cpu_ratio"] = res["cpu_s"] / floor["cpu_s"] if floor and floor["cpu_s"] > 0 else None
    res["loadavg"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]  # 1-min, before / after
    res["profile"] = args.profile
    summary_file = args.out / "summary.json"
    log_tail = log_file.read_text(errors="replace")[-3000:]
    if res["returncode"] != 0 or not summary_file.exists():
        print(log_tail, file=sys.stderr)
        print(f"FAILED: exit {res['returncode']} after {res['wall_s']:.1f} s", file=sys.stderr)
        if args.json:
            args.json.write_text(json.dumps(res, indent=1))
        return 1
    summary = json.loads(summary_file.read_text())
    meta = summary.get("metadata", summary)
    res["job_timings"] = meta.get("job_timings")
    res["cluster"] = meta.get("cluster")
    check = truth_check(args.data, args.out)
    res["truth_check"] = check.reset_index().to_dict(orient="records")
    res["truth_inside"] = int(check["inside"].sum())
    res["truth_n"] = int(check["truth"].notna().sum())

    print(f"command: {' '.join(cmd)}")
    print(f"cluster: {res['cluster']}")
    print(f"machine: {os.cpu_count()} CPUs; 1-min load average {res['loadavg'][0]} before, {res['loadavg'][1]} after"
          f"{f'; evicted {evicted / GiB:.2f} GiB of parquet from the page cache' if evicted else ''}")
    print(f"wall time            {res['wall_s']:8.1f} s   (target <= {args.target_s:.0f} s: "
          f"{'met' if res['wall_s'] <= args.target_s else 'MISSED'})")
    if floor:
        target = (f"target <= {args.target_ratio:g}x: {'met' if res['floor_ratio'] <= args.target_ratio else 'MISSED'}"
                  if args.target_ratio else "no target")
        print(f"parquet-read floor   {floor['read_s']:8.2f} s   ({len(floor['columns'])} columns, {floor['rows']:,} rows, "
              f"{floor['arrow_bytes'] / GiB:.2f} GiB as Arrow{', cold' if floor['cold'] else ''}"
              f"{'; fastest of ' + ' / '.join(f'{r:.2f}' for r in floor['reads_s']) + ' s' if len(floor['reads_s']) > 1 else ''}); "
              f"job = {res['floor_ratio']:.1f}x the floor ({target})")
        print(f"CPU time             {res['cpu_s']:8.1f} s   (all processes of the job) vs {floor['cpu_s']:.2f} s "
              f"for the read: {res['floor_cpu_ratio']:.1f}x")
    print(f"CPU time, split      {res['user_s']:8.1f} s user, {res['sys_s']:.1f} s kernel; "
          f"{res['minor_faults'] / 1e6:.2f}M minor page faults")
    print(f"fresh memory         {memory['first_gib_s']:8.2f} GiB/s filled the first time, {memory['again_gib_s']:.2f} GiB/s "
          f"again ({memory['mib']} MiB in a new process: what paging in costs on this machine)")
    print(f"peak RSS, all procs  {res['peak_total_bytes'] / GiB:8.2f} GiB (target <= {args.target_gib:g} GiB: "
          f"{'met' if res['peak_total_bytes'] <= args.target_gib * GiB else 'MISSED'})")
    print(f"peak RSS, driver     {res['peak_driver_bytes'] / GiB:8.2f} GiB (client + scheduler + nannies)")
    print("peak RSS, workers    " + ", ".join(f"{b / GiB:.2f}" for b in res["peak_worker_bytes"]) + " GiB")
    print(f"spill folder peak    {res['peak_scratch_bytes'] / GiB:8.2f} GiB; worker I/O "
          f"written {res['worker_write_bytes'] / GiB:.2f} GiB, read {res['worker_read_bytes'] / GiB:.2f} GiB")
    if res["job_timings"]:
        print("job steps (s)        " + ", ".join(f"{k} {v:.1f}" for k, v in res["job_timings"].items()))
    print(f"\ntruth check: true dynamic effect inside the CS 95% uniform band at "
          f"{res['truth_inside']}/{res['truth_n']} event times")
    with pd.option_context("display.width", 120, "display.max_rows", 100):
        print(check.round(4).to_string())
    command = public("python benchmarks/run_medical.py " + " ".join(sys.argv[1:]), args)
    if args.json:
        res["cmd"] = [public(c, args) for c in res["cmd"]]
        res["command"] = command
        res["profile"] = public(str(res["profile"]), args) if res.get("profile") else res.get("profile")
        args.json.write_text(json.dumps(res, indent=1, default=str))
    if args.plot:
        plot_trace(res, args.plot, command)
    return 0 if res["truth_inside"] == res["truth_n"] else 2


if __name__ == "__main__":
    sys.exit(main())
