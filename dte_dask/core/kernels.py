"""The ATT(g,t) cell kernels behind one small interface, and the table that picks one (numpy only).

A kernel estimates every cell of a :class:`~dte_dask.core.cells.Cells` in *passes*. Each pass is a
sum over the panel of a block function; the caller (the ATT(g,t) task graph of
:mod:`dte_dask.graph.attgt`, or the identification checks of :mod:`dte_dask.checks._engine`, which
sum many experiments at once) maps it over the blocks and reduces, then hands the sums back::

    kernel = routes.select(cells, method=..., p=..., repeated=..., moments=..., ...)
    step = kernel.start()                     # a Pass: stats(block, cells, *args) -> dict of sums
    while step is not None:
        step = kernel.solve(sum over blocks of step.stats(block, cells, *step.args))
    fit = kernel.result()                     # CellFit: att, ok, est, first-pass sums
    psi = kernel.influence(block, cells, fit.est)  # (n_block, K) on the workers

``stats`` are module-level functions (they travel to the workers); ``solve`` is driver-side
algebra on K-sized arrays (outcome regressions, the IRLS propensity logit of
:mod:`dte_dask.core.logit`, the reg / ipw / dr estimates); ``influence`` is the block's influence
functions. Kernels with an *affine* influence form (:class:`MomentsKernel`) instead give the
pieces from which Psi'Psi and the bootstrap follow without forming Psi.

Kernels: :class:`MomentsKernel` / :class:`UncondKernel` (balanced, no covariates: cohort moments,
or the 2x2 sums when clustered), :class:`~dte_dask.core.kernels_cov.PanelCovKernel` (balanced, with
covariates: DRDID's panel reg / ipw / dr), :class:`RcsKernel` and
:class:`~dte_dask.core.kernels_rc.RcCovKernel` (repeated cross sections or unbalanced panels,
without and with covariates). :func:`dte_dask.core.routes.select` picks one from a table.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from dte_dask.core import logit, moments, rcs, twobytwo
from dte_dask.core.blocks import UnitBlock, rng_block_runs
from dte_dask.core.cells import Cells
from dte_dask.core.errors import DegenerateCellWarning, NuisanceFitWarning
from dte_dask.core.logit import IrlsLogit, LogitFit
from dte_dask.core.regression import (
    ILL_CONDITIONED,
    TRIM_LEVEL,
    equilibrated_cond,
    guarded_solve,
)

Stats = dict[str, np.ndarray]
Label = Callable[[Any], Any]


@dataclass(frozen=True)
class Pass:
    """One reduction a kernel asks for: ``stats(block, cells, *args)`` summed over every block.

    ``name`` ("stats", "logit", "moments") names the pass's tasks."""

    stats: Callable[..., Stats]
    args: tuple
    name: str


@dataclass(frozen=True)
class CellFit:
    """What a kernel hands back: estimates, estimable cells, what ``influence`` needs, first-pass sums."""

    att: np.ndarray  # (K,)
    ok: np.ndarray  # (K,)
    est: dict[str, Any]
    stats: Stats  # the first pass's sums (nD, nC and, when groups were given, Swg)

    def for_attgt(self, cells: Cells, n: float) -> CellFit:
        """As ATT(g,t) reports it: universal-base reference cells are 0 and not estimated (zero
        influence); ``est["pg"]`` holds the weighted cohort shares P(G = g) of the groups."""
        ok = self.ok & ~cells.reference
        est = {**self.est, "ok": ok, "pg": self.stats["Swg"] / n}
        return CellFit(np.where(cells.reference, 0.0, self.att), ok, est, self.stats)


class CellKernel(Protocol):
    """The interface every ATT(g,t) kernel implements (see the module docstring)."""

    affine: bool

    def start(self) -> Pass: ...

    def solve(self, sums: Stats) -> Pass | None: ...

    def result(self) -> CellFit: ...

    @staticmethod
    def influence(block: UnitBlock, cells: Cells, est: dict[str, Any], out: np.ndarray | None = None) -> np.ndarray:
        """(n_block, K) influence functions, written into ``out`` (zeros of that shape) when given."""


