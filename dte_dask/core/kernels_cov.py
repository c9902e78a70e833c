"""DRDID's panel estimators with covariates (reg, ipw, dr) as a cell kernel (numpy only).

Passes (:class:`~dte_dask.core.kernels.CellKernel`): ``stats`` (the controls' outcome regression
and treated sums, :func:`dte_dask.core.covariates.ols_stats`); for ipw / dr the ``logit`` passes of
the propensity score (IRLS from the intercept-only MLE, deviances on R's scale; with sampling
weights R did's overlap check refits it unweighted); then one ``moments`` pass of the
propensity-weighted sums (:func:`dte_dask.core.covariates.ps_moments`). Formulas in
:mod:`dte_dask.core.twobytwo`.

On a large panel (``sample`` set by the caller) the logit starts from its fit on a few RNG blocks
and its first evaluation rides in the ``stats`` pass; without sampling weights its likely last
evaluation also sums the moments. The medical panel (2.8M units, 5 designs) then takes four
passes before its influence pass instead of eight (``stats``, six ``logit``, ``moments``).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from dte_dask.core import covariates
from dte_dask.core.blocks import UnitBlock
from dte_dask.core.kernels import (
    CellFit,
    LogitPasses,
    Pass,
    Reporter,
    StagedKernel,
    Stats,
    dot,
    WARM_START_BLOCKS,
    first_pass,
    null_deviance,
    sample_logit,
    solve_each,
)
from dte_dask.core.logit import LogitFit, intercept_start


class PanelCovKernel(StagedKernel):
    """Balanced panel with covariates: outcome regression, propensity logit, weighted moments.

    ``sample``: a few RNG blocks of a large panel, set by the caller before :meth:`start`
    (:attr:`warm_sample` of them): the propensity logit is then fitted on them first, and the
    ``stats`` pass also evaluates it at that fit, where the fit on the whole panel starts
    (:meth:`~dte_dask.core.kernels.LogitPasses.warm`): the same maximum in fewer passes.
    """

    influence = staticmethod(covariates.cov_influence)
    sample: tuple[UnitBlock, ...] = ()
    warm: tuple[np.ndarray, np.ndarray] | None = None  # sample fit: coefficients, cells it converged for

    @property
    def warm_sample(self) -> int:
        """RNG blocks this kernel would start its logit from (0: none, the ``reg`` method)."""
        return WARM_START_BLOCKS if self.a.method in ("ipw", "dr") else 0

    def start(self) -> Pass:
        a = self.a
        if self.sample and self.warm_sample:
            self.warm = sample_logit(covariates.logit_stats, list(self.sample), a.cells, a.p)
            if self.warm[1].any():
                return first_pass(covariates.ols_and_logit_stats, a.groups, a.p, *self.warm)
        return first_pass(covariates.ols_stats, a.groups, a.p)

    # ------------------------------------------------------------------ stages
    def _stats(self, s: Stats) -> Pass | None:
        a, report = self.a, self.report
        self.s = s
        ok = (s["SwD"] > 0) & (s["nC"] > 0)
        report.nan(~ok, "no control units")
        beta = None
        if a.method in ("reg", "dr"):
            beta, good = solve_each(s["XtWX"], s["XtWdY"], ok)
            report.nan(ok & ~good, "singular outcome-regression design among controls (collinear covariates?)")
            ok = good
        if a.method == "reg":
            v_t, _ = solve_each(s["XtWX"], s["SwDX"], ok)
            with np.errstate(invalid="ignore", divide="ignore"):
                eta_t = s["SwDdY"] / s["SwD"]
                eta_c = dot(s["SwDX"], beta) / s["SwD"]
            report.ill_conditioned(ok, {"outcome-regression design among controls": s["XtWX"]})
            est = {"method": "reg", "n": a.n, "beta": beta, "v_t": v_t, "eta_t": eta_t, "eta_c": eta_c,
                   "St": s["SwD"], "ok": ok}
            self.fit = CellFit(np.where(ok, eta_t - eta_c, np.nan), ok, est, s)
            return None
        self.beta = beta
        # propensity score: IRLS from the intercept-only MLE; deviances on R's scale (weights of mean 1)
        swc = s["XtWX"][:, 0, 0]
        gamma = intercept_start(s["SwD"], swc, a.p)
        gamma[~ok] = 0.0
        with np.errstate(invalid="ignore", divide="ignore"):
            dev_scale = (s["nD"] + s["nC"]) / (s["SwD"] + swc)
        if self.warm is not None and "grad" in s:  # the stats pass evaluated it at the sample's fit
            self.logit = LogitPasses.warm(covariates.logit_stats, gamma, ok.copy(), dev_scale,
                                          null_deviance(s["SwD"], swc), *self.warm, s)
        else:
            self.logit = LogitPasses(covariates.logit_stats, gamma, ok.copy(), dev_scale)
        # unweighted: the moments need only the final logit, so the last logit pass sums them too
        return self._iterate(self.logit, self._logit_done, None if a.weighted else self._with_moments)

    def _with_moments(self, step: Pass) -> Pass:
        """A logit pass that also sums ``ps_moments`` at its coefficients (the fit's likely last)."""
        self.speculative = step.args[0].copy()
        return Pass(covariates.logit_and_moments, (*step.args, self.beta), "logit")

    def _logit_done(self, fit: LogitFit) -> Pass | None:
        self.report.logit_failed(fit)
        self.ps = fit
        ok = fit.ok
        if not self.a.weighted:
            return self._overlap(ok & fit.overlap)
        # R did's overlap check: its preliminary logit is unweighted; fitted once more without weights
        gamma0 = intercept_start(self.s["nD"], self.s["nC"], fit.gamma.shape[1])
        pre = LogitPasses(covariates.logit_stats, gamma0, ok.copy(), None, (True,))
        return self._iterate(pre, lambda q: self._overlap(ok & (q.overlap | q.separated)))

    def _overlap(self, bad: np.ndarray) -> Pass:
        fit = self.ps
        self.report.nan(bad, "overlap condition violated: a fitted propensity score is >= 0.999 (R did's check on "
                        "its preliminary unweighted logit)")
        self.ok = fit.ok & ~bad
        self.report.logit_notes(fit, self.ok)
        spec = getattr(self, "speculative", None)
        if spec is not None and "St" in self.last_sums and np.array_equal(fit.gamma[self.ok], spec[self.ok]):
            return self._moments(self.last_sums)  # the last logit pass summed them at the final coefficients
        self._on = self._moments
        return Pass(covariates.ps_moments, (fit.gamma, self.beta), "moments")

    def _moments(self, m: Stats) -> None:
        a, s, report = self.a, self.s, self.report
        att, ok, est = ps_estimate(a.method, s, m, self.ps.gamma, self.beta, self.ok & (m["Sc"] > 0), report)
        est["n"] = a.n
        self.fit = CellFit(att, ok, est, s)
        return None


def ps_estimate(method: str, s: Stats, m: Stats, gamma: np.ndarray, beta: np.ndarray | None, ok: np.ndarray,
                report: Reporter) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """ipw / dr estimates and influence ingredients from the propensity-weighted moments ``m``."""
    b = beta if beta is not None else np.zeros(gamma.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        if method == "dr":
            eta_t = (m["At"] - dot(m["StX"], b)) / m["St"]
            eta_c = (m["Ac"] - dot(m["ScX"], b)) / m["Sc"]
            M2 = m["ScdYX"] - np.einsum("kpq,kq->kp", m["ScXX"], b) - eta_c[:, None] * m["ScX"]
        else:
            eta_t, eta_c = m["At"] / m["St"], m["Ac"] / m["Sc"]
            M2 = m["ScdYX"] - eta_c[:, None] * m["ScX"]
    v_ps, good = solve_each(m["H"], M2, ok)
    report.nan(ok & ~good, "singular propensity-score information matrix")
    ok = good
    mats = {"propensity-score information matrix": m["H"]}
    if method == "dr":
        mats["outcome-regression design among controls"] = s["XtWX"]
    report.ill_conditioned(ok, mats)
    est = {"method": method, "beta": b, "gamma": gamma, "eta_t": eta_t, "eta_c": eta_c,
           "St": m["St"], "Sc": m["Sc"], "v_ps": v_ps}
    if method == "dr":
        est["v_t"], _ = solve_each(s["XtWX"], m["StX"], ok)
        est["v_c"], _ = solve_each(s["XtWX"], m["ScX"], ok)
    est["ok"] = ok
    return np.where(ok, eta_t - eta_c, np.nan), ok, est
