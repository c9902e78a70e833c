"""continuous_did(dose_method="cck") against moderndid's NPIV routines (the CCK estimator of its ``cont_did``).

moderndid's ``cont_did(dose_est_method="cck")`` runs ``npiv`` on the treated units' outcome change
minus the comparison mean: ``npiv_jhat_max`` (segments searched), ``npiv_j`` (Lepski test) and
``npiv_est`` at the chosen number of segments. Its full run takes ~40 s at 1,000 units, so each step
is compared here with the routine that computes it (the bootstrap critical values differ by
construction: other multipliers).
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from dte_dask.estimators.continuous_did import continuous_did
from dte_dask.exceptions import SpecError

pytest.importorskip("moderndid")
from moderndid.didcont.npiv.estimators import npiv_est
from moderndid.didcont.npiv.lepski import npiv_j, npiv_jhat_max

from dte_dask.core.contdid_cck import segment_set

COLS = dict(outcome="Y", unit="id", time="time_period", group="G", dose="D")


def truth(d):
    return np.sin(8 * d) + d


def _panel(n: int, seed: int):
    rng = np.random.default_rng(seed)
    treated = rng.random(n) < 0.5
    dose = np.where(treated, rng.uniform(0, 1, n), 0.0)
    a = rng.normal(size=n)
    y1 = a + rng.normal(size=n)
    y2 = a + 0.3 + np.where(treated, truth(dose), 0.0) + 0.5 * rng.normal(size=n)
    return pd.DataFrame({"id": np.repeat(np.arange(n), 2), "time_period": np.tile([1, 2], n),
                         "Y": np.c_[y1, y2].ravel(), "G": np.repeat(np.where(treated, 2, 0), 2),
                         "D": np.repeat(dose, 2)})


@pytest.fixture(scope="module")
def fits():
    pdf = _panel(700, 4)
    kw = dict(dose_method="cck", n_boot=199, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lv = continuous_did(pdf, **COLS, **kw)
        sl = continuous_did(pdf, **COLS, target="slope", **kw)
    wide = pdf.pivot(index="id", columns="time_period", values="Y")
    first = pdf.groupby("id").first()
    dy = (wide[2] - wide[1]).to_numpy()
    tr = first["G"].to_numpy() == 2
    return pdf, lv, sl, dy[tr], dy[~tr], first["D"].to_numpy()[tr]


def test_segments_searched_match_npiv_jhat_max():
    for n in (60, 350, 2000, 40000):
        x = np.linspace(0.1, 1, n)[:, None]
        ref = npiv_jhat_max(x=x, w=x, j_x_degree=3, k_w_degree=3, knots="quantiles")
        segs, alpha = segment_set(n, 3)
        np.testing.assert_array_equal(segs, ref["j_x_segments_set"])
        assert alpha == pytest.approx(ref["alpha_hat"], rel=1e-12)


def test_estimates_and_standard_errors_match_npiv(fits):
    _, lv, sl, yt, yc, d = fits
    J = lv.options["cck_segments"]
    assert J == sl.options["cck_segments"] and J > 1  # a wiggly curve: more than one cubic piece
    grid = lv.keys
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = npiv_est(y=yt - yc.mean(), x=d[:, None], w=d[:, None], x_eval=grid[:, None], j_x_degree=3,
                     j_x_segments=J, k_w_degree=3, k_w_segments=4 * J, knots="quantiles", data_driven=True)
        at_d = npiv_est(y=yt - yc.mean(), x=d[:, None], w=d[:, None], x_eval=d[:, None], j_x_degree=3,
                        j_x_segments=J, k_w_degree=3, k_w_segments=4 * J, knots="quantiles", data_driven=True)
    np.testing.assert_allclose(lv.estimates, m.h, atol=1e-8, rtol=0)
    np.testing.assert_allclose(sl.estimates, m.deriv, atol=1e-8, rtol=0)
    np.testing.assert_allclose(lv.att_d, sl.att_d, atol=0)
    np.testing.assert_allclose(sl.to_frame()["se"], m.deriv_asy_se, rtol=1e-6)
    ctrl = yc.var() / yc.size  # the comparison mean's variance (moderndid leaves it out of ATT(d))
    np.testing.assert_allclose(lv.to_frame()["se"] ** 2, m.asy_se ** 2 + ctrl, rtol=1e-6)
    assert lv.overall["acrt"] == pytest.approx(at_d.deriv.mean(), abs=1e-8)
    assert lv.overall["att"] == pytest.approx(yt.mean() - yc.mean(), abs=1e-12)
    assert lv.overall_se["att"] == pytest.approx(np.sqrt(yt.var() / yt.size + ctrl), rel=1e-10)


def test_lepski_statistics_match_npiv_j(fits):
    _, lv, _, yt, yc, d = fits
    segs = np.array([1, 2, 4, 8])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = npiv_j(y=yt - yc.mean(), x=d[:, None], w=d[:, None], x_grid=lv.keys[:, None], j_x_degree=3,
                     k_w_degree=3, j_x_segments_set=segs, k_w_segments_set=4 * segs, knots="quantiles", boot_num=1,
                     seed=0)
    ours = {(a, b): z for a, b, z in lv.options["cck_z_sup"]}
    pairs = [(a, b) for i, a in enumerate(segs) for b in segs[i + 1:]]
    np.testing.assert_allclose([ours[p] for p in pairs], ref["z_sup"], rtol=1e-6)
    # the cap: J~ <= the second-largest J searched; the truth inside the honest band
    assert lv.options["cck_segments"] <= lv.options["cck_segments_searched"][-2]
    f = lv.to_frame()
    assert ((f["band_lower"] <= truth(lv.keys)) & (truth(lv.keys) <= f["band_upper"])).all()
    assert lv.crit > 1.96 and np.isfinite(lv.crit)
    assert "chosen by CCK" in lv.summary()


def test_partition_invariant(fits):
    pdf, lv, *_ = fits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = continuous_did(pdf, **COLS, dose_method="cck", n_boot=199, seed=3, npartitions=3)
    np.testing.assert_array_equal(lv.estimates, b.estimates)
    np.testing.assert_array_equal(lv.vcov(), b.vcov())
    np.testing.assert_array_equal(lv.draws, b.draws)
    assert lv.crit == b.crit and lv.options["cck_z_sup"] == b.options["cck_z_sup"]


def test_restrictions(fits):
    pdf = fits[0]
    three = pd.concat([pdf, pdf[pdf["time_period"] == 2].assign(time_period=3)])
    for bad, kw, msg in [(three, {}, "two periods and one treated cohort"),
                         (pdf, {"aggregation": "eventstudy"}, "aggregation='dose'"),
                         (pdf, {"num_knots": 2}, "chooses its knots"),
                         (pdf, {"bootstrap": False}, "bootstrap=True")]:
        with pytest.raises(SpecError, match=msg):
            continuous_did(bad, **COLS, dose_method="cck", **kw)
