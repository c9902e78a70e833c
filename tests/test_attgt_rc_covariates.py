"""Repeated cross sections and unbalanced panels with covariates (DRDID's ``reg_did_rc``,
``std_ipw_did_rc``, ``drdid_rc``), against csdid, which ports R ``did``'s ``panel=FALSE`` route.

Two uses of the route: unbalanced panels (``allow_unbalanced_panel=True``; the row influence
functions are summed by unit) and true repeated cross sections (``panel=False``; every row is its
own observation). moderndid 0.2 crashes on unbalanced panels with covariates, so csdid is the
reference throughout (moderndid agrees on true repeated cross sections for reg and ipw).
"""
from __future__ import annotations

import contextlib
import io
import warnings

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

import dte_dask
from dte_dask.exceptions import DuplicateRowsError, SpecError

from .warm_helpers import record_passes, record_warm_starts

ATT_TOL, SE_TOL = 1e-8, 1e-6
METHODS = ("reg", "ipw", "dr")
CONTROLS = ("never_treated", "not_yet_treated")

csdid_att_gt = pytest.importorskip("csdid.att_gt")


# ----------------------------------------------------------------------------- data
@pytest.fixture(scope="module")
def mpdta() -> pd.DataFrame:
    return dte_dask.datasets.load_mpdta()


@pytest.fixture(scope="module")
def mpdta_unbalanced(mpdta) -> pd.DataFrame:
    """mpdta with 15 % of its rows dropped at random."""
    rng = np.random.default_rng(1)
    return mpdta[rng.random(len(mpdta)) > 0.15].reset_index(drop=True)


@pytest.fixture(scope="module")
def mpdta_rc(mpdta) -> pd.DataFrame:
    """mpdta read as repeated cross sections: every county-year row its own observation."""
    rng = np.random.default_rng(2)
    return mpdta.assign(rid=np.arange(len(mpdta)) + 1, w=rng.uniform(0.5, 2.0, len(mpdta)))


@pytest.fixture(scope="module")
def sim_unbalanced() -> pd.DataFrame:
    sim = dte_dask.simulate_panel(500, 5, seed=3, unbalanced_share=0.2, selection=True)
    return sim.data.compute(scheduler="synchronous")


@pytest.fixture(scope="module")
def sim_rc() -> pd.DataFrame:
    """A true repeated cross section: 30 % of a simulated panel's rows, each a new person."""
    sim = dte_dask.simulate_panel(1200, 5, seed=5, selection=True)
    df = sim.data.compute(scheduler="synchronous")
    df = df[np.random.default_rng(0).random(len(df)) < 0.3].reset_index(drop=True)
    return df.drop(columns="unit").assign(rid=np.arange(len(df)) + 1)


# ----------------------------------------------------------------------------- csdid and ours
def _csdid(df, *, y, t, g, idname, cov, method, control, panel=True, unbalanced=False,
           weights=None, cluster=None, base_period="varying", agg=None):
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        m = csdid_att_gt.ATTgt(
            yname=y, tname=t, idname=idname, gname=g, data=df, panel=panel,
            allow_unbalanced_panel=unbalanced, weights_name=weights, clustervar=cluster,
            control_group=control.replace("_", ""), xformla=f"{y} ~ " + " + ".join(cov), cband=False,
        ).fit(est_method=method, bstrap=False, base_period=base_period)
        if agg is not None:
            return m.aggte(typec=agg, bstrap=False, cband=False).atte
    r = m.results
    return pd.DataFrame({"group": r["group"], "time": r["year"], "att_ref": r["att"], "se_ref": r["se"]})


def _compare(res, ref) -> tuple[int, float, float]:
    got = pd.DataFrame({"group": res.group, "time": res.time, "att": res.att, "se": res.se_analytic})
    m = got.merge(ref, on=["group", "time"], how="outer", validate="one_to_one")
    assert len(m) == len(got) == len(ref)
    np.testing.assert_array_equal(np.isnan(m.att), np.isnan(m.att_ref))
    att_err = float(np.nanmax(np.abs(m.att - m.att_ref)))
    se_err = float(np.nanmax(np.abs(m.se - m.se_ref)))
    assert att_err < ATT_TOL and se_err < SE_TOL, (att_err, se_err)
    return len(m), att_err, se_err


