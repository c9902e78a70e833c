"""The reg / ipw / dr kernels with covariates (DRDID's panel estimators), per partition block.

Formulas are in :mod:`dte_dask.core.twobytwo`. Cells that share a *design* (the same treated
cohort, the same control set and covariates of the same period) share the propensity-score
logit, the controls' X'WX and the weights; only the outcome change differs. Kernels therefore
loop over designs and treat all cells of a design at once with matrix products: with
never-treated controls and time-invariant covariates there is one design per cohort.

The products are ``np.dot``, not ``@``: numpy runs a 2-D ``matmul`` as a generalised ufunc that
keeps the GIL, while ``np.dot`` releases it around the same BLAS call (the same bits), so the
two threads of a worker can run these kernels side by side.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from dte_dask.core.blocks import UnitBlock
from dte_dask.core.cells import Cells
from dte_dask.core.changes import outcome_changes
from dte_dask.core.fused import put_at_rows
from dte_dask.core.logit import eta_extreme, overlap_count
from dte_dask.core.regression import PS_CAP, TRIM_LEVEL, expit, logit_terms
from dte_dask.core.twobytwo import Stats


def designs(cells: Cells, x_varying: bool) -> list[np.ndarray]:
    """Cell indices grouped by design (treated cohort, control threshold, covariate period);
    ``cells`` may be any cell set with ``designs`` / ``design_rows`` (:meth:`Cells.designs`)."""
    return cells.designs(x_varying)


def _x_varying(block: UnitBlock) -> bool:
    return block.x is not None and block.x.ndim == 3


def design_dy(block: UnitBlock, cells: Cells, m: np.ndarray, ks: np.ndarray, out: np.ndarray | None = None,
              scale: np.ndarray | None = None) -> np.ndarray:
    """(n_m, |ks|) outcome changes Y_t - Y_base of a design's rows ``m`` (only its own columns),
    each row times ``scale`` when given, written into ``out`` when given (column-major otherwise,
    as numpy lays out y[:, t] - y[:, base]: the sums taken over it round alike).

    A cell set with a ``design_dy`` method (the triple-differences comparisons) may hand back the
    changes it keeps with the block (the same numbers, computed once for all passes)."""
    kept = cells.design_dy(block, ks) if hasattr(cells, "design_dy") else None
    if kept is not None:
        if out is None:
            out = kept.copy(order="F") if scale is not None else kept
        else:
            out[...] = kept
        if scale is not None:
            out *= scale[:, None]
        return out
    return outcome_changes(block.y, np.flatnonzero(m), cells.t[ks], cells.base[ks], out=out, scale=scale)


class _Scratch:
    """Buffers for the large temporaries of every design of a block (they are costly where the
    allocator returns freed memory to the system at once, as Dask's workers are set up to)."""

    def __init__(self, block: UnitBlock, groups: list[np.ndarray]) -> None:
        self.n, self.k = block.n, max((ks.size for ks in groups), default=0)
        self.p = block.x.shape[-1] + 1 if block.x is not None else 1
        self.dys: np.ndarray | None = None
        self.rows: np.ndarray | None = None
        self.xs: np.ndarray | None = None
        self.G: np.ndarray | None = None

    def design_rows(self, cells: Cells, block: UnitBlock, ks: np.ndarray):
        """``cells.design_rows(block, ks)``, X in the buffer (valid until the next call); the
        block's effective groups are found once for all its designs."""
        if self.xs is None:
            self.xs = np.empty(self.n * self.p)
            self.G = cells.effective_g(block.g)
        return cells.design_rows(block, ks, buf=self.xs, G=self.G)

    def dy(self, block: UnitBlock, cells: Cells, m: np.ndarray, ks: np.ndarray, n_m: int) -> np.ndarray:
        """:func:`design_dy` (column-major) in the buffer, never a cell set's kept changes: free to
        scale in place."""
        if self.dys is None:
            self.dys = np.empty(self.n * self.k)
        out = self.dys[:n_m * ks.size].reshape(ks.size, n_m).T
        return design_dy(block, cells, m, ks, out=out)

    def gram(self, X: np.ndarray, v: np.ndarray) -> np.ndarray:
        """``(X * v[:, None]).T @ X``, the product formed in the buffer."""
        if X.size > self.n * self.p:  # a cell set whose designs have more columns (not Cells')
            return np.dot((X * v[:, None]).T, X)
        if self.rows is None:
            self.rows = np.empty(self.n * self.p)
        Xv = np.multiply(X, v[:, None], out=self.rows[:X.size].reshape(X.shape))
        return np.dot(Xv.T, X)


# The passes of the panel kernel with covariates. Each is a loop over the designs of a block that
# gathers a design's rows once and hands them to one or more per-design pieces (``_ols``,
# ``_logit``, ``_moments``), so that the fused passes (a warm-started logit's first evaluation in
# the stats pass, its likely last one with the moments) read the rows once.
def _zeros_ols(K: int, p: int) -> Stats:
    return {"XtWX": np.zeros((K, p, p)), "XtWdY": np.zeros((K, p)), "SwDX": np.zeros((K, p)),
            "SwD": np.zeros(K), "SwDdY": np.zeros(K), "nD": np.zeros(K), "nC": np.zeros(K)}


def _zeros_logit(K: int, p: int) -> Stats:
    return {"grad": np.zeros((K, p)), "hess": np.zeros((K, p, p)), "ll": np.zeros(K), "n01": np.zeros(K),
            "n999": np.zeros(K)}


def _zeros_moments(K: int, p: int) -> Stats:
    z = np.zeros
    return {"St": z(K), "Sc": z(K), "At": z(K), "Ac": z(K), "StX": z((K, p)), "ScX": z((K, p)),
            "ScdYX": z((K, p)), "ScXX": z((K, p, p)), "H": z((K, p, p))}


def _ols(out: Stats, buf: _Scratch, block: UnitBlock, cells: Cells, ks: np.ndarray, m, X, d, w) -> None:
    """Controls' X'WX and X'W dY (outcome regression), treated sums and X totals of one design."""
    dYm = buf.dy(block, cells, m, ks, X.shape[0])
    wc, wd = w * (1.0 - d), w * d
    out["XtWX"][ks] = buf.gram(X, wc)
    out["SwDdY"][ks] = np.dot(wd, dYm)
    dYm *= wc[:, None]  # wc * dY in place (fewer large temporaries)
    out["XtWdY"][ks] = np.dot(X.T, dYm).T
    out["SwDX"][ks] = np.dot(X.T, wd)
    out["SwD"][ks] = wd.sum()
    out["nD"][ks] = d.sum()
    out["nC"][ks] = (1.0 - d).sum()


def _logit(out: Stats, buf: _Scratch, ks: np.ndarray, X, d, w, gamma: np.ndarray, active: np.ndarray,
           unweighted: bool = False) -> None:
    """Gradient, information matrix, log-likelihood and extreme / overlap counts of the design's
    active cells at their ``gamma`` (cells of a design move together: usually one evaluation)."""
    ks = ks[active[ks]]
    if ks.size == 0:
        return
    if unweighted:
        w = np.ones_like(w)
    gk = gamma[ks]
    same = bool(np.all(gk == gk[0]))
    for gam in gk[:1] if same else np.unique(gk, axis=0):
        sel = ks if same else ks[np.all(gk == gam, axis=1)]
        gr, he, ll, eta, ps = logit_terms(X, d, w, gam, buf.gram)
        out["grad"][sel], out["hess"][sel], out["ll"][sel] = gr, he, ll
        out["n01"][sel], out["n999"][sel] = eta_extreme(eta), overlap_count(eta, ps)


def _moments(out: Stats, buf: _Scratch, block: UnitBlock, cells: Cells, ks: np.ndarray, m, X, d, w,
             gamma: np.ndarray) -> None:
    """The propensity-weighted sums of one design at its logit ``gamma[ks[0]]``."""
    ps, wt, wc = _ps_weights(X, d, w, gamma[ks[0]])
    dYm = buf.dy(block, cells, m, ks, X.shape[0])
    out["St"][ks], out["Sc"][ks] = wt.sum(), wc.sum()
    out["At"][ks], out["Ac"][ks] = np.dot(wt, dYm), np.dot(wc, dYm)
    out["StX"][ks], out["ScX"][ks] = np.dot(X.T, wt), np.dot(X.T, wc)
    dYm *= wc[:, None]  # wc * dY in place
    out["ScdYX"][ks] = np.dot(X.T, dYm).T
    out["ScXX"][ks] = buf.gram(X, wc)
    out["H"][ks] = buf.gram(X, w * ps * (1.0 - ps))


def _designs_pass(block: UnitBlock, cells: Cells, p: int, *, ols: bool = False, logit: tuple | None = None,
                  moments: np.ndarray | None = None) -> Stats:
    """One loop over the block's designs computing the requested pieces: ``ols``; ``logit`` =
    ``(gamma, active, unweighted)``; ``moments`` = the logit's ``gamma``."""
    K = cells.K
    out: Stats = {}
    if ols:
        out.update(_zeros_ols(K, p))
    if logit is not None:
        out.update(_zeros_logit(K, p))
    if moments is not None:
        out.update(_zeros_moments(K, p))
    groups = designs(cells, _x_varying(block))
    buf = _Scratch(block, groups)
    for ks in groups:
        if not ols and moments is None and not logit[1][ks].any():
            continue  # a logit pass skips designs without active cells (no rows gathered)
        m, X, d, w = buf.design_rows(cells, block, ks)
        if ols:
            _ols(out, buf, block, cells, ks, m, X, d, w)
        if logit is not None:
            _logit(out, buf, ks, X, d, w, *logit)
        if moments is not None:
            _moments(out, buf, block, cells, ks, m, X, d, w, moments)
    return out


def ols_stats(block: UnitBlock, cells: Cells, p: int) -> Stats:
    """Per cell: controls' X'WX and X'W dY (outcome regression), treated sums and X totals."""
    return _designs_pass(block, cells, p, ols=True)


def logit_stats(block: UnitBlock, cells: Cells, gamma: np.ndarray, active: np.ndarray, unweighted: bool = False) -> Stats:
    """Per active cell: gradient, information matrix and log-likelihood of the propensity logit;
    the number of rows whose fitted probability is numerically 0 or 1 (``n01``) and of rows with a
    fitted probability of at least 0.999 (``n999``, R did's overlap check). ``unweighted`` ignores
    the sampling weights (R did's preliminary overlap logit is unweighted)."""
    return _designs_pass(block, cells, gamma.shape[1], logit=(gamma, active, unweighted))


def ps_moments(block: UnitBlock, cells: Cells, gamma: np.ndarray, beta: np.ndarray | None) -> Stats:
    """Per cell, given the logit ``gamma``: the weighted sums the ipw / dr estimates need."""
    return _designs_pass(block, cells, gamma.shape[1], moments=gamma)


def ols_and_logit_stats(block: UnitBlock, cells: Cells, p: int, gamma: np.ndarray, active: np.ndarray) -> Stats:
    """:func:`ols_stats` and :func:`logit_stats` at ``gamma`` for the ``active`` cells, in one pass
    over the designs' rows (a warm-started logit's first evaluation rides along with the outcome
    regression's sums)."""
    return _designs_pass(block, cells, p, ols=True, logit=(gamma, active, False))


def logit_and_moments(block: UnitBlock, cells: Cells, gamma: np.ndarray, active: np.ndarray,
                      beta: np.ndarray | None) -> Stats:
    """:func:`logit_stats` and :func:`ps_moments` at the same ``gamma``, in one pass over the
    designs' rows (the logit's likely last evaluation also sums what the estimates need, should it
    be the last)."""
    return _designs_pass(block, cells, gamma.shape[1], logit=(gamma, active, False), moments=gamma)


def _ps_weights(X, d, w, gamma):
    ps = np.minimum(expit(np.dot(X, gamma)), PS_CAP)
    trim = (d == 1) | (ps < TRIM_LEVEL)
    wt = trim * w * d
    wc = trim * w * ps * (1.0 - d) / (1.0 - ps)
    return ps, wt, wc


def shared(v: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """``v[ks[0]]``: a design-level piece (computed from the design's sums, so the same for every
    cell of the design)."""
    x = v[ks]
    if not np.all(x == x[0]):
        raise RuntimeError("a design-level nuisance piece (St, Sc, v_t, v_c) differs between the cells of a design")
    return x[0]


def design_terms(block: UnitBlock, cells: Cells, est: dict[str, Any], ks: np.ndarray, rows,
                 scratch: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(L, R) with ``L @ R`` the (n_m, |ks|) reg / ipw / dr influence functions of the cells ``ks``
    of one design (panel scale): DRDID's formulas regrouped.

    The pieces that are the same for the whole design (treated and control totals St, Sc, the
    outcome-regression corrections v_t, v_c) enter per-row factors ``c`` and ``s``; what differs
    by cell (the outcome change dY, beta, v_ps, eta_t, eta_c) is in dY and R:
    L = [c * dY, X * c, X * s, row weights], R = n [I; -beta'; -v_ps'; -eta_t; eta_c]. ``cells``
    may be any cell set with ``design_rows`` (:func:`design_dy`); ``rows`` = its design rows.
    ``scratch``: a flat float array of at least n_m (|ks| + 2 p + 2) elements to hold L (the
    caller's, reused across designs: fewer large temporaries)."""
    method, n = est["method"], float(est["n"])
    m, X, d, w = rows
    St = shared(est["St"], ks)
    # parts of L after c * dY: (array, row factor or None), written straight into L
    if method == "reg":
        wd = w * d
        c = (wd - w * (1.0 - d) * np.dot(X, shared(est["v_t"], ks))) / St
        parts, coef = [(X, c), (wd / St, None)], [-est["beta"][ks].T, est["eta_c"][ks] - est["eta_t"][ks]]
    else:
        Sc = shared(est["Sc"], ks)
        ps = np.minimum(expit(np.dot(X, est["gamma"][ks[0]])), PS_CAP)
        trim = (d == 1) | (ps < TRIM_LEVEL)
        wt = trim * w * d / St
        wc = trim * w * ps * (1.0 - d) / (1.0 - ps) / Sc
        c = wt - wc
        if method == "dr":
            c -= w * (1.0 - d) * np.dot(X, shared(est["v_t"], ks) / St - shared(est["v_c"], ks) / Sc)
        parts = [(X, w * (d - ps) / Sc), (wt, None), (wc, None)]
        coef = [-est["v_ps"][ks].T, -est["eta_t"][ks], est["eta_c"][ks]]
        if method == "dr":
            parts.insert(0, (X, c))
            coef.insert(0, -est["beta"][ks].T)
    widths = [1 if a.ndim == 1 else a.shape[1] for a, _ in parts]
    shape = (X.shape[0], ks.size + sum(widths))
    L = np.empty(shape) if scratch is None else scratch[:shape[0] * shape[1]].reshape(shape)
    design_dy(block, cells, m, ks, out=L[:, :ks.size], scale=c)  # c * dY straight into the first |ks| columns
    at = ks.size
    for (a, f), wd in zip(parts, widths):
        if f is None:
            L[:, at:at + wd] = a.reshape(-1, wd)
        else:
            np.multiply(a, f[:, None], out=L[:, at:at + wd])
        at += wd
    return L, n * np.vstack([np.eye(ks.size), *coef])


def cov_influence(block: UnitBlock, cells: Cells, est: dict[str, Any], out: np.ndarray | None = None) -> np.ndarray:
    """(n_block, K) influence functions for reg / ipw / dr with covariates (zero for NaN cells):
    per design one product ``L @ R`` (:func:`design_terms`) written into the design's rows and
    cells. Called one RNG block at a time (:func:`dte_dask.core.kernels.influence_with_groups`),
    every matrix product sees the same rows for any partitioning."""
    ok = est["ok"]
    psi = np.zeros((block.n, cells.K)) if out is None else out
    groups = [ks[ok[ks]] for ks in designs(cells, _x_varying(block))]
    groups = [ks for ks in groups if ks.size]
    if not groups or block.n == 0:
        return psi
    # L and L @ R of every design in two buffers (large temporaries are costly where the allocator
    # returns freed memory to the system at once, as Dask's workers are set up to)
    k_max, p = max(ks.size for ks in groups), est["beta"].shape[1]
    scratch, vals, buf = np.empty(block.n * (k_max + 2 * p + 2)), np.empty(block.n * k_max), _Scratch(block, groups)
    for ks in groups:
        rows = buf.design_rows(cells, block, ks)
        idx = np.flatnonzero(rows[0])
        if idx.size:
            L, R = design_terms(block, cells, est, ks, rows, scratch)
            v = vals[:idx.size * ks.size].reshape(idx.size, ks.size)
            np.dot(L, R, out=v)
            put_at_rows(psi, idx, ks, v)
    return psi
