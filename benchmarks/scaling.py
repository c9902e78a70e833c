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
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scaling_common import DATA_DIR, ESTIMATORS, IMG_DIR
from scaling_model import MODEL_KW
from scaling_report import report
from scaling_run import measure, merge_rows, parse_config


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
    args = ap.parse_args(argv)
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
