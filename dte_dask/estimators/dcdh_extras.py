"""Wiring of the ``did_multiplegt`` options that transform the per-unit inputs (kernels:
:mod:`dte_dask.core.dcdh_options`, :mod:`dte_dask.core.dcdh_controls`): extra per-unit variables
(``trends_nonparam``, ``controls``) pivoted along the same entity partitions as the outcome, the
transformed blocks (``trends_lin``, ``controls``), the controls' influence-function correction, and
the bootstrap replicates."""
from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import dask
import numpy as np

from dte_dask.core.dcdh import Ctx, cell_stats
from dte_dask.core.dcdh_cells import estimate_sums, split_cells
from dte_dask.core.dcdh_controls import (
    ControlsCorrection,
    adjust_outcome,
    level_outcome,
    solve_theta,
    theta_stats,
)
from dte_dask.core.dcdh_options import (
    attach_key,
    block_totals,
    first_difference,
    resample,
    unit_values,
    value_rows,
)
from dte_dask.exceptions import DteDaskError, DteDaskWarning, PanelError, SpecError
from dte_dask.graph.reduce import compute
from dte_dask.panel.wide import WideColumns, wide_blocks

__all__ = [
    "adjust_for_controls",
    "bootstrap_replicates",
    "column_list",
    "controls_correction",
    "with_controls",
    "with_first_differences",
    "with_matched_variables",
]


def column_list(value: Any, name: str) -> list[str]:
    """A column name or a list of them (R passes a character vector)."""
    cols = [value] if isinstance(value, str) else list(value)
    if not cols or not all(isinstance(c, str) for c in cols):
        raise SpecError(f"did_multiplegt: {name} must be a column name or a list of column names, got {value!r}")
    return cols


def _values(block: Any, name: str) -> Any:
    vals, bad = unit_values(block)
    if bad >= 0:
        unit = np.asarray(block.ids[bad]).item()
        raise PanelError(f"did_multiplegt: column {name!r} (trends_nonparam) varies within unit {unit!r}; "
                         "it must be time-invariant")
    return block.ids, vals


def _ids(block: Any) -> np.ndarray:
    return block.ids


def _stack(pieces: tuple, ids: np.ndarray) -> np.ndarray:
    for got, _ in pieces:  # the same entity partitioning: the same units in the same order
        if not np.array_equal(got, ids):
            raise PanelError("did_multiplegt: trends_nonparam columns were not partitioned like the outcome")
    return np.stack([v for _, v in pieces], axis=1) if pieces else np.zeros((ids.size, 0))


def _pivot(data: Any, cols: WideColumns, name: str, role: str, npartitions: int, block_size: int) -> list:
    """The blocks of column ``name`` pivoted like the outcome (same entity partitions)."""
    wc = WideColumns(name, cols.unit, cols.time, cols.treatment, None, cols.cluster)
    try:
        return wide_blocks(data, wc, npartitions, block_size, "did_multiplegt").parts
    except (TypeError, ValueError) as e:
        if isinstance(e, PanelError):
            raise
        raise SpecError(f"did_multiplegt: {role} column {name!r} must be numeric ({e})") from e


def _attach_x(block: Any, pieces: tuple) -> Any:
    for p in pieces:
        if not np.array_equal(p.ids, block.ids):
            raise PanelError("did_multiplegt: controls were not partitioned like the outcome")
    x = np.stack([np.where(p.present, p.y, np.nan) for p in pieces], axis=2)
    return replace(block, x=x)


def with_controls(parts: list, data: Any, cols: WideColumns, names: list[str], npartitions: int,
                  block_size: int) -> list:
    """``controls``: each block with its units' controls as ``x`` (n, T, K)."""
    extra = [_pivot(data, cols, c, "controls", npartitions, block_size) for c in names]
    if len({len(e) for e in extra} | {len(parts)}) != 1:
        raise PanelError("did_multiplegt: controls were not partitioned like the outcome")
    out = [dask.delayed(_attach_x, pure=False)(p, tuple(e[i] for e in extra)) for i, p in enumerate(parts)]
    return list(dask.persist(*out))


def adjust_for_controls(parts: list, ctx: Ctx, reduce: Callable[..., Any]) -> tuple[list, dict]:
    """θ_d from the not-yet-switchers' first differences (with period effects) and the blocks with
    Y − θ_d'X as outcome."""
    th = solve_theta(reduce(parts, theta_stats, ctx), ctx.n_units, ctx.n_keys)
    if th["singular"].any():
        warnings.warn("did_multiplegt: the controls are collinear (or without variation) among the "
                      f"not-yet-switchers of {int(th['singular'].sum())} baseline group(s); their "
                      "generalized-inverse coefficients are used, as R does", DteDaskWarning, stacklevel=4)
    adj = [dask.delayed(adjust_outcome, pure=False)(p, ctx, th["theta"]) for p in parts]
    return list(dask.persist(*adj)), th


