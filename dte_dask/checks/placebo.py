"""Placebo adoption dates: pretend each cohort was treated k periods early, on pre-treatment data only.

For cohort g (first treated in period index g) and shift k (1 <= k <= g - 1), keep periods
``0 .. g-1`` (before g's true adoption), the units of cohort g and clean controls (never treated;
with ``control_group="not_yet_treated"`` also every cohort first treated after g), and estimate
ATT(g-k, t) for t = g-k .. g-1 against the base period g-k-1. The placebo effect is their average.
Nobody is treated in that window, so under parallel trends each placebo effect is zero; a clear
non-zero placebo is evidence against parallel trends (or for anticipation).

Every (g, k) is its own sub-experiment, built and estimated by pure tasks with ``att_gt``'s kernels
(:mod:`dte_dask.checks._engine`, any ``est_method``, with or without covariates): the statistics
passes sum the cell statistics of every (g, k) per partition (plus one pass per Newton step of the
propensity logit for ``ipw`` / ``dr`` with covariates); the last pass computes each (g, k)'s
influence function per partition, and one Gram task per partition stacks them, so the driver
receives the J x J covariance of all J placebo effects (for a joint Wald test) and never a per-unit
array. The placebo effect of (g, k) is exactly ``att_gt``'s average of its post-treatment cells on
the re-coded data set (cohort g relabelled g - k, periods before g, clean controls only).

With a regression estimator (``estimator="event_study" | "stacked_did" | "sun_abraham"``) the
estimator itself is run on each re-coded (g, k) panel (one treated cohort adopting at g - k, clean
controls as never treated, periods before g): the placebo effect is the mean of its event-time
coefficients e = 0 .. k-1 (reference e = -1), with the estimator's CRV1 covariance. The designs'
cross-covariances are not available there, so the joint test is Bonferroni's (smallest p-value x J).
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import dask
import numpy as np
import pandas as pd
from dask.base import tokenize
from scipy import stats

from dte_dask.checks._base import CheckResult
from dte_dask.checks._engine import (
    check_alpha,
    check_estimator,
    compute,
    derived_panel,
    fit,
    influence,
    post_mean,
    prepare,
    run_regression,
    truncate,
)
from dte_dask.core.cells import Cells
from dte_dask.exceptions import DteDaskWarning, EstimationError, SpecError
from dte_dask.graph.reduce import tree_sum
from dte_dask.inference.bands import wald_test
from dte_dask.inference.variance import analytic_se, gram
from dte_dask.core.blocks import UnitBlock


@dataclass(frozen=True, repr=False, eq=False)
class PlaceboResult(CheckResult):
    """Placebo effects per (cohort, shift), their covariance and a joint Wald test."""

    check_kind = "placebo"

    table: pd.DataFrame
    cov: np.ndarray
    wald: dict[str, float]
    alpha: float
    options: dict[str, Any] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        return self.table.copy()

    def summary(self) -> str:
        from dte_dask.formatting import format_table

        t = self.table
        pct = int(round(100 * (1 - self.alpha)))
        tab = t[["cohort", "shift", "placebo_period", "estimate", "se", "ci_lower", "ci_upper", "p_value"]].rename(
            columns={"ci_lower": f"[{pct}% Conf.", "ci_upper": "Int.]"})
        n_rej = int((t["p_value"] < self.alpha).sum())
        lines = ["Placebo adoption dates (each cohort shifted k periods earlier; pre-treatment periods only)",
                 format_table(tab), "---",
                 f"{n_rej} of {len(t)} placebo effects differ from zero at the {self.alpha:g} level",
                 (f"Joint Wald test that all placebo effects are zero: chi2({self.wald['df']}) = "
                  f"{self.wald['statistic']:.3f}, p-value = {self.wald['p_value']:.5f}"
                  if self.wald.get("method", "wald") == "wald" else
                  f"Joint test that all placebo effects are zero (Bonferroni over {self.wald['df']}): "
                  f"p-value = {self.wald['p_value']:.5f}"),
                 f"Estimator: {self.options.get('estimator', '')}, controls: "
                 f"{str(self.options.get('control_group', '')).replace('_', ' ')}"]
        return "\n".join(lines)

    def plot(self, *, backend: str = "bokeh") -> Any:
        from dte_dask.plotting import plot_placebo

        return plot_placebo(self.table, outcome=self.options.get("outcome"), backend=backend)  # type: ignore[arg-type]


def placebo_check(
    data: Any, *, outcome: str | None = None, unit: str | None = None, time: str | None = None,
    group: str | None = None, treatment: str | None = None, covariates: Sequence[str] | str | None = None,
    weights: str | None = None, cluster: str | None = None, control_group: str = "never_treated",
    shifts: Sequence[int] | int | None = None, cohorts: Sequence[Any] | None = None, alpha: float = 0.05,
    est_method: str = "dr", estimator: str = "att_gt", estimator_options: dict[str, Any] | None = None,
    npartitions: int | None = None,
) -> PlaceboResult:
    """Placebo effects of fake adoption dates k periods before each cohort's true date.

    Parameters
    ----------
    data, outcome, unit, time, group, treatment, covariates, weights, cluster : as :func:`dte_dask.att_gt`
    control_group : "never_treated" | "not_yet_treated" (cohorts first treated after g join the controls)
    shifts : int or sequence of int, optional
        The k to try (default: every feasible k, 1 .. g-1, for each cohort); an int K means 1..K.
    cohorts : sequence, optional
        Cohort labels (values of the group column) to use; default all treated cohorts.
    alpha : float
        Level of the confidence intervals and of the count of rejections in the summary.
    est_method : "dr" | "ipw" | "reg"
        The ATT(g,t) estimator, as :func:`dte_dask.att_gt` (without covariates all three are the
        unconditional 2x2 DiD).
    estimator : "att_gt" | "event_study" | "stacked_did" | "sun_abraham"
        ``att_gt`` (default) or a regression estimator run on each re-coded (g, k) panel.
    estimator_options : dict, optional
        Further options of the regression estimator (e.g. ``control`` of stacked_did); the window
        and reference are set by the check.

    Returns
    -------
    PlaceboResult
        ``to_frame()``: cohort, shift, placebo_period, estimate, se, ci_lower, ci_upper, z, p_value,
        n_treated, n_control (one row per estimable (cohort, shift)).
    """
    alpha = check_alpha(alpha)
    opts = check_estimator(estimator, est_method, estimator_options)
    if {"window", "ref"} & set(opts):
        raise SpecError("placebo_check sets the window and reference of the regression estimator itself "
                        "(the re-coded panel's event times); drop them from estimator_options")
    prep = prepare(data, outcome=outcome, unit=unit, time=time, group=group, treatment=treatment,
                   covariates=covariates, weights=weights, cluster=cluster, control_group=control_group,
                   npartitions=npartitions, est_method=est_method, estimator=estimator)
    panel = prep.panel
    designs = _designs(panel, prep.groups, shifts, cohorts)
    if not designs:
        raise EstimationError("no feasible placebo: every cohort needs a shift k with 1 <= k <= (periods before it) - 1")
    nyt = control_group == "not_yet_treated"
    if estimator != "att_gt":
        return _placebo_regression(prep, designs, nyt, opts, alpha)
    p = prep.p
    expand = PlaceboDesigns(tuple(designs), nyt)
    # statistics passes: every (g, k) sub-experiment at once, one task per partition and pass
    fits = fit(panel, [expand], [len(designs)], [[_placebo_cells(g, k) for g, k in designs]], p, prep.method,
               name="placebo")[0]
    keep = [j for j, (att, est) in enumerate(fits) if bool(np.all(est["ok"]))]
    if not keep:
        raise EstimationError("no placebo sub-experiment has both treated and control units (or its "
                              "propensity score could not be fitted)")
    kept = PlaceboDesigns(tuple(designs[j] for j in keep), nyt)
    est_list = [fits[j][1] for j in keep]
    theta = np.array([float(np.mean(fits[j][0])) for j in keep])
    # last pass: influence functions of every (g, k), stacked into one Gram per partition
    clustered = panel.spec.cluster is not None
    grams = [dask.delayed(_placebo_gram, pure=True)(b, kept, est_list, p, clustered,
                                                    dask_key_name=f"placebo-gram-{tokenize(b, kept, est_list, p)}-{i}")
             for i, b in enumerate(panel.blocks)]
    (G,) = compute(tree_sum(grams, name="placebo-gram-sum"))
    se = analytic_se(G)
    w, q, pv = wald_test(theta, G)
    counts = [(int(fits[j][1]["stats"]["nD"][0]), int(fits[j][1]["stats"]["nC"][0])) for j in keep]
    return _result(panel, list(kept.designs), theta, se, G, {"statistic": w, "df": q, "p_value": pv, "method": "wald"},
                   counts, alpha, prep, stats.norm)


def _result(panel, designs, theta, se, cov, wald, counts, alpha, prep, dist) -> PlaceboResult:
    z = float(dist.ppf(1 - alpha / 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        zstat = theta / se
    label = panel.group_label
    table = pd.DataFrame({
        "cohort": [label(g) for g, _ in designs], "shift": [k for _, k in designs],
        "placebo_period": [label(g - k) for g, k in designs], "estimate": theta, "se": se,
        "ci_lower": theta - z * se, "ci_upper": theta + z * se, "z": zstat,
        "p_value": 2 * dist.sf(np.abs(zstat)),
        "n_treated": [c[0] for c in counts], "n_control": [c[1] for c in counts],
    })
    return PlaceboResult(table=table, cov=cov, wald=wald, alpha=alpha,
                         options={**prep.options, "shifts": sorted({k for _, k in designs})})


def _placebo_regression(prep, designs, nyt: bool, opts: dict[str, Any], alpha: float) -> PlaceboResult:
    """Run the regression estimator itself on each re-coded (g, k) panel."""
    panel = prep.panel
    step = panel.periods.event_step
    theta, se, counts, dfs, ok = [], [], [], [], []
    for g, k in designs:
        sub = derived_panel(panel, _SubBlock(g, k, nyt), n_periods=g, name=f"placebo-panel-g{int(g)}-k{k}")
        kw = dict(opts)
        if prep.estimator == "stacked_did":
            kw["window"] = (-(g - k) * step, (k - 1) * step)  # the re-coded panel's whole event window
        try:
            res = run_regression(prep.estimator, sub, kw)
        except EstimationError:
            continue
        est, s = post_mean(res)
        if not np.isfinite(est):
            continue
        sizes = sub.cohort_sizes
        ok.append((g, k))
        theta.append(est)
        se.append(s)
        dfs.append(res.df_t)
        counts.append((int(sizes.get(float(g - k), 0)), int(sum(c for h, c in sizes.items() if not np.isfinite(h)))))
    if not ok:
        raise EstimationError(f"{prep.estimator} could not estimate any placebo sub-experiment")
    theta_a, se_a = np.array(theta), np.array(se)
    cov = np.full((len(ok), len(ok)), np.nan)
    np.fill_diagonal(cov, se_a ** 2)
    dist = stats.t(min(dfs))
    with np.errstate(invalid="ignore", divide="ignore"):
        pmin = float(np.nanmin(2 * dist.sf(np.abs(theta_a / se_a))))
    wald = {"statistic": float("nan"), "df": len(ok), "p_value": min(1.0, len(ok) * pmin), "method": "bonferroni"}
    return _result(panel, ok, theta_a, se_a, cov, wald, counts, alpha, prep, dist)


def _designs(panel: Any, groups: np.ndarray, shifts: Sequence[int] | int | None, cohorts: Sequence[Any] | None):
    if isinstance(shifts, (int, np.integer)) and not isinstance(shifts, bool):
        top = panel.n_periods - 2  # the largest shift any cohort can take (g - k >= 1)
        if shifts > top >= 1:
            warnings.warn(f"shifts={int(shifts)} is beyond the panel's {panel.n_periods} periods; clipped to {top}",
                          DteDaskWarning, stacklevel=3)
        shifts = range(1, min(int(shifts), max(top, 1)) + 1)
    if shifts is not None and any((not isinstance(k, (int, np.integer))) or k < 1 for k in shifts):
        raise SpecError(f"shifts must be positive integers, got {list(shifts)!r}")
    gs = [int(g) for g in groups]
    if cohorts is not None:
        wanted = {str(c) for c in cohorts}
        chosen = [g for g in gs if str(panel.group_label(g)) in wanted]
        unknown = wanted - {str(panel.group_label(g)) for g in chosen}
        if unknown:
            raise SpecError(f"cohorts {sorted(unknown)} are not treated cohorts of the panel "
                            f"({[panel.group_label(g) for g in gs]})")
        gs = chosen
    out = []
    for g in gs:
        ks = range(1, g) if shifts is None else [int(k) for k in shifts if 1 <= k <= g - 1]
        out += [(g, k) for k in ks]
    return out


# ----------------------------------------------------------------------------- kernels
def _rows(block: UnitBlock, g: int, nyt: bool) -> tuple[np.ndarray, np.ndarray]:
    treated = block.g == g
    return treated | np.isinf(block.g) | ((block.g > g) if nyt else False), treated


def _sub_block(block: UnitBlock, g: int, k: int, nyt: bool) -> UnitBlock:
    """Cohort g (placebo-treated at g-k) and its clean controls (as never treated), periods before g only."""
    keep, treated = _rows(block, g, nyt)
    return truncate(block, keep, g, np.where(treated[keep], float(g - k), np.inf))


class _SubBlock:
    """``_sub_block`` as a tokenizable callable (for :func:`derived_panel`)."""

    def __init__(self, g: int, k: int, nyt: bool) -> None:
        self.g, self.k, self.nyt = int(g), int(k), bool(nyt)

    def __call__(self, block: UnitBlock) -> UnitBlock:
        return _sub_block(block, self.g, self.k, self.nyt)

    def __dask_tokenize__(self) -> Any:
        return ("placebo-sub-block", self.g, self.k, self.nyt)


class PlaceboDesigns:
    """The (g, k) sub-experiments of one block: its re-coded sub-block and placebo cells, per design."""

    def __init__(self, designs: tuple[tuple[int, int], ...], nyt: bool) -> None:
        self.designs, self.nyt = tuple((int(g), int(k)) for g, k in designs), bool(nyt)

    def __call__(self, block: UnitBlock) -> list[tuple[UnitBlock, Cells]]:
        return [(_sub_block(block, g, k, self.nyt), _placebo_cells(g, k)) for g, k in self.designs]

    def __dask_tokenize__(self) -> Any:
        return ("placebo-designs", self.designs, self.nyt)


def _placebo_cells(g: int, k: int) -> Cells:
    t = np.arange(g - k, g)
    return Cells(g=np.full(k, g - k), t=t, base=np.full(k, g - k - 1), ctrl_min=np.full(k, np.inf),
                 reference=np.zeros(k, dtype=bool))


def _placebo_gram(block: UnitBlock, designs: PlaceboDesigns, ests: list[dict[str, Any]], p: int,
                  clustered: bool) -> np.ndarray:
    """Gram of the (n_block, J) influence functions of the J placebo effects (0 off each design's sample)."""
    cols = []
    for (sub, cells), (g, _), est in zip(designs(block), designs.designs, ests):
        keep, _ = _rows(block, g, designs.nyt)
        out = np.zeros(block.n)
        out[keep] = influence(sub, cells, est, p).mean(axis=1)
        cols.append(out)
    return gram(np.column_stack(cols), block.rank, clustered)
