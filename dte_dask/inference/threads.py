"""One-thread BLAS for the worker kernels, from one inspection of the process's thread pools."""
from __future__ import annotations

from functools import lru_cache

from threadpoolctl import ThreadpoolController

__all__ = ["single_threaded_blas"]


@lru_cache(maxsize=1)
def _threadpools() -> ThreadpoolController:
    """The process's BLAS / OpenMP pools, inspected once: a fresh inspection (what
    ``threadpoolctl.threadpool_limits`` does on every call) reads every loaded library's symbols,
    ~15 ms in a worker that has imported numba, once per RNG block of a bootstrap otherwise."""
    return ThreadpoolController()


def single_threaded_blas():
    """Context manager: the BLAS / OpenMP pools at one thread (inside a task of a threaded scheduler
    a multi-threaded BLAS only oversubscribes the cores, and one thread gives the same kernel, and
    rounding, in every process and thread)."""
    return _threadpools().limit(limits=1)
