"""did_multiplegt(controls=...) against R ``did_multiplegt_dyn`` itself.

moderndid's ``xformla`` is not R's covariate adjustment (see docs/did_multiplegt.md), so the
references are numbers printed by R ``did_multiplegt_dyn`` (source of chaisemartinPackages/
did_multiplegt_dyn at commit a883607, R 4.2.2, data.table 1.14.8; fixest was not available, so its
one ``feols(dY ~ dX - 1 | time, weights)`` call was replaced by the same weighted least squares with
period dummies, ``lm``) on the panels built below (written to CSV with full precision), with
``effects = 3, placebo = 2`` and the options named in each case, by
``tests/reference/did_multiplegt_dyn_run.R`` (see tests/reference/README.md). R reports 15
significant digits.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import dte_dask
from dte_dask.exceptions import ColumnTypeError, SpecError

md = pytest.importorskip("moderndid")


def _sim(n=400, periods=7, beta=1.0, lam=0.8, seed=0):
    """Baselines 0/1, one increase by 1 at a random period (some never), a control X that trends
    with early adoption and responds to D: Y = a_g + 0.2 t + beta D + lam X + noise."""
    rng = np.random.default_rng(seed)
    d0 = rng.integers(0, 2, n).astype(float)
    F = rng.integers(2, periods + 3, n)
    t = np.arange(periods)
    Dm = np.where(t[None, :] >= F[:, None], d0[:, None] + 1, d0[:, None])
    X = rng.normal(size=(n, periods)) + 0.3 * t[None, :] * (F[:, None] < 5) + 0.5 * Dm
    Ym = rng.normal(size=(n, 1)) + 0.2 * t[None, :] + beta * Dm + lam * X + 0.5 * rng.normal(size=(n, periods))
    return pd.DataFrame({"id": np.repeat(np.arange(n), periods), "t": np.tile(t, n) + 1, "y": Ym.ravel(),
                         "d": Dm.ravel(), "x": X.ravel()})


def _sim2():
    """A second control, clusters of 4 units and row weights 1..3."""
    s = _sim(n=300, periods=6, seed=21)
    s["x2"] = np.random.default_rng(9).normal(size=len(s)) + 0.1 * s["t"]
    s["c"] = s["id"] // 4
    s["w"] = 1 + (s["id"] % 3)
    return s


@pytest.fixture(scope="module")
def favara() -> pd.DataFrame:
    df = md.load_favara_imbs()
    df = df.to_pandas() if hasattr(df, "to_pandas") else df
    return df.rename(columns={"Dl_vloans_b": "y", "county": "id", "year": "t", "inter_bra": "d"})


# rows: DID_1..3, placebos 1..2, then the average total effect (estimate, SE, N, switchers)
R_SIM = {"est": [0.968514064260989, 0.950840547945859, 0.938134419444901, 0.0754526415465988,
                 -0.0393600429805052, 0.955100176138613],
         "se": [0.0619979213338028, 0.0770372157973889, 0.0943265955465265, 0.0482771898609775,
                0.0712755791571355, 0.067310060769936],
         "N": [1519, 1115, 761, 1519, 763], "sw": [245, 194, 145, 245, 147]}
# Favara-Imbs, controls = Dl_hpi (324 missing values)
R_FAVARA = {"est": [0.0381024681432748, 0.0305128641581897, 0.072070519656504, 0.0511959685388227,
                    -0.0715547955416458, 0.0218816967261464],
            "se": [0.0250745755951389, 0.024154332128746, 0.0308675980892923, 0.0392514992042783,
                   0.0507075915636703, 0.0110032020382188],
            "N": [3756, 2963, 2391, 2750, 1343], "sw": [878, 878, 878, 869, 629]}
# Favara-Imbs, controls = Dl_hpi, trends_nonparam = region (state_n mod 3)
R_FAVARA_NONPARAM = {"est": [0.0294132351549049, 0.0296565506073464, 0.10112807558935, 0.0347771052073713,
                             -0.0215898536216234, 0.0249165141305059],
                     "se": [0.0264331562264373, 0.0287547715209404, 0.0394354420699706, 0.0424005295499921,
                            0.0555023630255741, 0.0125226308348564],
                     "N": [2848, 2246, 1761, 2531, 1142], "sw": [878, 878, 878, 869, 629]}
# _sim2, controls = x, x2, weight = w
R_SIM2_W = {"est": [0.926740365565078, 0.807704071381735, 0.809125795057428, -0.0196955694051471,
                    -0.0516166463468008, 0.860914498326888],
            "se": [0.0782545665067453, 0.0923837548952126, 0.124528279427961, 0.0690834736822582,
                   0.101811071335732, 0.0807269427855576],
            "N": [930, 631, 363, 930, 377], "sw": [182, 142, 87, 182, 101]}


def _check(res, ref):
    fr = res.to_frame()
    np.testing.assert_allclose(np.r_[fr["estimate"], res.ate["estimate"]], ref["est"], rtol=0, atol=1e-8)
    np.testing.assert_allclose(np.r_[fr["se"], res.ate["se"]], ref["se"], rtol=1e-6)
    np.testing.assert_array_equal(fr["n_obs"], ref["N"])
    np.testing.assert_array_equal(fr["n_switchers"], ref["sw"])


def test_simulated_vs_r():
    res = dte_dask.did_multiplegt(_sim(), "y", "id", "t", "d", effects=3, placebo=2, controls=["x"], npartitions=3)
    _check(res, R_SIM)
    # the controls matter here: without them DID_3 is far from R's adjusted value
    plain = dte_dask.did_multiplegt(_sim(), "y", "id", "t", "d", effects=3, placebo=2)
    assert abs(plain.estimates[2] - R_SIM["est"][2]) > 5 * R_SIM["se"][2]


def test_favara_missing_controls_vs_r(favara):
    res = dte_dask.did_multiplegt(favara, "y", "id", "t", "d", effects=3, placebo=2, controls="Dl_hpi")
    _check(res, R_FAVARA)


def test_favara_controls_and_trends_nonparam_vs_r(favara):
    region = favara.assign(region=(favara["state_n"] % 3).astype(float))
    res = dte_dask.did_multiplegt(region, "y", "id", "t", "d", effects=3, placebo=2, controls=["Dl_hpi"],
                                  trends_nonparam=["region"], npartitions=2)
    _check(res, R_FAVARA_NONPARAM)


def test_two_controls_weights_vs_r_and_partitions():
    df = _sim2()
    kw = {"effects": 3, "placebo": 2, "controls": ["x", "x2"], "weights": "w", "rng_block_size": 16}
    a = dte_dask.did_multiplegt(df, "y", "id", "t", "d", npartitions=1, **kw)
    _check(a, R_SIM2_W)
    b = dte_dask.did_multiplegt(df, "y", "id", "t", "d", npartitions=4, **kw)
    np.testing.assert_array_equal(a.estimates, b.estimates)
    np.testing.assert_array_equal(a.vcov(), b.vcov())


def test_controls_errors(favara):
    with pytest.raises(NotImplementedError, match="together with trends_lin"):
        dte_dask.did_multiplegt(favara, "y", "id", "t", "d", controls=["Dl_hpi"], trends_lin=True)
    with pytest.raises(SpecError, match="controls"):
        dte_dask.did_multiplegt(favara, "y", "id", "t", "d", controls=[3])
    with pytest.raises(SpecError, match="numeric"):
        dte_dask.did_multiplegt(favara.assign(s=favara["state_n"].astype(str) + "x"), "y", "id", "t", "d",
                                controls=["s"])
    bad = favara.copy()
    unit, period = bad.loc[bad.index[7], "id"], bad.loc[bad.index[7], "t"]
    bad.loc[bad.index[7], "Dl_hpi"] = np.inf  # an infinite control or outcome names its cell
    with pytest.raises(ColumnTypeError, match=rf"column 'Dl_hpi' has 1 infinite values.*\({unit}, {period}\)"):
        dte_dask.did_multiplegt(bad, "y", "id", "t", "d", controls=["Dl_hpi"])
    with pytest.raises(ColumnTypeError, match=rf"column 'y' has 1 infinite values.*\({unit}, {period}\)"):
        dte_dask.did_multiplegt(bad.assign(y=bad["Dl_hpi"]), "y", "id", "t", "d")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        collinear = favara.assign(z=favara["t"] * 2.0)  # dZ = 2 for every row: no variation within periods
        res = dte_dask.did_multiplegt(collinear, "y", "id", "t", "d", controls=["z"])
    assert np.isfinite(res.estimates).all()


def test_dask_input_bit_identical(favara):
    """The extra columns (controls, trends_nonparam) of an unsorted dask frame are pivoted along the
    same entity partitions as the outcome: results equal the pandas input's bit for bit."""
    import dask.dataframe as dd

    df = favara.assign(region=(favara["state_n"] % 3).astype(float))
    kw = {"effects": 2, "placebo": 1, "controls": ["Dl_hpi"], "trends_nonparam": ["region"], "rng_block_size": 64}
    a = dte_dask.did_multiplegt(df, "y", "id", "t", "d", npartitions=3, **kw)
    b = dte_dask.did_multiplegt(dd.from_pandas(df.sample(frac=1, random_state=1), npartitions=4),
                                "y", "id", "t", "d", npartitions=2, **kw)
    np.testing.assert_array_equal(a.estimates, b.estimates)
    np.testing.assert_array_equal(a.vcov(), b.vcov())


