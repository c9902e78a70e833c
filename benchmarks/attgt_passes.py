"""Callaway-Sant'Anna with covariates pass by pass: how many reductions over the panel, and their time.

``att_gt`` (doubly robust, never-treated controls, the medical job's covariates) on a parquet panel
loaded once on a cluster profile (default ``local``). Every reduction of the estimator's kernel
(``stats``, ``logit``, ``moments``: :func:`dte_dask.graph.attgt.run_kernel`) is timed as the driver
sees it, then the whole fit without and with a multiplier bootstrap:

    python benchmarks/attgt_passes.py --data DATA_DIR [--repeats 2] [--draws 999]

``DATA_DIR``: ``dte-dask simulate --preset medical --units 2800000 --periods 24 --out DATA_DIR``.
"""
from __future__ import annotations

import argparse
import time

import dte_dask
from dte_dask.cluster import connect
from dte_dask.graph import attgt as attgt_graph
from dte_dask.graph.reduce import compute

COLUMNS = dict(unit="unit", time="time", outcome="sbp", group="group", covariates=["age", "bmi", "female"])


class _Timed:
    """The delayed sum of one pass, its ``compute()`` timed into ``log``."""

    def __init__(self, delayed, name: str, log: list) -> None:
        self.delayed, self.name, self.log = delayed, name, log

    def compute(self):
        t = time.perf_counter()
        out = compute(self.delayed)[0]
        self.log.append((self.name.removeprefix("attgt-"), time.perf_counter() - t))
        return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--profile", default="local")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--draws", type=int, default=999)
    args = ap.parse_args(argv)
    log: list[tuple[str, float]] = []
    exact_sum, compute = attgt_graph._exact_sum, attgt_graph.compute
    attgt_graph._exact_sum = lambda panel, func, *a, name: _Timed(exact_sum(panel, func, *a, name=name), name, log)
    attgt_graph.compute = lambda *objs, **kw: (tuple(o.compute() for o in objs)
                                               if any(isinstance(o, _Timed) for o in objs) else compute(*objs, **kw))
    with connect(args.profile):
        panel = dte_dask.load_panel(args.data, **COLUMNS)
        print(f"panel: {panel.n_units:,} units x {panel.n_periods} periods, {panel.npartitions} partitions, "
              f"{panel.n_rng_blocks} RNG blocks")
        for rep in range(args.repeats):
            for draws in (0, args.draws):
                log.clear()
                t = time.perf_counter()
                dte_dask.att_gt(panel, control_group="never_treated", est_method="dr", bootstrap=draws > 0,
                               n_boot=max(draws, 2), seed=1)
                wall = time.perf_counter() - t
                passes = " ".join(f"{n} {s:.2f}" for n, s in log)
                print(f"run {rep + 1}, {draws} draws: {wall:.2f} s; {len(log)} passes before the influence pass "
                      f"({sum(s for _, s in log):.2f} s): {passes}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
