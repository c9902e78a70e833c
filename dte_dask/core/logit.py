"""Propensity-score logit by IRLS with step-halving, as robust as R's ``glm.fit`` (numpy only).

The data never reach this module. :class:`IrlsLogit` proposes, for every active cell, a coefficient
vector at which the caller evaluates the weighted logit (gradient, information matrix, deviance and
the numbers of fitted probabilities numerically 0 or 1 and >= 0.999, summed over the blocks: one
reduction) and feeds the sums back with :meth:`IrlsLogit.update`. All cells advance together; each
has its own step length.

The algorithm, per cell:

* start from the intercept-only MLE (its deviance is the null deviance). ``glm.fit`` starts from
  ``mustart = (w y + 0.5) / (w + 1)`` instead, a point with no coefficients, so its first step
  cannot be halved; any start reaches the same maximum. A *warm start* (the fit on a sample of the
  data, :meth:`dte_dask.core.kernels.LogitPasses.warm`) saves passes over large panels: the caller gives
  the intercept-only start as ``fallback`` and its deviance as ``dev_null``; a warm start that is
  worse than it, or singular, is replaced by it before any step;
* Newton / IRLS step (the same thing for the canonical logit link) from the information matrix,
  solved on the *equilibrated* system ``S^-1 H S^-1`` with ``S = sqrt(diag H)`` (scale the
  covariate columns, solve, transform back), so that neither the step nor the singularity check
  (DRDID's ``rcond < .Machine$double.eps``) depends on the units of a covariate;
* step-halving: a step that does not decrease the deviance (or gives a non-finite one) is halved
  toward the previous coefficients and re-evaluated, up to :data:`MAX_HALVINGS` times. Plain Newton
  from the intercept-only start can overshoot badly when few units are treated and covariates have
  very different scales (the log-likelihood falls and p(1-p) underflows); the halving prevents it;
* convergence is ``glm.fit``'s rule, ``|dev - dev_old| / (|dev| + 0.1) < 1e-8`` (deviance of the
  weights normalised to mean one over the cell, as DRDID does), within :data:`GLM_MAXIT` = 25
  iterations; a cell that does not converge keeps its last coefficients and is reported (R warns
  "glm.fit: algorithm did not converge" and DRDID carries on);
* after convergence up to :data:`POLISH_STEPS` further Newton steps (still guarded) bring the
  coefficients to machine precision (until a step is below 1e-12 relative, each coefficient
  measured in units of its column's root mean square), so that estimates do not depend on where
  the deviance test happened to stop. The fit ends at the point evaluated last (its remaining step
  is below that tolerance), so the sums of that evaluation (counts of extreme fitted
  probabilities, and whatever a caller evaluated along with it) belong to the final coefficients;
* fitted probabilities numerically 0 or 1 (``|eta| > 30``, the thresholds of R's logit link) are
  reported as ``glm.fit`` does ("fitted probabilities numerically 0 or 1 occurred"); a deviance
  that has collapsed to ~0 (below :data:`SEPARATION_RATIO` of the null deviance) means the
  covariates predict treatment exactly: no overlap, the cell is not estimable.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dte_dask.core.regression import expit, guarded_solve

GLM_EPSILON = 1e-8  # glm.control()$epsilon
GLM_MAXIT = 25  # glm.control()$maxit
MAX_HALVINGS = 25  # halvings of one step before giving up on it (2^-25 of a Newton step)
POLISH_STEPS = 5  # Newton steps after convergence, to machine precision
POLISH_TOL = 1e-12  # a step below this (relative, equilibrated units) ends the polishing
LIKELY_LAST_CHANGE = 1e-6  # a deviance change below this: the next evaluation is likely the last
ETA_LIMIT = 30.0  # R's logit link: |eta| > 30 gives mu numerically 0 or 1
SEPARATION_RATIO = 1e-6  # deviance / null deviance below this: perfect separation
OVERLAP_LIMIT = 0.999  # R did: a preliminary logit with max fitted >= 0.999 violates overlap

_START, _TRY, _DONE = 0, 1, 2


def intercept_start(sw_treated: np.ndarray, sw_control: np.ndarray, p: int) -> np.ndarray:
    """(K, p) starting coefficients: the intercept-only MLE log(S_D / S_C), slopes zero."""
    gamma = np.zeros((np.shape(sw_treated)[0], p))
    with np.errstate(invalid="ignore", divide="ignore"):
        gamma[:, 0] = np.log(np.asarray(sw_treated, float) / np.asarray(sw_control, float))
    gamma[~np.isfinite(gamma[:, 0]), 0] = 0.0
    return gamma


def glm_change(dev: np.ndarray, dev_old: np.ndarray) -> np.ndarray:
    """``glm.fit``'s convergence statistic ``|dev - dev_old| / (|dev| + 0.1)``."""
    return np.abs(dev - dev_old) / (np.abs(dev) + 0.1)


