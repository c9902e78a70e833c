"""Pre-trend checks on estimated results: a Wald test and "the band covers zero before adoption".

Two complementary questions about the pre-treatment estimates (event times < 0):

* **Wald test** that all of them are zero, with their full analytic covariance (for a result of
  kind ``"cells"`` (ATT(g,t)), both its cells — R ``did``'s pre-test — and its dynamic
  aggregation); for other results (the protocol of :mod:`dte_dask.results.base`) the result's own
  ``pretrend_test()``; for a plain frame a diagonal (independence) approximation, flagged as such.
* **Band check**: does a simultaneous band over the pre-treatment estimates cover zero? For
  ATT(g,t) cells with bootstrap draws this is the sup-t band over exactly those estimates (a joint
  test at level ``alpha``); otherwise the result's uniform band if it has one, else Bonferroni
  intervals ``estimate +- z_{1 - alpha / (2 q)} se`` over the q pre-treatment estimates.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from dte_dask.checks._base import CheckResult
from dte_dask.checks._engine import check_alpha
from dte_dask.disclosure import frame_counts
from dte_dask.inference.bands import band_crit, boot_se, wald_test
from dte_dask.inference.dist import norm_ppf
from dte_dask.inference.variance import analytic_se
from dte_dask.results.aggregate import aggregate_map

_COLUMNS = ["target", "statistic", "df", "p_value", "wald", "n_pre", "band", "crit", "max_abs_t", "band_covers_zero"]


@dataclass(frozen=True, repr=False, eq=False)
class PretrendResult(CheckResult):
    """One row per tested set of pre-treatment estimates, plus the event study behind them."""

    check_kind = "pretrends"

    table: pd.DataFrame
    estimates: pd.DataFrame  # canonical event-study frame (see dte_dask.plotting.event_study_frame)
    alpha: float
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """True when no Wald test rejects at ``alpha`` and every band covers zero."""
        t = self.table
        return bool(((t["p_value"].isna()) | (t["p_value"] >= self.alpha)).all() and t["band_covers_zero"].all())

    def to_frame(self) -> pd.DataFrame:
        return self.table.copy()

    def frames(self) -> dict[str, pd.DataFrame]:
        return {"table": self.to_frame(), "estimates": self.estimates.copy()}

    def summary(self) -> str:
        lines = [f"Pre-trend checks (alpha = {self.alpha:g})"]
        for r in self.table.itertuples(index=False):
            verdict = "covers" if r.band_covers_zero else "does NOT cover"
            lines += [f"  {r.target}: {r.n_pre} pre-treatment estimates",
                      f"    Wald ({r.wald}): chi2({r.df}) = {r.statistic:.3f}, p-value = {r.p_value:.5f}",
                      f"    {r.band} band (crit {r.crit:.3f}, max |t| {r.max_abs_t:.3f}) {verdict} zero before adoption"]
        lines.append("Result: " + ("no evidence against parallel pre-trends" if self.passed
                                   else "evidence against parallel pre-trends"))
        return "\n".join(lines)

    def plot(self, *, backend: str = "bokeh") -> Any:
        from dte_dask.plotting import plot_pretrends

        return plot_pretrends(self.estimates, outcome=self.options.get("outcome"), time=self.options.get("time"),
                              backend=backend)  # type: ignore[arg-type]


def pretrend_check(result: Any, *, alpha: float | None = None) -> PretrendResult:
    """Pre-trend checks of an ATT(g,t) result, an aggregation, a regression event study or a frame."""
    from dte_dask.plotting import axis_names, default_label, event_study_frame

    a = check_alpha(alpha if alpha is not None else float(getattr(result, "alpha", 0.05) or 0.05))
    kind = None if isinstance(result, pd.DataFrame) else getattr(result, "result_kind", None)
    if kind == "cells":
        rows = [_attgt_cells(result, a), _attgt_dynamic(result, a)]
    elif kind == "aggregate":
        rows = [_frame_row(event_study_frame(result), a, "event study (dynamic aggregation)", None,
                           band_name="uniform band of the result" if result.bootstrap else None)]
    else:
        fr = event_study_frame(result, alpha=a)
        test = result.pretrend_test() if kind is not None else None
        label = "frame" if kind is None else default_label(result)
        rows = [_frame_row(fr, a, f"event study ({label})", test)]
    table = pd.DataFrame(rows, columns=_COLUMNS)
    estimates = event_study_frame(result, alpha=a)
    if kind is not None:  # the units behind each test: the smallest counts of the estimates it tests
        pre_frames = [result.to_frame() if kind == "cells" else estimates, estimates][: len(rows)]
        counts = [frame_counts(f, f["event_time"].to_numpy() < 0) for f in pre_frames]
        if all(np.isfinite(c).all() for c in counts):
            table["n_treated"] = [int(c[0]) for c in counts]
            table["n_control"] = [int(c[1]) for c in counts]
    return PretrendResult(table=table, estimates=estimates, alpha=a, options=axis_names(result))


def _bonferroni(q: int, alpha: float) -> float:
    return float(norm_ppf(1 - alpha / (2 * max(q, 1))))


def _row(target: str, est: np.ndarray, se: np.ndarray, wald: tuple[float, int, float], wald_name: str,
         crit: float, band: str) -> dict[str, Any]:
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.abs(est) / se
    t = t[np.isfinite(t)]
    max_t = float(t.max()) if t.size else float("nan")
    return {"target": target, "statistic": wald[0], "df": int(wald[1]), "p_value": wald[2], "wald": wald_name,
            "n_pre": int(est.size), "band": band, "crit": float(crit), "max_abs_t": max_t,
            "band_covers_zero": bool(not t.size or max_t <= crit)}


def _band(draws: np.ndarray | None, se: np.ndarray, alpha: float) -> tuple[float, str]:
    if draws is not None and draws.shape[1]:
        return band_crit(draws, se, alpha, True, fallback=False), "sup-t bootstrap"
    return _bonferroni(int(np.isfinite(se).sum()), alpha), "Bonferroni"


def _attgt_cells(res: Any, alpha: float) -> dict[str, Any]:
    pre = (res.event_time < 0) & ~res.reference & np.isfinite(res.att)
    w = res.pretrend_test()
    draws = res.draws_aug[:, : res.K][:, pre] if res.draws_aug is not None else None
    se = np.asarray(res.se, float)[pre]
    crit, band = _band(draws, se, alpha)
    return _row("ATT(g,t) cells", res.att[pre], se, (w["statistic"], w["df"], w["p_value"]), "full covariance",
                crit, band)


def _attgt_dynamic(res: Any, alpha: float) -> dict[str, Any]:
    m = aggregate_map("dynamic", att=np.where(res.reference, 0.0, res.att), group=res.g_index.astype(float),
                      time=res.t_index.astype(float), event=(res.t_index - res.g_index).astype(float),
                      groups=res.group_index.astype(float), pg=res.pg, last_time=float(res.n_periods - 1),
                      first_time=0.0, na_rm=True)
    C = m.coef[:, m.keys < 0]
    est = m.att[m.keys < 0]
    cov = C.T @ res.cov_aug @ C
    draws = res.draws_aug @ C if res.draws_aug is not None else None
    se = boot_se(draws, np.sqrt(res.n_clusters)) if draws is not None else analytic_se(cov)
    # drop a universal-base reference period (estimate 0 with zero variance)
    keep = ~((est == 0) & (np.diag(cov) <= 0))
    est, se, cov = est[keep], se[keep], cov[np.ix_(keep, keep)]
    draws = draws[:, keep] if draws is not None else None
    crit, band = _band(draws, se, alpha)
    return _row("event study (dynamic aggregation)", est, se, wald_test(est, cov), "full covariance", crit, band)


def _frame_row(fr: pd.DataFrame, alpha: float, target: str, test: Any, band_name: str | None = None) -> dict[str, Any]:
    pre = fr[(fr["event_time"] < 0) & np.isfinite(fr["estimate"])]
    pre = pre[~((pre["estimate"] == 0) & ~(pre["se"] > 0))]  # omitted reference period
    est, se = pre["estimate"].to_numpy(float), pre["se"].to_numpy(float)
    if isinstance(test, dict) and test:
        wald = (float(test["statistic"]), int(test["df"]), float(test["p_value"]))
        wname = "from result"
    else:
        wald = wald_test(est, np.diag(se ** 2)) if np.isfinite(se).all() else (np.nan, est.size, np.nan)
        wname = "diagonal (approximate)"
    bl, bu = pre["band_lower"].to_numpy(float), pre["band_upper"].to_numpy(float)
    if est.size and np.isfinite(bl).all() and np.isfinite(bu).all():
        with np.errstate(invalid="ignore", divide="ignore"):
            crit = float(np.nanmax((bu - bl) / (2 * se))) if np.isfinite(se).any() else np.nan
        row = _row(target, est, se, wald, wname, crit, band_name or "uniform band of the result")
        row["band_covers_zero"] = bool(np.all((bl <= 0) & (bu >= 0)))
        return row
    return _row(target, est, se, wald, wname, _bonferroni(est.size, alpha), "Bonferroni")
