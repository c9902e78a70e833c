"""Aligned copies of arrays received from another process (numpy only).

Dask's distributed comms read small frames of a message into one buffer, so an array unpickled from
it can start at any byte (a float64 array at an address that is not a multiple of 8). numpy then
leaves its BLAS path for its own loops: ``x.T @ x`` and ``x.T @ y`` of a misaligned ``x``, or
``y.sum()`` of a long misaligned ``y``, are rounded differently from the same call on an aligned
copy of the same numbers. Results would then depend on where a task ran (threaded scheduler vs
distributed workers) and on how a message happened to be framed; :func:`aligned` restores the
alignment where data enters a kernel or comes back to the driver, so every sum is formed the same
way everywhere.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any

import numpy as np

__all__ = ["aligned", "keep_order"]


def aligned(obj: Any) -> Any:
    """``obj`` with every numpy array it holds aligned for its dtype (a copy of each misaligned one).

    Walks tuples, lists, dicts and dataclass instances (and objects that define
    ``__aligned__``); anything else is returned as is. Containers without a misaligned array are
    returned unchanged (the same object), so the common case costs one walk and no copy.
    """
    if isinstance(obj, np.ndarray):
        return obj if obj.flags.aligned or obj.dtype.hasobject else np.require(obj, requirements="A")
    if isinstance(obj, (list, tuple)):
        items = [aligned(v) for v in obj]
        if all(a is b for a, b in zip(items, obj)):
            return obj
        if isinstance(obj, list):
            return items
        return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
    if isinstance(obj, dict):
        items = {k: aligned(v) for k, v in obj.items()}
        if all(items[k] is v for k, v in obj.items()):
            return obj
        out = copy.copy(obj)
        out.update(items)
        return out
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        new = {f.name: aligned(getattr(obj, f.name)) for f in dataclasses.fields(obj) if hasattr(obj, f.name)}
        changed = {k: v for k, v in new.items() if v is not getattr(obj, k)}
        if not changed:
            return obj
        out = copy.copy(obj)
        for k, v in changed.items():
            object.__setattr__(out, k, v)  # frozen dataclasses too
        return out
    hook = getattr(obj, "__aligned__", None)
    if hook is not None and not isinstance(obj, type):
        return hook()
    return obj


def keep_order(a: Any) -> Any:
    """An array about to be pickled, copied contiguous in its own memory order when it is a strided
    view: pickle copies such a view into row-major order, so a row slice of a column-major matrix
    would arrive row-major, and BLAS rounds products of the two layouts differently. Anything else
    is returned as is."""
    if not isinstance(a, np.ndarray) or a.flags.c_contiguous or a.flags.f_contiguous:
        return a
    return np.array(a, order="K", copy=True)
