"""Simulation, block by block: each block of units draws from its own ``SeedSequence`` child, and a
partition is whole blocks, so the panel does not depend on ``npartitions`` (:func:`simulate_panel`)."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from dte_dask.simulate.design import (
    COVARIATES,
    SIM_BLOCK,
    Design,
    SimulatedPanel,
    check_int,
    resolve_design,
)

# ----------------------------------------------------------------------------- generation

def columns_of(d: Design) -> dict[str, Any]:
    return {"unit": "unit", "time": "time", "outcome": d.outcome, "group": "group",
            "treatment": "treat", "covariates": list(COVARIATES)}


def meta_of(d: Design) -> pd.DataFrame:
    return pd.DataFrame({
        "unit": np.array([], np.int64), "time": np.array([], np.int64),
        d.outcome: np.array([], np.float64), "group": np.array([], np.int64),
        "treat": np.array([], np.int8), "age": np.array([], np.float64),
        "bmi": np.array([], np.float64), "female": np.array([], np.int8),
    })


def simulate_block(b: int, d: Design) -> dict[str, np.ndarray]:
    """Columns of simulation block ``b`` (units ``b*SIM_BLOCK+1 ...``), sorted by (unit, time)."""
    T = d.n_periods
    lo = b * SIM_BLOCK
    n = min(SIM_BLOCK, d.n_units - lo)
    rng = np.random.default_rng(np.random.SeedSequence(d.seed, spawn_key=(b,)))
    # fixed draw order: age, bmi, female, unit effect, cohort uniform, AR innovations, row drops
    age = np.clip(60.0 + 10.0 * rng.standard_normal(n), 30.0, 90.0)
    bmi = np.clip(28.0 + 4.0 * rng.standard_normal(n), 16.0, 45.0)
    female = (rng.random(n) < 0.5).astype(np.int8)
    a = rng.standard_normal(n)
    u = rng.random(n)
    z = rng.standard_normal((T, n))
    za, zb = (age - 60.0) / 10.0, (bmi - 28.0) / 4.0

    k = len(d.cohorts)
    if d.selection:
        lin = np.asarray(d.sel_base)[None, :] + np.outer(0.7 * za + 0.7 * zb, d.sel_slope)
        lin -= lin.max(axis=1, keepdims=True)
        p = np.exp(lin)
        cum = np.cumsum(p, axis=1)
        cum /= cum[:, -1:]
        cidx = np.minimum((cum < u[:, None]).sum(axis=1), k)
    else:
        cum = np.cumsum(d.probs)
        cum /= cum[-1]
        cidx = np.minimum(np.searchsorted(cum, u, side="right"), k)
    group = np.concatenate([[0], d.cohorts]).astype(np.int64)[cidx]

    # AR(1) errors, stationary start, loop over periods only
    e = z
    e[0] *= d.noise_sd
    e[1:] *= d.noise_sd * math.sqrt(1.0 - d.rho**2)
    for t in range(1, T):
        e[t] += d.rho * e[t - 1]
    level = d.mu + d.b_age * za + d.b_bmi * zb + d.b_female * female + d.unit_sd * a
    e += level[None, :]
    e += d.period_effects()[:, None]
    if d.selection:
        tt = np.arange(1, T + 1) / T
        e += np.outer(tt, d.g_age * za + d.g_bmi * zb)
    e += d.effect_table()[cidx].T
    y = e.T  # (n, T) view, unit-major

    times = np.arange(1, T + 1, dtype=np.int64)
    treat = ((group[:, None] > 0) & (times[None, :] >= group[:, None])).astype(np.int8)
    units = np.arange(lo + 1, lo + n + 1, dtype=np.int64)
    cols = {
        "unit": np.repeat(units, T), "time": np.tile(times, n), d.outcome: y.ravel(),
        "group": np.repeat(group, T), "treat": treat.ravel(), "age": np.repeat(age, T),
        "bmi": np.repeat(bmi, T), "female": np.repeat(female, T),
    }
    if d.unbalanced_share > 0:
        ud = rng.random((n, T))
        drop = ud < d.unbalanced_share
        lost = drop.all(axis=1)
        drop[lost, ud[lost].argmax(axis=1)] = False  # never drop a whole unit
        keep = ~drop.ravel()
        cols = {c: v[keep] for c, v in cols.items()}
    return cols


def simulate_partition(blocks: tuple[int, int], design: Design) -> pd.DataFrame:
    """Concatenate simulation blocks ``blocks[0] .. blocks[1]-1`` into one pandas frame."""
    parts = [simulate_block(b, design) for b in range(*blocks)]
    out: dict[str, np.ndarray] = {}
    for c in meta_of(design).columns:
        out[c] = np.concatenate([p.pop(c) for p in parts])
    return pd.DataFrame(out, copy=False)


def partition_blocks(n_units: int, npartitions: int | None) -> list[tuple[int, int]]:
    nblocks = -(-n_units // SIM_BLOCK)
    if npartitions is None:
        from dte_dask import config

        per = int(config.get("partition-units"))
        npartitions = max(1, -(-n_units // per))
    npartitions = min(check_int("npartitions", npartitions, 1), nblocks)
    bounds = [(p * nblocks) // npartitions for p in range(npartitions + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def truth_of(d: Design) -> pd.DataFrame:
    tab = d.effect_table()
    T, k = d.n_periods, len(d.cohorts)
    g = np.repeat(np.asarray(d.cohorts, dtype=np.int64), T)
    t = np.tile(np.arange(1, T + 1, dtype=np.int64), k)
    return pd.DataFrame({"group": g, "time": t, "event_time": t - g, "att": tab[1:].ravel()})


def options_of(d: Design, npartitions: int, preset: str | None) -> dict[str, Any]:
    return {
        "n_units": d.n_units, "n_periods": d.n_periods, "seed": d.seed, "preset": preset,
        "cohorts": list(d.cohorts), "never_treated_share": d.probs[0],
        "selection": d.selection, "unbalanced_share": d.unbalanced_share,
        "effect_size": d.effect_size, "cohort_scale": {str(g): s for g, s in zip(d.cohorts, d.scales)},
        "rho": d.rho, "noise_sd": d.noise_sd, "npartitions": npartitions, "sim_block": SIM_BLOCK,
    }


def simulate_panel(
    n_units: int,
    n_periods: int | None = None,
    *,
    cohorts: Sequence[int] | None = None,
    never_treated_share: float = 0.3,
    seed: int = 0,
    npartitions: int | None = None,
    selection: bool | None = None,
    preset: str | None = None,
    unbalanced_share: float = 0.0,
    effect_size: float | None = None,
    cohort_scale: float | Mapping[int, float] | Sequence[float] | None = None,
    rho: float | None = None,
    noise_sd: float | None = None,
) -> SimulatedPanel:
    """Simulate a staggered-adoption panel lazily, as a dask DataFrame with a known ATT(g,t).

    See the module docstring for the exact data-generating process.

    Parameters
    ----------
    n_units : int
        Number of units (ids ``1..n_units``), >= 1.
    n_periods : int, optional
        Number of periods ``T`` (times ``1..T``), >= 2. Default 10, or 24 for ``preset="medical"``.
    cohorts : sequence of int, optional
        First-treated periods, each in ``2..T``. Default: the preset's waves that fit in ``T``
        (medical: 4, 7, 10, 13, 16) or :func:`default_cohorts`.
    never_treated_share : float, default 0.3
        Target share of never-treated units (``group == 0``), in ``[0, 1)``; the other units are
        spread evenly over the cohorts (approximately so with ``selection``).
    seed : int, default 0
        Root seed; block ``b`` uses ``SeedSequence(seed, spawn_key=(b,))``.
    npartitions : int, optional
        Number of partitions; default ``ceil(n_units / dte_dask.partition-units)`` (262144 units).
        Capped at the number of simulation blocks ``ceil(n_units / 4096)``. Does not change the data.
    selection : bool, optional
        Selection on observables (see module docstring): cohort membership depends on age/bmi and
        the outcome has covariate-specific trends, so only *conditional* parallel trends hold.
        Default False, True for ``preset="medical"``.
    preset : {None, "medical"}
        Parameter set; ``"medical"`` names the outcome ``sbp`` (systolic blood pressure, mmHg).
    unbalanced_share : float, default 0.0
        Share of unit-period rows dropped at random (never every row of a unit), in ``[0, 1)``.
        The remaining rows are identical to those of the balanced panel.
    effect_size : float, optional
        Plateau of the effect path (3.0; medical -4.0 mmHg).
    cohort_scale : float, mapping or sequence, optional
        Per-cohort multiplier of the effect (default 1 for every cohort).
    rho, noise_sd : float, optional
        AR(1) coefficient and marginal sd of the errors (0.5 / 1.0; medical 0.5 / 6.0).

    Returns
    -------
    SimulatedPanel
        ``data`` (lazy dask DataFrame with columns ``unit, time, <outcome>, group, treat, age,
        bmi, female``), ``truth``, ``columns`` and ``options``.

    Raises
    ------
    SpecError
        For an invalid option (cohort outside ``2..T``, ``n_units < 1``, shares outside [0, 1)...).
    """
    import dask.dataframe as dd

    d = resolve_design(n_units, n_periods, cohorts=cohorts, never_treated_share=never_treated_share,
                 seed=seed, selection=selection, preset=preset, unbalanced_share=unbalanced_share,
                 effect_size=effect_size, cohort_scale=cohort_scale, rho=rho, noise_sd=noise_sd)
    parts = partition_blocks(d.n_units, npartitions)
    data = dd.from_map(simulate_partition, parts, design=d, meta=meta_of(d),
                       label="simulate-panel", enforce_metadata=False)
    return SimulatedPanel(data=data, truth=truth_of(d), columns=columns_of(d),
                          options=options_of(d, len(parts), preset))


