"""Borusyak, Jaravel & Spiess (2024) imputation estimator: per-block algebra.

Pure numpy (no dask). Step 1 (time effects and covariate slopes on the untreated observations) is
the within-unit least squares of :mod:`dte_dask.core.within`; the kernels here take its solution
and, per unit,

* impute the unit effect :math:`\\hat\\alpha_i` (mean over the unit's untreated observations of
  :math:`y - \\hat\\lambda_t - x'\\hat\\delta`) and the effects :math:`\\hat\\tau_{it}` of its treated
  observations (:func:`imputation_stats` sums them by horizon, with the right-hand sides of the
  imputation-weight projection and the auxiliary-partition sums);
* form the per-unit terms of the BJS Theorem 3 conservative variance (:func:`imputation_scores`).

Sampling weights are constant within units. Every per-unit quantity is computed in period order;
cross-unit sums are ``bincount`` / small products over one RNG block at a time (the caller).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

PARTITIONS = ("cohort_horizon", "cohort", "horizon")


@dataclass(frozen=True)
class ImputationSpec:
    """What the kernels need from the driver (all small)."""

    n_fe: int  # time-effect columns (periods 1..T-1)
    cov_idx: tuple[int, ...]
    bad: np.ndarray  # (T,) bool, periods whose time effect is not identified on untreated data
    cohorts: tuple[float, ...]  # treated cohorts (group indices) for the auxiliary partition
    partition: str
    targets: np.ndarray  # (K, H) 0/1: horizons each target averages
    user: int = -1  # block covariate holding user weights on treated observations (-1: none)
    user_rows: tuple[int, ...] = ()  # targets weighted by them
    leads: tuple[int, ...] = ()  # event times < -1 of treated units' untreated observations with their own
    # target columns T, T+1, ... (Gardner's second-stage leads: their residual in place of tau)

    @property
    def H(self) -> int:
        return self.targets.shape[1]

    @property
    def n_cells(self) -> int:
        nc = len(self.cohorts)
        return {"cohort_horizon": nc * self.H, "cohort": nc, "horizon": self.H}[self.partition]

    def __dask_tokenize__(self) -> Any:
        return ("imputation-spec", self.n_fe, self.cov_idx, self.bad.tobytes(), self.cohorts, self.partition,
                self.targets.tobytes(), self.targets.shape, self.user, self.user_rows, self.leads)


@dataclass(frozen=True)
class _Imputed:
    u0: np.ndarray  # (n, T) untreated observations used
    u1: np.ndarray  # (n, T) treated observations imputed
    n0: np.ndarray  # (n,) untreated observations per unit
    eps: np.ndarray  # (n, T) step-1 residual on u0, 0 elsewhere
    xc: np.ndarray | None  # (n, T, p) covariates minus the unit's untreated mean
    no_untreated: np.ndarray  # (n,) units with treated but no untreated observations
    # the observations targets average (u1 and the lead observations), unit-major, period-minor:
    at: np.ndarray  # their flat positions in (n, T)
    unit: np.ndarray  # their unit (row)
    t: np.ndarray  # their period
    tau: np.ndarray  # imputed effect on u1, step-1 residual on lead observations
    h: np.ndarray  # target column (the horizon t - g on u1)
    cell: np.ndarray  # auxiliary cell

    def dense(self, v: np.ndarray) -> np.ndarray:
        """(n, T): ``v`` (one value per target observation) in place, 0 elsewhere."""
        out = np.zeros(self.u0.size)
        out[self.at] = v
        return out.reshape(self.u0.shape)


def _rowsum(a: np.ndarray) -> np.ndarray:
    out = np.array(a[:, 0], dtype=np.float64, copy=True)
    for t in range(1, a.shape[1]):
        out += a[:, t]
    return out


def _covariates(block: Any, cov_idx: tuple[int, ...], T: int) -> np.ndarray | None:
    if not cov_idx:
        return None
    x = block.x
    x = x[:, None, list(cov_idx)] if x.ndim == 2 else x[:, :, list(cov_idx)]
    return np.broadcast_to(x, (block.n, T, len(cov_idx)))


def impute(block: Any, spec: ImputationSpec, beta: np.ndarray) -> _Imputed:
    """Unit effects, residuals and imputed effects of one block at step-1 coefficients ``beta``."""
    y = block.y
    n, T = y.shape
    tt = np.arange(T)
    obs = ~np.isnan(y)
    D = tt[None, :] >= block.g[:, None]
    u0 = obs & ~D
    u1 = obs & D
    n0 = np.count_nonzero(u0, axis=1)
    no_untreated = (n0 == 0) & u1.any(axis=1)
    if spec.bad.any():
        u1 &= ~spec.bad[None, :]
    u1 &= (n0 > 0)[:, None]
    lam = np.r_[0.0, beta[:spec.n_fe]]
    x = _covariates(block, spec.cov_idx, T)
    xc = None
    if x is None:
        yf = np.where(obs, y - lam[None, :], 0.0)
    else:
        f = np.broadcast_to(lam[None, :], (n, T)).copy()
        delta = beta[spec.n_fe:spec.n_fe + len(spec.cov_idx)]
        for j in range(len(spec.cov_idx)):
            f += x[:, :, j] * delta[j]
        inv0 = np.divide(1.0, n0, out=np.zeros(n), where=n0 > 0)
        xbar = np.stack([_rowsum(np.where(u0, x[:, :, j], 0.0)) * inv0 for j in range(x.shape[2])], axis=1)
        xc = x - xbar[:, None, :]
        yf = np.where(obs, y - f, 0.0)
    r = yf * u0
    alpha = np.divide(_rowsum(r), n0, out=np.zeros(n), where=n0 > 0)
    eps = (r - alpha[:, None]) * u0
    gi = np.where(np.isfinite(block.g), block.g, 0).astype(np.int64)
    ut, lead = u1, None
    if spec.leads:
        e = tt[None, :] - gi[:, None]
        col = np.full(T + 1, -1)
        col[[-int(v) for v in spec.leads]] = T + np.arange(len(spec.leads))
        lead = u0 & np.isin(block.g, spec.cohorts)[:, None] & (e < 0)
        c = np.where(lead, col[np.clip(-e, 0, T)], -1)
        lead &= c >= 0
        ut = u1 | lead
    at = np.flatnonzero(ut)
    unit, t = np.divmod(at, T)
    h = t - gi[unit]
    tau = yf.reshape(-1)[at] - alpha[unit]
    if lead is not None:
        is_lead = lead.reshape(-1)[at]
        h = np.where(is_lead, c.reshape(-1)[at], h)
        tau = np.where(is_lead, eps.reshape(-1)[at], tau)
    cidx = _cohort_index(block, spec)
    if spec.partition == "cohort_horizon":
        cell = cidx[unit] * spec.H + h
    elif spec.partition == "cohort":
        cell = cidx[unit]
    else:
        cell = h
    return _Imputed(u0, u1, n0, eps, xc, no_untreated, at, unit, t, tau, h, cell)


def _user_weights(block: Any, spec: ImputationSpec) -> np.ndarray | None:
    if spec.user < 0:
        return None
    T = block.y.shape[1]
    x = block.x[..., spec.user]
    return np.nan_to_num(np.broadcast_to(x[:, None], (block.n, T)) if x.ndim == 1 else x)


@dataclass(frozen=True)
class _Treated:
    """The imputed treated observations of a block as flat arrays, in unit-major, period-minor order."""

    unit: np.ndarray  # row of the unit
    h: np.ndarray  # horizon
    cell: np.ndarray  # auxiliary cell
    s: np.ndarray  # sampling weight
    tau: np.ndarray  # imputed effect
    u: np.ndarray | None  # user weight (None: no user weights)
    order: np.ndarray  # observations sorted by target column (stable: unit-major within a column)
    starts: np.ndarray  # (H + 1,) where each target column starts in ``order``


def _treated(imp: _Imputed, w: np.ndarray, u: np.ndarray | None, H: int) -> _Treated:
    order = np.argsort(imp.h, kind="stable")
    starts = np.searchsorted(imp.h[order], np.arange(H + 1))
    return _Treated(imp.unit, imp.h, imp.cell, w[imp.unit], imp.tau, None if u is None else np.ravel(u)[imp.at],
                    order, starts)


def _target_obs(tr: _Treated, spec: ImputationSpec, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The treated observations target k weights (indices into ``tr``) and their unnormalized weights."""
    nz = np.flatnonzero(spec.targets[k])
    if nz.size == 1:  # one target column (a horizon or a lead): its observations, in unit order
        idx = tr.order[tr.starts[nz[0]]:tr.starts[nz[0] + 1]]
        aw = tr.s[idx] * spec.targets[k][nz[0]]
    else:
        wk = spec.targets[k][tr.h]
        idx = np.flatnonzero(wk != 0)
        aw = tr.s[idx] * wk[idx]
    if k in spec.user_rows:
        aw = aw * tr.u[idx]
    return idx, aw


