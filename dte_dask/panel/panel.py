"""The :class:`Panel`: validated, entity-partitioned wide blocks plus driver-side metadata."""
from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import dask
import distributed  # noqa: F401  (dask imports it on every compute to look for a client: pay it once, here)
import numpy as np
from dask.base import tokenize
from dask.delayed import Delayed

import dte_dask.panel.blocks  # noqa: F401  (registers Dask's sizeof of a block)
from dte_dask.core.aligned import aligned
from dte_dask.core.blocks import BlockSummary, UnitBlock, summarize
from dte_dask.core.labels import plain
from dte_dask.exceptions import PanelWarning
from dte_dask.panel.periods import PeriodMap
from dte_dask.panel.spec import PanelSpec


@dataclass(frozen=True)
class Panel:
    """A validated panel, held as one :class:`UnitBlock` per partition.

    Every unit (every cluster, when clustering) lives in exactly one partition; partitions are
    ordered by the stable entity index (sorted ids) and hold whole RNG blocks of
    ``rng_block_size`` entities, so bootstrap multipliers never depend on the partitioning.
    The driver holds only metadata: periods, cohort counts, partition summaries.
    """

    spec: PanelSpec
    periods: PeriodMap
    blocks: tuple[Delayed, ...]
    summaries: tuple[BlockSummary, ...]
    rng_block_size: int
    n_entities: int  # entities (units or clusters) ever loaded: ranks are 0..n_entities-1

    # ----------------------------------------------------------------- metadata
    @property
    def npartitions(self) -> int:
        return len(self.blocks)

    @property
    def n_units(self) -> int:
        return sum(s.n_units for s in self.summaries)

    @property
    def n_clusters(self) -> int:
        return sum(s.n_entities for s in self.summaries)

    @property
    def n_rows(self) -> int:
        return sum(s.n_rows for s in self.summaries)

    @property
    def n_periods(self) -> int:
        return self.periods.n_periods

    @property
    def n_rng_blocks(self) -> int:
        return max(1, -(-self.n_entities // self.rng_block_size))

    @property
    def cohort_sizes(self) -> dict[float, int]:
        """Units per group index (``inf`` = never treated)."""
        out: dict[float, int] = {}
        for s in self.summaries:
            for g, c in s.cohorts.items():
                out[g] = out.get(g, 0) + c
        return dict(sorted(out.items()))

    @property
    def cohort_obs(self) -> dict[float, np.ndarray]:
        """Units observed per group index (``inf`` = never treated) and period: (T,) counts each,
        summed from the partitions' summaries (counted on the workers)."""
        out: dict[float, np.ndarray] = {}
        for s in self.summaries:
            for g, c in (s.cohort_obs or {}).items():
                out[g] = out.get(g, np.zeros(self.n_periods, dtype=np.int64)) + np.asarray(c, dtype=np.int64)
        return dict(sorted(out.items()))

    def event_time_counts(self, event_periods: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Units behind each event-time estimate of a regression, for disclosure control.

        ``n_treated[e]``: units of the treated cohorts g observed in period g + e (summed over g);
        ``n_control[e]``: the smallest number, over those periods, of units not yet treated (later
        cohorts and never treated) observed there. Both come from the per-partition counts.
        """
        obs = self.cohort_obs
        T = self.n_periods
        ev = np.asarray(event_periods, dtype=np.int64)
        n_t = np.zeros(ev.size, dtype=np.int64)
        n_c = np.zeros(ev.size, dtype=np.int64)
        treated = [g for g in obs if np.isfinite(g) and 0 <= g <= T - 1]
        for i, e in enumerate(ev):
            periods = [(g, int(g + e)) for g in treated if 0 <= g + e <= T - 1]
            n_t[i] = sum(int(obs[g][t]) for g, t in periods)
            ctrl = [sum(int(c[t]) for h, c in obs.items() if h > t) for _, t in periods]
            n_c[i] = min(ctrl) if ctrl else 0
        return n_t, n_c

    @property
    def is_balanced(self) -> bool:
        return all(s.n_unbalanced == 0 for s in self.summaries)

    def group_label(self, g: float) -> Any:
        """Label of a group index (never treated -> 0 for integer periods, NaT for dates)."""
        if not np.isfinite(g):
            return 0 if self.periods.kind == "int" else np.datetime64("NaT")
        if self.periods.kind == "int":
            v = self.periods.labels[0] + g * self.periods.step
            return int(v) if float(v).is_integer() else float(v)
        if 0 <= g < self.n_periods and float(g).is_integer():
            return self.periods.labels[int(g)]
        return g

    def describe(self) -> dict[str, Any]:
        cohorts = {str(plain(self.group_label(g))) if np.isfinite(g) else "never treated": c
                   for g, c in self.cohort_sizes.items()}
        return {
            "units": self.n_units, "periods": self.n_periods, "rows": self.n_rows,
            "first_period": plain(self.periods.labels[0]), "last_period": plain(self.periods.labels[-1]),
            "cohorts": cohorts, "balanced": self.is_balanced, "partitions": self.npartitions,
            "clusters": self.n_clusters if self.spec.cluster else None,
            **({"repeated_cross_section": True} if self.spec.repeated_cross_section else {}),
        }

    def __repr__(self) -> str:
        d = self.describe()
        return (f"Panel(units={d['units']}, periods={d['periods']} [{d['first_period']}..{d['last_period']}], "
                f"cohorts={d['cohorts']}, balanced={d['balanced']}, partitions={d['partitions']})")

    # ----------------------------------------------------------------- graph helpers
    def map_blocks(self, func: Callable[..., Any], *args: Any, name: str, **kwargs: Any) -> list[Delayed]:
        """``func(block, *args, **kwargs)`` for every block, as tasks named ``name-<token>-<i>``."""
        token = tokenize(func, args, kwargs, *self.blocks)
        f = dask.delayed(partial(_on_block, func), pure=True)
        return [f(b, *args, **kwargs, dask_key_name=f"{name}-{token}-{i}") for i, b in enumerate(self.blocks)]

    def select_units(self, func: Callable[[UnitBlock], np.ndarray], name: str = "panel-select") -> Panel:
        """A new panel keeping, in every block, the units where ``func(block)`` is True."""
        blocks = self.map_blocks(_select, func, name=name)
        return finish(replace(self, blocks=tuple(blocks)))

    def drop_early_treated(self, anticipation: int = 0) -> Panel:
        """Drop units treated in or before the first period + ``anticipation`` (R ``did``'s rule)."""
        n_drop = sum(c for g, c in self.cohort_sizes.items() if g <= anticipation)
        if n_drop == 0:
            return self
        first = plain(self.periods.labels[0])
        warnings.warn(
            f"Dropped {n_drop} units that were already treated in the first period ({first})"
            + (f" or within the anticipation window of {anticipation} periods" if anticipation else "")
            + ", as R did does: they have no untreated pre-period.",
            PanelWarning, stacklevel=3,
        )
        return self.select_units(_TreatedAfter(anticipation), name="panel-drop-early")

    def balance(self) -> Panel:
        """Keep only units observed in every period (R ``did``'s default for panel data).

        A repeated cross section (every row its own unit) is returned as it is."""
        if self.spec.repeated_cross_section:
            return self
        n_drop = sum(s.n_unbalanced for s in self.summaries)
        if n_drop == 0:
            return self
        warnings.warn(
            f"{n_drop} units are missing in some periods. Converting to balanced panel by dropping them "
            "(pass allow_unbalanced_panel=True to keep them).", PanelWarning, stacklevel=3,
        )
        return self.select_units(_balanced, name="panel-balance")


class _TreatedAfter:
    def __init__(self, anticipation: int) -> None:
        self.anticipation = anticipation

    def __call__(self, block: UnitBlock) -> np.ndarray:
        return block.g > self.anticipation

    def __dask_tokenize__(self) -> Any:
        return ("treated-after", self.anticipation)


def _balanced(block: UnitBlock) -> np.ndarray:
    return ~np.isnan(block.y).any(axis=1)


def _select(block: UnitBlock, func: Callable[[UnitBlock], np.ndarray]) -> UnitBlock:
    return block.take(np.asarray(func(block), dtype=bool))


def finish(panel: Panel) -> Panel:
    """Persist the blocks (on the active client's workers, if any) and recompute their summaries."""
    blocks = dask.persist(*panel.blocks)
    summaries = dask.compute(*[dask.delayed(summarize, pure=True)(b) for b in blocks])
    return replace(panel, blocks=tuple(blocks), summaries=tuple(summaries))


def _on_block(func: Callable[..., Any], block: Any, *args: Any, **kwargs: Any) -> Any:
    """``func(block, *args, **kwargs)`` on its inputs as received from other processes, realigned
    (:mod:`dte_dask.core.aligned`): the same arithmetic wherever the task runs."""
    return func(aligned(block), *aligned(args), **aligned(kwargs))
