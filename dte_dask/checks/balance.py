"""Covariate balance: standardized mean differences of each cohort against its controls.

For cohort g and covariate x (taken in the panel's first period, before anyone in the estimation
sample is treated)::

    SMD = (mean_g(x) - mean_c(x)) / sqrt((var_g(x) + var_c(x)) / 2)

with sampling weights when the panel has them, controls = never-treated units (or, with
``control_group="not_yet_treated"``, every unit first treated after g, never-treated included).
|SMD| above ``threshold`` (0.1 by default, the usual rule of thumb of Austin 2009) is flagged: the
cohorts differ in that covariate, so unconditional parallel trends are suspect when the covariate
also drives outcome trends, and conditioning on it (``covariates=``) is advisable.

One pass over the partitions: each returns weighted counts, sums and sums of squares per cohort.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from dte_dask.checks._base import CheckResult
from dte_dask.checks._engine import compute, prepare
from dte_dask.exceptions import SpecError
from dte_dask.graph.reduce import tree_sum
from dte_dask.core.blocks import UnitBlock


@dataclass(frozen=True, repr=False, eq=False)
class BalanceResult(CheckResult):
    """Standardized mean differences per (cohort, covariate), flagged above ``threshold``."""

    check_kind = "balance"

    table: pd.DataFrame
    threshold: float
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def flagged(self) -> pd.DataFrame:
        return self.table[self.table["flagged"]].reset_index(drop=True)

    def to_frame(self) -> pd.DataFrame:
        return self.table.copy()

    def summary(self) -> str:
        from dte_dask.formatting import format_table

        t = self.table
        tab = t[["cohort", "covariate", "n_treated", "n_control", "mean_treated", "mean_control", "smd"]].copy()
        tab[""] = np.where(t["flagged"], "*", "")
        lines = [f"Covariate balance: standardized mean differences, cohort vs "
                 f"{str(self.options.get('control_group', 'never_treated')).replace('_', ' ')} controls",
                 format_table(tab), "---", f"`*' |SMD| > {self.threshold:g}",
                 f"{int(t['flagged'].sum())} of {len(t)} (cohort, covariate) pairs are imbalanced"]
        return "\n".join(lines)

    def plot(self, *, backend: str = "bokeh") -> Any:
        from dte_dask.plotting import plot_balance

        return plot_balance(self.table, threshold=self.threshold, backend=backend)  # type: ignore[arg-type]


def balance_check(
    data: Any, *, covariates: Sequence[str] | str | None = None, outcome: str | None = None, unit: str | None = None,
    time: str | None = None, group: str | None = None, treatment: str | None = None, weights: str | None = None,
    control_group: str = "never_treated", threshold: float = 0.1, npartitions: int | None = None,
) -> BalanceResult:
    """Standardized mean differences of ``covariates`` by cohort vs controls (see module docstring).

    ``data`` is a :class:`~dte_dask.panel.panel.Panel` loaded with covariates, or anything
    :func:`dte_dask.load_panel` reads together with the column names (as for ``att_gt``).
    """
    if not threshold > 0:
        raise SpecError(f"threshold must be positive, got {threshold}")
    prep = prepare(data, outcome=outcome, unit=unit, time=time, group=group, treatment=treatment,
                   covariates=covariates, weights=weights, control_group=control_group)
    panel = prep.panel
    covs = list(panel.spec.covariates)
    if not covs:
        raise SpecError("balance_check needs covariates: pass covariates=[...] (or a panel loaded with them)")
    codes = np.array(sorted(panel.cohort_sizes))
    (s,) = compute(tree_sum(panel.map_blocks(_moments, codes, name="balance-moments"), name="balance-sum"))
    treated = [c for c in codes if np.isfinite(c)]
    rows = []
    for g in treated:
        ctrl = np.isinf(codes) | ((codes > g) if control_group == "not_yet_treated" else False)
        gi = int(np.flatnonzero(codes == g)[0])
        mt, vt = _mean_var(s["w"][gi], s["wx"][gi], s["wxx"][gi])
        mc, vc = _mean_var(s["w"][ctrl].sum(), s["wx"][ctrl].sum(0), s["wxx"][ctrl].sum(0))
        with np.errstate(invalid="ignore", divide="ignore"):
            smd = (mt - mc) / np.sqrt((vt + vc) / 2)
        for j, c in enumerate(covs):
            rows.append({"cohort": panel.group_label(g), "covariate": c, "n_treated": int(s["n"][gi]),
                         "n_control": int(s["n"][ctrl].sum()), "mean_treated": mt[j], "mean_control": mc[j],
                         "sd_treated": float(np.sqrt(vt[j])), "sd_control": float(np.sqrt(vc[j])), "smd": smd[j]})
    table = pd.DataFrame(rows)
    table["flagged"] = np.abs(table["smd"]) > threshold
    return BalanceResult(table=table, threshold=float(threshold), options=prep.options)


def _mean_var(w: float, wx: np.ndarray, wxx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(invalid="ignore", divide="ignore"):
        m = wx / w
        return m, np.maximum(wxx / w - m * m, 0.0)


def _moments(block: UnitBlock, codes: np.ndarray) -> dict[str, np.ndarray]:
    x = block.x_at(0)
    ind = (block.g[:, None] == codes[None, :]).astype(float)  # (n, C)
    wi = ind * block.w[:, None]
    return {"n": ind.sum(0), "w": wi.sum(0), "wx": wi.T @ x, "wxx": wi.T @ (x * x)}
