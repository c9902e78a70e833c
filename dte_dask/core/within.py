"""Least squares with absorbed unit effects on wide blocks: design, Gram pieces, scores (the driver's
solve and CRV1 are in :mod:`dte_dask.core.normal_equations`).

Pure numpy (no dask). One :class:`DesignSpec` says how a regression reads a block: which units take
part (by group index), which periods, which interest dummy each (unit, period) observation carries,
and the observation weights. Time (or time x stack) effects are explicit dummy columns; unit (or
unit x stack) effects are removed by weighted demeaning within each unit, which is exact on
unbalanced panels (Frisch–Waugh–Lovell).

Columns of a design are ordered ``[fixed-effect dummies | covariates | interest dummies]`` so that
the guarded solve keeps nuisance columns first and reports a collinear covariate or interest dummy
by name.

Every per-unit quantity is computed with explicit loops over periods or ``bincount`` in period
order, never with a reduction whose rounding depends on how many units a call sees: scores of a
unit are bit-identical whatever block it is computed in. Sums over units (:func:`gram_stats`,
:func:`unit_meat`) are taken by the callers over one RNG block at a time, whose rows are the same
for any partitioning, so their (periods x periods) products may use BLAS. A block whose units are
observed in every period of the design (:func:`_complete`) takes closed forms per design row.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from dte_dask.core.fused import demeaned, weighted_residuals

DROP = -2  # code of an observation that is left out of the regression
NONE = -1  # code of an observation that carries no interest dummy


@dataclass(frozen=True)
class DesignSpec:
    """How one regression (or one sub-experiment of a stacked regression) reads a block.

    Attributes
    ----------
    rows : tuple of (group index, row) pairs
        Units whose group index is ``g`` read row ``row`` of ``codes`` / ``mult``; every other unit
        reads ``default_row`` (-1: the unit does not take part).
    default_row : int
    t0, t1 : int
        The periods ``[t0, t1)`` of the design. The fixed-effect level of period ``t`` is ``t - t0``;
        level 0 is the reference and has no column.
    codes : (R, t1 - t0) int array
        Interest column of each (row, period): ``>= 0`` a dummy, ``NONE`` no dummy, ``DROP`` the
        observation is dropped.
    n_int : int
        Number of interest columns.
    mult : (R, t1 - t0) float array, optional
        Observation-weight multipliers (stacked DiD's corrective weights); ones if None.
    cov_idx : tuple of int
        Covariates (indices into the block's ``x``) entering as regressors.
    """

    rows: tuple[tuple[float, int], ...]
    default_row: int
    t0: int
    t1: int
    codes: np.ndarray
    n_int: int
    mult: np.ndarray | None = None
    cov_idx: tuple[int, ...] = ()

    @property
    def n_levels(self) -> int:
        return self.t1 - self.t0

    @property
    def n_fe(self) -> int:
        return self.n_levels - 1

    @property
    def p(self) -> int:
        return len(self.cov_idx)

    @property
    def m(self) -> int:
        return self.n_fe + self.p + self.n_int

    def __dask_tokenize__(self) -> Any:
        mult = None if self.mult is None else self.mult.tobytes()
        return ("design-spec", self.rows, self.default_row, self.t0, self.t1, self.codes.tobytes(),
                self.codes.shape, self.n_int, mult, self.cov_idx)

    def __getstate__(self) -> dict[str, Any]:
        """The fields only: the tables derived from them (:meth:`derived`) are rebuilt where used."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def derived(self, key: str, make: Callable[[], Any]) -> Any:
        """A table derived from the spec (dummy layouts, expansions, ...), made once per process: a
        kernel called per step of a block must not rebuild it every time."""
        cache = self.__dict__.setdefault("_derived", {})
        if key not in cache:
            cache[key] = make()
        return cache[key]


@dataclass(frozen=True)
class _Within:
    """A block read through a design and demeaned within units."""

    sel: np.ndarray  # (n_s,) positions of the design's units in the block
    row: np.ndarray  # (n_s,) their rows of the design's tables
    cls: np.ndarray  # (n_s,) the dummy layout of their rows (see :func:`_expansion`)
    used: np.ndarray  # (n_s,) units with >= 2 observations (singletons are dropped)
    valid: np.ndarray  # (n_s, L) observations in the regression
    W: np.ndarray  # (n_s, L) observation weights, 0 where not used
    inv: np.ndarray  # (n_s,) 1 / sum of a unit's weights (0 if unused)
    yt: np.ndarray  # (n_s, L) demeaned outcome, 0 where not used
    xt: np.ndarray | None  # (n_s, L, p) demeaned covariates
    xbar: np.ndarray | None  # (n_s, p) their unit means


def _rowsum(a: np.ndarray) -> np.ndarray:
    """Sum over axis 1 in period order (rounding independent of the number of rows)."""
    out = np.array(a[:, 0], dtype=np.float64, copy=True)
    for t in range(1, a.shape[1]):
        out += a[:, t]
    return out


def _rows(g: np.ndarray, spec: DesignSpec) -> np.ndarray:
    rows = np.full(g.shape[0], spec.default_row, dtype=np.int64)
    if spec.rows and g.size:
        values, targets = spec.derived("row-lookup", lambda: _row_lookup(spec))
        pos = np.minimum(np.searchsorted(values, g), values.size - 1)
        hit = values[pos] == g
        rows[hit] = targets[pos[hit]]
    return rows


def _row_lookup(spec: DesignSpec) -> tuple[np.ndarray, np.ndarray]:
    """The group indices of ``spec.rows`` sorted, and their rows."""
    values = np.array([v for v, _ in spec.rows], dtype=np.float64)
    order = np.argsort(values, kind="stable")
    return values[order], np.array([r for _, r in spec.rows], dtype=np.int64)[order]


def _prepare(block: Any, spec: DesignSpec) -> _Within:
    rows = _rows(block.g, spec)
    if rows.size and rows.min() >= 0:  # every unit takes part: no gathers
        sel, r = np.arange(rows.size), rows
        y, w = block.y[:, spec.t0:spec.t1], block.w
    else:
        sel = np.flatnonzero(rows >= 0)
        r = rows[sel]
        y, w = block.y[sel, spec.t0:spec.t1], block.w[sel]
    valid = ~np.isnan(y)
    w = w[:, None] if spec.mult is None else w[:, None] * spec.mult[r]
    valid &= w > 0
    keep = spec.codes != DROP
    if not keep.all():
        valid &= keep[r]
    used = np.count_nonzero(valid, axis=1) >= 2
    valid &= used[:, None]
    W = w * valid
    Wi = _rowsum(W)
    inv = np.divide(1.0, Wi, out=np.zeros_like(Wi), where=Wi > 0)
    yv = np.where(valid, y, 0.0)
    ybar = _rowsum(W * yv) * inv
    yt = (yv - ybar[:, None]) * valid
    xt = xbar = None
    if spec.p:
        x = block.x[sel]
        x = x[:, None, list(spec.cov_idx)] if x.ndim == 2 else x[:, spec.t0:spec.t1][:, :, list(spec.cov_idx)]
        xv = np.where(valid[:, :, None], x, 0.0)
        xbar = _rowsum(W[:, :, None] * xv) * inv[:, None]
        xt = (xv - xbar[:, None, :]) * valid[:, :, None]
    return _Within(sel, r, _layouts(spec)[0][r], used, valid, W, inv, yt, xt, xbar)


def _layouts(spec: DesignSpec) -> tuple[np.ndarray, np.ndarray]:
    """The distinct dummy layouts of the design's rows (rows differing only in dropped periods
    share one): the layout of each row (R,) and the interest codes of each layout (C, L)."""
    def make() -> tuple[np.ndarray, np.ndarray]:
        uniq, cls = np.unique(np.maximum(spec.codes, NONE), axis=0, return_inverse=True)
        return cls.reshape(-1), uniq
    return spec.derived("layouts", make)


def _expansion(spec: DesignSpec, with_covariates: bool = False) -> np.ndarray:
    return spec.derived(f"expansion-{with_covariates}", lambda: _make_expansion(spec, with_covariates))


def _make_expansion(spec: DesignSpec, with_covariates: bool) -> np.ndarray:
    """(C, L, m) 0/1: the dummy columns of the observation of each (dummy layout, period); with
    ``with_covariates`` (C, L + p, m), the covariate columns appended as identity rows.

    A unit of layout c has the dummy sums :math:`s_i = E_c' v_i` of any per-period vector
    :math:`v_i` (``E_c`` this table's slice): every per-unit dummy quantity is a product with it.
    """
    codes = _layouts(spec)[1]
    C, L, m, p = codes.shape[0], spec.n_levels, spec.m, spec.p
    E = np.zeros((C, L + (p if with_covariates else 0), m))
    t = np.arange(1, L)
    E[:, t, t - 1] = 1.0
    rr, tt = np.nonzero(codes >= 0)
    E[rr, tt, spec.n_fe + p + codes[rr, tt]] = 1.0
    if with_covariates:
        j = np.arange(p)
        E[:, L + j, spec.n_fe + j] = 1.0
    return E


def _cell_key(rows: np.ndarray, L: int) -> np.ndarray:
    """(n * L,) the (dummy layout, period) cell of each observation, row-major."""
    return (rows[:, None] * L + np.arange(L)).ravel()


def _cell_sums(v: np.ndarray, key: np.ndarray, n_cells: int) -> np.ndarray:
    """(R * L,): per (dummy layout, period) cell, the sum of ``v`` (n, L) over the units of that layout,
    in unit order."""
    return np.bincount(key, np.ravel(v), minlength=n_cells)


def _grouped_gram(Z: np.ndarray, V: np.ndarray, rows: np.ndarray, E: np.ndarray) -> np.ndarray:
    """:math:`\\sum_c E_c' (\\sum_{i: layout c} v_i z_i') E_c` (m, m), units grouped by dummy layout."""
    if E.shape[0] == 1:
        return E[0].T @ (V.T @ Z) @ E[0]
    order = np.argsort(rows, kind="stable")
    bounds = np.searchsorted(rows[order], np.arange(E.shape[0] + 1))
    Zs, Vs = Z[order], V[order]
    m = E.shape[2]
    out = np.zeros((m, m))
    for r in range(E.shape[0]):
        a, b = bounds[r], bounds[r + 1]
        if b > a:
            out += E[r].T @ (Vs[a:b].T @ Zs[a:b]) @ E[r]
    return out


@dataclass(frozen=True)
class _Complete:
    """A block whose design units are each observed, weighted and kept in every period of the design
    (a balanced panel): the observation weight is :math:`w_{it} = w_i q_{r t}` (q the design row's
    multipliers), every unit is used, and the within-transformation has closed forms per design row."""

    sel: np.ndarray  # (n_s,) positions of the design's units in the block
    row: np.ndarray  # (n_s,) their design rows
    w: np.ndarray  # (n_s,) their sampling weights
    yt: np.ndarray  # (n_s, L) demeaned outcome, unit-major
    q: np.ndarray  # (R, L) multipliers of each design row (ones if none)
    qsum: np.ndarray  # (R,) their sums over the periods


def _complete(block: Any, spec: DesignSpec) -> _Complete | None:
    """The block as a :class:`_Complete`, or None when some unit misses a period (NaN outcome,
    dropped period, zero weight), the design has covariates or a single period, or no unit."""
    if spec.p or spec.n_levels < 2 or not block.n:
        return None
    rows = _rows(block.g, spec)
    q, qsum, ok = spec.derived("complete-rows", lambda: _row_multipliers(spec))
    if rows.min() >= 0:
        sel, r, y, w = np.arange(rows.size), rows, block.y[:, spec.t0:spec.t1], block.w
    else:
        sel = np.flatnonzero(rows >= 0)
        r = rows[sel]
        y, w = block.y[sel, spec.t0:spec.t1], block.w[sel]
    if not sel.size or not ok[r].all() or not (w > 0).all():
        return None
    qr = None if spec.mult is None else q[r]
    s = _rowsum(y if qr is None else y * qr)  # a missing period leaves a NaN sum
    if not np.isfinite(s).all():
        return None
    yt = demeaned(y, s / qsum[r])  # row-major
    return _Complete(sel, r, w, yt, q, qsum)


def _row_multipliers(spec: DesignSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(R, L) multipliers of the design rows, their sums over periods, and whether a row keeps
    every period with a positive multiplier."""
    q = np.ones(spec.codes.shape) if spec.mult is None else np.asarray(spec.mult, dtype=np.float64)
    ok = (spec.codes != DROP).all(axis=1) & (q > 0).all(axis=1)
    return q, _rowsum(q), ok


def _complete_gram(c: _Complete, spec: DesignSpec) -> dict[str, np.ndarray]:
    """:func:`gram_stats` of a :class:`_Complete` block: with :math:`S_r = \\sum_{i \\in r} w_i`, design
    row r contributes :math:`E_r'(S_r \\operatorname{diag}(q_r) - S_r q_r q_r' / \\textstyle\\sum_t q_{rt})E_r`
    to the Gram matrix and :math:`E_r'(q_r \\circ \\sum_{i \\in r} w_i \\tilde y_i)` to X'Wy (one
    (rows x units) x (units x periods) product)."""
    n, L, R = c.row.size, spec.n_levels, c.q.shape[0]
    Er = _expansion(spec)[_layouts(spec)[0]]  # (R, L, m) dummy columns of each design row
    Pw = np.zeros((n, R))
    Pw[np.arange(n), c.row] = c.w
    Sy = Pw.T @ c.yt  # (R, L)
    S = np.bincount(c.row, c.w, minlength=R)
    cnt = np.repeat(np.bincount(c.row, minlength=R).astype(np.float64)[:, None], L, axis=1)
    d = S[:, None] * c.q
    v = np.einsum("rl,rlm->rm", c.q, Er)  # E_r' q_r
    A = np.einsum("rl,rlm,rlk->mk", d, Er, Er) - np.einsum("r,rm,rk->mk", S / c.qsum, v, v)
    k = spec.n_fe + spec.p
    return {"A": A, "b": np.einsum("rl,rlm->m", c.q * Sy, Er), "raw": np.einsum("rl,rlm->m", d, Er),
            "n_obs": np.array(float(n * L)), "col_n": np.einsum("rl,rlm->m", cnt, Er), "level_n": cnt.sum(axis=0),
            "int_w": np.einsum("r,rlm->m", S, Er[:, :, k:])}


def gram_stats(block: Any, spec: DesignSpec) -> dict[str, np.ndarray]:
    """Sufficient statistics of one block for the normal equations of ``spec``.

    Returns
    -------
    dict
        ``A`` (m, m) = X~'WX~, ``b`` (m,) = X~'Wy~, ``raw`` (m,) = diag(X'WX) before demeaning,
        ``n_obs`` observations used, ``level_n``
        (levels,) observations per fixed-effect level, ``col_n`` (m,) observations per dummy
        column, ``int_w`` (n_int,) weighted observations per interest dummy (singletons included).

    Notes
    -----
    With unit weights summing to :math:`W_i = \\sum_t w_{it}` and dummy sums
    :math:`s_i = \\sum_t w_{it} d_{it} = E_r' w_i` (:func:`_expansion`; r the unit's dummy layout),
    the demeaned dummies satisfy

    .. math:: \\sum_{it} w_{it} \\tilde d_{it} \\tilde d_{it}' = \\sum_r E_r'\\Big(
              \\operatorname{diag}\\big(\\textstyle\\sum_{i \\in r} w_i\\big)
              - \\sum_{i \\in r} w_i w_i' / W_i\\Big) E_r,

    so the unit-level work is one (periods x periods) product per dummy layout. Covariates are
    demeaned explicitly (:math:`\\sum_t w \\tilde x = 0` makes their cross products with raw and
    demeaned dummies equal), and :math:`X'W\\tilde y = \\tilde X'W \\tilde y`.
    """
    c = _complete(block, spec)
    if c is not None:
        return _complete_gram(c, spec)
    wd = _prepare(block, spec)
    m, L, nfe, p = spec.m, spec.n_levels, spec.n_fe, spec.p
    W = wd.W
    E = _expansion(spec)
    R = E.shape[0]
    Ef = E.reshape(R * L, m)
    key = _cell_key(wd.cls, L)
    d = _cell_sums(W, key, R * L)
    cnt = np.bincount(key[wd.valid.ravel()], minlength=R * L).astype(np.float64)
    A = (Ef * d[:, None]).T @ Ef - _grouped_gram(W, W * wd.inv[:, None], wd.cls, E)
    raw = Ef.T @ d  # sum of w d^2 before demeaning (0/1 dummies)
    b = Ef.T @ _cell_sums(W * wd.yt, key, R * L)
    if p:
        c = slice(nfe, nfe + p)
        xw = (wd.xt * W[:, :, None]).reshape(-1, p)
        for j in range(p):
            cross = Ef.T @ _cell_sums(xw[:, j], key, R * L)
            A[nfe + j, :] += cross
            A[:, nfe + j] += cross
        A[c, c] = xw.T @ wd.xt.reshape(-1, p)
        b[c] = xw.T @ wd.yt.reshape(-1)
        xv = (wd.xt + wd.xbar[:, None, :]) * wd.valid[:, :, None]
        raw[c] = np.einsum("itp,it,itp->p", xv, W, xv)
    return {"A": A, "b": b, "raw": raw, "n_obs": np.array(float(np.count_nonzero(wd.valid))), "col_n": Ef.T @ cnt,
            "level_n": cnt.reshape(R, L).sum(axis=0), "int_w": _interest_weights(block, spec, wd, Ef, key)}


def _interest_weights(block: Any, spec: DesignSpec, wd: _Within, Ef: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Sampling-weighted observations per interest dummy, singletons included (Sun–Abraham shares)."""
    if not spec.n_int:
        return np.zeros(0)
    obs = ~np.isnan(block.y[wd.sel, spec.t0:spec.t1])
    sums = _cell_sums(block.w[wd.sel][:, None] * obs, key, Ef.shape[0])
    return Ef[:, spec.n_fe + spec.p:].T @ sums


def unit_scores(block: Any, spec: DesignSpec, *betas: np.ndarray) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Per-unit scores :math:`s_i = \\sum_t w_{it} \\tilde x_{it} \\hat e_{it}`, one (n_s, m) array per
    coefficient vector in ``betas``.

    Returns ``(sel, scores, used)``: positions of the design's units in the block, the list of
    score arrays, and whether each unit has observations in the regression (not a singleton).

    Notes
    -----
    The residual is :math:`\\hat e_{it} = \\tilde y_{it} - \\tilde x_{it}'\\beta` with the demeaned
    dummy part :math:`\\beta_{f(it)} + \\beta_{k(it)} - s_i'\\beta / W_i`. Because
    :math:`\\sum_t w_{it} \\hat e_{it} = 0` within a unit, the dummy scores need no demeaning:
    :math:`s_i = \\sum_t w_{it} d_{it} \\hat e_{it}`.
    """
    sel, scores, used, _ = design_scores(block, spec, betas, ())
    return sel, scores, used


def unit_meat(block: Any, spec: DesignSpec, beta: np.ndarray) -> tuple[np.ndarray, int]:
    """:math:`\\sum_i s_i s_i'` over the units of a block (each unit its own cluster) and the number
    of units in the regression, without forming the (n, m) scores (see :func:`design_scores`)."""
    _, _, used, meats = design_scores(block, spec, (), (beta,))
    return meats[0], int(np.count_nonzero(used))


def design_scores(block: Any, spec: DesignSpec, score_betas: Sequence[np.ndarray], meat_betas: Sequence[np.ndarray],
                  out: np.ndarray | None = None) -> tuple[np.ndarray, list[np.ndarray], np.ndarray, list[np.ndarray]]:
    """One within-transformation of the block for every coefficient vector: the (n_s, m) scores at
    each of ``score_betas`` (:func:`unit_scores`) and the meat :math:`\\sum_i s_i s_i'` (each unit its
    own cluster) at each of ``meat_betas``.

    Returns ``(sel, scores, used, meats)``. The first scores are written into ``out`` (a zero
    (n, m) array) when given and every unit of the block takes part.

    Notes
    -----
    The meat never forms the scores: with :math:`z_i = (w_i \\hat e_i, \\sum_t w_{it} \\tilde x_{it}
    \\hat e_{it})` and :math:`s_i = E_r' z_i`, it is :math:`\\sum_r E_r' (\\sum_{i \\in r} z_i z_i') E_r`.
    """
    c = _complete(block, spec)
    if c is not None:
        cls = _layouts(spec)[0][c.row]
        wes = [_complete_residuals(c, spec, beta) for beta in (*score_betas, *meat_betas)]
        E = _expansion(spec, with_covariates=True)
        into = out if c.sel.size == block.n else None
        return (c.sel, [_unit_sums(we, cls, spec, into if i == 0 else None) for i, we in enumerate(wes[:len(score_betas)])],
                np.ones(c.sel.size, dtype=bool), [_grouped_gram(we, we, cls, E) for we in wes[len(score_betas):]])
    wd = _prepare(block, spec)
    scores, meats = [], []
    for beta in score_betas:
        we = _weighted_residuals(wd, spec, beta)
        s = _unit_sums(we, wd.cls, spec, out if not scores and wd.sel.size == block.n else None)
        for j in range(spec.p):
            s[:, spec.n_fe + j] = _rowsum(wd.xt[:, :, j] * we)
        scores.append(s)
    for beta in meat_betas:
        we = _weighted_residuals(wd, spec, beta)
        if spec.p:
            we = np.hstack([we, np.stack([_rowsum(wd.xt[:, :, j] * we) for j in range(spec.p)], axis=1)])
        meats.append(_grouped_gram(we, we, wd.cls, _expansion(spec, with_covariates=True)))
    return wd.sel, scores, wd.used, meats


def _weighted_residuals(wd: _Within, spec: DesignSpec, beta: np.ndarray) -> np.ndarray:
    """(n_s, L) :math:`w_{it} \\hat e_{it}`, 0 where an observation is not used.

    The dummy part of the fit is one row of a (layouts x periods) table per unit, gathered period
    by period in the layout of ``wd.W`` (period-major blocks stay period-major)."""
    beta = np.asarray(beta, dtype=np.float64)
    F = _expansion(spec) @ beta  # (C, L) dummy part of the fit of each (dummy layout, period)
    fit = np.empty_like(wd.W)
    for t in range(F.shape[1]):
        fit[:, t] = F[wd.cls, t]
    fit -= (_rowsum(wd.W * fit) * wd.inv)[:, None]
    for j in range(spec.p):
        fit += wd.xt[:, :, j] * beta[spec.n_fe + j]
    return wd.W * (wd.yt - fit)


def _complete_residuals(c: _Complete, spec: DesignSpec, beta: np.ndarray) -> np.ndarray:
    """:func:`_weighted_residuals` of a :class:`_Complete` block: the demeaned dummy part of the fit
    is one (periods,) vector per design row."""
    F = (_expansion(spec) @ np.asarray(beta, dtype=np.float64))[_layouts(spec)[0]]  # (R, L)
    F -= (_rowsum(c.q * F) / c.qsum)[:, None]
    return weighted_residuals(c.yt, F, c.row, c.w, None if spec.mult is None else c.q)


def _interest_rounds(codes: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """For one dummy layout's codes (L,): rounds ``(columns, periods)``, round k pairing each interest
    column with its k-th period (in period order), so that adding the rounds in turn sums every
    column's periods in period order."""
    t = np.flatnonzero(codes >= 0)
    order = np.argsort(codes[t], kind="stable")
    c, t = codes[t][order], t[order]
    start = np.flatnonzero(np.r_[True, c[1:] != c[:-1]]) if c.size else np.zeros(0, dtype=np.int64)
    k = np.arange(c.size) - np.repeat(start, np.diff(np.r_[start, c.size]))
    return [(c[k == r], t[k == r]) for r in range(int(k.max()) + 1 if c.size else 0)]


def _unit_sums(v: np.ndarray, cls: np.ndarray, spec: DesignSpec, out: np.ndarray | None = None) -> np.ndarray:
    """(n, m): per unit, the sum over periods of ``v`` (zero where not used) times its dummy row
    (written into ``out``, a zero array, when given).

    Fixed-effect level t has column t - 1, so that block is ``v`` itself. Interest column j of a
    unit collects the periods whose code (in the unit's dummy layout ``cls``) is j, added in period
    order: the units of one layout are gathered once and their columns summed in rounds
    (:func:`_interest_rounds`).
    """
    n, L = v.shape
    out = np.zeros((n, spec.m)) if out is None else out
    out[:, :spec.n_fe] = v[:, 1:]
    if spec.n_int:
        off = spec.n_fe + spec.p
        layouts = _layouts(spec)[1]
        plan = spec.derived("rounds", lambda: [_interest_rounds(codes) for codes in layouts])
        for c, rounds in enumerate(plan):
            if not rounds:
                continue
            idx = np.flatnonzero(cls == c)
            sub = v[idx]
            acc = np.zeros((idx.size, spec.n_int))
            for cols, periods in rounds:
                acc[:, cols] += sub[:, periods]
            out[idx, off:off + spec.n_int] = acc
    return out
