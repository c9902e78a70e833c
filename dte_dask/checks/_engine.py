"""Shared machinery of the data-based checks: panel preparation and the ATT(g,t) estimators on
modified data.

The placebo and randomization checks re-estimate ATT(g,t) many times on modified data (shifted
adoption dates, permuted cohort labels). Each modified data set is an *experiment*: a pure
function of a partition's :class:`~dte_dask.panel.blocks.UnitBlock` returns, per experiment, the
modified block and the cells to estimate on it. The experiments are estimated with
:func:`dte_dask.att_gt`'s own kernels (:mod:`dte_dask.core.twobytwo` without covariates,
:mod:`dte_dask.core.covariates` with them: outcome regression, propensity logit, weighted moments and
influence functions), wired as ``dask.delayed`` tasks and computed with whatever scheduler is active
(the user's ``Client`` if there is one; none is ever created). Every pass sums small statistics of
all experiments at once, so the driver only ever holds K-sized arrays per experiment.

Estimator: ``est_method`` "dr" | "ipw" | "reg" as ``att_gt``: without covariates the unconditional
2x2 DiD (``att_gt``'s numbers for every ``est_method``, including DRDID's trimming of cells whose
controls all have a propensity score >= 0.995); with covariates DRDID's panel estimators, the
propensity logit fitted as ``att_gt`` fits it (:func:`fit_logit`, one reduction over the partitions
per IRLS iteration for every experiment still iterating).

The panel is prepared exactly as ``att_gt`` prepares it (balanced, units treated in the first period
dropped, the same cells for the given ``control_group`` and ``base_period``; for the regression
estimators, balanced and nothing dropped, as those estimators do); anticipation is not modelled by
the checks.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import dask
import numpy as np

from dte_dask.core import covariates as cov_kernels
from dte_dask.core import logit, twobytwo
from dte_dask.core.blocks import UnitBlock, summarize
from dte_dask.core.cells import Cells
from dte_dask.core.regression import TRIM_LEVEL, guarded_solve
from dte_dask.exceptions import PanelWarning, SpecError
from dte_dask.graph.reduce import tree_sum
from dte_dask.panel.panel import Panel

Stats = dict[str, np.ndarray]
EST_METHODS = ("dr", "ipw", "reg")
REGRESSION_ESTIMATORS = ("event_study", "stacked_did", "sun_abraham")
ESTIMATORS = ("att_gt", *REGRESSION_ESTIMATORS)

# An experiment expander: block -> one (modified block, cells) per experiment of a batch.
Expand = Callable[[UnitBlock], Sequence[tuple[UnitBlock, Cells]]]


@dataclass(frozen=True)
class Prepared:
    """A panel ready for the checks, with the cells ``att_gt`` would estimate on it."""

    panel: Panel
    cells: Cells
    groups: np.ndarray  # group indices of the treated cohorts (sorted)
    p: int  # 1 + number of covariates
    options: dict[str, Any]
    method: str = "dr"  # est_method of the ATT(g,t) estimator
    estimator: str = "att_gt"


def check_estimator(estimator: str, est_method: str, estimator_options: dict[str, Any] | None) -> dict[str, Any]:
    if estimator not in ESTIMATORS:
        raise SpecError(f"estimator={estimator!r} is not one of {list(ESTIMATORS)}")
    if est_method not in EST_METHODS:
        raise SpecError(f"est_method={est_method!r} is not one of {list(EST_METHODS)}")
    opts = dict(estimator_options or {})
    if opts and estimator == "att_gt":
        raise SpecError("estimator_options are for the regression estimators; att_gt takes est_method, "
                        "control_group and base_period")
    reserved = {"data", "outcome", "unit", "time", "group", "covariates", "weights", "cluster", "bootstrap",
                "n_boot", "seed", "npartitions", "allow_unbalanced_panel"} & set(opts)
    if reserved:
        raise SpecError(f"estimator_options may not set {sorted(reserved)}: they are arguments of the check")
    return opts


def prepare(data: Any, *, outcome: str | None, unit: str | None, time: str | None, group: str | None,
            treatment: str | None = None, covariates: Sequence[str] | str | None = None,
            weights: str | None = None, cluster: str | None = None, control_group: str = "never_treated",
            base_period: str = "varying", npartitions: int | None = None, est_method: str = "dr",
            estimator: str = "att_gt") -> Prepared:
    """Load (or take) the panel, balance it and drop early-treated units exactly as ``att_gt`` does."""
    from dte_dask.core.cells import BasePeriod, ControlGroup
    from dte_dask.estimators.cs import _as_panel, _cells, _check_literal

    _check_literal("control_group", control_group, ControlGroup)
    _check_literal("base_period", base_period, BasePeriod)
    if covariates and estimator in ("stacked_did", "sun_abraham"):
        raise SpecError(f"{estimator} takes no covariates; use estimator='att_gt' (est_method 'dr', 'ipw' or "
                        "'reg') or 'event_study' to condition on them")
    panel = _as_panel(data, outcome=outcome, unit=unit, time=time, group=group, treatment=treatment,
                      covariates=covariates, weights=weights, cluster=cluster, npartitions=npartitions,
                      allow_unbalanced_panel=False)
    if estimator == "att_gt":
        panel = panel.drop_early_treated(0)
        cells, groups = _cells(panel, control_group, 0, base_period)
    else:  # the regression estimators keep units treated from the first period: so do their checks
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PanelWarning)
            cells, groups = _cells(panel.drop_early_treated(0), control_group, 0, base_period)
    spec = panel.spec
    if estimator == "att_gt":
        name = f"att_gt ({est_method})" if spec.covariates else f"att_gt ({est_method}; unconditional 2x2)"
    else:
        name = estimator
    options = dict(outcome=spec.outcome, unit=spec.unit, time=spec.time, group=spec.group_source,
                   covariates=list(spec.covariates), weights=spec.weights, cluster=spec.cluster,
                   control_group=control_group, base_period=base_period,
                   est_method=est_method if estimator == "att_gt" else None, estimator=name)
    return Prepared(panel, cells, groups, 1 + len(spec.covariates), options, est_method, estimator)


def check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise SpecError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_alpha(alpha: float) -> float:
    if not 0 < alpha < 1:
        raise SpecError(f"alpha must be in (0, 1), got {alpha}")
    return float(alpha)


# ----------------------------------------------------------------------------- pure kernels
def with_g(block: UnitBlock, g: np.ndarray) -> UnitBlock:
    """The block with its cohorts replaced by ``g`` (same units, same order)."""
    return UnitBlock(block.ids, block.rank, np.asarray(g, dtype=float), block.w, block.cluster, block.y, block.x)


def truncate(block: UnitBlock, keep: np.ndarray, n_periods: int, g: np.ndarray) -> UnitBlock:
    """Units ``keep`` only, periods ``0..n_periods-1`` only, cohorts replaced by ``g`` (for the kept units)."""
    b = block.take(keep)
    x = b.x
    if x is not None and x.ndim == 3:
        x = x[:, :n_periods, :]
    return UnitBlock(b.ids, b.rank, np.asarray(g, dtype=float), b.w, b.cluster, b.y[:, :n_periods], x)


def cell_stats(block: UnitBlock, cells: Cells, p: int, groups: np.ndarray | None = None) -> Stats:
    """Additive per-cell sums (and weighted cohort sizes ``Swg`` when ``groups`` is given)."""
    s = twobytwo.uncond_stats(block, cells) if p == 1 else cov_kernels.ols_stats(block, cells, p)
    if groups is not None:
        G = cells.effective_g(block.g)
        s["Swg"] = (G[:, None] == groups[None, :]).astype(float).T @ block.w
    return s


def influence(block: UnitBlock, cells: Cells, est: dict[str, Any], p: int) -> np.ndarray:
    """(n_block, K) influence functions on the estimate's scale (covariance = sum of outer products)."""
    if p == 1:
        return twobytwo.uncond_influence(block, cells, est)
    return cov_kernels.cov_influence(block, cells, est)


