"""A job's estimators one after another vs side by side on one loaded panel (issue 18's lever
"running the estimators concurrently").

The job's panel is loaded once on the job's cluster profile (``local``: its worker settings, as
``dte-dask run`` starts it); then the job's estimators are fitted in turn (``seq``, as the runner
does) and at once from one thread each (``together``: their passes interleave on the workers), the
two alternating ``--repeats`` times. Prints each wall time, the workers' peak RSS during the fits
(sampled every 50 ms) and the ratio of the medians. The results of the two ways are the same
numbers (checked: every estimate and standard error equal).

    python benchmarks/estimators_together.py --data DATA_DIR --repeats 2
"""
from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

JOB = Path(__file__).resolve().parent / "jobs" / "medical_policy.yaml"
GiB = 2**30


def _peak_rss(pids: list[int], stop: threading.Event, out: list[int]) -> None:
    import psutil

    peak = 0
    while not stop.is_set():
        total = 0
        for pid in pids:
            try:
                total += psutil.Process(pid).memory_info().rss
            except psutil.Error:
                pass
        peak = max(peak, total)
        time.sleep(0.05)
    out.append(peak)


def _fit(job, panel, client, together: bool) -> tuple[float, float, list]:
    from dte_dask.jobs.runner import fit_estimator

    pids = list(client.run(os.getpid).values())
    stop, peak = threading.Event(), []
    sampler = threading.Thread(target=_peak_rss, args=(pids, stop, peak))
    sampler.start()
    t = time.perf_counter()
    if together:
        with ThreadPoolExecutor(len(job.estimators)) as ex:
            results = list(ex.map(lambda e: fit_estimator(job, e, panel), job.estimators))
    else:
        results = [fit_estimator(job, e, panel) for e in job.estimators]
    wall = time.perf_counter() - t
    stop.set()
    sampler.join()
    return wall, peak[0] / GiB, results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--job", type=Path, default=JOB)
    ap.add_argument("--data", type=Path, required=True, help="the job's panel as parquet (dte-dask simulate)")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    from dte_dask.cluster import connect
    from dte_dask.jobs.runner import _cluster_threads, load_job_panel
    from dte_dask.jobs.spec import parse_job

    job = parse_job(args.job)
    job = job.model_copy(update={"data": job.data.model_copy(update={"source": str(args.data)})})
    with connect(job.cluster.profile, **job.cluster.overrides) as client:
        panel = load_job_panel(job, threads=_cluster_threads(client))
        print(f"panel: {panel.n_units:,} units x {panel.n_periods} periods, {panel.npartitions} partitions; "
              f"estimators: {', '.join(e.name for e in job.estimators)}")
        walls: dict[str, list[float]] = {"seq": [], "together": []}
        first: dict[str, list] = {}
        for r in range(args.repeats):
            for mode in ("seq", "together"):
                wall, peak, results = _fit(job, panel, client, mode == "together")
                walls[mode].append(wall)
                first.setdefault(mode, results)
                print(f"{mode:9s} run {r + 1}: {wall:6.2f} s, workers' peak RSS {peak:.2f} GiB")
    for a, b in zip(first["seq"], first["together"]):
        np.testing.assert_array_equal(np.asarray(a.estimates), np.asarray(b.estimates))
        np.testing.assert_array_equal(np.asarray(a.se), np.asarray(b.se))
    med = {k: statistics.median(v) for k, v in walls.items()}
    print(f"median: one after another {med['seq']:.2f} s, side by side {med['together']:.2f} s "
          f"(side by side / in turn = {med['together'] / med['seq']:.3f}); estimates and SEs equal")


if __name__ == "__main__":
    main()