MP = dict(outcome="lemp", time="year", group="first_treat")
MP_CS = dict(y="lemp", t="year", g="first_treat")
SIM = dict(outcome="y", time="time", group="group")
SIM_CS = dict(y="y", t="time", g="group")


# ----------------------------------------------------------------------------- unbalanced panels
@pytest.mark.parametrize("control", CONTROLS)
@pytest.mark.parametrize("method", METHODS)
def test_unbalanced_mpdta_matches_csdid(mpdta_unbalanced, method, control):
    res = dte_dask.att_gt(mpdta_unbalanced, **MP, unit="countyreal", covariates=["lpop"], est_method=method,
                          control_group=control, allow_unbalanced_panel=True, bootstrap=False)
    ref = _csdid(mpdta_unbalanced, **MP_CS, idname="countyreal", cov=["lpop"], method=method, control=control,
                 unbalanced=True)
    _compare(res, ref)
    assert res.n_units == mpdta_unbalanced.countyreal.nunique()


@pytest.mark.parametrize("control", CONTROLS)
@pytest.mark.parametrize("method", METHODS)
def test_unbalanced_simulated_matches_csdid(sim_unbalanced, method, control):
    res = dte_dask.att_gt(sim_unbalanced, **SIM, unit="unit", covariates=["age", "bmi"], est_method=method,
                          control_group=control, allow_unbalanced_panel=True, bootstrap=False, npartitions=3)
    ref = _csdid(sim_unbalanced, **SIM_CS, idname="unit", cov=["age", "bmi"], method=method, control=control,
                 unbalanced=True)
    _compare(res, ref)


def test_unbalanced_universal_base_and_aggregations(mpdta_unbalanced):
    kw = dict(**MP, unit="countyreal", covariates=["lpop"], control_group="not_yet_treated",
              allow_unbalanced_panel=True, bootstrap=False)
    ref_kw = dict(**MP_CS, idname="countyreal", cov=["lpop"], method="dr", control="not_yet_treated", unbalanced=True)
    res = dte_dask.att_gt(mpdta_unbalanced, base_period="universal", **kw)
    _compare(res, _csdid(mpdta_unbalanced, base_period="universal", **ref_kw))
    res = dte_dask.att_gt(mpdta_unbalanced, **kw)
    for kind in ("simple", "dynamic", "group"):
        a, ref = res.aggregate(kind), _csdid(mpdta_unbalanced, agg=kind, **ref_kw)
        assert abs(a.overall_att - ref["overall_att"]) < ATT_TOL
        assert abs(a.overall_se - ref["overall_se"]) < SE_TOL
        if kind != "simple":
            np.testing.assert_allclose(a.att, np.asarray(ref["att_egt"], dtype=float), rtol=0, atol=ATT_TOL)
            np.testing.assert_allclose(a.se, np.asarray(ref["se_egt"], dtype=float).ravel(), rtol=0, atol=SE_TOL)


def test_balanced_panel_ignores_allow_unbalanced(mpdta):
    """As in R, allow_unbalanced_panel=True on a balanced panel keeps the panel estimators."""
    kw = dict(**MP, unit="countyreal", covariates=["lpop"], bootstrap=False)
    a = dte_dask.att_gt(mpdta, allow_unbalanced_panel=True, **kw)
    b = dte_dask.att_gt(mpdta, **kw)
    np.testing.assert_array_equal(a.att, b.att)


# ----------------------------------------------------------------------------- repeated cross sections
@pytest.mark.parametrize("control", CONTROLS)
@pytest.mark.parametrize("method", METHODS)
def test_rc_mpdta_matches_csdid(mpdta_rc, method, control):
    res = dte_dask.att_gt(mpdta_rc, **MP, covariates=["lpop"], est_method=method, control_group=control,
                          panel=False, bootstrap=False)
    ref = _csdid(mpdta_rc, **MP_CS, idname="rid", cov=["lpop"], method=method, control=control, panel=False)
    _compare(res, ref)
    assert res.n_units == len(mpdta_rc) and res.options["panel"] is False


