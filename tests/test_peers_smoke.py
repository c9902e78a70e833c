"""The peer adapters (tests/peers.py) reproduce the mpdta reference results and each other.

Every test skips cleanly when the peer it needs is not installed. csdid is the oracle for the
option combinations the reference CSVs do not cover (it reproduces R ``did``; see
tests/reference/README.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

try:
    from tests import peers
except ImportError:  # tests/ is not a package: pytest puts this directory on sys.path
    import peers

pytestmark = pytest.mark.peer

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path(__file__).resolve().parent / "reference"
MPDTA = ROOT / "dte_dask" / "data" / "mpdta.csv"
COLUMNS = dict(outcome="lemp", unit="countyreal", time="year", group="first_treat")

CONFIGS = {
    "nt": dict(control_group="never_treated", covariates=None),
    "nyt": dict(control_group="not_yet_treated", covariates=None),
    "nt_x": dict(control_group="never_treated", covariates=["lpop"]),
    "nyt_x": dict(control_group="not_yet_treated", covariates=["lpop"]),
}


def _require(peer):
    pytest.importorskip(peers.MODULE[peer])


@pytest.fixture(scope="module")
def mpdta_df() -> pd.DataFrame:
    """The mpdta csv as shipped (shared by this module's tests, which never modify it)."""
    return pd.read_csv(MPDTA)


@pytest.fixture(scope="module")
def mpdta_weighted(mpdta_df) -> pd.DataFrame:
    """mpdta with a time-invariant sampling weight in [0.5, 2]."""
    rng = np.random.default_rng(20240501)
    units = np.sort(mpdta_df["countyreal"].unique())
    w = pd.Series(rng.uniform(0.5, 2.0, len(units)), index=units)
    return mpdta_df.assign(w=mpdta_df["countyreal"].map(w))


@pytest.fixture(scope="module")
def mpdta_unbalanced(mpdta_df) -> pd.DataFrame:
    """mpdta with 6% of the unit-period rows dropped at random."""
    rng = np.random.default_rng(0)
    drop = rng.choice(len(mpdta_df), 150, replace=False)
    return mpdta_df.drop(index=drop).reset_index(drop=True)


def _assert_close(got, want, on, att_tol, se_rtol):
    """Same rows (keys ``on``), ATT within ``att_tol`` absolute, SE within ``se_rtol`` relative
    (NaN SEs, e.g. universal-base reference cells, must coincide)."""
    m = want.merge(got, on=on, how="outer", suffixes=("_want", "_got"), indicator=True)
    missing = m.loc[m["_merge"] != "both", on + ["_merge"]]
    assert missing.empty, f"rows differ:\n{missing}"
    np.testing.assert_allclose(m["att_got"], m["att_want"], rtol=0, atol=att_tol)
    np.testing.assert_array_equal(m["se_got"].isna(), m["se_want"].isna())
    np.testing.assert_allclose(m["se_got"], m["se_want"], rtol=se_rtol, atol=0)


def _reference(name, kind):
    return pd.read_csv(REFERENCE / f"mpdta_{name}_{kind}.csv", dtype={"key": str})


# ------------------------------------------------------------------ reference CSVs


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("peer", peers.PEERS)
def test_att_gt_matches_reference(peer, config, mpdta_df):
    _require(peer)
    kwargs = CONFIGS[config]
    got = peers.ATT_GT[peer](mpdta_df, **COLUMNS, **kwargs)
    assert list(got.columns) == ["group", "time", "att", "se"]
    assert got[["group", "time"]].equals(
        got[["group", "time"]].sort_values(["group", "time"]).reset_index(drop=True))
    att_tol, se_rtol = peers.tolerance(peer, kwargs["covariates"], "dr")
    _assert_close(got, _reference(config, "attgt"), ["group", "time"], att_tol, se_rtol)


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("peer", peers.PEERS)
def test_aggte_matches_reference(peer, config, mpdta_df):
    _require(peer)
    kwargs = CONFIGS[config]
    kinds = peers.supported_kinds(peer)
    got = peers.AGGTE[peer](mpdta_df, **COLUMNS, **kwargs, kinds=kinds)
    assert list(got.columns) == ["agg", "key", "att", "se"]
    want = _reference(config, "aggte")
    # the peer must report every reference row it claims to support, and nothing else
    overall = peers.SUPPORT[peer]["overall"]
    want = want.loc[want["agg"].isin(kinds)
                    & ((want["key"] != "overall") | want["agg"].isin(overall))]
    att_tol, se_rtol = peers.tolerance(peer, kwargs["covariates"], "dr")
    _assert_close(got, want, ["agg", "key"], att_tol, se_rtol)


# ------------------------------------------------------------------ options, peer vs csdid

OPTION_CASES = {
    "universal": dict(base_period="universal"),
    "universal_nyt_x": dict(base_period="universal", control_group="not_yet_treated",
                            covariates=["lpop"]),
    "anticipation": dict(anticipation=1),
    "anticipation_nyt_x": dict(anticipation=1, control_group="not_yet_treated",
                               covariates=["lpop"]),
    "ipw": dict(est_method="ipw"),
    "ipw_x": dict(est_method="ipw", covariates=["lpop"]),
    "reg_x": dict(est_method="reg", covariates=["lpop"]),
    "reg_nyt_x": dict(est_method="reg", control_group="not_yet_treated", covariates=["lpop"]),
    "weights": dict(weights="w"),
    "weights_x": dict(weights="w", covariates=["lpop"]),
    "unbalanced_dropped": dict(allow_unbalanced_panel=False),
    "unbalanced": dict(allow_unbalanced_panel=True),
    "unbalanced_x": dict(allow_unbalanced_panel=True, covariates=["lpop"]),
}


def _case_data(case, mpdta_df, mpdta_weighted, mpdta_unbalanced):
    if case.startswith("unbalanced"):
        return mpdta_unbalanced
    return mpdta_weighted if case.startswith("weights") else mpdta_df


def _supports(peer, kw):
    sup = peers.SUPPORT[peer]
    return ((not kw.get("covariates") or sup["covariates"])
            and kw.get("base_period", "varying") in sup["base_period"]
            and kw.get("est_method", "dr") in sup["est_method"]
            and kw.get("control_group", "never_treated") in sup["control_group"]
            and (not kw.get("anticipation") or sup["anticipation"])
            and (kw.get("weights") is None or sup["weights"])
            and (not kw.get("allow_unbalanced_panel") or sup["allow_unbalanced_panel"]))


@pytest.mark.parametrize("case", list(OPTION_CASES))
@pytest.mark.parametrize("peer", [p for p in peers.PEERS if p != "csdid"])
def test_options_match_csdid(peer, case, mpdta_df, mpdta_weighted, mpdta_unbalanced):
    """Each option a peer claims in SUPPORT gives csdid's (= R's) numbers; the others raise."""
    _require("csdid")
    _require(peer)
    kw = OPTION_CASES[case]
    data = _case_data(case, mpdta_df, mpdta_weighted, mpdta_unbalanced)
    if not _supports(peer, kw):
        with pytest.raises(NotImplementedError, match="does not support"):
            peers.ATT_GT[peer](data, **COLUMNS, **kw)
        return
    att_tol, se_rtol = peers.tolerance(peer, kw.get("covariates"), kw.get("est_method", "dr"))
    _assert_close(peers.ATT_GT[peer](data, **COLUMNS, **kw),
                  peers.att_gt_csdid(data, **COLUMNS, **kw), ["group", "time"], att_tol, se_rtol)

    kinds = peers.supported_kinds(peer, kw.get("anticipation", 0))
    overall = peers.SUPPORT[peer]["overall"]
    want = peers.aggte_csdid(data, **COLUMNS, **kw, kinds=kinds)
    want = want.loc[(want["key"] != "overall") | want["agg"].isin(overall)]
    _assert_close(peers.AGGTE[peer](data, **COLUMNS, **kw, kinds=kinds), want, ["agg", "key"],
                  att_tol, se_rtol)


# ------------------------------------------------------------------ input conventions


@pytest.mark.parametrize("variant", ["never_inf", "never_nan", "cohort_after_end", "shuffled",
                                     "string_ids", "float_periods"])
@pytest.mark.parametrize("peer", peers.PEERS)
def test_input_conventions(peer, variant, mpdta_df):
    """Never-treated as 0/NaN/inf or a cohort after the last period, any row order, string
    unit ids and float periods all give the reference results."""
    _require(peer)
    ft = mpdta_df["first_treat"].astype("float64")
    data = {
        "never_inf": lambda: mpdta_df.assign(first_treat=ft.replace(0, np.inf)),
        "never_nan": lambda: mpdta_df.assign(first_treat=ft.replace(0, np.nan)),
        "cohort_after_end": lambda: mpdta_df.assign(first_treat=ft.replace(0, 2010)),
        "shuffled": lambda: mpdta_df.sample(frac=1.0, random_state=1),
        "string_ids": lambda: mpdta_df.assign(
            countyreal="c" + mpdta_df["countyreal"].astype(str)),
        "float_periods": lambda: mpdta_df.assign(year=mpdta_df["year"].astype("float64"),
                                              first_treat=ft),
    }[variant]()
    got = peers.ATT_GT[peer](data, **COLUMNS)
    att_tol, se_rtol = peers.tolerance(peer)
    want = _reference("nt", "attgt").astype({"group": got["group"].dtype,
                                              "time": got["time"].dtype})
    _assert_close(got, want, ["group", "time"], att_tol, se_rtol)


# ------------------------------------------------------------------ the SUPPORT table


def test_support_table_is_complete():
    keys = {"covariates", "control_group", "anticipation", "base_period", "est_method",
            "weights", "allow_unbalanced_panel", "aggregations", "overall", "bootstrap",
            "cluster", "tol"}
    assert set(peers.SUPPORT) == set(peers.PEERS) == set(peers.ATT_GT) == set(peers.AGGTE)
    for peer, sup in peers.SUPPORT.items():
        assert keys <= set(sup), (peer, keys - set(sup))
        assert set(sup["overall"]) <= set(sup["aggregations"]) <= set(peers.AGG_KINDS)


@pytest.mark.parametrize(("peer", "kwargs"), [
    ("moderndid", dict(allow_unbalanced_panel=True)),
    ("differences", dict(allow_unbalanced_panel=True)),
])
def test_unsupported_options_raise(peer, kwargs, mpdta_df):
    """Raised before the peer is imported, so this runs without it."""
    with pytest.raises(NotImplementedError, match="does not support allow_unbalanced_panel"):
        peers.ATT_GT[peer](mpdta_df, **COLUMNS, **kwargs)


def test_unsupported_aggregations_raise(mpdta_df):
    with pytest.raises(NotImplementedError, match="diff-diff does not support the 'calendar'"):
        peers.aggte_diff_diff(mpdta_df, **COLUMNS, kinds=("calendar",))
    _require("diff_diff")
    with pytest.raises(NotImplementedError, match="anticipation"):
        peers.aggte_diff_diff(mpdta_df, **COLUMNS, anticipation=1, kinds=("simple",))


def test_invalid_options_raise(mpdta_df):
    with pytest.raises(ValueError, match="control_group"):
        peers.att_gt_csdid(mpdta_df, **COLUMNS, control_group="nevertreated")
    with pytest.raises(ValueError, match="est_method"):
        peers.att_gt_csdid(mpdta_df, **COLUMNS, est_method="dr-ipt")
