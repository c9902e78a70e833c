"""Every registered estimator's result (and every aggregation it declares) follows the result protocol.

Parametrised over ``dte_dask.list_estimators()``: an estimator added to the registry is checked here
without editing this file. The checks are the protocol's contract (docs/results.md): the canonical
``to_frame()`` columns, ``estimates`` in its row order, ``vcov()`` square and symmetric with
``se == sqrt(diag(vcov))`` (the analytic SE where ``se`` is the bootstrap's), pointwise intervals
centred on the estimate, non-empty ``summary`` / ``str`` / ``repr`` / ``_repr_html_``, ``plot()``,
``pretrend_test()`` and a ``to_parquet()`` round trip.
"""
from __future__ import annotations

import inspect
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import dte_dask
from dte_dask import registry
from dte_dask.exceptions import EstimationError, SpecError
from dte_dask.results import KEY_COLUMNS, SCHEMA, Result
from dte_dask.results.bacon import BACON_KEYS

COLS = dict(outcome="y", unit="unit", time="time", group="group")
# arguments an estimator needs beyond the column roles on this panel (a new estimator that needs one adds it here)
REQUIRED = {"triple_did": {"partition": "female"}, "did_multiplegt": {"treatment": "treat", "effects": 2, "placebo": 1},
            "continuous_did": {"dose": "dose"}}
NAMES = [e.name for e in dte_dask.list_estimators()]
CASES = [(e.name, kind) for e in dte_dask.list_estimators() for kind in (None, *e.aggregations)]


@pytest.fixture(scope="module")
def fitted() -> dict[str, Result]:
    # 300 units x 8 periods, cohorts 3, 5, 7 and never treated (small: every estimator in ~1 s)
    df = dte_dask.simulate_panel(300, 8, seed=3).data.compute()
    df["dose"] = (df["group"] > 0) * (1.0 + (df["unit"] % 5) / 4.0)  # a time-invariant dose of the treated
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for entry in dte_dask.list_estimators():
            params = inspect.signature(entry.fn).parameters
            inference = {k: v for k, v in dict(n_boot=49, seed=1).items() if k in params}
            cols = {k: v for k, v in COLS.items() if k in params}
            out[entry.name] = entry.fn(df, **cols, **inference, **REQUIRED.get(entry.name, {}))
    return out


def test_every_builtin_estimator_is_checked() -> None:
    assert {"att_gt", "event_study", "stacked_did", "sun_abraham", "imputation_did", "two_stage_did", "etwfe",
            "bacon_decomposition"} <= set(NAMES)


@pytest.mark.parametrize(("name", "aggregation"), CASES, ids=[f"{n}-{a or 'result'}" for n, a in CASES])
def test_result_follows_the_protocol(fitted, name: str, aggregation: str | None, tmp_path: Path) -> None:
    entry = registry.get(name)
    res = fitted[name] if aggregation is None else fitted[name].aggregate(aggregation)
    assert isinstance(res, Result) and res.estimator == name and res.label == (entry.label or name)
    df = res.to_frame()
    # the canonical columns, in order, keys first; no estimator-specific spelling of the estimate
    assert list(df.columns[df.columns.isin(SCHEMA)]) == list(SCHEMA)
    keys = list(df.columns[: list(df.columns).index("estimate")])
    assert keys and set(keys) <= set(KEY_COLUMNS) | {"horizon", "dose"} | set(BACON_KEYS), keys
    assert not {"att", "coef"} & set(df.columns)
    np.testing.assert_array_equal(df["estimate"].to_numpy(float), np.asarray(res.estimates, dtype=float))
    se = df["se"].to_numpy(float)
    ok = np.isfinite(se)
    np.testing.assert_allclose((df["ci_upper"] - df["estimate"])[ok], (df["estimate"] - df["ci_lower"])[ok],
                               rtol=1e-10, atol=1e-14)
    assert (df["ci_upper"] >= df["ci_lower"])[ok].all()
    if entry.result == "decomposition":  # no sampling uncertainty of the 2x2 pieces: NaN, a clear error
        assert not ok.any() and {"weight", "n_treated", "n_control"} <= set(df.columns)
        np.testing.assert_allclose(df["weight"].sum(), 1.0, rtol=1e-12)
        with pytest.raises(EstimationError, match="no covariance"):
            res.vcov()
        with pytest.raises(SpecError, match="no estimates by event time"):
            res.pretrend_test()
    else:
        V = res.vcov()
        assert V.shape == (len(df), len(df)) and np.allclose(V, V.T, rtol=1e-12, atol=0)
        analytic = df["se_analytic"].to_numpy(float) if "se_analytic" in df else se
        fin = np.isfinite(analytic)
        np.testing.assert_allclose(np.sqrt(np.clip(np.diag(V), 0, None))[fin], analytic[fin], rtol=1e-10, atol=1e-14)
        if (aggregation is None and res.result_kind in ("cells", "event_study")) or aggregation == "dynamic":
            t = res.pretrend_test()
            assert {"statistic", "df", "p_value"} <= set(t)
            assert "event_time" in res.event_study().to_frame().columns
    text = res.summary()
    assert text and str(res) == text and repr(res) == text
    assert res._repr_html_().startswith("<pre>") and len(res._repr_html_()) > 20
    if entry.result == "decomposition":
        import matplotlib

        matplotlib.use("Agg")
        assert len(res.plot().collections) >= 1
    else:
        assert res.plot() is not None
    path = res.to_parquet(tmp_path / f"{name}.parquet")
    back = pd.read_parquet(path)
    assert list(back.columns) == list(df.columns) and len(back) == len(df)
    pd.testing.assert_frame_equal(back[["estimate", "se", "ci_lower", "ci_upper"]],
                                  df[["estimate", "se", "ci_lower", "ci_upper"]].reset_index(drop=True),
                                  check_dtype=False, check_exact=True)


