"""Timed runs of ATT(g,t) + the four aggregations, one function per tool, for bench_attgt.py.

Each runner takes the long panel (``unit, time, y, group``; group 0 = never treated) and returns a
dict of timings in seconds (``{"fit": ..., "aggregate": ...}`` plus ``"load"`` for dte_dask's
load route). Imports and any cluster start-up happen before the clock starts. All runs use the
doubly robust estimator, no covariates, ``never_treated`` controls and a varying base period;
``n_boot=None`` means analytic (influence-function) SEs, otherwise a multiplier bootstrap with
``n_boot`` draws and each tool's default band setting. Keep the peer calls in line with the
adapters in tests/peers.py, which document each peer's API and quirks.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
import warnings

import numpy as np

KINDS = ("simple", "dynamic", "group", "calendar")
COLS = dict(outcome="y", unit="unit", time="time", group="group")


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _clock():
    return time.perf_counter()


# ------------------------------------------------------------------------------------ dte_dask


def run_dte_dask(df, n_boot, seed=0, load=False):
    import dte_dask

    boot = n_boot is not None
    opts = dict(est_method="dr", bootstrap=boot, n_boot=n_boot or 999, seed=seed)
    out = {}
    t0 = _clock()
    if load:
        data = dte_dask.load_panel(df, unit="unit", time="time", outcome="y", group="group")
        out["load"] = _clock() - t0
        t0 = _clock()
        res = dte_dask.att_gt(data, **opts)
    else:
        res = dte_dask.att_gt(df, **COLS, **opts)
    res.to_frame()
    out["fit"] = _clock() - t0
    t0 = _clock()
    for kind in KINDS:
        res.aggregate(kind)
    out["aggregate"] = _clock() - t0
    return out


# ------------------------------------------------------------------------------------ csdid


def run_csdid(df, n_boot, seed=0):
    from csdid.att_gt import ATTgt

    boot = n_boot is not None
    np.random.seed(seed)  # csdid's bootstrap draws from the global numpy state
    out = {}
    with _quiet():
        t0 = _clock()
        m = ATTgt(yname="y", tname="time", idname="unit", gname="group", data=df,
                  control_group="nevertreated", biters=n_boot or 1000, cband=boot)
        m.fit(est_method="dr", base_period="varying", bstrap=boot)
        out["fit"] = _clock() - t0
        t0 = _clock()
        for kind in KINDS:
            m.aggte(typec=kind, bstrap=boot, biters=n_boot, cband=boot)
        out["aggregate"] = _clock() - t0
    return out


# ------------------------------------------------------------------------------------ moderndid


def run_moderndid(df, n_boot, seed=0):
    import moderndid

    boot = n_boot is not None
    out = {}
    with _quiet():
        t0 = _clock()
        r = moderndid.att_gt(df, yname="y", tname="time", idname="unit", gname="group",
                             est_method="dr", boot=boot, biters=n_boot or 1000, cband=boot,
                             random_state=seed)
        out["fit"] = _clock() - t0
        t0 = _clock()
        for kind in KINDS:
            moderndid.aggte(r, type=kind, boot=boot, biters=n_boot, cband=boot,
                            random_state=seed)
        out["aggregate"] = _clock() - t0
    return out


def run_moderndid_dask(df, n_boot, seed=0, workers=None):
    """moderndid's distributed backend: a dask DataFrame on a local process cluster."""
    import dask.dataframe as dd
    import moderndid
    from distributed import Client, LocalCluster

    boot = n_boot is not None
    workers = workers or os.cpu_count() or 1
    out = {}
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        ddf = dd.from_pandas(df, npartitions=workers).persist()
        client.wait_for_workers(workers)
        with _quiet():
            t0 = _clock()
            r = moderndid.att_gt(ddf, yname="y", tname="time", idname="unit", gname="group",
                                 est_method="dr", boot=boot, biters=n_boot or 1000, cband=boot,
                                 random_state=seed)
            out["fit"] = _clock() - t0
            t0 = _clock()
            for kind in KINDS:
                moderndid.aggte(r, type=kind, boot=boot, biters=n_boot, cband=boot,
                                random_state=seed)
            out["aggregate"] = _clock() - t0
    return out


# ------------------------------------------------------------------------------------ diff-diff


def run_diff_diff(df, n_boot, seed=0):
    """No calendar aggregation in diff-diff: simple, event study and group only."""
    from diff_diff import CallawaySantAnna

    out = {}
    with _quiet():
        t0 = _clock()
        est = CallawaySantAnna(control_group="never_treated", estimation_method="dr",
                               base_period="varying", n_bootstrap=n_boot or 0, seed=seed)
        r = est.fit(df, outcome="y", unit="unit", time="time", first_treat="group")
        out["fit"] = _clock() - t0
        t0 = _clock()
        for kind in ("simple", "event_study", "group"):
            r.aggregate(kind)
        out["aggregate"] = _clock() - t0
    return out


# ------------------------------------------------------------------------------------ differences


def run_differences(df, n_boot, seed=0):
    from differences import ATTgt

    # differences wants never-treated as NaN and the panel indexed by (unit, time); this
    # preparation is not timed
    data = df.assign(group=df["group"].where(df["group"] > 0)).set_index(["unit", "time"])
    out = {}
    with _quiet():
        t0 = _clock()
        m = ATTgt(data=data, cohort_column="group", base_period="varying")
        m.fit("y", est_method="dr", control_group="never_treated",
              boot_iterations=n_boot or 0, random_state=seed, progress_bar=False)
        out["fit"] = _clock() - t0
        t0 = _clock()
        for kind in ("simple", "cohort", "event", "time"):
            m.aggregate(kind, overall=kind != "simple", boot_iterations=n_boot or 0,
                        random_state=seed)
            if kind != "simple":
                m.aggregate(kind, boot_iterations=n_boot or 0, random_state=seed)
        out["aggregate"] = _clock() - t0
    return out


RUNNERS = {
    "dte_dask": run_dte_dask,
    "csdid": run_csdid,
    "moderndid": run_moderndid,
    "moderndid-dask": run_moderndid_dask,
    "diff-diff": run_diff_diff,
    "differences": run_differences,
}

PEER_MODULES = {"csdid": "csdid", "moderndid": "moderndid", "moderndid-dask": "moderndid",
                "diff-diff": "diff_diff", "differences": "differences"}