def _apply(block: UnitBlock, expand: Expand, kernel: Callable[..., Stats], args: dict[int, tuple]) -> dict[int, Stats]:
    """``kernel(modified block, cells, *args[j])`` for the experiments j of ``args``."""
    exps = expand(block)
    return {j: kernel(exps[j][0], exps[j][1], *a) for j, a in args.items()}


def sums(panel: Panel, batches: Sequence[Expand], kernel: Callable[..., Stats],
         args: Sequence[dict[int, tuple]], name: str) -> list[dict[int, Stats]]:
    """Per batch, the sums over all partitions of ``kernel`` for the experiments in ``args[batch]``.

    One ``compute`` for every batch together; batches with no experiment are skipped (``{}``).
    """
    todo = [(c, tree_sum(panel.map_blocks(_apply, ex, kernel, a, name=f"{name}-{c}"), name=f"{name}-sum-{c}"))
            for c, (ex, a) in enumerate(zip(batches, args)) if a]
    out: list[dict[int, Stats]] = [{} for _ in batches]
    for (c, _), s in zip(todo, compute(*[t for _, t in todo])):
        out[c] = s
    return out


# ----------------------------------------------------------------------------- driver side
def fit(panel: Panel, batches: Sequence[Expand], sizes: Sequence[int], cells: Sequence[Sequence[Cells]], p: int,
        method: str, groups: np.ndarray | None = None, name: str = "check") -> list[list[tuple[np.ndarray, dict]]]:
    """Estimate every experiment of every batch: ``[batch][j] -> (att (K,), est)``.

    ``est`` holds the summed statistics (``est["stats"]``) and what :func:`influence` needs; its
    influence functions are on the estimate's scale (``n = 1``). Cells that cannot be estimated
    (no treated or control units, singular designs, non-converged logit) are NaN with ``ok`` False.
    """
    s = sums(panel, batches, cell_stats, [{j: (p, groups) for j in range(m)} for m in sizes], f"{name}-stats")
    out: list[list[tuple[np.ndarray, dict]]] = [[None] * m for m in sizes]  # type: ignore[list-item]
    logit_jobs: dict[tuple[int, int], dict[str, Any]] = {}
    for c, m in enumerate(sizes):
        for j in range(m):
            sj = s[c][j]
            if p == 1 or method == "reg":
                att, est = _closed_form(sj, p, method)
                out[c][j] = (att, {**est, "stats": sj})
            else:
                logit_jobs[(c, j)] = _logit_start(sj, cells[c][j], p, method)
    if not logit_jobs:
        return out
    fit_logit(panel, batches, logit_jobs, name)
    mom = sums(panel, batches, cov_kernels.ps_moments,
               [{j: (logit_jobs[(c, j)]["gamma"], logit_jobs[(c, j)]["beta"]) for j in range(m)} for c, m in enumerate(sizes)],
               f"{name}-moments")
    for (c, j), job in logit_jobs.items():
        att, est = _ps_estimate(job, mom[c][j], method)
        out[c][j] = (att, {**est, "stats": job["s"]})
    return out


