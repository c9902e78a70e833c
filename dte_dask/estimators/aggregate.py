"""Moved to :mod:`dte_dask.results.aggregate` (aggregation algebra belongs with the results)."""
from dte_dask.results.aggregate import AggKind, AggMap, aggregate_map

__all__ = ["AggKind", "AggMap", "aggregate_map"]
