"""``dte-dask demo``: the main job on embedded data, on a LocalCluster.

Estimates ATT(g,t) with the multiplier bootstrap on the bundled mpdta panel and on a simulated
staggered-adoption panel, and prints the summaries, the dynamic aggregation and the dashboard link.
"""
from __future__ import annotations

import time

import click


def _run(label: str, data, columns: dict, n_boot: int, seed: int, echo) -> None:
    import dte_dask

    t0 = time.perf_counter()
    res = dte_dask.att_gt(data, n_boot=n_boot, seed=seed, **columns)
    dyn = res.aggregate("dynamic")
    elapsed = time.perf_counter() - t0
    echo(click.style(f"\n=== {label}: {res.n_units:,} units x {res.panel['periods']} periods "
                     f"({elapsed:.2f} s) ===", bold=True))
    echo(res.summary())
    echo("")
    echo(dyn.summary())
    pt = res.pretrend_test()
    echo(f"\nPre-trend Wald test: W = {pt['statistic']:.3f}, df = {pt['df']}, p = {pt['p_value']:.4f}")


@click.command(name="demo")
@click.option("--units", default=200_000, show_default=True, help="Units of the simulated panel.")
@click.option("--periods", default=10, show_default=True, help="Periods of the simulated panel.")
@click.option("--n-boot", default=999, show_default=True, help="Bootstrap draws.")
@click.option("--seed", default=2024, show_default=True, help="Seed of the simulation and the bootstrap.")
@click.option("--workers", default=None, type=int, help="LocalCluster workers (default: one per NUMA node).")
@click.option("--threads", default=None, type=int, help="Threads per worker.")
@click.option("--cluster/--no-cluster", default=True, show_default=True,
              help="Run on a LocalCluster (with its dashboard) or on dask's threaded scheduler.")
def command(units: int, periods: int, n_boot: int, seed: int, workers: int | None, threads: int | None, cluster: bool) -> None:
    """Run the main job on embedded data: mpdta (bundled) and a simulated panel."""
    import contextlib
    import warnings

    import dte_dask
    from dte_dask.exceptions import DteDaskWarning

    warnings.simplefilter("default", DteDaskWarning)
    stack = contextlib.ExitStack()
    with stack:
        if cluster:
            from distributed import Client, LocalCluster

            from dte_dask.cluster.numa import plan_workers, read_topology

            plans = plan_workers(read_topology())
            n_workers = workers or len(plans)
            nthreads = threads or max(1, sum(p.nthreads for p in plans) // n_workers)
            lc = stack.enter_context(LocalCluster(n_workers=n_workers, threads_per_worker=nthreads,
                                                  dashboard_address="127.0.0.1:0"))
            client = stack.enter_context(Client(lc))
            click.echo(f"LocalCluster: {n_workers} worker(s) x {nthreads} thread(s); dashboard: {client.dashboard_link}")
        mpdta = dte_dask.datasets.load_mpdta()
        _run("mpdta (Callaway & Sant'Anna 2021; minimum wage and teen employment)", mpdta,
             dict(outcome="lemp", unit="countyreal", time="year", group="first_treat"), n_boot, seed, click.echo)
        sim = dte_dask.simulate_panel(units, periods, seed=seed)
        cols = sim.columns
        _run("simulated staggered adoption (true effects known)", sim.data,
             dict(outcome=cols["outcome"], unit=cols["unit"], time=cols["time"], group=cols["group"]),
             n_boot, seed, click.echo)
        truth = sim.truth[sim.truth["event_time"] >= 0].groupby("event_time")["att"].mean()
        click.echo("\nTrue dynamic effects (equal-share cohorts): "
                   + ", ".join(f"e={e}: {v:.3f}" for e, v in truth.items()))