@dataclass(frozen=True)
class LogitFit:
    """Per-cell outcome of :class:`IrlsLogit` (arrays of length K)."""

    gamma: np.ndarray  # (K, p) coefficients on the caller's (unscaled) covariates
    ok: np.ndarray  # usable: started and neither singular nor perfectly separated
    converged: np.ndarray  # glm.fit's rule met within GLM_MAXIT iterations
    iterations: np.ndarray  # accepted IRLS steps until convergence (or GLM_MAXIT)
    halvings: np.ndarray  # rejected (halved) steps, in all
    extreme: np.ndarray  # fitted probabilities numerically 0 or 1 at the final coefficients
    overlap: np.ndarray  # some fitted probability >= OVERLAP_LIMIT at the final coefficients
    singular: np.ndarray  # information matrix singular even after equilibration
    separated: np.ndarray  # deviance collapsed to ~0: covariates predict treatment exactly
    deviance: np.ndarray  # final deviance (weights normalised to mean one)
    null_deviance: np.ndarray
    passes: int  # evaluations (reductions over the data) used


class IrlsLogit:
    """Driver-side state of K weighted logits fitted together, one evaluation per call.

    Parameters
    ----------
    gamma0 : (K, p) starting coefficients (:func:`intercept_start`)
    active : (K,) bool, cells to fit
    dev_scale : (K,) factor turning the caller's deviance into the deviance with weights of mean
        one over the cell's design rows (``n / sum(w)``; ones for unweighted data)

    Use::

        fit = IrlsLogit(gamma0, active, dev_scale)
        while (prop := fit.proposal()) is not None:
            gamma, mask = prop
            fit.update(**evaluate(gamma, mask))  # grad, hess, dev, n_extreme
        result = fit.result()
    """

    def __init__(self, gamma0: np.ndarray, active: np.ndarray, dev_scale: np.ndarray | None = None,
                 fallback: np.ndarray | None = None, dev_null: np.ndarray | None = None):
        gamma0 = np.array(gamma0, dtype=float)
        K, p = gamma0.shape
        self.K, self.p = K, p
        self.gamma = gamma0
        # warm starts (cells whose ``fallback`` row is finite): ``gamma0`` is near the solution (a
        # sample's fit); the null deviance is then ``dev_null`` (the intercept-only fit's, in the
        # caller's units) and a start worse than it, or with a singular information matrix, is
        # dropped for ``fallback`` (the intercept-only start) before any step is taken
        self.fallback = None if fallback is None else np.array(fallback, dtype=float)
        self.warm = np.zeros(K, bool) if fallback is None else np.all(np.isfinite(self.fallback), axis=1)
        self.scale = np.ones(K) if dev_scale is None else np.asarray(dev_scale, dtype=float)
        self.state = np.where(np.asarray(active, bool), _START, _DONE)
        self.started = self.state == _START
        self.polishing = np.zeros(K, bool)
        self.converged = np.zeros(K, bool)
        self.singular = np.zeros(K, bool)
        self.extreme = np.zeros(K, bool)
        self.overlap = np.zeros(K, bool)
        self.iterations = np.zeros(K, np.int64)
        self.polished = np.zeros(K, np.int64)
        self.halvings = np.zeros(K, np.int64)
        self.tries = np.zeros(K, np.int64)  # halvings of the current step
        self.step = np.zeros((K, p))
        self.t = np.ones(K)
        self.dev = np.full(K, np.nan)
        self.change = np.full(K, np.inf)  # glm's statistic at the last accepted step
        self.dev_null = np.full(K, np.nan)
        self.grad = np.zeros((K, p))
        self.hess = np.zeros((K, p, p))
        self.colscale = np.ones((K, p))  # column RMS (relative to the intercept) at the start
        self._steps: dict[bytes, np.ndarray | None] = {}
        self.passes = 0
        self.warm &= self.state == _START
        self.dev_null_warm = np.full(K, np.nan) if dev_null is None else np.asarray(dev_null, dtype=float) * self.scale
        if self.warm.any() and not np.all(np.isfinite(self.dev_null_warm[self.warm])):
            raise ValueError("IrlsLogit: a warm start needs the cell's finite null deviance (dev_null)")

    # ------------------------------------------------------------------ protocol
    def proposal(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Coefficients at which to evaluate next, and the cells to evaluate; None when done."""
        mask = self.state != _DONE
        if not mask.any():
            return None
        pts = self.gamma.copy()
        tr = self.state == _TRY
        pts[tr] = self.gamma[tr] + self.t[tr, None] * self.step[tr]
        return pts, mask

    def update(self, grad: np.ndarray, hess: np.ndarray, dev: np.ndarray, n_extreme: np.ndarray,
               n_overlap: np.ndarray | None = None, only: np.ndarray | None = None) -> None:
        """Feed the sums evaluated at the last :meth:`proposal` (rows of inactive cells ignored):
        gradient, information matrix, deviance, rows with fitted probabilities numerically 0 or 1
        and (optionally) rows with a fitted probability >= :data:`OVERLAP_LIMIT`. ``only``: the
        cells these sums are for (the others wait for the next evaluation), e.g. warm starts
        evaluated in an earlier pass of the caller's."""
        self.passes += 1
        self._steps = {}  # cells of one design share their sums: solved once
        if n_overlap is None:
            n_overlap = np.zeros(self.K)
        dev = np.asarray(dev, float) * self.scale
        fed = np.ones(self.K, bool) if only is None else np.asarray(only, bool)
        starting, trying = np.flatnonzero(fed & (self.state == _START)), np.flatnonzero(fed & (self.state == _TRY))
        for k in starting:
            if self.warm[k] and not self._keep_warm_start(k, grad[k], hess[k], dev[k], n_extreme[k]):
                continue  # back at the intercept-only start: evaluated again in the next pass
            self.dev[k] = dev[k]
            self.dev_null[k] = self.dev_null_warm[k] if self.warm[k] else dev[k]
            self.warm[k] = False
            d = np.diag(hess[k])
            if d[0] > 0 and np.all(np.isfinite(d)):
                self.colscale[k] = np.where(d > 0, np.sqrt(np.maximum(d, 0) / d[0]), 1.0)
            self._accept_point(k, grad[k], hess[k], n_extreme[k], n_overlap[k])
            self._next_step(k)
        for k in trying:
            change = glm_change(dev[k], self.dev[k])
            if not np.isfinite(dev[k]) or (dev[k] > self.dev[k] and not change < GLM_EPSILON):
                self.halvings[k] += 1
                self.tries[k] += 1
                self.t[k] *= 0.5
                if self.tries[k] > MAX_HALVINGS:  # no decrease along the Newton direction
                    self.state[k] = _DONE
                continue
            self.gamma[k] = self.gamma[k] + self.t[k] * self.step[k]
            self.dev[k] = dev[k]
            self.change[k] = change
            self._accept_point(k, grad[k], hess[k], n_extreme[k], n_overlap[k])
            if self.polishing[k]:
                self.polished[k] += 1
                if self.polished[k] >= POLISH_STEPS:
                    self.state[k] = _DONE
                    continue
            else:
                self.iterations[k] += 1
                if change < GLM_EPSILON:
                    self.converged[k] = self.polishing[k] = True
                elif self.iterations[k] >= GLM_MAXIT:
                    self.state[k] = _DONE
                    continue
            self._next_step(k)

    def likely_last(self) -> bool:
        """Whether the next evaluation is likely the last: every cell still running is polishing or
        its last accepted step changed the deviance by less than :data:`LIKELY_LAST_CHANGE`
        (relative), so that, converging quadratically, it should meet glm's rule there with a
        remaining step below :data:`POLISH_TOL`."""
        running = self.state != _DONE
        return bool(running.any() and np.all((self.polishing | (self.change < LIKELY_LAST_CHANGE))[running]))

    def result(self) -> LogitFit:
        with np.errstate(invalid="ignore", divide="ignore"):
            separated = self.started & ~self.singular & (self.dev <= SEPARATION_RATIO * self.dev_null)
        return LogitFit(gamma=self.gamma.copy(), ok=self.started & ~self.singular & ~separated,
                        converged=self.converged.copy(), iterations=self.iterations.copy(),
                        halvings=self.halvings.copy(), extreme=self.extreme.copy(), overlap=self.overlap.copy(),
                        singular=self.singular.copy(), separated=separated, deviance=self.dev.copy(),
                        null_deviance=self.dev_null.copy(), passes=self.passes)

    # ------------------------------------------------------------------ per cell
    def _keep_warm_start(self, k: int, grad, hess, dev: float, n_extreme) -> bool:
        """Whether cell k's warm start is a usable first point: a finite deviance no larger than the
        intercept-only fit's, no fitted probability numerically 0 or 1 and a solvable information
        matrix. Otherwise the cell starts again from its ``fallback``, as a cold fit would."""
        step = guarded_solve(hess, grad) if np.isfinite(dev) and n_extreme == 0 else None
        if step is not None and dev <= self.dev_null_warm[k]:
            self._steps[hess.tobytes() + grad.tobytes()] = step
            return True
        self.gamma[k] = self.fallback[k]
        self.warm[k] = False
        return False

    def _accept_point(self, k: int, grad, hess, n_extreme, n_overlap) -> None:
        self.grad[k], self.hess[k] = grad, hess
        self.extreme[k], self.overlap[k] = n_extreme > 0, n_overlap > 0

    def _next_step(self, k: int) -> None:
        """Newton step at the current coefficients of cell k; decide whether to evaluate it."""
        key = self.hess[k].tobytes() + self.grad[k].tobytes()
        if key not in self._steps:
            self._steps[key] = guarded_solve(self.hess[k], self.grad[k])
        step = self._steps[key]
        if step is None:
            if not self.polishing[k]:
                self.singular[k] = True
            self.state[k] = _DONE
            return
        if self.polishing[k]:
            s = self.colscale[k]
            if np.max(np.abs(step * s)) <= POLISH_TOL * (1.0 + np.max(np.abs(self.gamma[k] * s))):
                self.state[k] = _DONE  # at rounding level: stop at the point evaluated last
                return
        self.step[k], self.t[k], self.tries[k] = step, 1.0, 0
        self.state[k] = _TRY


def eta_extreme(eta: np.ndarray) -> int:
    """Rows whose fitted probability R's logit link reports as numerically 0 or 1."""
    return int(np.count_nonzero(np.abs(eta) > ETA_LIMIT))


def overlap_count(eta: np.ndarray, ps: np.ndarray | None = None) -> int:
    """Rows with a fitted probability (``ps`` = expit(eta) when already at hand) of at least
    :data:`OVERLAP_LIMIT` (R did's overlap check)."""
    return int(np.count_nonzero((expit(eta) if ps is None else ps) >= OVERLAP_LIMIT))