def _continuous_panel(n=300, periods=6, seed=12):
    """Baseline treatment uniform on [0, 3] (no two units share it: exact matching is impossible),
    one increase by 0.5, 1 or 1.5; trends that depend on the baseline."""
    rng = np.random.default_rng(seed)
    d0 = rng.uniform(0, 3, n)
    F = rng.integers(2, periods + 3, n)
    step = rng.choice([0.5, 1.0, 1.5], n)
    t = np.arange(periods)
    Dm = np.where(t[None, :] >= F[:, None], d0[:, None] + step[:, None], d0[:, None])
    Ym = (rng.normal(size=(n, 1)) + 0.2 * t[None, :] * (1 + 0.3 * d0[:, None]) + 1.0 * Dm
          + 0.5 * rng.normal(size=(n, periods)))
    return pd.DataFrame({"id": np.repeat(np.arange(n), periods), "t": np.tile(t, n) + 1, "y": Ym.ravel(),
                         "d": Dm.ravel()})


# R continuous = K (effects and placebos; R's average total effect divides by the mean change at the
# target period, ours by the increments of the cumulative change, as moderndid: not compared here)
R_CONTINUOUS = {
    (1, False): ([0.965788562682737, 1.0317799345621, 0.880382702061694, -0.00465769317722341, -0.0293903348808917],
                 [0.0716616197584111, 0.073689015457855, 0.0955115715637109, 0.0588317618847723, 0.0857846886746975]),
    (2, False): ([0.964965354891917, 1.02971391011266, 0.869789751619502, -0.00665176931401651, -0.0339091310132943],
                 [0.0712504836605699, 0.0736808941117345, 0.0965016565812943, 0.0588181815863726, 0.0852299330099113]),
    (1, True): ([0.939255909861783, 0.501150253930163, 0.293460900687231, -0.00452973457345353, -0.0142704516184676],
                [0.0696928939408723, 0.035791807508101, 0.031837190521237, 0.0572155046901357, 0.0416526812062115]),
}


@pytest.mark.parametrize("degree,normalized", list(R_CONTINUOUS), ids=["deg1", "deg2", "deg1_normalized"])
def test_continuous_vs_r(degree, normalized):
    res = dte_dask.did_multiplegt(_continuous_panel(), "y", "id", "t", "d", effects=3, placebo=2,
                                  continuous=degree, normalized=normalized, npartitions=2)
    est, se = R_CONTINUOUS[(degree, normalized)]
    fr = res.to_frame()
    np.testing.assert_allclose(fr["estimate"], est, rtol=0, atol=1e-8)
    np.testing.assert_allclose(fr["se"], se, rtol=1e-6)
    np.testing.assert_array_equal(fr["n_obs"], [923, 634, 376, 923, 371])
    np.testing.assert_array_equal(fr["n_switchers"], [177, 136, 89, 177, 84])
