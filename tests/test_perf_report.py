"""The job's performance report: distributed's sizeof warning on deep profile trees is dropped, and
only that one (dask/distributed#8578)."""
from __future__ import annotations

import logging

import pytest
from distributed.sizeof import safe_sizeof

from dte_dask.jobs import perf_report


def _deep(levels: int) -> dict:
    """A call tree shaped like distributed's profiles: nested description/children/count dicts."""
    root = node = {"description": {}, "children": {}, "count": 1, "identifier": "root"}
    for i in range(levels):
        child = {"description": {}, "children": {}, "count": 1, "identifier": str(i)}
        node["children"][str(i)] = child
        node = child
    return root


@pytest.fixture
def sizeof_logger():
    logger = logging.getLogger(perf_report.LOGGER)
    kept = list(logger.filters)
    logger.filters = [f for f in kept if not isinstance(f, perf_report.DeepSizeofFilter)]
    yield logger
    logger.filters = kept


def test_deep_profile_tree_warns_without_the_filter(sizeof_logger, caplog):
    with caplog.at_level(logging.WARNING, logger=perf_report.LOGGER):
        safe_sizeof(_deep(2000))
    assert any("Sizeof calculation" in r.getMessage() for r in caplog.records)


def test_the_filter_drops_only_the_recursion_warning(sizeof_logger, caplog):
    perf_report.install_filter()
    perf_report.install_filter()  # once only
    assert sum(isinstance(f, perf_report.DeepSizeofFilter) for f in sizeof_logger.filters) == 1

    class Unsizeable:
        def __sizeof__(self):
            raise TypeError("no size")

    with caplog.at_level(logging.WARNING, logger=perf_report.LOGGER):
        assert safe_sizeof(_deep(2000), default_size=7) == 7
        assert not caplog.records
        safe_sizeof(Unsizeable())  # any other failure is still reported
    assert len(caplog.records) == 1 and "Unsizeable' failed" in caplog.records[0].getMessage()


def test_every_worker_gets_the_filter(tmp_path, sizeof_logger):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
        with perf_report.performance_report(client, str(tmp_path / "report.html")):
            assert client.submit(sum, [1, 2]).result() == 3
        plugged = client.run(lambda dask_worker: perf_report.PLUGIN_NAME in dask_worker.plugins)
    assert list(plugged.values()) == [True]
    assert (tmp_path / "report.html").stat().st_size > 0
    assert any(isinstance(f, perf_report.DeepSizeofFilter) for f in sizeof_logger.filters)
