"""Placebo adoption dates: pretend each cohort was treated k periods early, on pre-treatment data only.

For cohort g (first treated in period index g) and shift k (1 <= k <= g - 1), keep periods
``0 .. g-1`` (before g's true adoption), the units of cohort g and clean controls (never treated;
with ``control_group="not_yet_treated"`` also every cohort first treated after g), and estimate
ATT(g-k, t) for t = g-k .. g-1 against the base period g-k-1. The placebo effect is their average.
Nobody is treated in that window, so under parallel trends each placebo effect is zero; a clear
non-zero placebo is evidence against parallel trends (or for anticipation).

Every (g, k) is its own sub-experiment, built and estimated by pure tasks: pass 1 sums the cell
statistics per (g, k) and partition; pass 2 computes each (g, k)'s influence function per
partition, and one Gram task per partition stacks them, so the driver receives the J x J
covariance of all J placebo effects (for a joint Wald test) and never a per-unit array.
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
from dte_dask.checks._engine import cell_stats, check_alpha, compute, estimates, influence, prepare, truncate
from dte_dask.core.cells import Cells
from dte_dask.exceptions import DteDaskWarning, EstimationError, SpecError
from dte_dask.graph.reduce import tree_sum
from dte_dask.inference.bands import wald_test
from dte_dask.inference.variance import analytic_se, gram
from dte_dask.panel.blocks import UnitBlock


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
        from dte_dask.results import _fmt_table

        t = self.table
        pct = int(round(100 * (1 - self.alpha)))
        tab = t[["cohort", "shift", "placebo_period", "estimate", "se", "ci_lower", "ci_upper", "p_value"]].rename(
            columns={"ci_lower": f"[{pct}% Conf.", "ci_upper": "Int.]"})
        n_rej = int((t["p_value"] < self.alpha).sum())
        lines = ["Placebo adoption dates (each cohort shifted k periods earlier; pre-treatment periods only)",
                 _fmt_table(tab), "---",
                 f"{n_rej} of {len(t)} placebo effects differ from zero at the {self.alpha:g} level",
                 f"Joint Wald test that all placebo effects are zero: chi2({self.wald['df']}) = "
                 f"{self.wald['statistic']:.3f}, p-value = {self.wald['p_value']:.5f}",
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

    Returns
    -------
    PlaceboResult
        ``to_frame()``: cohort, shift, placebo_period, estimate, se, ci_lower, ci_upper, z, p_value,
        n_treated, n_control (one row per estimable (cohort, shift)).
    """
    alpha = check_alpha(alpha)
    prep = prepare(data, outcome=outcome, unit=unit, time=time, group=group, treatment=treatment,
                   covariates=covariates, weights=weights, cluster=cluster, control_group=control_group,
                   npartitions=npartitions)
    panel = prep.panel
    designs = _designs(panel, prep.groups, shifts, cohorts)
    if not designs:
        raise EstimationError("no feasible placebo: every cohort needs a shift k with 1 <= k <= (periods before it) - 1")
    nyt = control_group == "not_yet_treated"
    p = prep.p
    # pass 1: statistics of each (g, k) sub-experiment, one task per (g, k) and partition
    stat_sums = [tree_sum(panel.map_blocks(_placebo_stats, g, k, nyt, p, name=f"placebo-stats-g{int(g)}-k{k}"),
                          name=f"placebo-stats-sum-g{int(g)}-k{k}") for g, k in designs]
    sums = compute(*stat_sums)
    ests = [estimates(s, p) for s in sums]
    keep = [j for j, (att, est) in enumerate(ests) if bool(np.all(est["ok"]))]
    if not keep:
        raise EstimationError("no placebo sub-experiment has both treated and control units")
    designs = [designs[j] for j in keep]
    sums = [sums[j] for j in keep]
    est_list = [ests[j][1] for j in keep]
    theta = np.array([float(np.mean(ests[j][0])) for j in keep])
    # pass 2: influence functions per (g, k) and partition, stacked into one Gram per partition
    clustered = panel.spec.cluster is not None
    grams = []
    for i, b in enumerate(panel.blocks):
        cols = [dask.delayed(_placebo_psi, pure=True)(b, g, k, nyt, p, e, dask_key_name=f"placebo-psi-g{int(g)}-k{k}-"
                                                      f"{tokenize(b, g, k, nyt, p, e)}-{i}")
                for (g, k), e in zip(designs, est_list)]
        grams.append(dask.delayed(_stack_gram, pure=True)(b, cols, clustered,
                                                         dask_key_name=f"placebo-gram-{tokenize(b, cols)}-{i}"))
    (G,) = compute(tree_sum(grams, name="placebo-gram-sum"))
    se = analytic_se(G)
    z = float(stats.norm.ppf(1 - alpha / 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        zstat = theta / se
    label = panel.group_label
    table = pd.DataFrame({
        "cohort": [label(g) for g, _ in designs], "shift": [k for _, k in designs],
        "placebo_period": [label(g - k) for g, k in designs], "estimate": theta, "se": se,
        "ci_lower": theta - z * se, "ci_upper": theta + z * se, "z": zstat,
        "p_value": 2 * stats.norm.sf(np.abs(zstat)),
        "n_treated": [int(s["nD"][0]) for s in sums], "n_control": [int(s["nC"][0]) for s in sums],
    })
    w, q, pv = wald_test(theta, G)
    return PlaceboResult(table=table, cov=G, wald={"statistic": w, "df": q, "p_value": pv}, alpha=alpha,
                         options={**prep.options, "shifts": sorted({k for _, k in designs})})


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
def _sub_block(block: UnitBlock, g: int, k: int, nyt: bool) -> UnitBlock:
    """Cohort g (placebo-treated at g-k) and its clean controls, periods before g only."""
    treated = block.g == g
    ctrl = np.isinf(block.g) | ((block.g > g) if nyt else False)
    keep = treated | ctrl
    return truncate(block, keep, g, np.where(treated[keep], float(g - k), np.inf))


def _placebo_cells(g: int, k: int) -> Cells:
    t = np.arange(g - k, g)
    return Cells(g=np.full(k, g - k), t=t, base=np.full(k, g - k - 1), ctrl_min=np.full(k, np.inf),
                 reference=np.zeros(k, dtype=bool))


def _placebo_stats(block: UnitBlock, g: int, k: int, nyt: bool, p: int) -> dict[str, np.ndarray]:
    return cell_stats(_sub_block(block, g, k, nyt), _placebo_cells(g, k), p)


def _placebo_psi(block: UnitBlock, g: int, k: int, nyt: bool, p: int, est: dict[str, Any]) -> np.ndarray:
    """(n_block,) influence function of the (g, k) placebo effect (mean of its k cells); 0 off-sample."""
    treated = block.g == g
    keep = treated | np.isinf(block.g) | ((block.g > g) if nyt else False)
    psi = influence(_sub_block(block, g, k, nyt), _placebo_cells(g, k), est, p).mean(axis=1)
    out = np.zeros(block.n)
    out[keep] = psi
    return out


def _stack_gram(block: UnitBlock, cols: list[np.ndarray], clustered: bool) -> np.ndarray:
    return gram(np.column_stack(cols), block.rank, clustered)
