"""Identification checks for every estimator: att_gt with est_method dr / ipw / reg and covariates,
and the regression estimators (event_study, stacked_did, sun_abraham).

Oracles are independent of the checks' engine: the placebo panel is re-coded by hand in pandas and
the public estimators are run on it; a permutation's draw is the public estimator on the permuted
frame. Known answers come from simulated panels (``dte_dask.simulate_panel``) with and without an
effect or a pre-trend violation. Permutation counts are kept small.
"""
from __future__ import annotations

import warnings

import dask
import numpy as np
import pandas as pd
import pytest
from scipy import stats

import dte_dask
from dte_dask import checks
from dte_dask.checks.randomization import _allocate, _block_counts, _permuted_g
from dte_dask.exceptions import SpecError
from dte_dask.simulate import simulate_panel

SIM = dict(outcome="y", unit="unit", time="time", group="group")
COV = ["age", "bmi"]
REGRESSION = {"event_study": dte_dask.event_study, "stacked_did": dte_dask.stacked_did,
              "sun_abraham": dte_dask.sun_abraham}


@pytest.fixture(autouse=True)
def _sync_quiet():
    with dask.config.set(scheduler="sync"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def sim(n, T, *, seed, **kw) -> pd.DataFrame:
    return simulate_panel(n, T, seed=seed, npartitions=1, **kw).data.compute(scheduler="sync")


@pytest.fixture(scope="module")
def panel_df() -> pd.DataFrame:
    return sim(300, 6, seed=3, cohorts=(4, 5, 6), selection=True)


def recode(df: pd.DataFrame, cohort: int, k: int, nyt: bool) -> pd.DataFrame:
    """The placebo data set of (cohort, k) by hand: periods before the cohort's adoption, the cohort
    re-labelled as adopting k periods earlier, clean controls (never treated; with not-yet-treated
    controls also later cohorts) coded as never treated (0)."""
    g = df["group"]
    ctrl = (g == 0) | ((g > cohort) if nyt else False)
    out = df[((g == cohort) | ctrl) & (df["time"] < cohort)].copy()
    out["group"] = np.where(out["group"] == cohort, cohort - k, 0)
    return out


def post_mean(res) -> tuple[float, float]:
    post = np.asarray(res.event_time) >= 0
    a = post / post.sum()
    return float(a @ res.coef), float(np.sqrt(a @ res.cov @ a))


# ----------------------------------------------------------------------------- placebo oracles
@pytest.mark.parametrize("method, control", [("dr", "never_treated"), ("ipw", "never_treated"),
                                             ("reg", "not_yet_treated"), ("dr", "not_yet_treated")])
def test_placebo_equals_att_gt_on_the_recoded_panel(panel_df, method, control):
    pl = checks.placebo_check(panel_df, **SIM, covariates=COV, est_method=method, control_group=control,
                              cohorts=[5, 6], shifts=[1, 3])
    t = pl.to_frame()
    assert sorted(zip(t["cohort"], t["shift"])) == [(5, 1), (5, 3), (6, 1), (6, 3)]
    for _, row in t.iterrows():
        sub = recode(panel_df, int(row["cohort"]), int(row["shift"]), control == "not_yet_treated")
        res = dte_dask.att_gt(sub, **SIM, covariates=COV, est_method=method, bootstrap=False)
        post = res.event_time >= 0
        a = post / post.sum()
        assert row["estimate"] == pytest.approx(float(a @ res.att), abs=1e-10)
        assert row["se"] == pytest.approx(float(np.sqrt(a @ res.cov_aug[:res.att.size, :res.att.size] @ a)), rel=1e-8)
        assert row["n_treated"] == (sub.loc[sub["group"] > 0, "unit"].nunique())
    assert pl.options["estimator"] == f"att_gt ({method})" and pl.wald["method"] == "wald"


@pytest.mark.parametrize("estimator", sorted(REGRESSION))
def test_placebo_equals_regression_estimator_on_the_recoded_panel(panel_df, estimator):
    pl = checks.placebo_check(panel_df, **SIM, estimator=estimator, cohorts=[5], shifts=[1, 2])
    t = pl.to_frame()
    assert list(t["shift"]) == [1, 2]
    for _, row in t.iterrows():
        k = int(row["shift"])
        sub = recode(panel_df, 5, k, False)
        kw = {"window": (-(5 - 1 - k), k - 1)} if estimator == "stacked_did" else {}  # periods 1..4, adoption 5-k
        est, se = post_mean(REGRESSION[estimator](sub, **SIM, **kw))
        assert row["estimate"] == pytest.approx(est, abs=1e-10)
        assert row["se"] == pytest.approx(se, rel=1e-8)
    assert pl.wald["method"] == "bonferroni" and pl.options["estimator"] == estimator
    assert "Bonferroni" in pl.summary()


# ----------------------------------------------------------------------------- randomization oracles
def permuted_frame(df: pd.DataFrame, seed: int, r: int, n_perm: int) -> pd.DataFrame:
    """Permutation r of the cohort labels (the check's documented RNG scheme), applied to the frame."""
    panel = dte_dask.load_panel(df, **SIM)
    (block,) = dask.compute(panel.blocks[0])
    codes = np.array(sorted(panel.cohort_sizes))
    counts = _block_counts(block, codes, panel.rng_block_size)
    blocks = np.array(sorted(counts))
    alloc = _allocate(seed, n_perm, blocks, np.array([counts[b] for b in blocks]))
    g = _permuted_g(block, {int(b): alloc[:, i] for i, b in enumerate(blocks)}, r, r, seed, codes,
                    panel.rng_block_size)
    label = {u: (0 if np.isinf(x) else int(panel.group_label(x))) for u, x in zip(block.ids, g)}
    return df.assign(group=df["unit"].map(label))


@pytest.mark.parametrize("method", ["dr", "ipw"])
def test_randomization_draws_are_att_gt_on_the_permuted_panel(panel_df, method):
    ri = checks.randomization_check(panel_df, **SIM, covariates=COV, est_method=method, aggregate="dynamic",
                                    n_perm=4, seed=7, perms_per_task=3)
    res = dte_dask.att_gt(panel_df, **SIM, covariates=COV, est_method=method, bootstrap=False)
    assert ri.observed == pytest.approx(res.aggregate("dynamic").overall_att, abs=1e-12)
    for r in (0, 3):
        perm = dte_dask.att_gt(permuted_frame(panel_df, 7, r, 4), **SIM, covariates=COV, est_method=method,
                               bootstrap=False)
        assert ri.draws[r] == pytest.approx(perm.aggregate("dynamic").overall_att, abs=1e-10)


@pytest.mark.parametrize("estimator", ["event_study", "sun_abraham"])
def test_randomization_draws_are_the_regression_estimator_on_the_permuted_panel(panel_df, estimator):
    ri = checks.randomization_check(panel_df, **SIM, estimator=estimator, n_perm=2, seed=5)
    assert ri.statistic == "post-treatment mean"
    assert ri.observed == pytest.approx(post_mean(REGRESSION[estimator](panel_df, **SIM))[0], abs=1e-12)
    perm = REGRESSION[estimator](permuted_frame(panel_df, 5, 1, 2), **SIM)
    assert ri.draws[1] == pytest.approx(post_mean(perm)[0], abs=1e-10)


def test_regression_checks_keep_units_treated_in_the_first_period_as_the_estimator_does(panel_df):
    df = panel_df.assign(group=np.where(panel_df["unit"] <= 12, 1, panel_df["group"]))
    ri = checks.randomization_check(df, **SIM, estimator="event_study", n_perm=2, seed=5)
    assert ri.observed == pytest.approx(post_mean(dte_dask.event_study(df, **SIM))[0], abs=1e-12)
    assert len(checks.placebo_check(df, **SIM, estimator="sun_abraham", shifts=1).to_frame()) == 3


def test_stacked_randomization_takes_the_window_from_estimator_options(panel_df):
    ri = checks.randomization_check(panel_df, **SIM, estimator="stacked_did", n_perm=2, seed=5,
                                    estimator_options={"window": (-2, 1)})
    res = dte_dask.stacked_did(panel_df, **SIM, window=(-2, 1))
    assert ri.observed == pytest.approx(post_mean(res)[0], abs=1e-12)
    assert np.isfinite(ri.draws).all()


def test_invalid_estimator_arguments(panel_df):
    with pytest.raises(SpecError, match="est_method"):
        checks.placebo_check(panel_df, **SIM, est_method="ols")
    with pytest.raises(SpecError, match="estimator="):
        checks.randomization_check(panel_df, **SIM, estimator="twfe")
    with pytest.raises(SpecError, match="window"):
        checks.placebo_check(panel_df, **SIM, estimator="event_study", estimator_options={"window": (-2, 2)})
    with pytest.raises(SpecError, match="aggregate"):
        checks.randomization_check(panel_df, **SIM, estimator="event_study", aggregate="dynamic")
    with pytest.raises(SpecError, match="estimator_options"):
        checks.randomization_check(panel_df, **SIM, estimator_options={"window": (-2, 1)})
    with pytest.raises(SpecError, match="takes no covariates"):
        checks.placebo_check(panel_df, **SIM, covariates=COV, estimator="sun_abraham")


# ----------------------------------------------------------------------------- known answers
def test_dr_randomization_p_values_under_the_null_and_with_an_effect():
    """Cohorts assigned at random, covariates in the model (dr): p-values spread over (0, 1] under
    the sharp null and the smallest possible p-value with a large effect."""
    pvals = np.array([checks.randomization_check(sim(60, 4, seed=rep, cohorts=(3, 4), effect_size=0.0), **SIM,
                                                 covariates=COV, n_perm=19, seed=100 + rep).p_value
                      for rep in range(16)])
    assert stats.kstest(pvals, "uniform").pvalue > 0.01
    assert 0.3 < pvals.mean() < 0.7 and np.mean(pvals <= 0.1) < 0.3
    powered = checks.randomization_check(sim(200, 4, seed=99, cohorts=(3, 4), effect_size=3.0), **SIM,
                                         covariates=COV, est_method="ipw", n_perm=19, seed=1)
    assert powered.p_value == pytest.approx(1 / 20)


@pytest.mark.parametrize("estimator", ["event_study", "sun_abraham"])
def test_regression_randomization_p_values_under_the_null_and_with_an_effect(estimator):
    pvals = np.array([checks.randomization_check(sim(60, 4, seed=rep, cohorts=(3, 4), effect_size=0.0), **SIM,
                                                 estimator=estimator, n_perm=9, seed=200 + rep).p_value
                      for rep in range(6)])
    assert 0.2 < pvals.mean() < 0.8 and np.mean(pvals <= 0.1) < 0.4
    powered = checks.randomization_check(sim(200, 4, seed=98, cohorts=(3, 4), effect_size=3.0), **SIM,
                                         estimator=estimator, n_perm=9, seed=1)
    assert powered.p_value == pytest.approx(1 / 10)


@pytest.mark.parametrize("estimator, method", [("att_gt", "dr"), ("att_gt", "ipw"), ("event_study", None)])
def test_placebo_estimates_are_centred_on_zero_under_parallel_trends(estimator, method):
    kw = {"covariates": COV, "est_method": method} if method else {"estimator": estimator}
    zs, ests = [], []
    for rep in range(12):
        t = checks.placebo_check(sim(200, 5, seed=700 + rep, cohorts=(4, 5)), **SIM, **kw).to_frame()
        zs.append(t["z"].to_numpy())
        ests.append(t["estimate"].mean())
    z = np.concatenate(zs)
    assert abs(np.mean(ests)) < 3 * np.std(ests) / np.sqrt(len(ests))
    assert abs(z.mean()) < 0.4 and 0.7 < z.std() < 1.35
    assert np.mean(np.abs(z) > stats.norm.ppf(0.975)) < 0.15


@pytest.mark.parametrize("estimator, method", [("att_gt", "dr"), ("att_gt", "ipw"), ("sun_abraham", None),
                                               ("stacked_did", None)])
def test_placebo_rejects_a_pre_trend_violation(estimator, method):
    """selection=True: cohorts depend on age / bmi, which drive outcome trends. Unconditional
    placebos reject; dr / ipw conditioning on the covariates remove the violation."""
    df = sim(1000, 6, seed=7, cohorts=(4, 5, 6), selection=True)
    if method is None:
        pl = checks.placebo_check(df, **SIM, estimator=estimator)
        assert pl.wald["p_value"] < 1e-3 and (pl.to_frame()["estimate"] > 0).mean() > 0.8
    else:
        assert checks.placebo_check(df, **SIM, est_method=method).wald["p_value"] < 1e-4
        assert checks.placebo_check(df, **SIM, covariates=COV, est_method=method).wald["p_value"] > 0.01


def test_dr_randomization_does_not_depend_on_the_partitioning(panel_df):
    panels = [dte_dask.load_panel(panel_df, **SIM, covariates=COV, npartitions=n, rng_block_size=32) for n in (1, 3)]
    assert [p.npartitions for p in panels] == [1, 3]
    a = checks.randomization_check(panels[0], est_method="dr", n_perm=6, seed=4, perms_per_task=4)
    b = checks.randomization_check(panels[1], est_method="dr", n_perm=6, seed=4, perms_per_task=6)
    np.testing.assert_allclose(a.draws, b.draws, rtol=1e-9, atol=1e-12)
    assert a.observed == pytest.approx(b.observed, rel=1e-12) and a.p_value == b.p_value
