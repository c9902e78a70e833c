"""Per-task-prefix profile of a dte_dask job from Dask's task stream (issue 6).

``summarize(records)`` turns ``client.get_task_stream()`` records into one row per task prefix
(``dask.utils.key_split`` of the key: ``attgt-influence``, ``panel-layout``, ``mboot-merge``, ...):
number of tasks, summed / mean / max compute seconds, transfer and spill (disk-read / disk-write)
seconds, and the bytes of the results (``nbytes``: for a reduction's input tasks, the size of what
travels up the tree). ``utilization`` compares the summed compute time with wall x threads.

As a command it runs a job spec in this process on its cluster profile (or ``--profile``) under
``get_task_stream`` and prints the table, the job's step timings and the busy fraction of the
threads, and optionally writes the records as CSV::

    python benchmarks/taskstream.py benchmarks/jobs/medical_policy.yaml --data DATA_DIR --out OUT_DIR
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd


def prefix_of(key) -> str:
    from dask.utils import key_split

    p = key_split(key)
    # dte_dask names picks of a partition result after the partition's key ("attgt-gram-attgt-influence-...")
    for head in ("attgt-gram", "mboot"):
        if p.startswith(head + "-") and not p.startswith(head + "-merge") and not p.startswith(head + "-sum"):
            return head + "-pick"
    return p


def flatten(records) -> pd.DataFrame:
    """One row per task: prefix, worker, start/stop of the compute, compute/transfer/disk seconds, nbytes."""
    rows = []
    for r in records:
        row = {"key": str(r["key"]), "prefix": prefix_of(r["key"]), "worker": r.get("worker"),
               "nbytes": r.get("nbytes") or 0, "compute": 0.0, "transfer": 0.0, "disk_read": 0.0,
               "disk_write": 0.0, "start": None, "stop": None}
        for ss in r.get("startstops", ()):
            action = ss["action"].replace("-", "_")
            d = ss["stop"] - ss["start"]
            if action in row:
                row[action] += d
            if action == "compute":
                row["start"], row["stop"] = ss["start"], ss["stop"]
        rows.append(row)
    return pd.DataFrame(rows)


def summarize(records) -> pd.DataFrame:
    """One row per prefix (sorted by summed compute time, largest first)."""
    df = records if isinstance(records, pd.DataFrame) else flatten(records)
    if df.empty:
        return pd.DataFrame()
    g = df.groupby("prefix")
    out = pd.DataFrame({
        "tasks": g.size(),
        "compute_s": g["compute"].sum(),
        "mean_s": g["compute"].mean(),
        "max_s": g["compute"].max(),
        "transfer_s": g["transfer"].sum(),
        "disk_s": g["disk_read"].sum() + g["disk_write"].sum(),
        "out_mib": g["nbytes"].sum() / 2**20,
        "out_max_mib": g["nbytes"].max() / 2**20,
        "span_s": g["stop"].max() - g["start"].min(),
    })
    out["share"] = out["compute_s"] / out["compute_s"].sum()
    return out.sort_values("compute_s", ascending=False)


def utilization(df: pd.DataFrame, wall: float, threads: int) -> float:
    """Summed compute time over wall x threads."""
    return float(df["compute"].sum() / (wall * threads)) if wall > 0 and threads else float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("job", type=Path)
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--profile", default=None)
    ap.add_argument("--csv", type=Path, default=None, help="write the per-task records")
    ap.add_argument("--json", type=Path, default=None, help="write the per-prefix table and timings")
    args = ap.parse_args(argv)

    from distributed import get_task_stream

    from dte_dask.cluster import connect
    from dte_dask.jobs.runner import run_job
    from dte_dask.jobs.spec import parse_job, with_overrides

    job = with_overrides(parse_job(args.job), data=args.data, out=args.out, profile=args.profile)
    with connect(job.cluster.profile, **job.cluster.overrides) as client:
        threads = sum(client.nthreads().values())
        t0, cpu0 = time.perf_counter(), time.process_time()
        with get_task_stream(client) as ts:
            summary = run_job(job, client=client, progress=False)
        wall, driver_cpu = time.perf_counter() - t0, time.process_time() - cpu0
    tasks = flatten(ts.data)
    table = summarize(tasks)
    meta = summary.get("metadata", summary)
    print(f"wall {wall:.1f} s on {threads} threads; busy {utilization(tasks, wall, threads):.0%} of thread time")
    print("job steps (s): " + ", ".join(f"{k} {v:.1f}" for k, v in (meta.get("job_timings") or {}).items()))
    with pd.option_context("display.width", 160, "display.max_rows", 200):
        print(table.round(3).to_string())
    if args.csv:
        tasks.to_csv(args.csv, index=False)
    if args.json:
        stages = (summary.get("diagnosis") or {}).get("stages", [])
        args.json.write_text(json.dumps({
            "wall": wall, "threads": threads, "job_timings": meta.get("job_timings"),
            # the driver process (client, scheduler, nannies): CPU seconds over the job
            "driver_cpu_s": driver_cpu, "panel_shape": meta.get("panel_shape"),
            # worker CPU seconds and task seconds per stage (their ratio: the share of a core a task got)
            "stages": [{k: st.get(k) for k in ("name", "wall_s", "cpu_s", "task_s")} for st in stages],
            "prefixes": table.reset_index().to_dict(orient="records")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
