"""de Chaisemartin & D'Haultfœuille (2024) intertemporal event-study estimator: numpy kernels.

Every function here works on one :class:`DcdhBlock` (the whole history of some units, wide: one
row per unit, one column per period) and returns *small* statistics whose shapes do not depend
on the block (cells by period × baseline treatment, cohorts, K×K cross products), so that
``dte_dask.graph.reduce`` can add them bit-identically over any partitioning.

The passes (each maps a kernel over the RNG blocks of every partition):

1. :func:`meta_stats` / :func:`design_stats`: baseline treatments, first-switch periods,
   the sample filters of the R package (bidirectional switchers, baseline groups without
   variation in :math:`F_g`, (t, baseline) cells without a never-switcher);
2. :func:`cell_stats`, every horizon :math:`\\ell` (effects ``+ℓ``, placebos ``-ℓ``) at once:
   controls :math:`N^{ctl}_{t,d}` = Σ w over units with baseline d not yet switched at t (first
   difference observed), switchers :math:`N^{sw}_{t,d}`, cohort sums, Σ of the normalisation
   (driver side: :mod:`dte_dask.core.dcdh_cells`);
3. :func:`influence_stats`: the per-unit influence functions ψ_g (they never leave the block),
   reduced to Σψ, Σψψ' (or Σ_c (Σ_{g∈c}ψ_g)(·)' with clusters).

Units are ordered by comparison group (:func:`prepare`), so that the (t, group) cells are row
segments: control cells of effects come from one (T × T) cross product per group, the other
horizons from contiguous shifted operations on the flattened (units × periods) arrays.

Conventions follow moderndid's ``did_multiplegt`` (a port of R ``did_multiplegt_dyn``), including
its variance: the influence function of :math:`DID_\\ell` is demeaned within cohorts
(baseline, F_g, D at F_g) for switchers and within (t, baseline) cells for controls, with the
small-sample factor :math:`\\sqrt{n/(n-1)}` (n = units, or clusters, of the cell).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from dte_dask.core.aligned import AlignedPickle
from dte_dask.core.blocks import UnitBlock

__all__ = ["Ctx", "DcdhBlock", "cell_ratio", "cell_stats", "design_stats", "from_unit_block", "influence_stats",
           "meta_stats", "prepare", "unit_design"]


@dataclass(frozen=True)
class DcdhBlock(AlignedPickle):
    """Wide arrays for the units of one partition (each unit's whole history).

    ids : (n,) unit ids; rank : (n,) stable index of the unit's entity (cluster, else unit);
    y, d, w : (n, T) outcome, treatment, row weight (NaN where the row is absent or missing);
    present : (n, T) the row exists; cl : (n,) int cluster codes (unit codes without clusters);
    pre : the options-independent unit design (:func:`prepare`), or None to compute it on each pass;
    key : (n,) int codes ``0..Ctx.n_keys-1`` of further variables that comparisons must match
    (``trends_nonparam``, :mod:`dte_dask.core.dcdh_options`), or None; x : (n, T, K) control
    variables (``controls``, :mod:`dte_dask.core.dcdh_controls`), or None; dnorm : (n, T) the change
    of the original treatment since the baseline, for the normalisation when ``d`` was replaced
    (``continuous``), or None.
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
    dnorm: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(self.ids.shape[0])

    def take(self, index: slice | np.ndarray) -> DcdhBlock:
        pre = None if self.pre is None else {k: v[index] for k, v in self.pre.items()}
        return DcdhBlock(self.ids[index], self.rank[index], self.y[index], self.d[index], self.w[index],
                         self.present[index], self.cl[index], pre, None if self.key is None else self.key[index],
                         None if self.x is None else self.x[index],
                         None if self.dnorm is None else self.dnorm[index])


def prepare(block: DcdhBlock, block_size: int | None = None) -> DcdhBlock:
    """The block with its options-independent unit design attached (computed once, used by every
    pass), its units ordered by (RNG block of ``block_size`` entities, baseline treatment, ``key``,
    cluster): the (t, comparison group) cells of a pass are then row segments of every RNG block.
    The weight is replaced by 0 on the rows out of the sample (absent, missing outcome or treatment)."""
    pre = _unit_base(block)
    w = np.where(pre["present"] & ~np.isnan(block.y) & ~np.isnan(block.d) & ~np.isnan(block.w), block.w, 0.0)
    blk = block.rank // block_size if block_size else np.zeros(block.n, np.int64)
    key = np.zeros(block.n, np.int64) if block.key is None else block.key
    order = np.lexsort((np.arange(block.n), block.cl, key, np.nan_to_num(pre["d_sq"], nan=np.inf), blk))
    return replace(block, w=w, pre=pre).take(order)


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


def _steps(d: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Change of the treatment since the previous present row of the unit (NaN on absent rows and
    on the first present one)."""
    n, T = d.shape
    step = np.empty((n, T))
    sf, df = step.reshape(-1), d.reshape(-1)
    np.subtract(df[1:], df[:-1], out=sf[1:])   # right for units with all or no rows present
    step[:, 0] = np.nan
    cnt = present.sum(axis=1)
    part = np.flatnonzero((cnt > 0) & (cnt < T))
    if part.size:
        # previous present row of each (unit, t): forward fill of the period index of present rows
        dp, pp = d[part], present[part]
        pos = np.where(pp, np.arange(T)[None, :], -1)
        prev = np.maximum.accumulate(pos, axis=1)
        prev = np.concatenate([np.full((part.size, 1), -1), prev[:, :-1]], axis=1)
        d_prev = np.where(prev >= 0, np.take_along_axis(dp, np.maximum(prev, 0), axis=1), np.nan)
        step[part] = dp - d_prev
    return np.where(present, step, np.nan)


def _first_switch(d: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Baseline d_sq, first switch F (period index, inf if none), sign S, last observed period."""
    n, T = d.shape
    has = present.any(axis=1)
    first = np.where(has, np.argmax(present, axis=1), 0)
    last = np.where(has, T - 1 - np.argmax(present[:, ::-1], axis=1), -1)
    d_sq = np.where(has, d[np.arange(n), first], np.nan)
    step = _steps(d, present)
    sw = np.abs(step) > 0   # NaN: no switch
    anysw = sw.any(axis=1)
    Fi = np.where(anysw, np.argmax(sw, axis=1), 0)
    F = np.where(anysw, Fi, np.inf)
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
    first = []
    for move in (present & (diff_sq > 0), present & (diff_sq < 0)):
        first.append(np.where(move.any(axis=1), np.argmax(move, axis=1), T))
    present &= np.arange(T)[None, :] < np.maximum(*first)[:, None]
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
    dsq_code = np.searchsorted(ctx.dsq_vals, np.where(np.isnan(d_sq), np.inf, d_sq))
    dsq_code = np.minimum(dsq_code, len(ctx.dsq_vals) - 1) if len(ctx.dsq_vals) else dsq_code
    keep &= ~np.isnan(d_sq)
    if block.key is not None:  # comparison group: baseline × the matched variables' values
        dsq_code = dsq_code * ctx.n_keys + block.key
    if stage >= 2 and ctx.keep_dsq is not None:
        keep &= ctx.keep_dsq[dsq_code]
    present = present & keep[:, None]
    if stage >= 3 and ctx.ctrl_ok is not None:
        present &= ctx.ctrl_ok.T[dsq_code]
        keep &= present.any(axis=1)
    return {"keep": keep, "present": present, "d_sq": d_sq, "dsq": dsq_code, "F": F, "S": S, "L": b["L"],
            "d_fg": b["d_fg"]}


def meta_stats(block: DcdhBlock, ctx: Ctx) -> dict[str, np.ndarray]:
    """Distinct baseline treatments and treatments at the first switch (unions over blocks)."""
    u = unit_design(block, ctx, 1)
    k = u["keep"]
    return {"dsq": np.unique(u["d_sq"][k]), "dfg": np.unique(u["d_fg"][k & np.isfinite(u["F"])])}


def _segments(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Starts and codes of the runs of equal values of nondecreasing ``codes``."""
    if codes.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    return starts, codes[starts]


def _seg_cells(M: np.ndarray, seg: tuple[np.ndarray, np.ndarray], nd: int, lo: int = 0,
               dtype: Any = None) -> np.ndarray:
    """(T, nd) sums of the rows of ``M`` (n, T) by baseline group (rows sorted by group); the
    columns before ``lo`` are 0."""
    T = M.shape[1]
    out = np.zeros((T, nd), dtype or M.dtype)
    starts, codes = seg
    if starts.size:
        out[lo:, codes] = np.add.reduceat(M, starts, axis=0, dtype=dtype)[:, lo:].T
    return out


def design_stats(block: DcdhBlock, ctx: Ctx, stage: int) -> dict[str, np.ndarray]:
    """Counts for the filters: units by (baseline, F) and never-switcher rows by (t, baseline)."""
    block, u = _grouped(block, ctx, stage)
    T, nd = block.y.shape[1], ctx.n_groups
    k = u["keep"]
    fcol = np.where(np.isfinite(u["F"]), u["F"], T).astype(np.int64)
    fcount = np.bincount(u["dsq"][k] * (T + 1) + fcol[k], minlength=nd * (T + 1)).reshape(nd, T + 1)
    never = u["present"] & ~np.isfinite(u["F"])[:, None]
    nrows = _seg_cells(never, _segments(u["dsq"]), nd, dtype=np.int64)
    rows_t = u["present"].sum(axis=0).astype(np.int64)
    return {"fcount": fcount, "never_rows": nrows, "rows_t": rows_t, "n_units": np.int64(k.sum())}


def _grouped(block: DcdhBlock, ctx: Ctx, stage: int) -> tuple[DcdhBlock, dict[str, np.ndarray]]:
    """The block (prepared) and its unit design, units ordered by comparison group and cluster, so
    that cells are row segments and clusters runs within them (:func:`prepare` orders them so; other
    orders, e.g. groups refined by further variables, are sorted here)."""
    block = block if block.pre is not None else prepare(block)
    u = unit_design(block, ctx, stage)
    code = u["dsq"]
    if code.size > 1 and not (np.all(code[1:] >= code[:-1]) and (
            not ctx.clustered or np.all((code[1:] > code[:-1]) | (block.cl[1:] >= block.cl[:-1])))):
        block = block.take(np.lexsort((np.arange(block.n), block.cl, code)))
        u = unit_design(block, ctx, stage)
    return block, u


def _base(block: DcdhBlock, ctx: Ctx) -> tuple[DcdhBlock, dict, dict[str, np.ndarray]]:
    """Stage-3 unit design and the (unit, t) arrays shared by every horizon: valid outcome ``v``
    (and as 0/1 ``vf``), outcome ``y0`` (0 where invalid), weight ``w`` (0 off the sample), control
    indicator ``Cf`` (not switched yet at t), ``wc`` = w · Cf, and a work space for the horizons."""
    block, u = _grouped(block, ctx, 3)
    n, T = block.y.shape
    v = ~np.isnan(block.y)
    v &= u["present"]
    w = block.w * v
    C = u["F"][:, None] > np.arange(T)[None, :]
    if ctx.only_never_switchers:
        C &= ~np.isfinite(u["F"])[:, None]
    Cf = C.astype(np.float64)
    u["dfg_code"] = np.searchsorted(ctx.dfg_vals, u["d_fg"])
    return block, u, {"v": v, "vf": v.astype(np.float64), "y0": np.where(v, block.y, 0.0), "w": w, "Cf": Cf,
               "wc": w * Cf, "seg": _segments(u["dsq"]), "ws": np.empty((5, n * T)), "wsb": np.empty(n * T, bool)}


def _buf(b: dict, i: int) -> np.ndarray:
    """Work array ``i`` (n, T) of ``b`` (-1: the boolean one), reused by every horizon."""
    return (b["ws"][i] if i >= 0 else b["wsb"]).reshape(b["y0"].shape)


def _shift(out: np.ndarray, op: Any, x: np.ndarray, a: int, z: np.ndarray, c: int) -> np.ndarray:
    """``out[g, t] = op(x[g, t - a], z[g, t - c])`` as one contiguous operation on the flattened
    arrays: the columns t < max(a, c) hold values of the previous unit (or 0), which callers ignore."""
    o, xf, zf = out.reshape(-1), x.reshape(-1), z.reshape(-1)
    N, m = o.size, max(a, c)
    op(xf[m - a:N - a], zf[m - c:N - c], out=o[m:])
    o[:m] = 0.0
    return out


def _horizon(b: dict, ell: int, need_ok: bool = True) -> tuple[int, np.ndarray | None, np.ndarray, np.ndarray] | None:
    """First period ``lo`` with a first difference at horizon ``ell`` and (n, T) arrays, meaningful
    from column ``lo`` on: the difference is defined (0/1; None for an effect without ``need_ok``),
    the difference ΔY, weight of control rows (work arrays 0-2 of ``b``; the columns before ``lo``
    are finite junk)."""
    T = b["y0"].shape[1]
    h = abs(ell)
    vf, y0 = b["vf"], b["y0"]
    lo = h if ell > 0 else 2 * h
    if lo >= T:
        return None
    ok, diff, mw = (_buf(b, i) for i in range(3))
    # effects: ΔY_t = Y_t - Y_{t-h}; placebos: ΔY_t = Y_{t-2h} - Y_{t-h}
    a, c = (0, h) if ell > 0 else (2 * h, h)
    _shift(diff, np.subtract, y0, a, y0, c)
    if ell > 0 and not need_ok:
        # the weight of a row is 0 unless its outcome is valid: w_t·1{Y_{t-h} valid}
        return lo, None, diff, _shift(mw, np.multiply, b["wc"], 0, vf, h)
    _shift(ok, np.multiply, vf, a, vf, c)
    np.multiply(b["wc"], ok, out=mw)
    return lo, ok, diff, mw


def _switch_window(u: dict, b: dict, ctx: Ctx) -> dict[str, np.ndarray]:
    """The rows around the first switch of the units that switch, gathered once for every horizon:
    outcome, validity (False out of the panel), weight and presence at t = F_g - 1 + o for the
    offsets o = -max placebo .. max horizon (each unit's window is contiguous in memory)."""
    T = b["y0"].shape[1]
    hp = max((-ell for ell in ctx.horizons if ell < 0), default=0)
    hw = max((abs(ell) for ell in ctx.horizons), default=0)
    g = np.flatnonzero(np.isfinite(u["F"]) & u["keep"] & (u["S"] != 0))
    base = u["F"][g].astype(np.int64) - 1
    cols = base[:, None] + np.arange(-hp, hw + 1)[None, :]
    inside = (cols >= 0) & (cols < T)
    flat = g[:, None] * T + np.clip(cols, 0, T - 1)
    return {"g": g, "t0": base, "o0": hp, "inside": inside, "y": b["y0"].reshape(-1)[flat],
            "v": b["v"].reshape(-1)[flat] & inside, "w": b["w"].reshape(-1)[flat],
            "p": u["present"].reshape(-1)[flat]}


def _switcher_rows(u: dict, b: dict, ell: int, ctx: Ctx) -> tuple[np.ndarray, ...]:
    """Switchers at horizon ``ell`` (first difference defined; cells without controls not removed):
    units g, period t = F_g - 1 + |ell|, ΔY, weight and presence at t."""
    if "win" not in b:
        b["win"] = _switch_window(u, b, ctx)
    W = b["win"]
    T = b["y0"].shape[1]
    h = abs(ell)
    g, o0 = W["g"], W["o0"]
    t = W["t0"] + h
    sel = (t < T) & (u["L"][g] >= h)
    if ctx.same_switchers:
        sel &= u["L"][g] >= ctx.same_switchers
    # effects: Y_{F-1+h} - Y_{F-1}; placebos: Y_{F-1-h} - Y_{F-1}
    a = o0 + h if ell > 0 else o0 - h
    sel &= W["v"][:, a] & W["v"][:, o0]
    i = np.flatnonzero(sel)
    return (g[i], t[i], W["y"][i, a] - W["y"][i, o0], W["w"][i, o0 + h], W["p"][i, o0 + h])


def _cohort_index(u: dict, g: np.ndarray, present_t: np.ndarray, T: int, ctx: Ctx) -> np.ndarray:
    """Cohort (baseline, F_g, D at F_g) of switcher rows. As in moderndid, a row absent from the data
    (a placebo's target period need not be observed) has no D at F_g: it joins the cohort
    (baseline, F_g, missing) of every such row."""
    nf = len(ctx.dfg_vals) + 1
    dfg = np.where(present_t, u["dfg_code"][g], nf - 1)
    return (u["dsq"][g] * T + u["F"][g].astype(np.int64)) * nf + dfg


def _cluster_cells(M: np.ndarray, runs: tuple, nd: int, lo: int) -> np.ndarray:
    """(T, nd) distinct clusters with a row of ``M`` (bool, n × T) from column ``lo`` on; units are
    sorted by (baseline, cluster), ``runs`` = (run starts, their baseline codes)."""
    starts, rcodes = runs
    T = M.shape[1]
    out = np.zeros((T, nd), np.int64)
    if starts.size:
        anyr = np.logical_or.reduceat(M, starts, axis=0)
        rs, rc = _segments(rcodes)
        out[lo:, rc] = np.add.reduceat(anyr, rs, axis=0, dtype=np.int64)[:, lo:].T
    return out


def cell_stats(block: DcdhBlock, ctx: Ctx) -> dict[str, np.ndarray]:
    """One pass for every horizon: control cells (t, baseline): Σ w, Σ w·ΔY, rows, clusters, rows
    with w·ΔY ≠ 0; switcher cells, cohorts (baseline, F_g, D at F_g) and normalisation sums (before
    the removal of cells without controls, done on the driver by :func:`split_cells`); rows with a
    zero first difference."""
    block, u, b = _base(block, ctx)
    n, T = block.y.shape
    nd, H = ctx.n_groups, len(ctx.horizons)
    nco = nd * T * (len(ctx.dfg_vals) + 1)
    cell = ("c_w", "c_wd", "c_rows", "c_nz", "c_n", "s_w", "s_wd", "s_rows", "s_nz", "s_dd", "un_cl")
    out = {k: np.zeros((H, T, nd)) for k in cell}
    out.update({k: np.zeros((H, nco)) for k in ("co_w", "co_wd", "co_n")})
    out["ok0"] = np.zeros(H, np.int64)
    cum = _switch_path(block, u, max((abs(ell) for ell in ctx.horizons), default=0))
    runs = None
    if ctx.clustered and n:
        key = u["dsq"] * (int(block.cl.max()) + 1) + block.cl
        runs = _segments(key)[0]
        runs = (runs, u["dsq"][runs])
    grams = _effect_grams(b) if runs is None and any(ell > 0 for ell in ctx.horizons) else None
    for j, ell in enumerate(ctx.horizons):
        hz = None
        if grams is not None and ell > 0:
            _control_cells_gram(out, j, ell, b, grams, nd)
        else:
            hz = _horizon(b, ell)
            if hz is None:
                continue
            _control_cells(out, j, hz, b, nd, runs)
        g, t, sd, wv, pt = _switcher_rows(u, b, ell, ctx)
        dq = u["dsq"][g]
        ci = t * nd + dq
        for key, val in (("s_w", wv), ("s_wd", wv * sd), ("s_rows", None), ("s_nz", wv * sd != 0),
                         ("s_dd", wv * _signed_change(cum, u, g, abs(ell)))):
            out[key][j] = np.bincount(ci, weights=val, minlength=T * nd).reshape(T, nd)
        co = _cohort_index(u, g, pt, T, ctx)
        out["co_w"][j] = np.bincount(co, weights=wv, minlength=nco)
        out["co_wd"][j] = np.bincount(co, weights=wv * sd, minlength=nco)
        if runs is not None:
            pairs = np.unique(np.stack([co, block.cl[g]]), axis=1) if g.size else np.zeros((2, 0), np.int64)
            out["co_n"][j] = np.bincount(pairs[0], minlength=nco)
            M = np.greater(b["Cf"], 0, out=_buf(b, -1))
            M &= hz[1] > 0
            M[g, t] = True
            out["un_cl"][j] = _cluster_cells(M, runs, nd, hz[0])
        else:
            out["co_n"][j] = np.bincount(co, minlength=nco)
    return out


def _control_cells(out: dict, j: int, hz: tuple, b: dict, nd: int, runs: tuple | None) -> None:
    """Control cells of horizon j from its (n, T) arrays."""
    lo, ok, diff, mw = hz
    seg = b["seg"]
    m, mwd, nz = _buf(b, 3), _buf(b, 4), _buf(b, -1)
    np.multiply(b["Cf"], ok, out=m)
    np.multiply(mw, diff, out=mwd)
    out["c_w"][j] = _seg_cells(mw, seg, nd, lo)
    out["c_wd"][j] = _seg_cells(mwd, seg, nd, lo)
    out["c_rows"][j] = _seg_cells(m, seg, nd, lo)
    out["c_nz"][j] = _seg_cells(np.not_equal(mwd, 0, out=nz), seg, nd, lo, dtype=np.int64)
    if runs is not None:
        out["c_n"][j] = _cluster_cells(np.greater(m, 0, out=nz), runs, nd, lo)
    n_ok = ok.sum(axis=0)[lo:].sum()
    out["ok0"][j] = int(n_ok) - int(np.count_nonzero(np.multiply(ok, diff, out=mwd), axis=0)[lo:].sum())


def _effect_grams(b: dict) -> list[tuple[int, dict[str, np.ndarray]]]:
    """Per baseline group d, the (T, T) cross products over its units of (w·C, w·C·Y, C·1{valid},
    1{w·C ≠ 0}) at t with (1{valid}, Y) at s: entry (t, t - ℓ) is the control cell (t, d) of effect ℓ
    (the first difference Y_t - Y_{t-ℓ} is defined where both outcomes are valid)."""
    vf, y0, wc = b["vf"], b["y0"], b["wc"]
    cv = b["Cf"] * vf
    wcy = wc * y0
    wnz = (wc != 0).astype(np.float64)
    out = []
    starts, codes = b["seg"]
    for a0, a1, d in zip(starts, np.r_[starts[1:], vf.shape[0]], codes):
        s = slice(int(a0), int(a1))
        out.append((int(d), {"w": wc[s].T @ vf[s], "wy": wcy[s].T @ vf[s], "wy0": wc[s].T @ y0[s],
                             "rows": cv[s].T @ vf[s], "nz": wnz[s].T @ vf[s]}))
    return out


def _control_cells_gram(out: dict, j: int, ell: int, b: dict, grams: list, nd: int) -> None:
    """Control cells of effect ``ell`` from the cross products of :func:`_effect_grams`; rows whose
    first difference is 0 (ties, compared on the NaN-filled outcome) counted separately."""
    T = b["y0"].shape[1]
    if ell >= T:
        return
    t = np.arange(ell, T)
    for d, G in grams:
        out["c_w"][j, ell:, d] = G["w"][t, t - ell]
        out["c_wd"][j, ell:, d] = G["wy"][t, t - ell] - G["wy0"][t, t - ell]
        out["c_rows"][j, ell:, d] = G["rows"][t, t - ell]
        out["c_nz"][j, ell:, d] = G["nz"][t, t - ell]
    if "yn" not in b:
        b["yn"] = np.where(b["v"], b["y0"], np.nan)
    tie = _shift(_buf(b, -1), np.equal, b["yn"], 0, b["yn"], ell)
    n_tie = int(tie.sum(axis=0)[ell:].sum())
    out["ok0"][j] = n_tie
    if n_tie:
        tie &= b["wc"] != 0
        out["c_nz"][j] -= _seg_cells(tie, b["seg"], nd, ell, dtype=np.int64)


def _switch_path(block: DcdhBlock, u: dict, hmax: int) -> np.ndarray:
    """(n, hmax + 1): column k = Σ_{k'<k} (D_{F+k'} - d_sq) over the unit's periods from its first
    switch F on (periods up to T - 1, rows in the sample; 0 for units that never switch)."""
    n, T = block.d.shape
    F = np.where(np.isfinite(u["F"]), u["F"], T).astype(np.int64)
    cols = F[:, None] + np.arange(hmax)[None, :]
    flat = np.arange(n)[:, None] * T + np.minimum(cols, T - 1)
    if block.dnorm is None:
        dv = block.d.reshape(-1)[flat] - u["d_sq"][:, None]
    else:  # continuous: the original treatment's change (d holds the binarized one)
        dv = block.dnorm.reshape(-1)[flat]
    ok = (cols < T) & u["present"].reshape(-1)[flat] & ~np.isnan(dv)
    out = np.zeros((n, hmax + 1))
    np.cumsum(np.where(ok, dv, 0.0), axis=1, out=out[:, 1:])
    return out


def _signed_change(path: np.ndarray, u: dict, g: np.ndarray, h: int) -> np.ndarray:
    """Σ_{k=0}^{h-1} (D_{F+k} - d_sq) of switchers ``g``, signed by the switch direction."""
    tot = path[g, h]
    return np.where(u["S"][g] == 1, tot, -tot)


def cell_ratio(ctx: Ctx, j: int) -> tuple[float, np.ndarray]:
    """G / N^sw_ℓ and the (t, baseline) ratio N^sw / N^ctl of horizon j (0 scale: no switchers)."""
    N_sw = ctx.sw["w"][j].sum()
    nt, nc = ctx.sw["w"][j], ctx.nc[j]
    ratio = np.where(nc > 0, nt / np.where(nc > 0, nc, 1.0), nt)
    return (ctx.n_units / max(N_sw, 1e-10) if N_sw != 0 else 0.0), ratio


def influence_stats(block: DcdhBlock, ctx: Ctx, means: dict[str, np.ndarray],
                    correction: Any = None) -> dict[str, np.ndarray]:
    """Per-unit influence functions ψ_g (kept in the block) reduced to Σψ and Σψψ' (Σ over clusters
    of cluster sums with clusters). ``correction(block, ctx)``, if given, is an (n, H) term
    subtracted from ψ (``controls``)."""
    block, u, b = _base(block, ctx)
    n, T = block.y.shape
    H = len(ctx.horizons)
    psi = np.zeros((n, H))
    starts, codes = b["seg"]
    ends = np.r_[starts[1:], n].astype(np.int64)
    for j, ell in enumerate(ctx.horizons):
        scale, ratio = cell_ratio(ctx, j)
        if scale == 0:
            continue
        hz = _horizon(b, ell, need_ok=False)
        if hz is not None:
            # controls: -scale Σ_t w ratio f_c (ΔY - e_c), one matrix-vector product per baseline group
            lo, _, diff, mw = hz
            mwd = np.multiply(mw, diff, out=_buf(b, 3))
            A = ratio * means["f_c"][j]
            A[:lo] = 0.0  # the junk columns of the horizon's arrays
            B = A * means["e_c"][j]
            for a0, a1, d in zip(starts, ends, codes):
                psi[a0:a1, j] = -scale * (mwd[a0:a1] @ A[:, d] - mw[a0:a1] @ B[:, d])
        g, t, sd, wv, pt = _switcher_rows(u, b, ell, ctx)
        live = ctx.nc[j][t, u["dsq"][g]] > 0
        g, sd, wv, pt = g[live], sd[live], wv[live], pt[live]
        co = _cohort_index(u, g, pt, T, ctx)
        psi[g, j] += scale * wv * means["f_s"][j][co] * (sd - means["e_s"][j][co])
    if correction is not None:
        psi -= correction(block, ctx)
    if ctx.clustered:
        codes_cl, inv = np.unique(block.cl, return_inverse=True)
        csum = np.stack([np.bincount(inv.ravel(), weights=psi[:, j], minlength=codes_cl.size) for j in range(H)],
                        axis=1).reshape(codes_cl.size, H)
        cross = csum.T @ csum
    else:
        cross = psi.T @ psi
    return {"psi_sum": psi.sum(axis=0), "cross": cross}
