"""``controls`` of ``did_multiplegt`` (R ``did_multiplegt_dyn``): covariate adjustment as a
transformation of the per-unit outcome, plus the influence-function correction for the estimated
coefficients.

R, per baseline treatment d (comparison group): θ_d is the weighted regression of the first
difference ΔY_{g,t} on ΔX_{g,t} with period effects, among the not-yet-switchers (t < F_g) of the
group whose ΔY and ΔX are observed. Every long difference is then adjusted by θ_d'ΔX, i.e. the
estimator runs on Ỹ = Y − θ_d'X (missing where a control is missing). The influence function of
DID_ℓ loses, for each unit g,

    part2_g,ℓ = Σ_d M_{d,ℓ}' ( 1{D_g1 = d, F_g ≥ 3} · Den_d⁻¹ in_sum_{g,d} − θ_d )

where M_{d,ℓ} is DID_ℓ's functional applied to the long differences of X among units of group d
(zero for ℓ ≥ T − 1, R's ``ℓ ≤ T_g − 2``), Den_d⁻¹ = (Σ X̃X̃')⁺ · R_sum · G (R_sum: weights of the
not-yet-switched rows with an observed ΔY, all groups) and in_sum_{g,d} = Σ_t w_gt (ΔX_gt − mean of
its cell) · dof_t · (ΔY_gt − Ê_gt) / N_c,d over the unit's not-yet-switched rows, with Ê_gt the
fitted value of the regression (θ_d'ΔX + period effect; 0 when the (t, d) cell holds fewer than
two not-yet-switched rows) and dof_t = √(n/(n − 1)) for that count n ≥ 2.

Blocks carry X in ``DcdhBlock.x`` (n, T, K). :func:`theta_stats` returns per-(period, group) sums
(added over blocks), :func:`solve_theta` turns them into θ and the cells, :func:`adjust_outcome`
transforms the block and :class:`ControlsCorrection` computes part2 inside the influence pass.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from dte_dask.core.dcdh import Ctx, DcdhBlock, unit_design

__all__ = ["ControlsCorrection", "adjust_outcome", "level_outcome", "solve_theta", "theta_stats"]


def _rows(block: DcdhBlock, ctx: Ctx) -> dict[str, np.ndarray]:
    """First differences (lag 1) of Y and X on the sample rows, weights, not-yet-switched rows."""
    u = unit_design(block, ctx, 3)
    pres = u["present"]
    y = np.where(pres, block.y, np.nan)
    x = np.where(pres[:, :, None], block.x, np.nan)
    n, T = y.shape
    dy = np.full((n, T), np.nan)
    dy[:, 1:] = y[:, 1:] - y[:, :-1]
    dx = np.full(x.shape, np.nan)
    dx[:, 1:] = x[:, 1:] - x[:, :-1]
    w = np.where(pres & ~np.isnan(y) & ~np.isnan(block.d), np.nan_to_num(block.w), 0.0)
    nys = (np.arange(T)[None, :] < u["F"][:, None]) & u["keep"][:, None]
    oky = nys & ~np.isnan(dy)
    mask = oky & ~np.isnan(dx).any(axis=2)
    return {"u": u, "dy": dy, "dx": dx, "w": w, "nys": nys, "oky": oky, "mask": mask}


def theta_stats(block: DcdhBlock, ctx: Ctx) -> dict[str, np.ndarray]:
    """Per (period, group) sums over the regression rows: Σw, ΣwΔX, ΣwΔXΔX', ΣwΔXΔY, ΣwΔY; the
    not-yet-switched rows with an observed ΔY (count) and their weights by group."""
    r = _rows(block, ctx)
    T, ng, K = block.y.shape[1], ctx.n_groups, block.x.shape[2]
    gi, ti = np.nonzero(r["mask"])
    cell = ti * ng + r["u"]["dsq"][gi]
    w, dx, dy = r["w"][gi, ti], r["dx"][gi, ti], r["dy"][gi, ti]
    size = T * ng

    def add(v: np.ndarray) -> np.ndarray:
        return np.bincount(cell, weights=v, minlength=size)

    out = {"sw": add(w).reshape(T, ng), "sy": add(w * dy).reshape(T, ng),
           "sx": np.stack([add(w * dx[:, k]) for k in range(K)], axis=-1).reshape(T, ng, K),
           "sxy": np.stack([add(w * dx[:, k] * dy) for k in range(K)], axis=-1).reshape(T, ng, K),
           "sxx": np.stack([add(w * dx[:, k] * dx[:, j]) for k in range(K) for j in range(K)],
                           axis=-1).reshape(T, ng, K, K)}
    gy, ty = np.nonzero(r["oky"])
    cy = ty * ng + r["u"]["dsq"][gy]
    out["e_n"] = np.bincount(cy, minlength=size).reshape(T, ng).astype(np.int64)
    out["n_c"] = np.bincount(r["u"]["dsq"][gy], weights=r["w"][gy, ty], minlength=ng)
    return out


def _centered(sw: np.ndarray, sx: np.ndarray, sy: np.ndarray, sxx: np.ndarray, sxy: np.ndarray) -> tuple:
    """Σ over cells of the within-cell centred X̃X̃' and X̃ΔY, cell by cell (cells without weight: 0)."""
    pos = sw > 0
    safe = np.where(pos, sw, 1.0)
    cx = np.where(pos[..., None, None], sxx - sx[..., :, None] * sx[..., None, :] / safe[..., None, None], 0.0)
    cy = np.where(pos[..., None], sxy - sx * (sy / safe)[..., None], 0.0)
    return cx, cy


