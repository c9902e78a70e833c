"""Record the shape of every array that reaches the driver from ``dask.compute``.

Used by tests/test_driver_memory.py and tests/test_robust_did_driver.py: a distributed estimator may
hand the driver sums over cells, cohorts and draws, never an array with one entry per unit.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dask
import dask.base
import numpy as np

from dte_dask.core.blocks import BlockSummary
from dte_dask.core.dyadic import DyadicCover


def arrays(obj: Any) -> Iterator[np.ndarray]:
    """Every numpy array inside ``obj`` (dicts, lists, tuples and the small result types computed)."""
    if isinstance(obj, np.ndarray):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from arrays(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from arrays(v)
    elif isinstance(obj, DyadicCover):
        yield from arrays(obj.nodes)
    elif isinstance(obj, BlockSummary):
        yield from arrays(obj.cohorts)


def spy_on_driver(monkeypatch: Any) -> list[tuple[int, ...]]:
    """From now on (for the test), the shapes of the arrays every ``dask.compute`` returns are appended
    to the list returned."""
    seen: list[tuple[int, ...]] = []
    real = dask.base.compute

    def spy(*args: Any, **kwargs: Any) -> Any:
        out = real(*args, **kwargs)
        seen.extend(a.shape for a in arrays(out))
        return out

    monkeypatch.setattr(dask.base, "compute", spy)
    monkeypatch.setattr(dask, "compute", spy)
    return seen