class AffineCellKernel(CellKernel, Protocol):
    """A kernel whose influence functions are affine in a unit's outcome path (``affine = True``):
    Psi'Psi follows from summed ``moment_stats`` and the bootstrap from ``boot_apply``, Psi is never
    formed for a whole partition (:class:`MomentsKernel`)."""

    def coefficients(self, est: dict[str, Any], groups: np.ndarray) -> tuple[np.ndarray, ...]: ...

    @staticmethod
    def moment_stats(block: UnitBlock, cells: Cells, *coef: np.ndarray) -> Stats: ...

    @staticmethod
    def boot_apply(block: UnitBlock, cells: Cells, *coef: np.ndarray) -> Callable[..., np.ndarray]:
        """``apply(M, a, b) = V @ Psi[a:b]`` with ``apply.order(a, b)``: the multipliers' column order
        (see :func:`dte_dask.inference.bootstrap.boot_cover_apply`)."""

    @staticmethod
    def gram(mom: Stats, coef: tuple[np.ndarray, ...]) -> np.ndarray: ...


# ----------------------------------------------------------------------------- shared pieces
def with_groups(block: UnitBlock, cells: Cells, stats: Callable[..., Stats], groups: np.ndarray, *args) -> Stats:
    """``stats(block, cells, *args)`` plus the weighted cohort sizes ``Swg`` of ``groups``."""
    out = stats(block, cells, *args)
    G = cells.effective_g(block.g)
    out["Swg"] = (G[:, None] == groups[None, :]).astype(float).T @ block.w
    return out


def influence_with_groups(block: UnitBlock, cells: Cells, est: dict[str, Any], groups: np.ndarray,
                          influence: Callable[..., np.ndarray], block_size: int | None = None) -> np.ndarray:
    """(n_block, K + |groups|): the cells' influence functions, then one cohort-share column per
    group (for the aggregation weights).

    With ``block_size`` (entities per RNG block) ``influence`` runs on one RNG block at a time, so
    that its matrix products see the same rows for any partitioning (a BLAS product's rounding
    may depend on how many rows it is given) and its temporaries stay small."""
    K = cells.K
    psi = np.zeros((block.n, K + groups.size))
    if block_size is None or block.n == 0:
        influence(block, cells, est, out=psi[:, :K])
    else:
        for a, b, _ in rng_block_runs(block.rank, block_size):
            influence(block.take(slice(a, b)), cells, est, out=psi[a:b, :K])
    G = cells.effective_g(block.g)
    psi[:, K:] = (G[:, None] == groups[None, :]) * block.w[:, None] - est["pg"][None, :]
    return psi