def _cell_sums(tr: _Treated, idx: np.ndarray, aw: np.ndarray, spec: ImputationSpec, cidx: np.ndarray,
               n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Per (unit, cell) group of target k's observations: a = sum of weights, b = sum of weight x tau,
    the group's cell, and each observation's group (None: every observation is its own group, as
    under the cohort x horizon and horizon partitions, where a unit has one observation per cell)."""
    if spec.partition == "cohort":
        a = np.bincount(tr.unit[idx], aw, minlength=n)
        b = np.bincount(tr.unit[idx], aw * tr.tau[idx], minlength=n)
        return a, b, cidx, tr.unit[idx]
    return aw, aw * tr.tau[idx], tr.cell[idx], None


def _one_obs_cells(spec: ImputationSpec) -> bool:
    """Whether every auxiliary cell holds one observation per unit and fixes its horizon (cohort x
    horizon or horizon cells) and every target weighs horizons by 0 or 1 with no user weights: then
    a target's cell sums are the cell sums of all treated observations, or zero."""
    return spec.partition != "cohort" and spec.user < 0 and bool(np.all((spec.targets == 0) | (spec.targets == 1)))


def _cohort_index(block: Any, spec: ImputationSpec) -> np.ndarray:
    cidx = np.zeros(block.n, dtype=np.int64)
    for c, value in enumerate(spec.cohorts):
        cidx[block.g == value] = c
    return cidx


def imputation_stats(block: Any, spec: ImputationSpec, beta: np.ndarray) -> dict[str, np.ndarray]:
    """Sums of one block: ``N`` (H,) weighted treated observations per horizon, ``T`` (H,) weighted
    imputed effects, ``R`` (H, m) right-hand sides :math:`\\sum s_i (x_{it} - \\bar x^0_i)` of the
    imputation-weight projection (time dummies, covariates), ``num`` / ``den`` (K, cells) the
    auxiliary-partition sums :math:`\\sum_i a_{ic} b_{ic}`, :math:`\\sum_i a_{ic}^2`, and counts."""
    imp = impute(block, spec, beta)
    n, T = block.y.shape
    H, m = spec.H, spec.n_fe + len(spec.cov_idx)
    s = np.broadcast_to(block.w[:, None], (n, T))
    h1, s1, t1 = imp.h, block.w[imp.unit], imp.t
    N = np.bincount(h1, s1, minlength=H)
    Tsum = np.bincount(h1, s1 * imp.tau, minlength=H)
    fe = t1 >= 1
    # + s at the treated period's dummy (summed in observation order)
    R = np.bincount(h1[fe] * m + t1[fe] - 1, s1[fe], minlength=H * m).reshape(H, m)
    inv0 = np.divide(1.0, imp.n0, out=np.zeros(n), where=imp.n0 > 0)
    C = np.zeros((n, H))  # s_i per horizon the unit is treated at (one observation per unit and horizon)
    C[imp.unit, h1] = s1
    M = (imp.u0[:, 1:] * inv0[:, None])  # untreated mean of the dummy rows
    R[:, :spec.n_fe] -= C.T @ M
    for j in range(len(spec.cov_idx)):
        R[:, spec.n_fe + j] = np.bincount(h1, s1 * imp.xc[:, :, j].reshape(-1)[imp.at], minlength=H)
    K, nc = spec.targets.shape[0], spec.n_cells
    num, den = np.zeros((K, nc)), np.zeros((K, nc))
    u = _user_weights(block, spec)
    user = {}
    if u is not None:  # the user-weighted target: its own sums (horizon sums do not give them)
        su = s * u
        user["Nu"] = np.array(float(np.sum(_rowsum(np.where(imp.u1, su, 0.0)))))
        user["Tu"] = np.array(float(np.sum(_rowsum(np.where(imp.u1, su * imp.dense(imp.tau), 0.0)))))
        Ru = np.zeros(m)
        swu = np.where(imp.u1, su, 0.0)
        Ru[:spec.n_fe] = swu[:, 1:].sum(axis=0) - (_rowsum(swu)[:, None] * M).sum(axis=0)
        for j in range(len(spec.cov_idx)):
            Ru[spec.n_fe + j] = np.sum(_rowsum(swu * np.where(imp.u1, imp.xc[:, :, j], 0.0)))
        user["Ru"] = Ru
    if _one_obs_cells(spec):  # a cell fixes the horizon: one pass, then each target's cells
        hc = np.arange(nc) % H
        num = spec.targets[:, hc] * np.bincount(imp.cell, s1 * (s1 * imp.tau), minlength=nc)
        den = spec.targets[:, hc] * np.bincount(imp.cell, s1 * s1, minlength=nc)
    else:
        tr, cidx = _treated(imp, block.w, u, spec.H), _cohort_index(block, spec)
        for k in range(K):
            idx, aw = _target_obs(tr, spec, k)
            a, b, cells, _ = _cell_sums(tr, idx, aw, spec, cidx, n)
            num[k] = np.bincount(cells, a * b, minlength=nc)
            den[k] = np.bincount(cells, a * a, minlength=nc)
    return {"N": N, "T": Tsum, "R": R, "num": num, "den": den,
            "n_no_untreated": np.array(float(imp.no_untreated.sum())),
            "n_treated_units": np.array(float(imp.u1.any(axis=1).sum())),
            "n_obs0": np.array(float(imp.u0.sum())), "n_obs1": np.array(float(imp.u1.sum())),
            "n_units": np.array(float((imp.u0.any(axis=1) | imp.u1.any(axis=1)).sum())), **user}


def imputation_scores(block: Any, spec: ImputationSpec, beta: np.ndarray, Z: np.ndarray, Nk: np.ndarray,
                      num: np.ndarray, den: np.ndarray, leave_out: bool,
                      center: np.ndarray | None = None) -> np.ndarray:
    """(n, K + 1): per unit, :math:`\\psi_i^k = \\sum_{t \\in \\Omega_0} v^k_{it}\\hat\\varepsilon_{it}
    + \\sum_{t\\in\\Omega_1} v^k_{it} (\\hat\\tau_{it} - \\tilde\\tau^k_{c(it)})` for every target k,
    then a 0/1 flag of units in the estimation.

    ``Z`` (K, m) solves the step-1 normal equations for the target's normalized right-hand side,
    so the untreated imputation weights are :math:`v^k_{it} = -s_i(\\omega^k_i / S^0_i +
    \\tilde x_{it}' z_k)` with :math:`\\omega^k_i` the unit's total target weight and
    :math:`S^0_i = s_i n^0_i`; on treated observations :math:`v^k_{it} = s_i 1\\{h \\in k\\}/N_k`.
    With ``leave_out`` the unit's own observations are left out of its auxiliary averages
    :math:`\\tilde\\tau` (where another unit remains in the cell). With ``center`` (K,) the treated
    residual is :math:`\\hat\\tau_{it} - c_k` instead (Gardner's second-stage residual: ``c_k`` the
    target's estimate).

    Call it on one RNG block (:func:`imputation_meat`): the untreated terms are a BLAS product,
    the same bits for the same rows.
    """
    imp = impute(block, spec, beta)
    n, T = block.y.shape
    K = spec.targets.shape[0]
    inv0 = np.divide(1.0, imp.n0, out=np.zeros(n), where=imp.n0 > 0)
    out = np.zeros((n, K + 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        tilde = np.where(den > 0, num / den, 0.0)
    omega = np.zeros((n, K))  # per unit, the target's total (normalized) weight on its treated observations
    if _one_obs_cells(spec):
        _treated_terms_fast(imp, block.w, spec, Nk, num, den, tilde, leave_out, center, out, omega)
    else:
        tr, cidx = _treated(imp, block.w, _user_weights(block, spec), spec.H), _cohort_index(block, spec)
        for k in range(K):
            idx, aw = _target_obs(tr, spec, k)
            v1 = aw / Nk[k]
            omega[:, k] = np.bincount(tr.unit[idx], v1, minlength=n)
            if center is None:
                a, b, cells, group = _cell_sums(tr, idx, aw, spec, cidx, n)
                cell_t = _aux_average(tilde[k][cells], num[k][cells], den[k][cells], a, b, leave_out)
                tt_obs = cell_t if group is None else cell_t[group]
            else:
                tt_obs = center[k]
            out[:, k] = np.bincount(tr.unit[idx], v1 * (tr.tau[idx] - tt_obs), minlength=n)
    # untreated observations: v_it = -(omega_i / n0_i + s_i xz_it), xz_it = lam_t - mean_0(lam) + xc_it'z
    # (lam = [0, time effects of z]), so sum_t v_it eps_it needs only per-unit sums of eps
    lam = np.vstack([np.zeros((1, K)), Z[:, :spec.n_fe].T])  # (T, K)
    E = _rowsum(imp.eps)
    xz_eps = (imp.eps - imp.u0 * (inv0 * E)[:, None]) @ lam  # one RNG block: the same rows whatever the partitions
    for j in range(len(spec.cov_idx)):
        xz_eps += _rowsum(np.where(imp.u0, imp.xc[:, :, j], 0.0) * imp.eps)[:, None] * Z[:, spec.n_fe + j][None, :]
    out[:, :K] += -omega * (inv0 * E)[:, None] - block.w[:, None] * xz_eps
    out[:, K] = (imp.u0.any(axis=1) | imp.u1.any(axis=1)).astype(float)
    return out


def _aux_average(cell_t: np.ndarray, num: np.ndarray, den: np.ndarray, a: np.ndarray, b: np.ndarray,
                 leave_out: bool) -> np.ndarray:
    """The auxiliary averages of the observations' groups, leaving a group's own unit out with
    ``leave_out`` (where another unit remains in the cell)."""
    if not leave_out:
        return cell_t
    dl = den - a * a
    ok = (dl > 1e-12 * np.maximum(den, 1e-300)) & (a != 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok, (num - a * b) / dl, cell_t)


def _treated_terms_fast(imp: _Imputed, w: np.ndarray, spec: ImputationSpec, Nk: np.ndarray, num: np.ndarray,
                        den: np.ndarray, tilde: np.ndarray, leave_out: bool, center: np.ndarray | None,
                        out: np.ndarray, omega: np.ndarray) -> None:
    """The treated-observation terms of :func:`imputation_scores` when :func:`_one_obs_cells`: a
    target of one horizon has one observation per unit (written in place), the others are summed
    per unit in period order; each observation is its own auxiliary group."""
    n = out.shape[0]
    single = np.count_nonzero(spec.targets, axis=1) == 1
    kmap = np.full(spec.H, -1)
    for k in np.flatnonzero(single):
        kmap[np.flatnonzero(spec.targets[k])[0]] = k
    nc, K = num.shape[1], omega.shape[1]
    for k in [None, *np.flatnonzero(~single)]:
        if k is None:  # every single-horizon target at once
            kk = kmap[imp.h]
            keep = kk >= 0
            obs = slice(None) if keep.all() else np.flatnonzero(keep)
            kk = kk[obs]
        else:
            obs = np.flatnonzero(spec.targets[k][imp.h] != 0)
            kk = k
        unit, cell, tau = imp.unit[obs], imp.cell[obs], imp.tau[obs]
        a = w[unit]
        v1 = a / Nk[kk]
        at = kk * nc + cell  # (target, cell) in the flat (K, cells) tables
        if center is not None:
            tt_obs = center[kk]
        elif leave_out:
            tt_obs = _aux_average(tilde.ravel()[at], num.ravel()[at], den.ravel()[at], a, a * tau, True)
        else:
            tt_obs = tilde.ravel()[at]
        if k is None:
            omega.reshape(-1)[unit * K + kk] = v1
            out.reshape(-1)[unit * (K + 1) + kk] = v1 * (tau - tt_obs)
        else:
            omega[:, k] = np.bincount(unit, v1, minlength=n)
            out[:, k] = np.bincount(unit, v1 * (tau - tt_obs), minlength=n)


def imputation_meat(chunk: Any, spec: ImputationSpec, beta: np.ndarray, Z: np.ndarray, Nk: np.ndarray,
                    num: np.ndarray, den: np.ndarray, leave_out: bool, center: np.ndarray | None = None
                    ) -> dict[str, np.ndarray]:
    """:func:`meat` of :func:`imputation_scores` on one RNG block ``chunk``."""
    K = spec.targets.shape[0]
    return meat(chunk, imputation_scores(chunk, spec, beta, Z, Nk, num, den, leave_out, center), K)


def meat(chunk: Any, rows: np.ndarray, K: int) -> dict[str, np.ndarray]:
    """Cluster sums of the scores of one RNG block: ``meat`` (K, K) and used clusters ``G``."""
    from dte_dask.core.blocks import entity_sums

    S = entity_sums(rows, chunk.rank)
    return {"meat": S[:, :K].T @ S[:, :K], "G": np.array(float(np.count_nonzero(S[:, K] > 0)))}
