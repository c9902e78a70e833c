"""Compiled kernels, built on first use (numba is imported then, not with dte_dask) and cached on
disk by numba, so later processes load them instead of compiling.

Where numba finds no writable cache directory (a read-only install without a writable home;
``NUMBA_CACHE_DIR`` names one) a kernel is compiled in memory, once per process. Kernels are
compiled without ``fastmath``: each floating-point operation rounds as numpy's would, so a
kernel and the numpy expression it replaces give the same bits.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

_COMPILED: dict[Callable[..., Any], Any] = {}


def compiled(fn: Callable[..., Any]) -> Any:
    """``fn`` compiled by ``numba.njit(nogil=True)`` (the GIL released while it runs), once per
    process."""
    kernel = _COMPILED.get(fn)
    if kernel is None:
        import numba

        try:
            kernel = numba.njit(nogil=True, cache=True)(fn)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            kernel = numba.njit(nogil=True)(fn)
        _COMPILED[fn] = kernel
    return kernel


def check_positions(name: str, pos: np.ndarray, size: int) -> None:
    """Raise IndexError unless every position in ``pos`` lies in ``0..size-1``: the kernels index
    without bounds checks, so their callers check the positions they pass."""
    if pos.size and (pos.min() < 0 or pos.max() >= size):
        raise IndexError(f"{name} positions {pos.min()}..{pos.max()} outside 0..{size - 1}")
