"""distributed's ``performance_report`` for a job, without its spurious sizeof warnings.

The report collects every worker's statistical profile: a call tree as deep as the sampled stacks.
Sending it, distributed estimates its size with dask's recursive ``sizeof``, which overflows the
recursion limit on such a tree and logs ``Sizeof calculation for object of type 'dict' failed``
from the workers at the end of each job (dask/distributed#8578, open). The message is sent all the
same (the estimate only decides whether serialisation moves to another thread), so the warning
tells a user nothing. :class:`DeepSizeofFilter` drops exactly those records: a ``distributed.sizeof``
warning logged while a ``RecursionError`` is being handled. Any other sizeof failure is still logged.
"""
from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Any

LOGGER = "distributed.sizeof"
PLUGIN_NAME = "dte-dask-deep-sizeof"


class DeepSizeofFilter(logging.Filter):
    """Drop ``distributed.sizeof``'s fallback warning when a RecursionError caused it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not isinstance(sys.exc_info()[1], RecursionError)


def install_filter() -> None:
    """Add the filter to this process's ``distributed.sizeof`` logger (once)."""
    logger = logging.getLogger(LOGGER)
    if not any(isinstance(f, DeepSizeofFilter) for f in logger.filters):
        logger.addFilter(DeepSizeofFilter())


def _plugin() -> Any:
    from distributed.diagnostics.plugin import WorkerPlugin

    class DeepSizeofPlugin(WorkerPlugin):
        """Installs :class:`DeepSizeofFilter` in each worker process (restarted ones included)."""

        def setup(self, worker: Any) -> None:
            install_filter()

    return DeepSizeofPlugin()


@contextlib.contextmanager
def performance_report(client: Any, filename: str) -> Iterator[None]:
    """``distributed.performance_report(filename=...)`` with :class:`DeepSizeofFilter` in this
    process (the scheduler of a local cluster) and in every worker of ``client``."""
    from distributed import performance_report as report

    install_filter()
    client.register_plugin(_plugin(), name=PLUGIN_NAME)
    with report(filename=filename):
        yield
