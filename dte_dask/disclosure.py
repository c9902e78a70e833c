"""Disclosure control for regulated data: small cells suppressed, counts rounded, in every output.

A :class:`DisclosureSpec` (a job's ``disclosure:`` section, the service's default set with
``dte-dask serve --min-cell-size N --round-counts B``) says

* ``min_cell_size`` (integer >= 1): an estimate whose treated or control count (units, the
  ``n_treated`` / ``n_control`` columns of the result schema) is below it is **suppressed**: its
  row stays in every table with the estimate, standard errors and intervals set to NaN,
  ``suppressed = True`` and ``suppression_reason`` (e.g. ``"n_treated < min_cell_size=10"``;
  the count itself is not published). Plots do not draw it and mark it; summaries, the report
  and the service's answers show the suppressed table.
* ``round_counts``: an integer B rounds every published unit count to the nearest multiple of B;
  ``"suppress"`` publishes no unit count at all. The suppression decision uses the exact counts.

Which count an estimate has (computed on the workers, never per-unit arrays on the driver):

* ATT(g,t) cells: the cell's treated and comparison units.
* Aggregations (simple, dynamic, group, calendar, and each overall ATT): the units of the cohorts
  involved (each cohort once) and the SMALLEST comparison group of any cell involved. An
  aggregate is published when its own counts pass, even if one of its cells is suppressed.
* Regression estimates by event time: the treated units observed at that event time, and the
  fewest not-yet-treated units observed in the same periods (``Panel.event_time_counts``).
* Checks: the smallest count of any estimate they test (a pre-trend test with one small
  pre-period cell is suppressed as a whole).
* A table that carries no unit counts is suppressed entirely (fail closed).

Complementary disclosure: an aggregate that is published while one of its cells is suppressed,
together with the published cells and cohort shares, can let a reader solve for the suppressed
cell's estimate. Rounded counts make the weights inexact but do not remove the risk; where it
matters, drop the small cohort from the panel (or raise ``min_cell_size``) so that no published
aggregate involves it. See docs/disclosure.md.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["DisclosureSpec", "apply", "apply_frame", "effective", "looser_fields"]

COUNT_COLUMNS = ("n_treated", "n_control", "n_units", "n_obs", "n_clusters", "n_switchers", "units", "obs", "n")
# labels of a row: never blanked (event times, cohorts, periods, names of terms and checks)
LABEL_COLUMNS = ("group", "time", "event_time", "horizon", "key", "cohort", "term", "covariate", "target", "wald",
                 "band", "binned", "suppressed", "suppression_reason", "estimator", "name", "kind")


class DisclosureSpec(BaseModel):
    """Disclosure control of a job's outputs (all off by default)."""

    model_config = ConfigDict(extra="forbid")

    min_cell_size: int | None = Field(None, ge=1, description="suppress any estimate with fewer treated or "
                                                              "control units than this")
    round_counts: int | Literal["suppress"] | None = Field(
        None, description="publish unit counts rounded to a multiple of this (an integer >= 1), or 'suppress' "
                          "to publish none")

    @field_validator("round_counts")
    @classmethod
    def _base(cls, v: int | str | None) -> int | str | None:
        if isinstance(v, int) and v < 1:
            raise ValueError("round_counts must be an integer >= 1 or 'suppress'")
        return v

    @property
    def active(self) -> bool:
        return self.min_cell_size is not None or self.round_counts is not None

    def describe(self) -> str:
        parts = []
        if self.min_cell_size is not None:
            parts.append(f"estimates with fewer than {self.min_cell_size} treated or control units suppressed")
        if self.round_counts == "suppress":
            parts.append("unit counts not published")
        elif self.round_counts is not None:
            parts.append(f"unit counts rounded to a multiple of {self.round_counts}")
        return "Disclosure control: " + ("; ".join(parts) if parts else "off")

    # ------------------------------------------------------------------ counts
    def count(self, n: Any) -> Any:
        """A published count: rounded, or None when counts are suppressed."""
        if n is None or (isinstance(n, float) and not math.isfinite(n)):
            return None
        if self.round_counts == "suppress":
            return None
        if self.round_counts is None:
            return int(n)
        b = int(self.round_counts)
        return int(math.floor(int(n) / b + 0.5) * b)

    def reason(self, n_treated: Any, n_control: Any) -> str:
        """Why an estimate with these counts is suppressed ("" if it is not)."""
        k = self.min_cell_size
        if k is None:
            return ""
        bad = [name for name, n in (("n_treated", n_treated), ("n_control", n_control))
               if n is None or not np.isfinite(float(n)) or float(n) < k]
        return " and ".join(f"{b} < min_cell_size={k}" for b in bad)


def _policy(policy: DisclosureSpec | Mapping[str, Any] | None = None, **kwargs: Any) -> DisclosureSpec:
    if isinstance(policy, DisclosureSpec):
        return policy
    return DisclosureSpec.model_validate({**dict(policy or {}), **kwargs})


def looser_fields(job: DisclosureSpec, service: DisclosureSpec) -> list[tuple[str, str]]:
    """(field, message) for each setting of ``job`` that is looser than the service's (a setting the
    job leaves unset is not: the service's applies, :func:`effective`)."""
    out = []
    if service.min_cell_size is not None and job.min_cell_size is not None and job.min_cell_size < service.min_cell_size:
        out.append(("min_cell_size", (f"must be >= the service's min_cell_size={service.min_cell_size} "
                                      f"(got {job.min_cell_size})")))
    rank = (lambda r: 0 if r is None else (math.inf if r == "suppress" else int(r)))
    sr, jr = service.round_counts, job.round_counts
    if sr is not None and jr is not None and (rank(jr) < rank(sr) or (sr != "suppress" and jr != "suppress"
                                                                          and int(jr) % int(sr))):
        out.append(("round_counts", (f"must be as coarse as the service's round_counts={sr!r} (a multiple of "
                                     f"it, or 'suppress'; got {jr!r})")))
    return out


