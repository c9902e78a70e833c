"""Identification checks: oracles against att_gt, reproducibility, and known answers by simulation."""
from __future__ import annotations

import dataclasses
import warnings

import dask
import numpy as np
import pandas as pd
import pytest
from scipy import stats

import dte_dask
from dte_dask import checks
from dte_dask.exceptions import SpecError
from dte_dask.simulate import simulate_panel

COLS = dict(outcome="lemp", unit="countyreal", time="year", group="first_treat")
SIM = dict(outcome="y", unit="unit", time="time", group="group")


@pytest.fixture(autouse=True)
def _sync_quiet():
    with dask.config.set(scheduler="sync"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.fixture(scope="module")
def mpdta() -> pd.DataFrame:
    return dte_dask.datasets.load_mpdta()


def sim(n, T, *, seed, **kw) -> pd.DataFrame:
    return simulate_panel(n, T, seed=seed, npartitions=1, **kw).data.compute(scheduler="sync")


# ----------------------------------------------------------------------------- oracles
@pytest.mark.parametrize("covariates, method", [(None, "dr"), ("lpop", "reg"), ("lpop", "dr"), ("lpop", "ipw")])
def test_randomization_observed_statistic_is_att_gt_aggregate(mpdta, covariates, method):
    res = dte_dask.att_gt(mpdta, **COLS, covariates=covariates, est_method=method, bootstrap=False)
    for kind in ("simple", "dynamic"):
        ri = checks.randomization_check(mpdta, **COLS, covariates=covariates, est_method=method, aggregate=kind,
                                        n_perm=5, seed=1)
        assert ri.observed == pytest.approx(res.aggregate(kind).overall_att, abs=1e-12)


@pytest.mark.parametrize("covariates, method", [(None, "dr"), ("lpop", "reg"), ("lpop", "dr"), ("lpop", "ipw")])
def test_placebo_one_period_shift_is_the_pre_period_cell(mpdta, covariates, method):
    """Shifting cohort g by k=1 on data before g is ATT(g, g-1) with R's varying base period, and
    with every feasible shift the placebo effects are a bijection of the pre-period cells: the joint
    Wald statistic equals att_gt's pre-test."""
    res = dte_dask.att_gt(mpdta, **COLS, covariates=covariates, est_method=method, bootstrap=False)
    cells = res.to_frame()
    pl = checks.placebo_check(mpdta, **COLS, covariates=covariates, est_method=method)
    t = pl.to_frame()
    assert sorted(zip(t["cohort"], t["shift"])) == [(2006, 1), (2006, 2), (2007, 1), (2007, 2), (2007, 3)]
    for g in (2006, 2007):
        row = t[(t["cohort"] == g) & (t["shift"] == 1)].iloc[0]
        cell = cells[(cells["group"] == g) & (cells["time"] == g - 1)].iloc[0]
        assert row["estimate"] == pytest.approx(cell["estimate"], abs=1e-12)
        assert row["se"] == pytest.approx(cell["se_analytic"], rel=1e-9)
        assert row["placebo_period"] == g - 1
    assert pl.wald["statistic"] == pytest.approx(res.pretrend_test()["statistic"], rel=1e-8)
    assert pl.wald["df"] == 5


def test_randomization_is_reproducible_and_independent_of_partitioning(mpdta):
    panels = [dte_dask.load_panel(mpdta, **COLS, npartitions=n, rng_block_size=64) for n in (1, 4)]
    assert [p.npartitions for p in panels] == [1, 4]
    a = checks.randomization_check(panels[0], n_perm=60, seed=11, perms_per_task=7)
    b = checks.randomization_check(panels[1], n_perm=60, seed=11, perms_per_task=60)
    np.testing.assert_allclose(a.draws, b.draws, rtol=1e-10, atol=1e-14)
    assert a.p_value == b.p_value
    c = checks.randomization_check(panels[0], n_perm=60, seed=12)
    assert not np.allclose(a.draws, c.draws)
    assert np.std(a.draws) > 0 and abs(np.mean(a.draws)) < 3 * np.std(a.draws) / np.sqrt(60) + 0.01


def test_pretrend_check_on_attgt(mpdta):
    res = dte_dask.att_gt(mpdta, **COLS, n_boot=199, seed=1)
    pt = checks.pretrend_check(res)
    t = pt.to_frame()
    assert list(t["target"]) == ["ATT(g,t) cells", "event study (dynamic aggregation)"]
    assert t.loc[0, "statistic"] == pytest.approx(res.pretrend_test()["statistic"])
    assert list(t["n_pre"]) == [5, 3] and list(t["band"]) == ["sup-t bootstrap"] * 2
    assert pt.passed and t["band_covers_zero"].all()
    assert "covers zero before adoption" in pt.summary()
    noboot = checks.pretrend_check(dte_dask.att_gt(mpdta, **COLS, bootstrap=False))
    assert list(noboot.to_frame()["band"]) == ["Bonferroni"] * 2
    assert noboot.to_frame().loc[0, "crit"] == pytest.approx(stats.norm.ppf(1 - 0.05 / 10))
    with pytest.raises(dataclasses.FrozenInstanceError):
        pt.alpha = 0.1  # type: ignore[misc]


class EventStudyLike:
    """A minimal result of the protocol (dte_dask.results.base)."""

    result_kind = "event_study"
    label = "event study"
    alpha = 0.05

    def __init__(self, frame, test=None):
        self.frame, self.test = frame, test

    def event_study(self):
        return self

    def to_frame(self):
        return self.frame

    def pretrend_test(self):
        return self.test


def test_pretrend_check_on_event_study_frames():
    base = pd.DataFrame({"event_time": [-3, -2, -1, 0, 1], "estimate": [0.01, -0.02, 0.0, 0.5, 0.6],
                         "se": [0.05, 0.05, 0.0, 0.05, 0.05]})  # -1 is the omitted reference
    ok = checks.pretrend_check(base)
    r = ok.to_frame().iloc[0]
    assert r["n_pre"] == 2 and r["band"] == "Bonferroni" and r["wald"] == "diagonal (approximate)"
    assert r["band_covers_zero"] and ok.passed
    bad = base.assign(estimate=[0.3, -0.02, 0.0, 0.5, 0.6], band_lower=[0.1, -0.2, 0, 0.3, 0.4],
                      band_upper=[0.5, 0.16, 0, 0.7, 0.8])
    res = checks.pretrend_check(EventStudyLike(bad, {"statistic": 36.2, "df": 2, "p_value": 1e-8}))
    r = res.to_frame().iloc[0]
    assert r["band"] == "uniform band of the result" and not r["band_covers_zero"]
    assert r["wald"] == "from result" and r["p_value"] == 1e-8 and not res.passed
    assert "evidence against parallel pre-trends" in res.summary()


def test_check_results_have_summary_frame_and_plot(mpdta):
    from bokeh.models import LayoutDOM

    results = [checks.placebo_check(mpdta, **COLS, shifts=1),
               checks.randomization_check(mpdta, **COLS, n_perm=19, seed=1),
               checks.balance_check(mpdta, **COLS, covariates=["lpop"])]
    for r in results:
        assert isinstance(r.summary(), str) and str(r) == r.summary() and "<pre>" in r._repr_html_()
        assert isinstance(r.to_frame(), pd.DataFrame) and len(r.to_frame())
        assert isinstance(r.plot(), LayoutDOM)
        with pytest.raises(dataclasses.FrozenInstanceError):
            r.options = {}  # type: ignore[misc]
    assert list(results[0].to_frame()["shift"]) == [1, 1]
    assert len(results[1].frames()["draws"]) == 19


def test_invalid_arguments(mpdta):
    with pytest.raises(SpecError, match="n_perm"):
        checks.randomization_check(mpdta, **COLS, n_perm=0)
    with pytest.raises(SpecError, match="aggregate"):
        checks.randomization_check(mpdta, **COLS, aggregate="overall")
    with pytest.raises(SpecError, match="shifts"):
        checks.placebo_check(mpdta, **COLS, shifts=[0])
    with pytest.raises(SpecError, match="cohorts"):
        checks.placebo_check(mpdta, **COLS, cohorts=[2005])
    with pytest.raises(SpecError, match="covariates"):
        checks.balance_check(mpdta, **COLS)
    with pytest.raises(SpecError, match="control_group"):
        checks.placebo_check(mpdta, **COLS, control_group="never")


# ----------------------------------------------------------------------------- known answers
def test_randomization_p_values_are_uniform_under_the_sharp_null():
    """120 panels with no effect and randomly assigned cohorts: RI p-values ~ U(0, 1) (KS test),
    and a true effect is detected."""
    pvals = []
    for rep in range(120):
        df = sim(60, 5, seed=rep, cohorts=(3, 4), effect_size=0.0)
        pvals.append(checks.randomization_check(df, **SIM, n_perm=99, seed=10_000 + rep).p_value)
    pvals = np.array(pvals)
    assert stats.kstest(pvals, "uniform").pvalue > 0.01
    assert 0.0 < np.mean(pvals <= 0.1) < 0.25
    powered = checks.randomization_check(sim(400, 5, seed=999, cohorts=(3, 4), effect_size=3.0), **SIM,
                                         n_perm=99, seed=1)
    assert powered.p_value <= 0.02


def test_placebo_estimates_are_centred_on_zero_under_parallel_trends():
    zs, ests = [], []
    for rep in range(30):
        t = checks.placebo_check(sim(200, 6, seed=500 + rep, cohorts=(4, 5, 6)), **SIM).to_frame()
        zs.append(t["z"].to_numpy())
        ests.append(t["estimate"].mean())
    z = np.concatenate(zs)
    assert abs(np.mean(ests)) < 3 * np.std(ests) / np.sqrt(len(ests))
    assert abs(z.mean()) < 0.25 and 0.8 < z.std() < 1.25
    assert np.mean(np.abs(z) > stats.norm.ppf(0.975)) < 0.1


def test_pre_trend_violation_is_rejected_and_conditioning_fixes_it():
    """selection=True: cohorts depend on age/bmi, which drive outcome trends."""
    df = sim(1000, 6, seed=7, cohorts=(4, 5, 6), selection=True)
    pl = checks.placebo_check(df, **SIM)
    assert pl.wald["p_value"] < 1e-4 and (pl.to_frame()["estimate"] > 0).mean() > 0.8
    pre = checks.pretrend_check(dte_dask.att_gt(df, **SIM, n_boot=199, seed=1))
    assert not pre.passed and (pre.to_frame()["p_value"] < 1e-3).all()
    cond = checks.placebo_check(df, **SIM, covariates=["age", "bmi"])
    assert cond.wald["p_value"] > 0.01


def test_balance_flags_selection_on_covariates():
    sel = checks.balance_check(sim(3000, 3, seed=1, cohorts=(2, 3), selection=True), **SIM,
                               covariates=["age", "bmi", "female"])
    t = sel.to_frame().set_index(["cohort", "covariate"])
    assert t.loc[(2, "age"), "flagged"] and t.loc[(2, "bmi"), "flagged"] and t.loc[(2, "age"), "smd"] > 0.3
    assert not t.xs("female", level="covariate")["flagged"].any()
    assert set(sel.flagged["covariate"]) == {"age", "bmi"}
    rand = checks.balance_check(sim(20000, 3, seed=2, cohorts=(2, 3)), **SIM, covariates=["age", "bmi"])
    assert not rand.to_frame()["flagged"].any() and rand.to_frame()["smd"].abs().max() < 0.1
    row = rand.to_frame().iloc[0]
    df = sim(20000, 3, seed=2, cohorts=(2, 3))
    units = df.drop_duplicates("unit")
    treated, ctrl = units[units["group"] == 2]["age"], units[units["group"] == 0]["age"]
    expect = (treated.mean() - ctrl.mean()) / np.sqrt((treated.var(ddof=0) + ctrl.var(ddof=0)) / 2)
    assert row["smd"] == pytest.approx(expect, rel=1e-9)


def test_checks_use_an_active_client_and_never_create_one(mpdta):
    from distributed import Client, LocalCluster
    from distributed.client import _get_global_client

    sync_pl = checks.placebo_check(mpdta, **COLS)
    sync_ri = checks.randomization_check(mpdta, **COLS, n_perm=30, seed=3)
    assert _get_global_client() is None
    with dask.config.set(scheduler=None), LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                                        dashboard_address=None) as cluster, Client(cluster) as client:
        pl = checks.placebo_check(mpdta, **COLS)
        ri = checks.randomization_check(mpdta, **COLS, n_perm=30, seed=3)
        prefixes = set(client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes)))
    assert {"placebo-stats", "placebo-gram", "ri-stats"} <= prefixes
    pd.testing.assert_frame_equal(pl.to_frame(), sync_pl.to_frame(), rtol=1e-12)
    np.testing.assert_allclose(ri.draws, sync_ri.draws, rtol=1e-12)