def _closed_form(s: Stats, p: int, method: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Unconditional 2x2 (any method) or outcome regression: estimates straight from the sums."""
    if p == 1:
        ok = (s["SwD"] > 0) & (s["SwC"] > 0)
        if method in ("dr", "ipw"):  # DRDID trims controls with ps >= 0.995 (att_gt's rule)
            with np.errstate(invalid="ignore", divide="ignore"):
                ok &= ~(np.minimum(s["SwD"] / (s["SwD"] + s["SwC"]), 1 - 1e-6) >= TRIM_LEVEL)
        with np.errstate(invalid="ignore", divide="ignore"):
            mu1, mu0 = s["SwDdY"] / s["SwD"], s["SwCdY"] / s["SwC"]
        att = np.where(ok, mu1 - mu0, np.nan)
        return att, {**s, "mu1": mu1, "mu0": mu0, "ok": ok, "n": 1.0}
    ok = (s["SwD"] > 0) & (s["nC"] > 0)
    beta, ok = _solve_each(s["XtWX"], s["XtWdY"], ok)
    v_t, ok = _solve_each(s["XtWX"], s["SwDX"], ok)
    with np.errstate(invalid="ignore", divide="ignore"):
        eta_t = s["SwDdY"] / s["SwD"]
        eta_c = np.einsum("kp,kp->k", np.nan_to_num(s["SwDX"]), np.nan_to_num(beta)) / s["SwD"]
    att = np.where(ok, eta_t - eta_c, np.nan)
    return att, {"method": "reg", "n": 1.0, "beta": beta, "v_t": v_t, "eta_t": eta_t, "eta_c": eta_c,
                 "St": s["SwD"], "ok": ok}


def _solve_each(A: np.ndarray, b: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    out = np.full(b.shape, np.nan)
    good = ok.copy()
    for k in np.flatnonzero(ok):
        x = guarded_solve(A[k], b[k])
        if x is None:
            good[k] = False
        else:
            out[k] = x
    return out, good


def _logit_start(s: Stats, cells: Cells, p: int, method: str) -> dict[str, Any]:
    """``att_gt``'s starting point: outcome regression (dr) and the intercept-only logit MLE."""
    ok = (s["SwD"] > 0) & (s["nC"] > 0)
    beta = np.zeros((cells.K, p))
    if method == "dr":
        beta, ok = _solve_each(s["XtWX"], s["XtWdY"], ok)
    gamma = np.zeros((cells.K, p))
    with np.errstate(invalid="ignore", divide="ignore"):
        gamma[:, 0] = np.log(s["SwD"] / s["XtWX"][:, 0, 0])
    gamma[~ok] = 0.0
    return {"s": s, "ok": ok, "active": ok.copy(), "gamma": gamma, "beta": np.nan_to_num(beta) if method == "dr" else beta}


def fit_logit(panel: Panel, batches: Sequence[Expand], jobs: dict[tuple[int, int], dict[str, Any]], name: str) -> None:
    """Propensity logit of every cell of every experiment (in place on ``jobs``: ``gamma``, ``ok``).

    ``att_gt``'s algorithm and checks, :class:`dte_dask.core.logit.IrlsLogit` (IRLS with
    step-halving, glm.fit's convergence rule, separation, R did's overlap check on the unweighted
    logit): one reduction over the partitions per iteration, for all experiments still iterating.
    Each step reads the summed :func:`dte_dask.core.covariates.logit_stats` per cell.
    """
    def run(starts: dict[tuple[int, int], tuple], unweighted: bool) -> dict[tuple[int, int], logit.LogitFit]:
        fits = {key: logit.IrlsLogit(*start) for key, start in starts.items()}
        while True:
            args: list[dict[int, tuple]] = [{} for _ in batches]
            for (c, j), f in fits.items():
                if (prop := f.proposal()) is not None:
                    args[c][j] = (*prop, unweighted)
            if not any(args):
                return {key: f.result() for key, f in fits.items()}
            res = sums(panel, batches, cov_kernels.logit_stats, args, f"{name}-logit")
            for c, a in enumerate(args):
                for j in a:
                    st = res[c][j]
                    fits[(c, j)].update(st["grad"], st["hess"], -2.0 * st["ll"], st["n01"], st["n999"])

    def scale(s: Stats) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return (s["nD"] + s["nC"]) / (s["SwD"] + s["XtWX"][:, 0, 0])

    fits = run({key: (job["gamma"], job["ok"], scale(job["s"])) for key, job in jobs.items()}, False)
    pre = fits
    if panel.spec.weights is not None:
        p = next(iter(jobs.values()))["gamma"].shape[1]
        pre = run({key: (logit.intercept_start(job["s"]["nD"], job["s"]["nC"], p), job["ok"] & fits[key].ok, None)
                   for key, job in jobs.items()}, True)
    for key, job in jobs.items():
        f, q = fits[key], pre[key]
        bad = q.overlap if q is f else q.overlap | q.separated
        job["gamma"], job["ok"] = f.gamma, job["ok"] & f.ok & ~bad


def _ps_estimate(job: dict[str, Any], m: Stats, method: str) -> tuple[np.ndarray, dict[str, Any]]:
    """ipw / dr estimates and influence ingredients from the propensity-weighted moments."""
    s, b = job["s"], job["beta"]
    ok = job["ok"] & (m["Sc"] > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        if method == "dr":
            eta_t = (m["At"] - np.einsum("kp,kp->k", m["StX"], b)) / m["St"]
            eta_c = (m["Ac"] - np.einsum("kp,kp->k", m["ScX"], b)) / m["Sc"]
            M2 = m["ScdYX"] - np.einsum("kpq,kq->kp", m["ScXX"], b) - eta_c[:, None] * m["ScX"]
        else:
            eta_t, eta_c = m["At"] / m["St"], m["Ac"] / m["Sc"]
            M2 = m["ScdYX"] - eta_c[:, None] * m["ScX"]
    v_ps, ok = _solve_each(m["H"], M2, ok)
    est = {"method": method, "n": 1.0, "beta": b, "gamma": job["gamma"], "eta_t": eta_t, "eta_c": eta_c,
           "St": m["St"], "Sc": m["Sc"], "v_ps": v_ps}
    if method == "dr":
        est["v_t"], _ = _solve_each(s["XtWX"], m["StX"], ok)
        est["v_c"], _ = _solve_each(s["XtWX"], m["ScX"], ok)
    est["ok"] = ok
    return np.where(ok, eta_t - eta_c, np.nan), est


# ----------------------------------------------------------------------------- derived panels
def derived_panel(panel: Panel, func: Callable[[UnitBlock], UnitBlock], *, n_periods: int | None = None,
                  name: str = "check-derive") -> Panel:
    """A :class:`Panel` whose blocks are ``func(block)`` (pure, same units' ranks), for the real estimators.

    ``n_periods`` truncates the period labels (``func`` must drop the same trailing periods).
    """
    blocks = panel.map_blocks(func, name=name)
    summaries = compute(*[dask.delayed(summarize, pure=True)(b) for b in blocks])
    periods = panel.periods if n_periods is None else replace(panel.periods, labels=panel.periods.labels[:n_periods])
    return replace(panel, blocks=tuple(blocks), summaries=tuple(summaries), periods=periods)


def run_regression(estimator: str, panel: Panel, options: dict[str, Any]) -> Any:
    """One of the regression estimators (event_study, stacked_did, sun_abraham) on ``panel``."""
    from dte_dask.estimators.event_study import event_study
    from dte_dask.estimators.stacked import stacked_did
    from dte_dask.estimators.sun_abraham import sun_abraham

    fn = {"event_study": event_study, "stacked_did": stacked_did, "sun_abraham": sun_abraham}[estimator]
    kw = dict(options)
    if estimator == "event_study" and panel.spec.covariates:
        kw.setdefault("covariates", list(panel.spec.covariates))
    return fn(panel, **kw)


def post_mean(res: Any) -> tuple[float, float]:
    """Mean of a regression result's post-treatment (event time >= 0) coefficients, and its SE."""
    post = np.asarray(res.event_time) >= 0
    if not post.any():
        return float("nan"), float("nan")
    a = post / post.sum()
    return float(a @ res.coef), float(np.sqrt(max(a @ res.cov @ a, 0.0)))


def compute(*tasks: Any) -> tuple[Any, ...]:
    """``dask.compute`` with the active scheduler (a ``Client`` if one is active; never creates one)."""
    return dask.compute(*tasks)