def effective(job: DisclosureSpec, service: DisclosureSpec) -> DisclosureSpec:
    """The job's settings with the service's filled in where the job sets none."""
    return DisclosureSpec(min_cell_size=job.min_cell_size if job.min_cell_size is not None else service.min_cell_size,
                          round_counts=job.round_counts if job.round_counts is not None else service.round_counts)


# ------------------------------------------------------------------------------ frames
def apply_frame(df: pd.DataFrame, policy: DisclosureSpec | Mapping[str, Any] | None = None,
                **kwargs: Any) -> pd.DataFrame:
    """``df`` with small cells suppressed and counts rounded (a copy; ``df`` itself is untouched).

    Rows are never dropped: a suppressed row keeps its labels, gets NaN in every other numeric
    column, ``suppressed = True`` and ``suppression_reason``. A frame without ``n_treated`` /
    ``n_control`` has no counts to judge by and is suppressed entirely (fail closed).
    """
    pol = _policy(policy, **kwargs)
    if not pol.active:
        return df.copy()
    out = df.copy().reset_index(drop=True)
    if pol.min_cell_size is not None:
        if {"n_treated", "n_control"} <= set(out.columns):
            reasons = [pol.reason(t, c) for t, c in zip(out["n_treated"].to_numpy(float), out["n_control"].to_numpy(float))]
        else:
            reasons = ["no unit counts for this table (suppressed: fail closed)"] * len(out)
        mask = np.array([bool(r) for r in reasons], dtype=bool)
        stats_cols = [c for c in out.columns if c not in LABEL_COLUMNS and c not in COUNT_COLUMNS
                      and pd.api.types.is_numeric_dtype(out[c]) and not pd.api.types.is_bool_dtype(out[c])]
        for c in list(out.columns):
            if c in LABEL_COLUMNS or c in COUNT_COLUMNS:
                continue
            if c in stats_cols:
                out[c] = np.where(mask, np.nan, out[c].to_numpy(float))
            else:  # textual statistics (e.g. a check's verdict) of a suppressed row
                out[c] = np.where(mask, None, out[c].to_numpy(object))
        out["suppressed"] = mask
        out["suppression_reason"] = reasons
    k = pol.min_cell_size
    for c in (c for c in COUNT_COLUMNS if c in out.columns):  # a count below the threshold is never published
        out[c] = pd.array([None if k is not None and _below(v, k) else pol.count(v) for v in out[c].tolist()],
                          dtype="Int64")
    return out


def _below(v: Any, k: int) -> bool:
    try:
        return not float(v) >= k
    except (TypeError, ValueError):
        return True


def apply(result: Any, policy: DisclosureSpec | Mapping[str, Any] | None = None, **kwargs: Any) -> pd.DataFrame:
    """The disclosed ``to_frame()`` of a result (or of a check, or a frame).

    >>> dte_dask.disclosure.apply(res, min_cell_size=10, round_counts=5)  # doctest: +SKIP
    """
    df = result if isinstance(result, pd.DataFrame) else result.to_frame()
    return apply_frame(df, policy, **kwargs)


def frame_counts(df: pd.DataFrame, rows: np.ndarray | None = None) -> tuple[float, float]:
    """The smallest treated and control counts of the rows ``rows`` (all by default) of a frame; NaN
    when it has none."""
    if not {"n_treated", "n_control"} <= set(df.columns):
        return float("nan"), float("nan")
    sub = df if rows is None else df[rows]
    if not len(sub):
        return float("nan"), float("nan")
    return float(sub["n_treated"].astype(float).min()), float(sub["n_control"].astype(float).min())


# ------------------------------------------------------------------------------ summary entries
def entry_values(values: Mapping[str, Any], n_treated: Any, n_control: Any, pol: DisclosureSpec) -> dict[str, Any]:
    """A dict of statistics (an overall ATT, a pre-test) with its counts: blanked when they fail."""
    out = dict(values)
    reason = pol.reason(n_treated, n_control)
    if reason:
        out = {k: (v if k in ("aggregation", "reason") or isinstance(v, str) else None) for k, v in out.items()}
    k = pol.min_cell_size
    out.update(n_treated=None if k is not None and _below(n_treated, k) else pol.count(n_treated),
               n_control=None if k is not None and _below(n_control, k) else pol.count(n_control),
               suppressed=bool(reason),
               suppression_reason=reason)
    return out


def panel_description(panel: Mapping[str, Any] | None, pol: DisclosureSpec) -> dict[str, Any] | None:
    """``Panel.describe()`` with its unit and row counts rounded and small cohorts suppressed."""
    if not panel or not pol.active:
        return None if panel is None else dict(panel)
    out = dict(panel)
    for k in ("units", "rows", "clusters"):
        if out.get(k) is not None:
            out[k] = pol.count(out[k])
    k = pol.min_cell_size
    out["cohorts"] = {g: (None if k is not None and int(c) < k else pol.count(c))
                      for g, c in (panel.get("cohorts") or {}).items()}
    return out


def table_text(df: pd.DataFrame, pol: DisclosureSpec, title: str = "") -> str:
    """The text summary of a disclosed table (replaces a result's own ``summary()``)."""
    from dte_dask.formatting import format_table

    lines = [title] if title else []
    lines += [format_table(df), "---", pol.describe()]
    n = int(df["suppressed"].sum()) if "suppressed" in df else 0
    if n:
        lines.append(f"{n} of {len(df)} rows suppressed (suppression_reason says why)")
    return "\n".join(lines)
