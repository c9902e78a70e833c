"""de Chaisemartin & D'Haultfœuille (2024) intertemporal event-study estimator: numpy kernels.

Every function here works on one :class:`DcdhBlock` (the whole history of some units, wide: one
row per unit, one column per period) and returns *small* statistics whose shapes do not depend
on the block (cells by period × baseline treatment, cohorts, K×K cross products), so that
``dte_dask.graph.reduce`` can add them bit-identically over any partitioning.

The passes, all per horizon :math:`\\ell` (effects ``+ℓ`` and placebos ``-ℓ``):

1. :func:`meta_stats` / :func:`design_stats`: baseline treatments, first-switch periods,
   the sample filters of the R package (bidirectional switchers, baseline groups without
   variation in :math:`F_g`, (t, baseline) cells without a never-switcher);
2. :func:`control_stats`: controls :math:`N^{ctl}_{t,d}` = Σ w over units with baseline d not yet
   switched at t (first difference observed);
3. :func:`switcher_stats`: switchers :math:`N^{sw}_{t,d}`, cohort sums, Σ of the normalisation;
4. :func:`influence_stats`: the per-unit influence functions ψ_g (they never leave the block),
   reduced to Σψ, Σψψ' (or Σ_c (Σ_{g∈c}ψ_g)(·)' with clusters), the estimate numerators.

Conventions follow moderndid's ``did_multiplegt`` (a port of R ``did_multiplegt_dyn``), including
its variance: the influence function of :math:`DID_\\ell` is demeaned within cohorts
(baseline, F_g, D at F_g) for switchers and within (t, baseline) cells for controls, with the
small-sample factor :math:`\\sqrt{n/(n-1)}` (n = units, or clusters, of the cell).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from dte_dask.core.blocks import UnitBlock

__all__ = ["DcdhBlock", "Ctx", "from_unit_block", "prepare", "meta_stats", "design_stats", "control_stats", "switcher_stats",
           "influence_stats", "unit_design"]


@dataclass(frozen=True)
class DcdhBlock:
    """Wide arrays for the units of one partition (each unit's whole history).

    ids : (n,) unit ids; rank : (n,) stable index of the unit's entity (cluster, else unit);
    y, d, w : (n, T) outcome, treatment, row weight (NaN where the row is absent or missing);
    present : (n, T) the row exists; cl : (n,) int cluster codes (unit codes without clusters);
    pre : the options-independent unit design (:func:`prepare`), or None to compute it on each pass;
    key : (n,) int codes ``0..Ctx.n_keys-1`` of further variables that comparisons must match
    (``trends_nonparam``, :mod:`dte_dask.core.dcdh_options`), or None; x : (n, T, K) control
    variables (``controls``, :mod:`dte_dask.core.dcdh_controls`), or None.
    """

    ids: np.ndarray
    rank: np.ndarray
    y: np.ndarray
    d: np.ndarray
    w: np.ndarray
    present: np.ndarray
    cl: np.ndarray
    pre: dict | None = None
    key: np.ndarray | None = None
    x: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(self.ids.shape[0])

    def take(self, index: slice | np.ndarray) -> DcdhBlock:
        pre = None if self.pre is None else {k: v[index] for k, v in self.pre.items()}
        return DcdhBlock(self.ids[index], self.rank[index], self.y[index], self.d[index], self.w[index],
                         self.present[index], self.cl[index], pre, None if self.key is None else self.key[index],
                         None if self.x is None else self.x[index])


def prepare(block: DcdhBlock) -> DcdhBlock:
    """The block with its options-independent unit design attached (computed once, used by every pass)."""
    return replace(block, pre=_unit_base(block))


def from_unit_block(block: UnitBlock) -> DcdhBlock:
    """A binary absorbing panel block (cohort ``g`` as a period index) as a dCDH block: D = 1{t >= g};
    the entity rank serves as the cluster code (units, or the panel's clusters)."""
    T = block.y.shape[1]
    d = (np.arange(T)[None, :] >= block.g[:, None]).astype(np.float64)
    present = ~np.isnan(block.y)
    w = np.broadcast_to(block.w[:, None], block.y.shape).astype(np.float64)
    return DcdhBlock(block.ids, block.rank, block.y, d, w, present, block.rank.astype(np.int64))


@dataclass(frozen=True)
class Ctx:
    """Driver-side state passed to the kernels (small arrays only)."""

    dsq_vals: np.ndarray                 # sorted baseline treatments
    dfg_vals: np.ndarray                 # sorted treatments at the first switch
    switchers: str = ""                  # "", "in", "out"
    keep_dsq: np.ndarray | None = None   # (n_dsq,) baseline groups kept (variation in F_g)
    ctrl_ok: np.ndarray | None = None    # (T, n_dsq) cells with a never-switcher row
    horizons: tuple[int, ...] = ()       # +ℓ effects, -ℓ placebos
    only_never_switchers: bool = False
    same_switchers: int = 0              # keep switchers with L_g >= this (0: all)
    clustered: bool = False
    n_units: int = 0                     # G, units in the sample
    nc: np.ndarray | None = None         # (H, T, n_dsq) Σ w of controls
    ctrl: dict | None = None             # control cell sums for the variance
    sw: dict | None = None               # switcher cell / cohort sums
    n_keys: int = 1                      # values of DcdhBlock.key: comparison groups = baseline × key

    @property
    def n_groups(self) -> int:
        """Comparison groups (baseline treatment × matched variables): the second axis of the cells."""
        return len(self.dsq_vals) * self.n_keys


def _first_switch(d: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Baseline d_sq, first switch F (period index, inf if none), sign S, last observed period."""
    n, T = d.shape
    idx = np.arange(T)
    has = present.any(axis=1)
    first = np.where(has, np.argmax(present, axis=1), 0)
    last = np.where(has, T - 1 - np.argmax(present[:, ::-1], axis=1), -1)
    d_sq = np.where(has, d[np.arange(n), first], np.nan)
    # previous present row of each (unit, t): forward fill of the period index of present rows
    pos = np.where(present, idx[None, :], -1)
    prev = np.maximum.accumulate(pos, axis=1)
    prev = np.concatenate([np.full((n, 1), -1), prev[:, :-1]], axis=1)
    d_prev = np.where(prev >= 0, np.take_along_axis(d, np.maximum(prev, 0), axis=1), np.nan)
    step = np.where(present, d - d_prev, np.nan)
    sw = np.nan_to_num(step, nan=0.0) != 0
    anysw = sw.any(axis=1)
    F = np.where(anysw, np.argmax(sw, axis=1), np.inf)
    Fi = np.where(anysw, np.argmax(sw, axis=1), 0)
    S = np.where(anysw, np.sign(step[np.arange(n), Fi]), 0.0)
    return d_sq, F, S, last


def _unit_base(block: DcdhBlock) -> dict[str, np.ndarray]:
    """Options-independent unit design: rows kept, baseline, first switch, its sign and treatment,
    number of periods from the switch on."""
    y, d, present = block.y, block.d, block.present.copy()
    n, T = d.shape
    # units with no observed outcome or no observed treatment are dropped
    ok = (present & ~np.isnan(y)).any(axis=1) & (present & ~np.isnan(d)).any(axis=1)
    present &= ok[:, None]
    d_sq, F, S, last = _first_switch(d, present)
    L = np.where(np.isfinite(F), last - np.where(np.isfinite(F), F, 0) + 1, 0.0)
    # bidirectional switchers: rows from the period where both an increase and a decrease
    # (relative to the baseline) have occurred are dropped
    diff_sq = d - d_sq[:, None]
    inc = np.maximum.accumulate(present & (np.nan_to_num(diff_sq) > 0), axis=1)
    dec = np.maximum.accumulate(present & (np.nan_to_num(diff_sq) < 0), axis=1)
    present &= ~(inc & dec)
    Fi = np.where(np.isfinite(F), F, 0).astype(np.int64)
    d_fg = np.where(np.isfinite(F), d[np.arange(n), Fi], np.nan)
    return {"present": present, "d_sq": d_sq, "F": F, "S": S, "L": L, "d_fg": d_fg}


def unit_design(block: DcdhBlock, ctx: Ctx, stage: int) -> dict[str, np.ndarray]:
    """Per-unit design after the sample filters up to ``stage`` (1: unit filters, 2: + baseline
    groups without variation in F_g, 3: + cells without never-switchers)."""
    b = block.pre if block.pre is not None else _unit_base(block)
    d_sq, F, S = b["d_sq"], b["F"], b["S"]
    present = b["present"]
    keep = present.any(axis=1)
    if ctx.switchers == "in":
        keep &= S >= 0
    elif ctx.switchers == "out":
        keep &= S <= 0
    dsq_code = np.searchsorted(ctx.dsq_vals, np.nan_to_num(d_sq, nan=np.inf))
    dsq_code = np.minimum(dsq_code, len(ctx.dsq_vals) - 1) if len(ctx.dsq_vals) else dsq_code
    keep &= ~np.isnan(d_sq)
    if block.key is not None:  # comparison group: baseline × the matched variables' values
        dsq_code = dsq_code * ctx.n_keys + block.key
    if stage >= 2 and ctx.keep_dsq is not None:
        keep &= ctx.keep_dsq[dsq_code]
    present = present & keep[:, None]
    if stage >= 3 and ctx.ctrl_ok is not None:
        present &= ctx.ctrl_ok[:, dsq_code].T
        keep &= present.any(axis=1)
    return {"keep": keep, "present": present, "d_sq": d_sq, "dsq": dsq_code, "F": F, "S": S, "L": b["L"],
            "d_fg": b["d_fg"]}


def meta_stats(block: DcdhBlock, ctx: Ctx) -> dict[str, np.ndarray]:
    """Distinct baseline treatments and treatments at the first switch (unions over blocks)."""
    u = unit_design(block, ctx, 1)
    k = u["keep"]
    return {"dsq": np.unique(u["d_sq"][k]), "dfg": np.unique(u["d_fg"][k & np.isfinite(u["F"])])}


def design_stats(block: DcdhBlock, ctx: Ctx, stage: int) -> dict[str, np.ndarray]:
    """Counts for the filters: units by (baseline, F) and never-switcher rows by (t, baseline)."""
    u = unit_design(block, ctx, stage)
    T, nd = block.y.shape[1], ctx.n_groups
    k = u["keep"]
    fcol = np.where(np.isfinite(u["F"]), u["F"], T).astype(np.int64)
    fcount = np.zeros((nd, T + 1), np.int64)
    np.add.at(fcount, (u["dsq"][k], fcol[k]), 1)
    never = u["present"] & ~np.isfinite(u["F"])[:, None]
    nrows = np.zeros((T, nd), np.int64)
    tt, gg = np.nonzero(never.T)
    np.add.at(nrows, (tt, u["dsq"][gg]), 1)
    rows_t = u["present"].sum(axis=0).astype(np.int64)
    return {"fcount": fcount, "never_rows": nrows, "rows_t": rows_t, "n_units": np.int64(k.sum())}


def _base_arrays(block: DcdhBlock, u: dict) -> dict[str, np.ndarray]:
    """Per (unit, t) arrays shared by every horizon: outcome, treatment (NaN off the sample), weight."""
    pres = u["present"]
    y = np.where(pres, block.y, np.nan)
    dv = np.where(pres, block.d, np.nan)
    w = np.where(pres & ~np.isnan(y) & ~np.isnan(dv), np.nan_to_num(block.w), 0.0)
    return {"y": y, "dv": dv, "w": w, "t": np.arange(block.y.shape[1])[None, :], "F": u["F"][:, None],
            "never_sw": ~np.isfinite(u["F"])[:, None]}


def _horizon_arrays(block: DcdhBlock, u: dict, ell: int, ctx: Ctx, base: dict | None = None) -> dict[str, np.ndarray]:
    """Per (unit, t) arrays of horizon ``ell``: first difference, weight, control indicator."""
    b = _base_arrays(block, u) if base is None else base
    n, T = block.y.shape
    y = b["y"]
    h = abs(ell)
    diff = np.full((n, T), np.nan)
    if ell > 0 and h < T:
        np.subtract(y[:, h:], y[:, :-h], out=diff[:, h:])
    elif ell < 0 and 2 * h < T:
        np.subtract(y[:, :-2 * h], y[:, h:-h], out=diff[:, 2 * h:])
    ok = ~np.isnan(diff)
    never = ok & (b["F"] > b["t"])
    if ctx.only_never_switchers:
        never &= b["never_sw"]
    return {"diff": diff, "diff0": np.where(ok, diff, 0.0), "ok": ok, "w": b["w"], "never": never, "dv": b["dv"]}


def _cell_add(shape: tuple[int, int], tt: np.ndarray, gg: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.bincount(tt * shape[1] + gg, weights=v, minlength=shape[0] * shape[1]).reshape(shape)


def _cluster_count(shape: tuple[int, int], tt: np.ndarray, gg: np.ndarray, cl: np.ndarray) -> np.ndarray:
    """Distinct clusters per cell (clusters are whole within a block, so counts add over blocks)."""
    out = np.zeros(shape, np.int64)
    if tt.size:
        trip = np.unique(np.stack([tt, gg, cl]), axis=1)
        np.add.at(out, (trip[0], trip[1]), 1)
    return out


def control_stats(block: DcdhBlock, ctx: Ctx) -> dict[str, np.ndarray]:
    """Control cells (t, baseline) per horizon: Σ w, Σ w·ΔY, rows (or clusters)."""
    u = unit_design(block, ctx, 3)
    T, nd, H = block.y.shape[1], ctx.n_groups, len(ctx.horizons)
    out = {k: np.zeros((H, T, nd)) for k in ("w", "wd")}
    out["n"] = np.zeros((H, T, nd), np.int64)
    out["rows"] = np.zeros((H, T, nd), np.int64)
    base = _base_arrays(block, u)
    for j, ell in enumerate(ctx.horizons):
        a = _horizon_arrays(block, u, ell, ctx, base)
        gi, ti = np.nonzero(a["never"])
        dq = u["dsq"][gi]
        out["w"][j] = _cell_add((T, nd), ti, dq, a["w"][gi, ti])
        out["wd"][j] = _cell_add((T, nd), ti, dq, a["w"][gi, ti] * a["diff0"][gi, ti])
        out["rows"][j] = _cell_add((T, nd), ti, dq, np.ones(gi.size)).astype(np.int64)
        out["n"][j] = (_cluster_count((T, nd), ti, dq, block.cl[gi]) if ctx.clustered else out["rows"][j])
    return out


def _switcher_rows(block: DcdhBlock, u: dict, a: dict, ell: int, j: int, ctx: Ctx) -> tuple[np.ndarray, np.ndarray]:
    """Units that are switchers at horizon ``ell`` and their period t = F_g - 1 + |ell|."""
    T = block.y.shape[1]
    h = abs(ell)
    F = u["F"]
    fin = np.isfinite(F) & u["keep"] & (u["S"] != 0)
    tgt = np.where(fin, F - 1 + h, -1).astype(np.int64)
    sel = fin & (tgt < T) & (u["L"] >= h)
    if ctx.same_switchers:
        sel &= u["L"] >= ctx.same_switchers
    g = np.flatnonzero(sel)
    t = tgt[g]
    live = a["ok"][g, t] & (ctx.nc[j][t, u["dsq"][g]] > 0)
    return g[live], t[live]


def _cohort_index(u: dict, g: np.ndarray, t: np.ndarray, T: int, ctx: Ctx) -> np.ndarray:
    """Cohort (baseline, F_g, D at F_g) of switcher rows. As in moderndid, a row absent from the data
    (a placebo's target period need not be observed) has no D at F_g: it joins the cohort
    (baseline, F_g, missing) of every such row."""
    nf = len(ctx.dfg_vals) + 1
    dfg = np.where(u["present"][g, t], np.searchsorted(ctx.dfg_vals, u["d_fg"][g]), nf - 1)
    return (u["dsq"][g] * T + u["F"][g].astype(np.int64)) * nf + dfg


def switcher_stats(block: DcdhBlock, ctx: Ctx) -> dict[str, np.ndarray]:
    """Switcher cells (t, baseline), cohorts (baseline, F_g, D at F_g) and normalisation sums."""
    u = unit_design(block, ctx, 3)
    T, nd, H = block.y.shape[1], ctx.n_groups, len(ctx.horizons)
    nco = nd * T * (len(ctx.dfg_vals) + 1)
    out = {k: np.zeros((H, T, nd)) for k in ("w", "wd")}
    out["rows"] = np.zeros((H, T, nd), np.int64)
    out["un_cl"] = np.zeros((H, T, nd), np.int64)
    out.update({"co_w": np.zeros((H, nco)), "co_wd": np.zeros((H, nco)), "co_n": np.zeros((H, nco), np.int64),
                "n_sw": np.zeros(H, np.int64), "dd_num": np.zeros(H), "dd_w": np.zeros(H)})
    base = _base_arrays(block, u)
    for j, ell in enumerate(ctx.horizons):
        a = _horizon_arrays(block, u, ell, ctx, base)
        g, t = _switcher_rows(block, u, a, ell, j, ctx)
        dq, wv, dv = u["dsq"][g], a["w"][g, t], a["diff0"][g, t]
        out["w"][j] = _cell_add((T, nd), t, dq, wv)
        out["wd"][j] = _cell_add((T, nd), t, dq, wv * dv)
        out["rows"][j] = _cell_add((T, nd), t, dq, np.ones(g.size)).astype(np.int64)
        co = _cohort_index(u, g, t, T, ctx)
        out["co_w"][j] = np.bincount(co, weights=wv, minlength=nco)
        out["co_wd"][j] = np.bincount(co, weights=wv * dv, minlength=nco)
        if ctx.clustered:
            pairs = np.unique(np.stack([co, block.cl[g]]), axis=1) if g.size else np.zeros((2, 0), np.int64)
            np.add.at(out["co_n"][j], pairs[0], 1)
            gi, ti = np.nonzero(a["never"])
            tt = np.concatenate([ti, t])
            out["un_cl"][j] = _cluster_count((T, nd), tt, u["dsq"][np.concatenate([gi, g])],
                                             block.cl[np.concatenate([gi, g])])
        else:
            out["co_n"][j] = np.bincount(co, minlength=nco)
        out["n_sw"][j] = g.size
        # normalisation: Σ_{k=0}^{|ell|-1} (D_{F+k} - d_sq), signed by the switch direction
        h = abs(ell)
        cols = u["F"][g].astype(np.int64)[:, None] + np.arange(h)[None, :]
        valid = cols < T
        dd = np.take_along_axis(a["dv"][g], np.minimum(cols, T - 1), axis=1) - u["d_sq"][g][:, None]
        tot = np.where(valid & ~np.isnan(dd), dd, 0.0).sum(axis=1)
        out["dd_num"][j] = np.sum(wv * np.where(u["S"][g] == 1, tot, -tot))
        out["dd_w"][j] = np.sum(wv)
    return out


def cell_means(ctx: Ctx, n_units_dsq: np.ndarray, T: int) -> dict[str, np.ndarray]:
    """Driver side: demeaning means and degrees of freedom of the variance (moderndid's rules:
    switchers' cohort, else the (t, baseline) union; controls' (t, baseline) cell, else the union).

    With clusters the counts are distinct clusters; as in moderndid (polars ``n_unique`` counts the
    missing value of the rows outside the cell's members), one is added when the cell also holds
    other rows: controls and union when some unit of the baseline group is not a member at t,
    placebo cohorts always (their grouping holds every period of the cohort's units)."""
    c, s = ctx.ctrl, ctx.sw
    with np.errstate(invalid="ignore", divide="ignore"):
        c_mean = np.where(c["w"] > 0, c["wd"] / np.where(c["w"] > 0, c["w"], 1.0), 0.0)
        uw, uwd = c["w"] + s["w"], c["wd"] + s["wd"]
        u_mean = np.where(uw > 0, uwd / np.where(uw > 0, uw, 1.0), 0.0)
        co_mean = np.where(s["co_n"] > 0, s["co_wd"] / np.where(s["co_w"] != 0, s["co_w"], 1.0), 0.0)
    if ctx.clustered:
        full = n_units_dsq[None, None, :]
        c_dof = c["n"] + (full > c["rows"])
        u_dof = s["un_cl"] + (full > c["rows"] + s["rows"])
        pl = np.array([ell < 0 for ell in ctx.horizons])[:, None]
        co_dof = s["co_n"] + (pl & (T > 1))
    else:
        c_dof, u_dof, co_dof = c["n"], c["n"] + s["rows"], s["co_n"]
    # controls: their (t, baseline) cell, else the union of the cell when the cell is a singleton
    e_c = np.where(c_dof >= 2, c_mean, np.where((c_dof == 1) & (u_dof >= 2), u_mean, 0.0))
    f_c = np.where(c_dof > 1, _dof_factor(c_dof), np.where((c_dof == 1) & (u_dof >= 2), _dof_factor(u_dof), 1.0))
    # switchers: their cohort, else the union of their (t = F_g - 1 + |l|, baseline) cell
    H, nco = co_dof.shape
    nf = nco // (T * max(ctx.n_groups, 1))
    dsq, F = np.divmod(np.arange(nco) // nf, T)
    e_s, f_s = np.zeros((H, nco)), np.ones((H, nco))
    for j, ell in enumerate(ctx.horizons):
        t = F - 1 + abs(ell)
        ok = (t >= 0) & (t < T)
        tt = np.clip(t, 0, T - 1)
        un, um = np.where(ok, u_dof[j][tt, dsq], 0), u_mean[j][tt, dsq]
        sn = co_dof[j]
        e_s[j] = np.where(sn >= 2, co_mean[j], np.where((sn == 1) & (un >= 2), um, 0.0))
        f_s[j] = np.where(sn > 1, _dof_factor(sn), np.where((sn == 1) & (un >= 2), _dof_factor(un), 1.0))
    return {"e_c": e_c, "f_c": f_c, "e_s": e_s, "f_s": f_s}


def _dof_factor(n: np.ndarray) -> np.ndarray:
    return np.sqrt(n / np.maximum(n - 1, 1))


def influence_stats(block: DcdhBlock, ctx: Ctx, means: dict[str, np.ndarray],
                    correction: Any = None) -> dict[str, np.ndarray]:
    """Per-unit influence functions ψ_g (kept in the block) reduced to the estimate numerators
    Σ_g Σ_t coef·ΔY, Σψ, Σψψ' (Σ over clusters of cluster sums with clusters) and N_obs.
    ``correction(block, ctx)``, if given, is an (n, H) term subtracted from ψ (``controls``)."""
    u = unit_design(block, ctx, 3)
    n, T = block.y.shape
    H = len(ctx.horizons)
    G = ctx.n_units
    psi = np.zeros((n, H))
    num = np.zeros(H)
    nobs = np.zeros(H, np.int64)
    base = _base_arrays(block, u)
    for j, ell in enumerate(ctx.horizons):
        a = _horizon_arrays(block, u, ell, ctx, base)
        N_sw = ctx.sw["w"][j].sum()
        if N_sw == 0:
            continue
        scale = G / max(N_sw, 1e-10)
        nt = ctx.sw["w"][j]
        nc = ctx.nc[j]
        ratio = np.where(nc > 0, nt / np.where(nc > 0, nc, 1.0), nt)
        dq = u["dsq"]
        # controls
        gi, ti = np.nonzero(a["never"])
        cw = -scale * a["w"][gi, ti] * ratio[ti, dq[gi]]
        cd = a["diff0"][gi, ti]
        e_c, f_c = means["e_c"][j][ti, dq[gi]], means["f_c"][j][ti, dq[gi]]
        # switchers
        g, t = _switcher_rows(block, u, a, ell, j, ctx)
        sw_w = scale * a["w"][g, t] * (1.0 - ratio[t, dq[g]] * a["never"][g, t])
        sd = a["diff0"][g, t]
        co = _cohort_index(u, g, t, T, ctx)
        e_s, f_s = means["e_s"][j][co], means["f_s"][j][co]
        num[j] = np.sum(cw * cd) + np.sum(sw_w * sd)
        psi[:, j] = (np.bincount(gi, weights=cw * f_c * (cd - e_c), minlength=n)
                     + np.bincount(g, weights=sw_w * f_s * (sd - e_s), minlength=n))
        # observations used: rows with a first difference and a non-zero term, or a zero difference
        # (control and switcher rows are distinct cells: a switcher's row is not yet a control's)
        nobs[j] = (int(np.count_nonzero(a["ok"] & (a["diff0"] == 0))) + int(np.count_nonzero(cw * cd))
                   + int(np.count_nonzero(sw_w * sd)))
    if correction is not None:
        psi -= correction(block, ctx)
    if ctx.clustered:
        codes, inv = np.unique(block.cl, return_inverse=True)
        csum = np.stack([np.bincount(inv.ravel(), weights=psi[:, j], minlength=codes.size) for j in range(H)],
                        axis=1).reshape(codes.size, H)
        cross = csum.T @ csum
    else:
        cross = psi.T @ psi
    return {"num": num, "psi_sum": psi.sum(axis=0), "cross": cross, "nobs": nobs}
