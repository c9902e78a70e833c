"""From an event-study result to HonestDiD's inputs: (betahat, Sigma, event times, T_pre, T_post).

Works for every event-study result of the package: the Callaway–Sant'Anna dynamic aggregation
(``AttgtResult`` is aggregated with ``aggregate("dynamic")``; its covariance comes from the
influence functions), and the regression estimators (``event_study``, ``sun_abraham``,
``stacked_did``: CRV1 covariance of the event-time coefficients). The reference period — absent
from regression results, an estimate of exactly zero with zero variance in a universal-base CS
aggregation — is excluded, as HonestDiD expects.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from dte_dask.exceptions import DteDaskWarning, SpecError

Array = np.ndarray
_VARYING = ("the ATT(g,t) used a varying base period: pre-period estimates are not relative to one reference "
            "period; att_gt(base_period='universal') is recommended for honest_did")


def _from_result(result: Any) -> tuple[Array, Array, Array]:
    """Event times, estimates and covariance through the result protocol (:mod:`dte_dask.results.base`)."""
    kind = getattr(result, "result_kind", None)
    if kind is None or not callable(getattr(result, "event_study", None)):
        raise SpecError(f"result: expected an event-study result (AttgtResult, AggregateResult of kind 'dynamic', "
                        f"RegressionResult), got {type(result).__name__}")
    if kind == "cells" and result.options.get("base_period", "varying") != "universal":
        warnings.warn(_VARYING, DteDaskWarning, stacklevel=4)
    if kind == "aggregate" and result.kind != "dynamic":
        raise SpecError(f"result: honest_did needs an event study (aggregate('dynamic')), not a {result.kind!r} aggregation")
    es = result.event_study()
    df = es.to_frame()
    if "binned" in df and df["binned"].to_numpy(bool).any():
        warnings.warn("binned endpoint coefficients pool several event times; the restrictions treat each as "
                      "one period", DteDaskWarning, stacklevel=4)
    return df["event_time"].to_numpy(dtype=float), np.asarray(es.estimates, dtype=float), es.vcov()


def event_study_inputs(result: Any) -> tuple[Array, Array, Array, int, int]:
    """``(betahat, sigma, event_times, num_pre, num_post)`` of an event-study result.

    ``event_times`` are those of ``betahat`` (ascending, reference period excluded); pre-periods
    are the event times below zero.
    """
    e, b, S = _from_result(result)
    order = np.argsort(e, kind="stable")
    e, b, S = e[order], b[order], S[np.ix_(order, order)]
    ref = (b == 0) & (np.diag(S) <= 0)  # the normalised reference period of a universal base
    keep = ~ref & np.isfinite(b)
    e, b, S = e[keep], b[keep], S[np.ix_(keep, keep)]
    n_pre = int((e < 0).sum())
    n_post = int((e >= 0).sum())
    if n_pre == 0:
        raise SpecError("result has no pre-period estimates (event time < 0 besides the reference period): "
                        "honest_did needs at least one; estimate pre-treatment event times (e.g. "
                        "imputation_did / two_stage_did with pretrends=k, etwfe with control_group='never_treated', "
                        "did_multiplegt with placebo=k)")
    if n_post == 0:
        raise SpecError("result has no post-period estimates (event time >= 0)")
    _check_spacing(e, n_pre)
    et = e.astype(np.int64) if np.all(e == np.round(e)) else e
    return b, S, et, n_pre, n_post


def pointwise_crit(result: Any) -> float | None:
    """The critical value of a result's own pointwise intervals, read from its canonical frame
    (``(ci_upper - estimate) / se``: the normal quantile for ``att_gt``, the t quantile with
    clusters - 1 df for the regressions); None when the frame gives none."""
    df = result.event_study().to_frame()
    se = df["se"].to_numpy(float)
    ok = np.isfinite(se) & (se > 0)
    if not ok.any():
        return None
    c = (df["ci_upper"].to_numpy(float)[ok] - df["estimate"].to_numpy(float)[ok]) / se[ok]
    return float(np.median(c)) if np.all(np.isfinite(c)) else None


def _check_spacing(e: Array, n_pre: int) -> None:
    """Pre-periods, the reference period and post-periods must be consecutive and equally spaced."""
    if e.size < 2:
        return
    gaps = np.diff(e)
    step = gaps.min()
    inner = np.delete(gaps, n_pre - 1) if n_pre < e.size else gaps
    boundary_ok = n_pre == e.size or np.isclose(gaps[n_pre - 1], 2 * step) or np.isclose(gaps[n_pre - 1], step)
    if step <= 0 or not np.allclose(inner, step) or not boundary_ok:
        raise SpecError(f"result: event times {e.tolist()} (reference excluded) are not consecutive around one "
                        "reference period; honest_did's restrictions need equally spaced periods")


def validate_inputs(betahat: Any, sigma: Any, num_pre: Any, num_post: Any) -> tuple[Array, Array, int, int]:
    """Check HonestDiD's raw inputs; SpecError naming the argument at fault."""
    if betahat is None or sigma is None or num_pre is None or num_post is None:
        raise SpecError("pass result, or all of betahat, sigma, num_pre_periods and num_post_periods")
    b = np.asarray(betahat, dtype=float).ravel()
    S = np.asarray(sigma, dtype=float)
    if not isinstance(num_pre, (int, np.integer)) or num_pre < 1:
        raise SpecError(f"num_pre_periods={num_pre!r}: honest_did needs at least one pre-period")
    if not isinstance(num_post, (int, np.integer)) or num_post < 1:
        raise SpecError(f"num_post_periods={num_post!r} must be a positive integer")
    T = int(num_pre) + int(num_post)
    if b.size != T or not np.all(np.isfinite(b)):
        raise SpecError(f"betahat must hold {T} finite estimates (num_pre_periods + num_post_periods), got {b.size}")
    if S.shape != (T, T) or not np.all(np.isfinite(S)):
        raise SpecError(f"sigma must be a finite {T} x {T} covariance matrix, got shape {S.shape}")
    scale = max(float(np.abs(S).max()), np.finfo(float).tiny)
    if not np.allclose(S, S.T, rtol=0, atol=1e-10 * scale):
        raise SpecError("sigma is not symmetric")
    S = (S + S.T) / 2
    w = np.linalg.eigvalsh(S)
    if w[0] < -1e-10 * w[-1]:
        raise SpecError(f"sigma is not positive semi-definite (smallest eigenvalue {w[0]:.3g})")
    if w[0] <= 1e-12 * w[-1]:
        raise SpecError(f"sigma is singular (eigenvalues {w[0]:.3g} .. {w[-1]:.3g}): some event-study estimates "
                        "are exact linear combinations of others")
    return b, S, int(num_pre), int(num_post)
