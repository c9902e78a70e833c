"""DRDID's repeated-cross-section estimators with covariates (``reg_did_rc``, ``std_ipw_did_rc``,
``drdid_rc``) as a cell kernel (numpy only); formulas in :mod:`dte_dask.core.rcs_covariates`.

Passes (:class:`~dte_dask.core.kernels.CellKernel`): ``stats`` (the four outcome regressions,
:func:`dte_dask.core.rcs_covariates.or_stats`); for ipw / dr the ``logit`` passes of the propensity
score and one ``moments`` pass of the propensity-weighted sums
(:func:`dte_dask.core.rcs_covariates.ps_stats`). As in the balanced panel's kernel, on a large
panel the logit starts from a sample's fit with its first evaluation in the ``stats`` pass, and its
likely last evaluation also sums the moments (used when the fit ends at those coefficients).
"""
from __future__ import annotations

import numpy as np

from dte_dask.core import rcs_covariates
from dte_dask.core.blocks import UnitBlock
from dte_dask.core.kernels import (
    CellFit,
    LogitPasses,
    Pass,
    StagedKernel,
    Stats,
    WARM_START_BLOCKS,
    dot,
    first_pass,
    null_deviance,
    sample_logit,
    solve_each,
)
from dte_dask.core.logit import LogitFit

_OR_FITS = {"reg": (0, 1), "ipw": (), "dr": (0, 1, 2, 3)}  # outcome regressions (c1, c0, t1, t0) per method
_PS_KEYS = ("ScX", "ScyX", "ScXX", "H")  # the sums of rcs_covariates.ps_stats