@pytest.mark.parametrize("control", CONTROLS)
@pytest.mark.parametrize("method", METHODS)
def test_rc_simulated_matches_csdid(sim_rc, method, control):
    res = dte_dask.att_gt(sim_rc, **SIM, unit="rid", covariates=["age", "bmi"], est_method=method,
                          control_group=control, panel=False, bootstrap=False, npartitions=2)
    ref = _csdid(sim_rc, **SIM_CS, idname="rid", cov=["age", "bmi"], method=method, control=control, panel=False)
    _compare(res, ref)


@pytest.mark.parametrize("opts", [dict(weights="w"), dict(cluster="countyreal", method="ipw"),
                                  dict(base_period="universal", control="not_yet_treated")],
                         ids=["weights", "cluster", "universal-nyt"])
def test_rc_options_match_csdid(mpdta_rc, opts):
    opts = dict(opts)
    method, control = opts.pop("method", "dr"), opts.pop("control", "never_treated")
    res = dte_dask.att_gt(mpdta_rc, **MP, covariates=["lpop"], est_method=method, control_group=control,
                          panel=False, bootstrap=False, **opts)
    if "cluster" in opts:
        assert res.n_clusters == mpdta_rc.countyreal.nunique()
    _compare(res, _csdid(mpdta_rc, **MP_CS, idname="rid", cov=["lpop"], method=method, control=control,
                         panel=False, weights=opts.get("weights"), cluster=opts.get("cluster"),
                         base_period=opts.get("base_period", "varying")))


def test_rc_aggregations_match_csdid(mpdta_rc):
    res = dte_dask.att_gt(mpdta_rc, **MP, covariates=["lpop"], panel=False, bootstrap=False)
    for kind in ("simple", "dynamic"):
        a = res.aggregate(kind)
        ref = _csdid(mpdta_rc, **MP_CS, idname="rid", cov=["lpop"], method="dr", control="never_treated",
                     panel=False, agg=kind)
        assert abs(a.overall_att - ref["overall_att"]) < ATT_TOL
        assert abs(a.overall_se - ref["overall_se"]) < SE_TOL


@pytest.mark.parametrize("method", ("reg", "ipw"))
def test_rc_matches_moderndid(mpdta_rc, method):
    """moderndid 0.2 agrees for reg and ipw (its drdid_rc SEs differ from csdid's and ours by ~1e-4)."""
    moderndid = pytest.importorskip("moderndid")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = moderndid.att_gt(mpdta_rc, yname="lemp", tname="year", idname="rid", gname="first_treat",
                               xformla="~ lpop", panel=False, cband=False, boot=False, est_method=method,
                               control_group="nevertreated")
    res = dte_dask.att_gt(mpdta_rc, **MP, covariates=["lpop"], panel=False, est_method=method, bootstrap=False)
    np.testing.assert_allclose(res.att, np.asarray(ref.att_gt), rtol=0, atol=ATT_TOL)
    np.testing.assert_allclose(res.se_analytic, np.asarray(ref.se_gt), rtol=0, atol=SE_TOL)


def test_rc_without_row_id_and_from_dask(mpdta_rc):
    """No unit column: rows are ordered as given; a dask frame of the same rows gives the same."""
    kw = dict(**MP, covariates=["lpop"], panel=False, n_boot=99, seed=4)
    a = dte_dask.att_gt(mpdta_rc.drop(columns="rid"), **kw)
    b = dte_dask.att_gt(dd.from_pandas(mpdta_rc.drop(columns="rid"), npartitions=3), **kw)
    c = dte_dask.att_gt(mpdta_rc, unit="rid", **kw)  # rid is the row order: same units, same RNG blocks
    for other in (b, c):
        np.testing.assert_array_equal(a.att, other.att)
        np.testing.assert_array_equal(a.se_analytic, other.se_analytic)
        np.testing.assert_array_equal(a.draws_aug, other.draws_aug)


