"""The result protocol: what every estimator's result offers, and its one ``to_frame()`` schema.

Every result (:class:`~dte_dask.results.AttgtResult`, :class:`~dte_dask.results.AggregateResult`,
:class:`~dte_dask.results.RegressionResult`, and any later estimator's) derives from :class:`Result`
and so has:

==================  =================================================================================
``estimator``       the registry name of the estimator that produced it (``"att_gt"``, ...)
``result_kind``     ``"cells"`` (ATT(g,t)), ``"aggregate"`` (an aggregation of cells),
                    ``"event_study"`` (estimates by event time) or ``"dose_response"`` (a curve
                    keyed by ``dose``: continuous_did's ATT(d) / ACRT(d))
``label``           a display name ("Callaway-Sant'Anna", "TWFE event study", ...)
``alpha``           the level of the intervals
``estimates``       (K,) the reported estimates, in the row order of ``to_frame()``
``vcov()``          (K, K) covariance of ``estimates`` (influence functions or CRV1)
``draws``           (B, K) multiplier-bootstrap draws of the estimates, or None
``to_frame()``      the canonical frame below
``event_study()``   the estimates by event time as a result (itself, or the dynamic aggregation)
``summary()``       text (drives ``str``, ``repr`` and ``_repr_html_``)
``plot()``          :func:`dte_dask.plotting.plot_result`
``pretrend_test()`` Wald test that every pre-treatment estimate is zero
``to_parquet()``    ``to_frame()`` written as parquet
``overall_frame()`` optional: overall parameters (rows ``parameter``; ``estimate``, ``se``,
                    ``ci_lower``, ``ci_upper``), e.g. continuous_did's ATT^o and ACRT^o; the
                    report saves and shows it
==================  =================================================================================

The canonical ``to_frame()`` schema (the same names and meanings for every estimator)
--------------------------------------------------------------------------------------
==============================  ======================================================================
key columns                     what the estimator indexes its estimates by: ``group``, ``time``,
                                ``event_time`` (ATT(g,t) cells); ``event_time`` (event studies and
                                the dynamic aggregation); ``group`` / ``time`` (group / calendar
                                aggregations); ``key`` (the simple aggregation, no rows)
``estimate``                    the point estimate
``se``                          the reported standard error (the bootstrap SE where the estimator
                                reports it, as R ``did``; CRV1 for the regressions)
``ci_lower``, ``ci_upper``      POINTWISE interval ``estimate -+ c se`` (normal quantile; t quantile
                                with clusters - 1 df for the regressions, as pyfixest)
``band_lower``, ``band_upper``  UNIFORM (simultaneous, sup-t multiplier bootstrap) band; NaN when
                                no uniform band was computed
``n_treated``, ``n_control``    units behind each estimate (cells, aggregations, regressions; see
                                docs/results.md); disclosure control reads them
extras                          ``se_analytic`` (influence-function SE, when ``se`` is the bootstrap's),
                                ``se_boot`` (bootstrap SE, when ``se`` is analytic), ``binned``
                                (an endpoint that pools every event time beyond it)
==============================  ======================================================================

Everything downstream (plots, reports, checks, comparisons, jobs, the service) reads this
protocol; nothing there tests class names or guesses column spellings.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from dte_dask.exceptions import DteDaskWarning, SpecError
from dte_dask.formatting import SummaryText
from dte_dask.inference.dist import pointwise_z

__all__ = ["Result", "SCHEMA", "KEY_COLUMNS", "EXTRA_COLUMNS", "pointwise_z", "no_pretest_reason"]

KEY_COLUMNS = ("group", "time", "event_time", "key", "dose")
SCHEMA = ("estimate", "se", "ci_lower", "ci_upper", "band_lower", "band_upper")
EXTRA_COLUMNS = ("n_treated", "n_control", "n_obs", "se_analytic", "se_boot", "binned")


def no_pretest_reason(event_time: np.ndarray, reference: np.ndarray | None, est: np.ndarray) -> str:
    """Why a set of estimates has no usable pre-treatment estimate (for the pre-test's warning)."""
    ref = np.zeros(event_time.size, dtype=bool) if reference is None else reference
    before = event_time < 0
    if not before.any():
        return "no estimate has a negative event time (no cohort is observed before its base period)"
    if not (before & ~ref).any():
        return "the only pre-treatment estimates are reference periods (fixed at 0)"
    return f"all {int((before & ~ref).sum())} pre-treatment estimates are NaN"


class Result(SummaryText):
    """Base of every result: the shared methods of the protocol (see the module docstring).

    Subclasses are frozen dataclasses (declared with ``repr=False`` so that ``summary()`` drives
    ``repr``) that implement ``estimates``, ``vcov``, ``to_frame`` and ``summary``.
    """

    result_kind: ClassVar[str] = "event_study"
    estimator: str
    alpha: float

    # ------------------------------------------------------------------ to implement
    @property
    def estimates(self) -> np.ndarray:
        raise NotImplementedError

    def vcov(self) -> np.ndarray:
        """Covariance of :attr:`estimates`."""
        raise NotImplementedError

    def to_frame(self) -> pd.DataFrame:
        raise NotImplementedError

    def summary(self) -> str:
        raise NotImplementedError

    # ------------------------------------------------------------------ shared
    @property
    def draws(self) -> np.ndarray | None:  # overridden by results that keep bootstrap draws
        return None

    @property
    def label(self) -> str:
        """Display name of the estimator (from the registry)."""
        from dte_dask.registry import estimator_label

        return estimator_label(self.estimator)

    def event_study(self) -> Result:
        """The estimates by event time, as a result (this one if it is indexed by event time)."""
        if "event_time" in self.to_frame().columns and self.result_kind == "event_study":
            return self
        raise SpecError(f"a {self.label} result of kind {self.result_kind!r} has no estimates by event time")

    def pretrend_test(self) -> dict[str, Any]:
        """Wald test (full covariance) that every pre-treatment estimate (event time < 0) is zero.

        With none to test this warns with the reason and returns NaN statistics and ``reason``.
        """
        from dte_dask.inference.bands import wald_test

        df = self.event_study().to_frame()
        et, est = df["event_time"].to_numpy(), df["estimate"].to_numpy(float)
        ref = (est == 0) & ~(df["se"].to_numpy(float) > 0)  # a reference period fixed at 0
        pre = (et < 0) & ~ref & np.isfinite(est)
        if not pre.any():
            reason = no_pretest_reason(et, ref, est)
            warnings.warn(f"No pre-treatment periods to test: {reason}", DteDaskWarning, stacklevel=2)
            return {"statistic": float("nan"), "df": 0, "p_value": float("nan"), "reason": reason}
        w, q, p = wald_test(est[pre], self.event_study().vcov()[np.ix_(pre, pre)])
        return {"statistic": w, "df": q, "p_value": p}

    def plot(self, kind: str | None = None, *, backend: str = "bokeh", **kwargs: Any) -> Any:
        """See :func:`dte_dask.plotting.plot_result`."""
        from dte_dask.plotting import plot_result

        return plot_result(self, kind, backend=backend, **kwargs)  # type: ignore[arg-type]

    def to_parquet(self, path: str | os.PathLike[str], **kwargs: Any) -> str:
        """Write :meth:`to_frame` as parquet; returns ``path``."""
        df = self.to_frame()
        for c in df.columns:  # labels of mixed types (dates and text) as text
            if df[c].dtype == object:
                df[c] = df[c].map(lambda v: v if v is None or isinstance(v, (int, float, str)) else str(v))
        df.to_parquet(path, index=False, **kwargs)
        return os.fspath(path)