def _solve(M: np.ndarray, v: np.ndarray, live: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    theta, pinv = np.zeros(v.shape), np.zeros(M.shape)
    for g in np.flatnonzero(live):
        pinv[g] = np.linalg.pinv(M[g])
        theta[g] = pinv[g] @ v[g]
    return theta, pinv


def solve_theta(s: dict[str, np.ndarray], n_units: int, n_keys: int = 1) -> dict[str, np.ndarray]:
    """Driver side, per baseline treatment d (``n_keys`` comparison groups each): θ_d (nd, K), whose
    regression demeans ΔX within (period, comparison group) cells; the mean ΔX of those cells; the
    fitted values' coefficients and period effects (R's ``feols(ΔY ~ ΔX | period)`` within d);
    Den_d⁻¹ (nd, K, K); the groups whose X̃'X̃ is singular (R keeps the generalized inverse)."""
    sw = s["sw"]
    T, ng, K = s["sx"].shape
    nd = ng // n_keys
    pos = sw > 0
    mean_x = np.where(pos[..., None], s["sx"] / np.where(pos, sw, 1.0)[..., None], np.nan)
    cx, cy = _centered(sw, s["sx"], s["sy"], s["sxx"], s["sxy"])
    M = cx.sum(axis=0).reshape(nd, n_keys, K, K).sum(axis=1)
    v = cy.sum(axis=0).reshape(nd, n_keys, K).sum(axis=1)
    live = pos.reshape(T, nd, n_keys).any(axis=(0, 2))
    theta, pinv = _solve(M, v, live)
    # the same regression with period effects within d only (R's fitted values)
    lv = {k: s[k].reshape(T, nd, n_keys, *s[k].shape[2:]).sum(axis=2) for k in ("sw", "sx", "sy", "sxx", "sxy")}
    fx, fy = _centered(lv["sw"], lv["sx"], lv["sy"], lv["sxx"], lv["sxy"])
    theta_fe, _ = _solve(fx.sum(axis=0), fy.sum(axis=0), live)
    lpos = lv["sw"] > 0
    alpha = np.where(lpos, (lv["sy"] - np.einsum("tgk,gk->tg", lv["sx"], theta_fe)) / np.where(lpos, lv["sw"], 1.0),
                     np.nan)
    rsum = float(s["n_c"].sum())  # R: weights of every group's not-yet-switched rows (Stata: the group's)
    singular = np.array([live[g] and abs(np.linalg.det(M[g])) <= 1e-16 for g in range(nd)], bool)
    return {"theta": theta, "theta_fe": theta_fe, "mean_x": mean_x, "alpha": alpha, "inv": pinv * rsum * n_units,
            "e_n": s["e_n"].reshape(T, nd, n_keys).sum(axis=2), "n_c": s["n_c"].reshape(nd, n_keys).sum(axis=1),
            "singular": singular}


def adjust_outcome(block: DcdhBlock, ctx: Ctx, theta: np.ndarray) -> DcdhBlock:
    """The block with Y replaced by Y − θ_d'X (d: the unit's group; missing where a control is)."""
    u = unit_design(block, ctx, 3)
    th = theta[np.minimum(u["dsq"] // ctx.n_keys, theta.shape[0] - 1)]
    return replace(block, y=block.y - np.einsum("ntk,nk->nt", block.x, th))


def level_outcome(block: DcdhBlock, ctx: Ctx, group: int, k: int) -> DcdhBlock:
    """The block whose outcome is control k for the units of baseline ``group`` and 0 for the others,
    with the missing pattern of the (adjusted) outcome: DID_ℓ's functional on it is M_{group,ℓ,k}."""
    u = unit_design(block, ctx, 3)
    mine = (u["dsq"] // ctx.n_keys == group)[:, None]
    y = np.where(np.isnan(block.y), np.nan, np.where(mine, block.x[:, :, k], 0.0))
    return replace(block, y=y)


@dataclass(frozen=True)
class ControlsCorrection:
    """part2 of the influence functions (module docstring); called by the influence pass.

    M : (H, ng, K) DID_ℓ's functional on the controls' long differences, per group (÷ G)."""

    theta: np.ndarray
    theta_fe: np.ndarray
    mean_x: np.ndarray
    alpha: np.ndarray
    inv: np.ndarray
    e_n: np.ndarray
    n_c: np.ndarray
    M: np.ndarray

    def __call__(self, block: DcdhBlock, ctx: Ctx) -> np.ndarray:
        n, T = block.y.shape
        H = self.M.shape[0]
        if n == 0:
            return np.zeros((0, H))
        r = _rows(block, ctx)  # the block holds Ỹ = Y − θ'X: ΔY = ΔỸ + θ'ΔX where ΔX is observed
        u = r["u"]
        d = u["dsq"] // ctx.n_keys                                     # baseline treatment level
        dy = r["dy"] + np.einsum("ntk,nk->nt", r["dx"], self.theta[d])
        t = np.arange(T)[None, :]
        e = self.e_n[t, d[:, None]]                                   # (n, T)
        dof = np.where(e >= 2, np.sqrt(e / np.maximum(e - 1, 1)), 1.0)
        mx = self.mean_x[t, u["dsq"][:, None]]                        # (n, T, K): (period, comparison group)
        prod = np.where(r["mask"][:, :, None], r["w"][:, :, None] * (r["dx"] - mx), 0.0)
        fit = np.einsum("ntk,nk->nt", r["dx"], self.theta_fe[d]) + self.alpha[t, d[:, None]]
        e_hat = np.where(r["nys"], fit * (e >= 2), np.nan)
        resid = dy - e_hat
        nc = self.n_c[d]
        term = prod * (dof * resid)[:, :, None] / np.where(nc > 0, nc, 1.0)[:, None, None]
        in_sum = np.nansum(np.where(np.isnan(term), 0.0, term), axis=1)       # (n, K)
        own = np.einsum("nkj,nj->nk", self.inv[d], in_sum) * ((u["F"] >= 2) & u["keep"])[:, None]
        part = np.einsum("hnk,nk->nh", self.M[:, d, :], own)
        const = np.einsum("hgk,gk->h", self.M, self.theta)
        return np.where(u["keep"][:, None], part - const[None, :], 0.0)
