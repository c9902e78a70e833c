"""Where a loaded panel's partitions are built: spread over a distributed cluster's workers by
their threads, near the raw blocks they are cut from.

Every estimator pass runs one task per partition, on the worker that holds it (a partition is too
large for the scheduler to move for balance). The scheduler builds each partition where most of
its input lies, which follows the raw pieces of the files, not the workers' threads: the medical
panel's 11 pieces gave 12 partitions split 7 / 5 over two workers, so every pass ran as long as
7 partitions on one worker while the other idled (about 1.5 s of CS's bootstrap pass alone).
:func:`spread` assigns the partitions instead, as many per worker as its share of the
cluster's threads, and the raw pieces the same way: contiguous runs per worker, in entity order,
so that a partition is mostly built from pieces its own worker read.
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import dask
import numpy as np


def distributed_client() -> Any | None:
    """The distributed client that ``dask.compute`` would use now, else None (a local scheduler)."""
    try:
        from distributed import default_client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    try:
        client = default_client()
    except ValueError:  # no client
        return None
    return client if dask.base.get_scheduler() == client.get else None


def quotas(nthreads: Sequence[int], n: int) -> list[int]:
    """``n`` partitions shared by workers of ``nthreads`` threads, in proportion (largest
    remainders; ties to the earlier worker): their counts sum to ``n``."""
    share = np.asarray(nthreads, dtype=float) * n / max(sum(nthreads), 1)
    out = np.floor(share).astype(int)
    for i in np.argsort(-(share - out), kind="stable")[: n - int(out.sum())]:
        out[i] += 1
    return out.tolist()


def spread(n: int) -> list[str] | None:
    """Workers for ``n`` consecutive tasks (pieces or partitions, in entity order) of a distributed
    client's cluster: contiguous runs, one per worker (in address order), of lengths by the
    workers' threads (:func:`quotas`). A panel's raw pieces and its partitions spread this way line
    up, so a partition is mostly built from pieces read on its own worker. None when no distributed
    client computes or it has fewer than two workers (then the scheduler places the tasks)."""
    client = distributed_client()
    if client is None or n < 2:
        return None
    workers = sorted(client.scheduler_info(n_workers=-1)["workers"].items())
    if len(workers) < 2:
        return None
    counts = quotas([info.get("nthreads", 1) for _, info in workers], n)
    return [addr for (addr, _), c in zip(workers, counts) for _ in range(c)]


def on_worker(where: list[str] | None, i: int) -> contextlib.AbstractContextManager:
    """``dask.annotate`` placing the tasks made inside on ``where[i]`` (a loose restriction: another
    worker if that one is gone); nothing when ``where`` is None."""
    if where is None:
        return contextlib.nullcontext()
    return dask.annotate(workers=[where[i]], allow_other_workers=True)