def test_rc_bootstrap_is_sane(sim_rc):
    res = dte_dask.att_gt(sim_rc, **SIM, unit="rid", covariates=["age", "bmi"], panel=False, n_boot=999, seed=1)
    assert np.all(np.isfinite(res.se_boot))
    np.testing.assert_allclose(res.se_boot, res.se_analytic, rtol=0.15)
    assert res.crit > 1.96


def test_unbalanced_bootstrap_is_sane(sim_unbalanced):
    res = dte_dask.att_gt(sim_unbalanced, **SIM, unit="unit", covariates=["age", "bmi"], est_method="ipw",
                          allow_unbalanced_panel=True, n_boot=999, seed=2)
    np.testing.assert_allclose(res.se_boot, res.se_analytic, rtol=0.15)


# ----------------------------------------------------------------------------- errors
def test_rc_row_id_must_be_unique(mpdta):
    with pytest.raises(DuplicateRowsError, match="must identify rows"):
        dte_dask.att_gt(mpdta, **MP, unit="countyreal", panel=False, bootstrap=False)


def test_panel_object_must_be_loaded_as_rc(mpdta):
    p = dte_dask.load_panel(mpdta, unit="countyreal", time="year", outcome="lemp", group="first_treat")
    with pytest.raises(SpecError, match="panel=False"):
        dte_dask.att_gt(p, panel=False, bootstrap=False)
    rc = dte_dask.load_panel(mpdta, time="year", outcome="lemp", group="first_treat", covariates="lpop", panel=False)
    assert rc.n_units == len(mpdta) and rc.describe()["repeated_cross_section"]
    res = dte_dask.att_gt(rc, bootstrap=False)
    ref = dte_dask.att_gt(mpdta, **MP, covariates="lpop", panel=False, bootstrap=False)
    np.testing.assert_array_equal(res.att, ref.att)


def test_panel_needs_a_unit(mpdta):
    with pytest.raises(SpecError, match="unit"):
        dte_dask.att_gt(mpdta, **MP, bootstrap=False)


def test_other_estimators_refuse_a_repeated_cross_section(mpdta):
    rc = dte_dask.load_panel(mpdta, time="year", outcome="lemp", group="first_treat", panel=False)
    with pytest.raises(SpecError, match="repeated cross section"):
        dte_dask.event_study(rc, window=(-2, 2))


def test_rc_from_files_without_row_id(mpdta, tmp_path):
    """Parquet and CSV sources get the generated row id too (original row order)."""
    mpdta.to_parquet(tmp_path / "rc.parquet")
    mpdta.to_csv(tmp_path / "rc.csv", index=False)
    kw = dict(time="year", outcome="lemp", group="first_treat", covariates="lpop", panel=False)
    ref = dte_dask.att_gt(dte_dask.load_panel(mpdta, **kw), bootstrap=False)
    for src in ("rc.parquet", "rc.csv"):
        res = dte_dask.att_gt(dte_dask.load_panel(str(tmp_path / src), **kw), bootstrap=False)
        np.testing.assert_array_equal(res.att, ref.att)
        np.testing.assert_array_equal(res.se_analytic, ref.se_analytic)


@pytest.mark.parametrize("method", METHODS)
def test_collinear_covariate_gives_nan_cells(mpdta_rc, method):
    df = mpdta_rc.assign(lpop2=2.0 * mpdta_rc.lpop)
    with pytest.warns(dte_dask.exceptions.DegenerateCellWarning):
        res = dte_dask.att_gt(df, **MP, covariates=["lpop", "lpop2"], est_method=method, panel=False, bootstrap=False)
    assert np.isnan(res.att).all() and np.isnan(res.se_analytic).all()


def test_rc_needs_the_group_column(mpdta):
    with pytest.raises(dte_dask.exceptions.PanelError, match="group"):
        dte_dask.load_panel(mpdta, time="year", outcome="lemp", treatment="treat", panel=False)


