"""Goodman-Bacon decomposition: Theorem 1 (weighted sum = TWFE), diff-diff's BaconDecomposition,
partition invariance."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import dte_dask

COLS = dict(outcome="y", unit="unit", time="time", group="group")
MPDTA = dict(outcome="lemp", unit="countyreal", time="year", group="first_treat")


def _frame(seed: int = 3, n: int = 240, unbalanced: float = 0.0) -> pd.DataFrame:
    return dte_dask.simulate_panel(n, 7, seed=seed, unbalanced_share=unbalanced).data.compute(scheduler="sync")


def _diff_diff(df: pd.DataFrame, cols: dict) -> tuple[float, pd.DataFrame]:
    dd = pytest.importorskip("diff_diff")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = dd.BaconDecomposition().fit(df, outcome=cols["outcome"], unit=cols["unit"], time=cols["time"],
                                          first_treat=cols["group"])
    rows = [{"type": c.comparison_type, "treated": c.treated_group, "control": c.control_group,
             "estimate_dd": c.estimate, "weight_dd": c.weight} for c in fit.comparisons]
    return fit.twfe_estimate, pd.DataFrame(rows)


def _check_peer(res, df: pd.DataFrame, cols: dict) -> None:
    twfe, ref = _diff_diff(df, cols)
    ours = res.to_frame()
    for c in ("treated", "control"):
        ours[c] = ours[c].astype(str)
        ref[c] = ref[c].astype(str)
    m = ours.merge(ref, on=["type", "treated", "control"], how="outer", indicator=True)
    assert (m["_merge"] == "both").all(), m
    np.testing.assert_allclose(m["estimate"], m["estimate_dd"], atol=1e-8, rtol=0)
    np.testing.assert_allclose(m["weight"], m["weight_dd"], atol=1e-10, rtol=0)
    assert abs(res.twfe - twfe) < 1e-8


def test_weighted_sum_is_twfe_and_weights_sum_to_one():
    res = dte_dask.bacon_decomposition(_frame(), **COLS)
    assert abs(res.comparisons["weight"].sum() - 1.0) < 1e-12
    assert abs(res.weighted_sum - res.twfe) < 1e-10
    by = res.by_type().set_index("type")
    assert set(by.index) == {"treated_vs_never", "earlier_vs_later", "later_vs_earlier"}
    assert abs(by["weight"].sum() - 1.0) < 1e-12


def test_weighted_sum_is_twfe_with_sampling_weights():
    df = _frame(seed=8)
    rng = np.random.default_rng(0)
    w = pd.Series(rng.uniform(0.5, 2.0, df["unit"].nunique()), index=np.sort(df["unit"].unique()))
    df["w"] = df["unit"].map(w)
    res = dte_dask.bacon_decomposition(df, **COLS, weights="w")
    assert abs(res.weighted_sum - res.twfe) < 1e-10
    pf = pytest.importorskip("pyfixest")
    d = df.assign(D=((df["group"] > 0) & (df["time"] >= df["group"])).astype(float))
    ref = pf.feols("y ~ D | unit + time", data=d, weights="w", vcov={"CRV1": "unit"})
    assert abs(res.twfe - ref.coef()["D"]) < 1e-10
    assert abs(res.twfe_se - ref.se()["D"]) < 1e-8


def test_twfe_and_clustered_se_match_pyfixest_with_a_level_shift():
    """The closed-form TWFE coefficient and its CRV1 SE clustered on a coarser variable (50 clusters of
    units across partitions) against pyfixest; the outcome sits far from zero (level 1e4), which the
    scores' within-period contrasts must not lose digits to."""
    pf = pytest.importorskip("pyfixest")
    df = _frame(seed=12)
    df["y"] = df["y"] + 1e4 + 3.0 * df["time"]
    df["state"] = df["unit"] % 50
    a = dte_dask.bacon_decomposition(df, **COLS, cluster="state", npartitions=1)
    b = dte_dask.bacon_decomposition(df, **COLS, cluster="state", npartitions=3)
    assert (a.twfe, a.twfe_se) == (b.twfe, b.twfe_se)
    d = df.assign(D=((df["group"] > 0) & (df["time"] >= df["group"])).astype(float))
    ref = pf.feols("y ~ D | unit + time", data=d, vcov={"CRV1": "state"})
    assert abs(a.twfe - ref.coef()["D"]) < 1e-10
    assert abs(a.twfe_se - ref.se()["D"]) < 1e-10
    assert abs(a.weighted_sum - a.twfe) < 1e-10


@pytest.mark.peer
@pytest.mark.parametrize("seed", [3, 11])
def test_matches_diff_diff_simulated(seed):
    df = _frame(seed=seed)
    res = dte_dask.bacon_decomposition(df, **COLS)
    _check_peer(res, df, COLS)


@pytest.mark.peer
def test_matches_diff_diff_unbalanced_input_on_balanced_subset():
    """An unbalanced frame is balanced on load (units missing a period dropped); diff-diff (which
    only warns on unbalanced panels) is given the same balanced subset."""
    df = _frame(seed=5, unbalanced=0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = dte_dask.bacon_decomposition(df, **COLS)
    T = df["time"].nunique()
    keep = df.dropna(subset=["y"]).groupby("unit")["time"].transform("size") == T
    bal = df.dropna(subset=["y"])[keep]
    assert res.n_units == bal["unit"].nunique() < df["unit"].nunique()
    _check_peer(res, bal, COLS)
    assert abs(res.weighted_sum - res.twfe) < 1e-10


@pytest.mark.peer
def test_matches_diff_diff_mpdta():
    df = dte_dask.datasets.load_mpdta()
    res = dte_dask.bacon_decomposition(df, **MPDTA)
    _check_peer(res, df, MPDTA)
    assert abs(res.weighted_sum - res.twfe) < 1e-10


def test_partition_invariance():
    df = _frame(seed=4)
    a = dte_dask.bacon_decomposition(df, **COLS, npartitions=1)
    b = dte_dask.bacon_decomposition(df, **COLS, npartitions=4)
    pd.testing.assert_frame_equal(a.to_frame(), b.to_frame(), check_exact=True)
    assert abs(a.twfe - b.twfe) < 1e-12
    assert abs(a.twfe_se - b.twfe_se) < 1e-12


def test_plot_scatter():
    mpl = pytest.importorskip("matplotlib")
    mpl.use("Agg")
    res = dte_dask.bacon_decomposition(_frame(), **COLS)
    ax = res.plot()
    assert len(ax.collections) == 3  # one scatter per comparison type


def test_results_save_and_summary(tmp_path):
    from dte_dask.report import save_results

    res = dte_dask.bacon_decomposition(dte_dask.datasets.load_mpdta(), **MPDTA)
    summary = save_results({"bacon": res}, tmp_path)
    assert summary["estimators"]["bacon"]["kind"] == "bacon_decomposition"
    back = pd.read_parquet(tmp_path / "estimators" / "bacon.parquet")
    assert len(back) == len(res.comparisons) and "TWFE" in res.summary()