def solve_each(A: np.ndarray, b: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per cell k with ``ok[k]``: ``guarded_solve(A[k], b[k])``; NaN and not ok where it fails."""
    out = np.full(b.shape, np.nan)
    good = ok.copy()
    verdict: dict[bytes, bool] = {}  # cells of one design share A: its conditioning is checked once
    solved: dict[bytes, np.ndarray | None] = {}  # ... and often b too: solved once
    for k in np.flatnonzero(ok):
        key = A[k].tobytes()
        both = key + b[k].tobytes()
        seen = verdict.get(key)
        if both in solved:
            x = solved[both]
        else:
            x = solved[both] = None if seen is False else guarded_solve(A[k], b[k], check=seen is None)
        verdict[key] = x is not None
        if x is None:
            good[k] = False
        else:
            out[k] = x
    return out, good


def dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise inner products of two (K, p) arrays."""
    return np.einsum("kp,kp->k", a, b)


class Reporter:
    """Warnings about cells, one per reason (R reports NA for them, or warns and carries on).

    ``label`` formats a period index for the message; None reports nothing (the checks' many
    experiments)."""

    def __init__(self, cells: Cells, label: Label | None) -> None:
        self.cells, self.label = cells, label

    def _names(self, idx: np.ndarray) -> str:
        c, lab = self.cells, self.label
        names = ", ".join(f"ATT(g={lab(c.g[k])}, t={lab(c.t[k])})" for k in idx[:8])
        return names + (f" and {idx.size - 8} more" if idx.size > 8 else "")

    def nan(self, bad: np.ndarray, reason: str) -> None:
        """Cells that become NaN."""
        idx = np.flatnonzero(bad)
        if idx.size and self.label is not None:
            verb = "is" if idx.size == 1 else "are"
            warnings.warn(f"{self._names(idx)} {verb} NaN: {reason}", DegenerateCellWarning, stacklevel=3)

    def note(self, bad: np.ndarray, reason: str) -> None:
        """Cells that keep their estimate."""
        idx = np.flatnonzero(bad)
        if idx.size and self.label is not None:
            warnings.warn(f"{self._names(idx)}: {reason}", NuisanceFitWarning, stacklevel=3)

    def ill_conditioned(self, ok: np.ndarray, mats: dict[str, np.ndarray]) -> None:
        """Cells kept although a nuisance design is nearly singular (R keeps them too)."""
        if self.label is None:
            return
        for what, A in mats.items():
            conds: dict[bytes, float] = {}  # cells of one design share A

            def cond(a: np.ndarray) -> float:
                key = a.tobytes()
                if key not in conds:
                    conds[key] = equilibrated_cond(a)
                return conds[key]
            c = np.array([cond(A[k]) if ok[k] else 0.0 for k in range(self.cells.K)])
            bad = ok & (c > ILL_CONDITIONED)
            if bad.any():
                self.note(bad, f"nearly collinear covariates: the {what} is ill-conditioned (condition number "
                          f"{np.max(c[bad]):.1e} after equilibrating its columns), so the estimate and its standard "
                          f"error may be accurate to only about {np.max(c[bad]) * np.finfo(float).eps:.0e} relative")


    def logit_failed(self, fit: LogitFit) -> None:
        """Cells whose propensity-score logit failed (they become NaN)."""
        self.nan(fit.singular & (fit.iterations == 0),
                 "singular propensity-score design, even with equilibrated columns (collinear covariates, "
                 "or a covariate constant among the cell's units)")
        self.nan(fit.singular & (fit.iterations > 0),
                 "the propensity-score information matrix became singular during IRLS (quasi-complete separation)")
        self.nan(fit.separated, "perfect separation in the propensity score: the covariates predict treatment "
                 "exactly (the logit deviance fell to ~0), so treated and control units do not overlap")

    def logit_notes(self, fit: LogitFit, ok: np.ndarray) -> None:
        """Estimable cells whose logit met a problem R only warns about."""
        self.note(ok & ~fit.converged,
                  f"the propensity-score logit did not converge in {logit.GLM_MAXIT} IRLS iterations "
                  "(glm.fit's rule |dev - dev_old|/(|dev| + 0.1) < 1e-8); its last iterate is used, as R does")
        self.note(ok & fit.extreme, "fitted propensity scores numerically 0 or 1 occurred (quasi-complete "
                  "separation; R: 'glm.fit: fitted probabilities numerically 0 or 1 occurred'); those units are "
                  "trimmed or weigh ~0")


class LogitPasses:
    """The propensity-score logit per cell (:class:`dte_dask.core.logit.IrlsLogit`) as passes: one
    reduction per IRLS iteration (and per halved step) of ``stats(block, cells, gamma, active, *extra)``,
    which returns ``grad`` / ``hess`` / ``ll`` and, where it counts them, ``n01`` / ``n999``.
    ``fallback`` / ``dev_null``: warm starts (:meth:`warm`)."""

    def __init__(self, stats: Callable[..., Stats], gamma: np.ndarray, active: np.ndarray,
                 dev_scale: np.ndarray | None = None, extra: tuple = (), fallback: np.ndarray | None = None,
                 dev_null: np.ndarray | None = None) -> None:
        self.stats, self.extra = stats, extra
        self.irls = IrlsLogit(gamma, active, dev_scale, fallback, dev_null)

    def next(self) -> Pass | None:
        """The next evaluation, or None when every cell is done."""
        prop = self.irls.proposal()
        return None if prop is None else Pass(self.stats, (*prop, *self.extra), "logit")

    @classmethod
    def warm(cls, stats: Callable[..., Stats], gamma0: np.ndarray, active: np.ndarray, dev_scale: np.ndarray | None,
             dev_null: np.ndarray, warm: np.ndarray, good: np.ndarray, at_warm: Stats) -> LogitPasses:
        """The passes of a fit whose cells ``good & active`` start at ``warm`` (:func:`sample_logit`),
        already evaluated there (``at_warm``: ``stats``'s sums at ``warm`` for those cells, from an
        earlier pass of the caller's); the other active cells start from ``gamma0``, the
        intercept-only fit (``dev_null``: its deviance), which is also where a warm start worse than
        it falls back to. The same maximum, in fewer passes over the panel."""
        good = good & active
        passes = cls(stats, np.where(good[:, None], warm, gamma0), active, dev_scale, (),
                     np.where(good[:, None], gamma0, np.nan), dev_null)
        if good.any():
            passes.feed(at_warm, only=good)
        return passes

    def feed(self, s: Stats, only: np.ndarray | None = None) -> None:
        self.irls.update(s["grad"], s["hess"], -2.0 * s["ll"], s.get("n01", np.zeros(self.irls.K)), s.get("n999"),
                         only)

    def result(self) -> LogitFit:
        return self.irls.result()


WARM_START_MIN_BLOCKS = 8  # RNG blocks from which the propensity logit starts from a sample's fit
WARM_START_BLOCKS = 4  # RNG blocks in that sample (spread over the panel)


def null_deviance(sw_treated: np.ndarray, sw_control: np.ndarray) -> np.ndarray:
    """-2 log-likelihood of the intercept-only logit (:func:`dte_dask.core.logit.intercept_start`)
    from the weighted treated and control totals: ``-2 (S_D log p + S_C log(1 - p))``, p = S_D / (S_D + S_C)."""
    sd, sc = np.asarray(sw_treated, float), np.asarray(sw_control, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = sd / (sd + sc)
        return -2.0 * (np.where(sd > 0, sd * np.log(p), 0.0) + np.where(sc > 0, sc * np.log1p(-p), 0.0))


def sample_logit(stats: Callable[..., Stats], sample: list[UnitBlock], cells: Cells, p: int,
                 extra: tuple = ()) -> tuple[np.ndarray, np.ndarray]:
    """The logit of every cell fitted on ``sample`` (a few of the panel's RNG blocks, in memory, on
    the driver) from its own intercept-only start: (K, p) coefficients and the cells whose fit
    converged cleanly (no separation, no fitted probability numerically 0 or 1): warm starts for
    the fit on the whole panel (:meth:`LogitPasses.warm`)."""
    def total(gamma: np.ndarray, active: np.ndarray) -> Stats:
        parts = [stats(b, cells, gamma, active, *extra) for b in sample]
        return {k: sum(q[k] for q in parts) for k in parts[0]}

    K = cells.K
    at0 = total(np.zeros((K, p)), np.ones(K, bool))  # at p = 1/2: hess00 = sum(w) / 4, grad0 = sum(w (d - 1/2))
    sw = 4.0 * at0["hess"][:, 0, 0]
    swd = at0["grad"][:, 0] + sw / 2.0
    active = (swd > 0) & (sw - swd > 0)
    local = LogitPasses(stats, logit.intercept_start(swd, sw - swd, p), active, None, extra)
    while (step := local.next()) is not None:
        local.feed(total(*step.args[:2]))
    fit = local.result()
    return fit.gamma, active & fit.ok & fit.converged & ~fit.extreme


def uncond_ok(s: Stats, method: str, report: Reporter) -> np.ndarray:
    """Estimable cells without covariates (DRDID trims controls when ps >= 0.995 for dr / ipw)."""
    ok = (s["SwD"] > 0) & (s["SwC"] > 0)
    if method in ("dr", "ipw"):
        with np.errstate(invalid="ignore", divide="ignore"):
            trimmed = np.minimum(s["SwD"] / (s["SwD"] + s["SwC"]), 1 - 1e-6) >= TRIM_LEVEL
        report.nan(ok & trimmed, "every control has a propensity score >= 0.995 and is trimmed")
        ok &= ~trimmed
    report.nan(~ok & (s["SwC"] <= 0), "no control units")
    return ok


def first_pass(stats: Callable[..., Stats], groups: np.ndarray | None, *args) -> Pass:
    """The ``stats`` pass of ``stats(block, cells, *args)``, with ``Swg`` when ``groups`` is given."""
    if groups is None:
        return Pass(stats, args, "stats")
    return Pass(with_groups, (stats, groups, *args), "stats")


@dataclass
class KernelArgs:
    """What every kernel is built from (see :func:`select`)."""

    cells: Cells
    method: str  # "dr" | "ipw" | "reg"
    p: int  # 1 + number of covariates
    n: float  # scale of the influence functions (units of the panel; 1 for the estimate's scale)
    groups: np.ndarray | None  # cohorts whose weighted sizes the first pass also sums (Swg)
    weighted: bool  # sampling weights (R did's overlap check refits the logit unweighted)
    cohorts: np.ndarray | None  # the panel's cohort indices (cohort-moment kernel)
    label: Label | None  # period label for warnings; None: no warnings


# ----------------------------------------------------------------------------- no covariates

class StagedKernel:
    """Base of the kernels with a propensity logit: a chain of stages, each fed the sums of the pass
    the previous one asked for (``self._on``); subclasses define ``start``, ``_stats`` (the first
    stage) and set ``self.fit`` when done."""

    affine = False

    def __init__(self, a: KernelArgs) -> None:
        self.a, self.report = a, Reporter(a.cells, a.label)
        self._on: Callable[[Stats], Pass | None] = self._stats

    def _stats(self, s: Stats) -> Pass | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def solve(self, sums: Stats) -> Pass | None:
        return self._on(sums)

    def result(self) -> CellFit:
        return self.fit

    def _iterate(self, passes: LogitPasses, done: Callable[[LogitFit], Pass | None],
                 fuse: Callable[[Pass], Pass] | None = None) -> Pass | None:
        """The next logit pass, or (every cell done) the stage after it: ``done(fit)``. ``fuse``
        turns a pass that is likely the last (:meth:`IrlsLogit.likely_last`) into one that also
        sums what the next stage needs at those coefficients; the sums of the last pass stay in
        ``self.last_sums``."""
        step = passes.next()
        if step is not None:
            if fuse is not None and passes.irls.likely_last():
                step = fuse(step)

            def on(s: Stats) -> Pass | None:
                self.last_sums = s
                passes.feed(s)
                return self._iterate(passes, done, fuse)
            self._on = on
            return step
        return done(passes.result())


class UncondKernel:
    """Balanced panel, no covariates: the unconditional 2x2 DiD of every cell (any est_method)."""

    affine = False
    influence = staticmethod(twobytwo.uncond_influence)

    def __init__(self, a: KernelArgs) -> None:
        self.a, self.report = a, Reporter(a.cells, a.label)

    def start(self) -> Pass:
        return first_pass(twobytwo.uncond_stats, self.a.groups)

    def solve(self, s: Stats) -> None:
        ok = uncond_ok(s, self.a.method, self.report)
        with np.errstate(invalid="ignore", divide="ignore"):
            mu1, mu0 = s["SwDdY"] / s["SwD"], s["SwCdY"] / s["SwC"]
        self.fit = CellFit(np.where(ok, mu1 - mu0, np.nan), ok, {**s, "mu1": mu1, "mu0": mu0, "ok": ok, "n": self.a.n}, s)
        return None

    def result(self) -> CellFit:
        return self.fit


class MomentsKernel(UncondKernel):
    """Balanced, unclustered panel without covariates, from cohort moments (:mod:`dte_dask.core.moments`):
    the same estimates as :class:`UncondKernel`; Psi'Psi and the bootstrap from the affine form."""

    affine = True

    def __init__(self, a: KernelArgs) -> None:
        super().__init__(a)
        self.cats = np.unique(a.cells.effective_g(np.asarray(a.cohorts, dtype=float)))

    def start(self) -> Pass:
        return Pass(moments.category_sums, (self.cats,), "stats")

    def solve(self, cs: Stats) -> None:
        s = moments.estimate(self.a.cells, self.cats, cs)
        if self.a.groups is not None:
            s["Swg"] = cs["W"][np.searchsorted(self.cats, self.a.groups)]
        return super().solve(s)

    # the affine influence form: psi_i = w_i (A_r'(Y_i - m_r) + b_r) + d
    moment_stats = staticmethod(moments.category_moments)
    boot_apply = staticmethod(moments.boot_apply)

    def coefficients(self, est: dict[str, Any], groups: np.ndarray) -> tuple[np.ndarray, ...]:
        """(cats, m, A, b, d): what ``moment_stats`` / ``boot_apply`` take after ``cells``."""
        A, b, d = moments.coefficients(self.a.cells, self.cats, est, groups, self.a.n)
        return self.cats, self.fit.stats["m"], A, b, d

    @staticmethod
    def gram(mom: Stats, coef: tuple[np.ndarray, ...]) -> np.ndarray:
        """Psi'Psi from the summed ``moment_stats``."""
        return moments.gram(mom, *coef[2:])


class RcsKernel:
    """Repeated cross sections (or an unbalanced panel) without covariates: the four-means DiD."""

    affine = False
    influence = staticmethod(rcs.rcs_influence)

    def __init__(self, a: KernelArgs) -> None:
        self.a, self.report = a, Reporter(a.cells, a.label)

    def start(self) -> Pass:
        return first_pass(rcs.rcs_stats, self.a.groups)

    def solve(self, s: Stats) -> None:
        e = rcs.rcs_estimate(s)
        self.report.nan(~e["ok"] & ~self.a.cells.reference, "no treated or no control observations in one of its two periods")
        self.fit = CellFit(e["att"], e["ok"], {**s, **e, "n": self.a.n}, s)
        return None

    def result(self) -> CellFit:
        return self.fit