def test_unknown_aggregation_names_what_is_offered(fitted) -> None:
    with pytest.raises(SpecError, match="offers the aggregations"):
        fitted["etwfe"].aggregate("nonsense")
    with pytest.raises(SpecError, match="offers the aggregations"):
        fitted["event_study"].aggregate("group")


def test_etwfe_aggregations_are_the_rows_checked_against_diff_diff(fitted) -> None:
    """``aggregate("group" | "calendar" | "simple")`` carry the numbers of ``other`` (tested against
    diff-diff's WooldridgeDiD in test_etwfe.py), with t intervals on clusters - 1 df."""
    from scipy import stats

    res = fitted["etwfe"]
    other = res.other
    for kind in ("group", "calendar"):
        agg = res.aggregate(kind)
        rows = other[other["type"] == kind]
        np.testing.assert_array_equal(agg.estimates, rows["coef"].to_numpy())
        np.testing.assert_allclose(agg.to_frame()["se"], rows["se"].to_numpy(), rtol=1e-12)
        assert agg.overall_att == other.loc[other["type"] == "simple", "coef"].item()
        t = stats.t.ppf(0.975, res.df_t)
        np.testing.assert_allclose(agg.to_frame()["ci_upper"] - agg.estimates, t * agg.to_frame()["se"], rtol=1e-12)
    assert res.aggregate("simple").overall_se == other.loc[other["type"] == "simple", "se"].item()
    assert res.aggregate("dynamic") is res


# arguments kept for the peer's signature but refused with NotImplementedError naming them (tested in
# the estimator's own tests): the capability is not declared
REFUSED: dict[str, set[str]] = {}
# estimators whose method is defined on unbalanced panels (no balancing switch to offer)
NATIVELY_UNBALANCED = {"did_multiplegt"}
# its `bootstrap` reruns the estimator on resampled units (an option of its own), not the multiplier bootstrap
RESAMPLING_BOOTSTRAP = {"did_multiplegt"}


@pytest.mark.parametrize("name", NAMES)
def test_declared_capabilities_match_the_function(name: str) -> None:
    """What the registry declares (docs/estimators.md, the service's validation) is what the function takes."""
    entry = registry.get(name)
    params = inspect.signature(entry.fn).parameters
    assert entry.covariates == ("covariates" in params), "covariates"
    assert entry.weights == ("weights" in params), "weights"
    assert entry.clusters == ("cluster" in params), "clusters"
    assert entry.bootstrap == ("bootstrap" in params and "bootstrap" not in REFUSED.get(name, ())
                               and name not in RESAMPLING_BOOTSTRAP), "bootstrap"
    assert entry.unbalanced == ("allow_unbalanced_panel" in params or name in NATIVELY_UNBALANCED), "unbalanced"
    assert set(entry.options.model_fields) <= set(params)


def test_sensitivity_results_share_the_protocol_views(fitted, tmp_path: Path) -> None:
    """honest_did's result is no estimator's result (intervals by M, no covariance) but has the views."""
    import matplotlib

    matplotlib.use("Agg")
    res = dte_dask.honest_did(fitted["event_study"], restriction="smoothness", M=[0.0, 0.05], grid_points=100)
    text = res.summary()
    assert str(res) == repr(res) == text and res._repr_html_().startswith("<pre>")
    df = res.to_frame()
    back = pd.read_parquet(res.to_parquet(tmp_path / "honest.parquet"))
    assert list(back.columns) == list(df.columns)
    pd.testing.assert_frame_equal(back[["M", "lb", "ub", "method"]], df[["M", "lb", "ub", "method"]], check_dtype=False)
    fig = res.plot(backend="matplotlib")
    assert sum(len(ax.collections) + len(ax.lines) for ax in fig.axes) >= 2  # robust intervals, the original one
    assert res.plot().renderers  # bokeh by default