class RcCovKernel(StagedKernel):
    """Repeated cross sections (or an unbalanced panel) with covariates. ``sample``: as
    :class:`~dte_dask.core.kernels_cov.PanelCovKernel`'s (a warm-started propensity logit, first
    evaluated in the ``stats`` pass)."""

    influence = staticmethod(rcs_covariates.rc_influence)
    sample: tuple[UnitBlock, ...] = ()
    warm: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def warm_sample(self) -> int:
        return WARM_START_BLOCKS if self.a.method in ("ipw", "dr") else 0

    def start(self) -> Pass:
        a, active = self.a, ~self.a.cells.reference
        if self.sample and self.warm_sample:
            self.warm = sample_logit(rcs_covariates.logit_stats, list(self.sample), a.cells, a.p)
            if self.warm[1].any():
                return first_pass(rcs_covariates.or_and_logit_stats, a.groups, a.p, active, *self.warm)
        return first_pass(rcs_covariates.or_stats, a.groups, a.p, active)

    # ------------------------------------------------------------------ stages
    def _stats(self, s: Stats) -> Pass | None:
        a, report = self.a, self.report
        K, p, method = a.cells.K, a.p, a.method
        active = ~a.cells.reference
        self.s = s
        S = s["SX"][:, :, 0]  # weights of c1, c0, t1, t0
        ok = active & (S[:, 2] > 0) & (S[:, 3] > 0) & (s["rows"][:, 0] > 0) & (s["rows"][:, 1] > 0)
        report.nan(active & ~ok, "no treated or no control observations in one of its two periods")
        SD, SDX = S[:, 2] + S[:, 3], s["SX"][:, 2] + s["SX"][:, 3]
        beta = np.zeros((K, 4, p))
        for j in _OR_FITS[method]:
            beta[:, j], good = solve_each(s["A"][:, j], s["b"][:, j], ok)
            who = "controls" if j < 2 else "treated"
            report.nan(ok & ~good, f"singular outcome-regression design among {who} (collinear covariates?)")
            ok = good
        beta[~ok] = 0.0
        self.S, self.SD, self.SDX, self.beta = S, SD, SDX, beta
        with np.errstate(invalid="ignore", divide="ignore"):
            self.sdx = SDX / SD[:, None]
            if method == "reg":
                eta_c = dot(SDX, beta[:, 0] - beta[:, 1]) / SD
                a_t = s["b"][:, 2:, 0] / S[:, 2:]
                att = np.where(ok, a_t[:, 0] - a_t[:, 1] - eta_c, np.nan)
                u = np.stack([solve_each(s["A"][:, j], self.sdx, ok)[0] for j in (0, 1)], axis=1)
                acoef = np.column_stack([np.zeros((K, 2)), a_t])
                est = {"method": "reg", "n": a.n, "S": S, "SD": SD, "a": acoef, "eta_c": eta_c, "beta": beta,
                       "u": u, "ok": ok}
                self.fit = CellFit(att, ok, est, s)
                return None
            gamma = np.zeros((K, p))
            gamma[:, 0] = np.log(SD / (S[:, 0] + S[:, 1]))
        gamma[~ok] = 0.0
        if self.warm is not None and "grad" in s:  # the stats pass evaluated it at the sample's fit
            passes = LogitPasses.warm(rcs_covariates.logit_stats, gamma, ok.copy(), None,
                                      null_deviance(SD, S[:, 0] + S[:, 1]), *self.warm, s)
        else:
            passes = LogitPasses(rcs_covariates.logit_stats, gamma, ok.copy())
        self.candidates = ok.copy()  # the cells the logit may end usable for
        return self._iterate(passes, self._logit_done, self._with_moments)

    def _with_moments(self, step: Pass) -> Pass:
        """A logit pass that also sums ``ps_stats`` at its coefficients (the fit's likely last)."""
        self.speculative = step.args[0].copy()
        return Pass(rcs_covariates.logit_and_ps_stats, (*step.args, self.candidates), "logit")

    def _logit_done(self, fit: LogitFit) -> Pass | None:
        self.report.logit_failed(fit)
        self.report.logit_notes(fit, fit.ok)
        self.gamma, self.ok = fit.gamma, fit.ok
        spec, last = getattr(self, "speculative", None), getattr(self, "last_sums", {})
        if spec is not None and "ScX" in last and np.array_equal(fit.gamma[fit.ok], spec[fit.ok]):
            # the last logit pass summed them at the final coefficients: the usable cells' rows, as
            # a separate pass over the usable cells would give them
            return self._moments({k: np.where(fit.ok.reshape(-1, *[1] * (v.ndim - 1)), v, 0.0)
                                  for k, v in last.items() if k in _PS_KEYS})
        self._on = self._moments
        return Pass(rcs_covariates.ps_stats, (fit.gamma, fit.ok), "moments")

    def _moments(self, m: Stats) -> None:
        a, s, report = self.a, self.s, self.report
        ok, beta, S, SD, SDX, sdx = self.ok, self.beta, self.S, self.SD, self.SDX, self.sdx
        Sc = m["ScX"][:, :, 0]  # ps-weighted controls, post and pre
        bad = ok & ~((Sc[:, 0] > 0) & (Sc[:, 1] > 0))
        report.nan(bad, "every control has a propensity score >= 0.995 and is trimmed")
        ok &= ~bad
        bc = beta[:, :2]
        with np.errstate(invalid="ignore", divide="ignore"):
            a_c = (m["ScyX"][:, :, 0] - np.einsum("ksp,ksp->ks", m["ScX"], bc)) / Sc
            a_t = (s["b"][:, 2:, 0] - np.einsum("ksp,ksp->ks", s["SX"][:, 2:], bc)) / S[:, 2:]
            M2 = (m["ScyX"] - np.einsum("kspq,ksq->ksp", m["ScXX"], bc) - a_c[:, :, None] * m["ScX"]) / Sc[:, :, None]
            att = (a_t[:, 0] - a_t[:, 1]) - (a_c[:, 0] - a_c[:, 1])
            a_eff = None
            if a.method == "dr":
                f1, f0 = beta[:, 2] - beta[:, 0], beta[:, 3] - beta[:, 1]
                a_eff = np.column_stack([dot(SDX, f1) / SD, dot(s["SX"][:, 2], f1) / S[:, 2],
                                         dot(SDX, f0) / SD, dot(s["SX"][:, 3], f0) / S[:, 3]])
                att = att + (a_eff[:, 0] - a_eff[:, 1]) - (a_eff[:, 2] - a_eff[:, 3])
        v_ps, good = solve_each(m["H"], M2[:, 0] - M2[:, 1], ok)
        report.nan(ok & ~good, "singular propensity-score information matrix")
        ok = good
        est = {"method": a.method, "n": a.n, "S": S, "SD": SD, "a": np.column_stack([a_c, a_t]), "beta": beta,
               "gamma": self.gamma, "Sc": Sc, "v_ps": v_ps, "ok": ok}
        if a.method == "dr":
            with np.errstate(invalid="ignore", divide="ignore"):
                rhs = (m["ScX"][:, 0] / Sc[:, 0:1] - sdx, sdx - m["ScX"][:, 1] / Sc[:, 1:2],
                       sdx - s["SX"][:, 2] / S[:, 2:3], sdx - s["SX"][:, 3] / S[:, 3:4])
            est["u"] = np.stack([solve_each(s["A"][:, j], rhs[j], ok)[0] for j in range(4)], axis=1)
            est["a_eff"] = a_eff
        self.fit = CellFit(np.where(ok, att, np.nan), ok, est, s)
        return None