def controls_correction(parts: list, ctx: Ctx, th: dict, T: int, reduce: Callable[..., Any]) -> ControlsCorrection:
    """The influence-function correction: M_{d,ℓ,k} from DID_ℓ's functional on control k of the
    units of group d (one cell pass per group and control; ``ctx`` holds the cells of the data, whose
    missing pattern and weights the pass keeps), zero for ℓ ≥ T − 1."""
    H, (ng, K) = len(ctx.horizons), th["theta"].shape
    M = np.zeros((H, ng, K))
    live = np.flatnonzero((th["e_n"] > 0).any(axis=0))
    for g in live:
        for k in range(K):
            lp = [dask.delayed(level_outcome, pure=False)(p, ctx, int(g), k) for p in parts]
            raw = reduce(lp, cell_stats, ctx)
            c, sw = split_cells(ctx, raw)
            M[:, g, k] = estimate_sums(replace(ctx, ctrl=c, sw=sw), raw)["num"] / ctx.n_units
    M[np.abs(np.array(ctx.horizons)) >= T - 1] = 0.0
    return ControlsCorrection(th["theta"], th["theta_fe"], th["mean_x"], th["alpha"], th["inv"], th["e_n"],
                              th["n_c"], M)


def with_matched_variables(parts: list, data: Any, cols: WideColumns, names: list[str], npartitions: int,
                           block_size: int) -> tuple[list, int]:
    """``trends_nonparam``: each block with the code of its units' values of ``names`` (time-invariant
    numeric columns), and the number of distinct value combinations."""
    extra = [[dask.delayed(_values)(p, c) for p in _pivot(data, cols, c, "trends_nonparam", npartitions, block_size)]
             for c in names]
    if len({len(e) for e in extra} | {len(parts)}) != 1:
        raise PanelError("did_multiplegt: trends_nonparam columns were not partitioned like the outcome")
    ids = [dask.delayed(_ids)(p) for p in parts]
    vals = list(dask.persist(*[dask.delayed(_stack)(tuple(e[i] for e in extra), ids[i]) for i in range(len(parts))]))
    rows = compute(*[dask.delayed(value_rows)(v) for v in vals])
    table = np.unique(np.concatenate(rows, axis=0), axis=0)
    if table.shape[0] == 0:
        raise PanelError(f"did_multiplegt: trends_nonparam columns {names} are missing for every unit")
    out = [dask.delayed(attach_key, pure=False)(p, v, table) for p, v in zip(parts, vals)]
    return list(dask.persist(*out)), int(table.shape[0])


def with_first_differences(parts: list, ctx: Ctx) -> list:
    """``trends_lin``: the blocks with first-differenced outcomes after the sample filters of ``ctx``."""
    return list(dask.persist(*[dask.delayed(first_difference, pure=False)(p, ctx) for p in parts]))


def bootstrap_replicates(parts: list, fit: Callable[[list], Any], horizons: np.ndarray, n_entities: int,
                         block_size: int, n_boot: int, seed: int | None) -> tuple[np.ndarray, np.ndarray]:
    """``bootstrap=True``: the estimates of ``n_boot`` replicates (R ``did_multiplegt_dyn``: entities,
    i.e. clusters or units, drawn with replacement, the whole estimator rerun on each replicate),
    as an (n_boot, len(horizons)) array aligned on ``horizons`` (NaN where a replicate cannot
    estimate a horizon), and the replicates' average total effects. The draws of replicate r in RNG
    block b come from ``SeedSequence(seed, spawn_key=(r, 1, b))``: identical for any partitioning."""
    if n_boot < 2:
        raise SpecError(f"did_multiplegt: n_boot={n_boot}: at least 2 bootstrap replicates are needed")
    if seed is not None and (not isinstance(seed, (int, np.integer)) or seed < 0):
        raise SpecError(f"did_multiplegt: seed={seed!r}: a non-negative integer or None")
    entropy = np.random.SeedSequence(seed).entropy
    reps = np.full((n_boot, len(horizons)), np.nan)
    ate = np.full(n_boot, np.nan)
    col = {int(h): j for j, h in enumerate(horizons)}
    for r in range(n_boot):
        totals = block_totals(n_entities, block_size, entropy, r)
        rep = [dask.delayed(resample, pure=False)(p, totals, n_entities, block_size, entropy, r) for p in parts]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # horizons clipped in a replicate are left NaN
                res = fit(rep)
        except DteDaskError:  # e.g. no switcher drawn: the replicate estimates nothing
            continue
        for h, est in zip(res.horizon, res.coef):
            if int(h) in col:
                reps[r, col[int(h)]] = est
        ate[r] = res.ate.get("estimate", np.nan)
    return reps, ate