@pytest.mark.parametrize("method", METHODS)
def test_influence_function_is_the_derivative_of_the_estimate(method):
    """psi_r = n d att / d w_r: the influence function is the exact derivative of the estimate in a
    row's weight (estimators are invariant to the weights' scale). An independent check of the
    formulas; it also settles the sign of drdid_rc's pre-period outcome-regression terms, where
    csdid (and we) follow the delta method (R DRDID's source and moderndid 0.2 add them instead)."""
    from dte_dask.core.rcs_covariates import rc_influence
    from dte_dask.core.routes import select
    from dte_dask.estimators.cs import cells_for
    from dte_dask.graph.attgt import run_kernel

    rng = np.random.default_rng(7)
    n = 400
    x = rng.normal(size=n)
    g = np.where(rng.random(n) < 1 / (1 + np.exp(-x)), 2, 0)
    t = rng.integers(1, 3, n)
    y = 1 + 0.5 * x + 0.4 * (g > 0) + t * (0.3 + 0.2 * x) + 0.8 * ((g > 0) & (t >= 2)) + rng.normal(size=n)
    df = pd.DataFrame({"y": y, "t": t, "g": g, "x": x, "w": 1.0})
    panel = dte_dask.load_panel(df, time="t", outcome="y", group="g", covariates="x", weights="w", panel=False)
    cells, groups = cells_for(panel, "never_treated", 0, "varying")
    kernel = select(cells, method=method, p=2, repeated=True, moments=False, n=panel.n_units, groups=groups,
                    weighted=True, label=str)
    fit = run_kernel(panel, cells, kernel)
    ok, est = fit.ok, fit.est
    block = panel.blocks[0].compute()
    psi = rc_influence(block, cells, {**est, "ok": ok})[:, 0]
    eps = 1e-6
    for r in (0, 5, 17, 123, 321):
        i = int(np.flatnonzero(block.ids == r)[0])
        up, down = df.copy(), df.copy()
        up.loc[r, "w"] += eps
        down.loc[r, "w"] -= eps
        kw = dict(outcome="y", time="t", group="g", covariates="x", weights="w", panel=False, est_method=method,
                  bootstrap=False)
        deriv = n * (dte_dask.att_gt(up, **kw).att[0] - dte_dask.att_gt(down, **kw).att[0]) / (2 * eps)
        assert abs(psi[i] - deriv) < 1e-5 * max(1.0, abs(deriv)), (r, psi[i], deriv)


@pytest.mark.parametrize("method", ("ipw", "dr"))
def test_unbalanced_warm_started_logit_matches_csdid(sim_unbalanced, method, monkeypatch):
    """Many RNG blocks: the propensity logit starts from its fit on a sample of them
    (``kernels.sample_logit``); the same numbers as csdid, and the same bits for any partitioning."""
    from dte_dask.core import kernels_rc

    starts = record_warm_starts(monkeypatch, kernels_rc)
    passes = record_passes(monkeypatch)
    fits = []
    for nparts in (1, 3):
        panel = dte_dask.load_panel(sim_unbalanced, **SIM, unit="unit", covariates=["age", "bmi"],
                                    allow_unbalanced_panel=True, rng_block_size=40, npartitions=nparts)
        fits.append(dte_dask.att_gt(panel, est_method=method, allow_unbalanced_panel=True, bootstrap=False))
    assert len(starts) == 2 and all(s.any() for s in starts)  # 13 RNG blocks: warm-started cells
    assert passes[0] == "stats" and "moments" not in passes  # the moments rode in the last logit pass
    ref = _csdid(sim_unbalanced, **SIM_CS, idname="unit", cov=["age", "bmi"], method=method,
                 control="never_treated", unbalanced=True)
    _compare(fits[0], ref)
    np.testing.assert_array_equal(fits[1].att, fits[0].att)
    np.testing.assert_array_equal(fits[1].se_analytic, fits[0].se_analytic)
