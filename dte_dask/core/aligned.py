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

__all__ = ["AlignedPickle", "aligned", "keep_order"]


def aligned(obj: Any) -> Any:
    """``obj`` with every numpy array it holds aligned for its dtype (a copy of each misaligned one).

    Walks tuples, lists, dicts and dataclass instances; anything else is returned as is. Containers without a misaligned array are
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
    return obj


def keep_order(a: Any) -> Any:
    """An array about to be pickled, copied contiguous in its own memory order when it is a strided
    view: pickle copies such a view into row-major order, so a row slice of a column-major matrix
    would arrive row-major, and BLAS rounds products of the two layouts differently. Anything else
    is returned as is."""
    if not isinstance(a, np.ndarray) or a.flags.c_contiguous or a.flags.f_contiguous:
        return a
    return np.array(a, order="K", copy=True)


class AlignedPickle:
    """Pickling for the panel's blocks (dataclasses of arrays) that crosses processes unchanged:
    each array keeps its memory order on the way out (:func:`keep_order`) and is realigned on the
    way in (:func:`aligned`), so kernels round alike wherever the block travelled."""

    def __getstate__(self) -> dict[str, Any]:
        return {k: keep_order(v) for k, v in self.__dict__.items()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(aligned(state))
