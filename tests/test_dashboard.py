"""The Dask dashboard of a job: loopback-only on local profiles, and live over HTTP while a job
runs -- its ``/status`` page, and its Prometheus ``/metrics`` whose per-prefix task counts show
the estimator's stages (``attgt-stats``, ``attgt-influence``, the bootstrap's ``mboot-*``).

``/metrics`` needs ``prometheus_client`` in the scheduler's environment (distributed serves the
route only then); without it that test is skipped with the reason.
"""
from __future__ import annotations

import importlib.util
import re
import threading
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlparse

import pytest

from dte_dask.cluster import connect
from dte_dask.cluster.profiles import resolve_profile
from dte_dask.jobs.runner import run_job
from dte_dask.jobs.spec import parse_job

pytestmark = [pytest.mark.filterwarnings("ignore:Port 8787 is already in use")]

_METRIC = re.compile(r"^dask_scheduler_prefix_state_totals(?:_total)?\{([^}]*)\}\s+(\S+)$", re.MULTILINE)
_LABEL = re.compile(r'(\w+)="([^"]*)"')
ESTIMATOR_PREFIXES = ("attgt-stats", "attgt-influence", "mboot-attgt-influence", "mboot-merge")


def _get(url: str, timeout: float = 10) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - loopback URL of our own cluster
            return r.status, r.headers.get("Content-Type", ""), r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), ""


def prefix_states(metrics: str) -> dict[str, dict[str, float]]:
    """``{task prefix: {state: count}}`` from the scheduler's Prometheus text."""
    out: dict[str, dict[str, float]] = {}
    for labels, value in _METRIC.findall(metrics):
        d = dict(_LABEL.findall(labels))
        out.setdefault(d["task_prefix_name"], {})[d["state"]] = float(value)
    return out


def test_local_profile_binds_dashboard_and_scheduler_to_loopback() -> None:
    spec = resolve_profile("local").spec.cluster
    assert spec.host == "127.0.0.1" and spec.dashboard_address.startswith("127.0.0.1:")
    # the profile's own dashboard address (8787, or a free port if another process holds it)
    with connect("local", n_workers=1, threads_per_worker=1) as client:
        assert urlparse(client.dashboard_link).hostname == "127.0.0.1"
        scheduler = client.cluster.scheduler
        bound = {s.getsockname()[0] for s in scheduler.http_server._sockets.values()}
        assert bound == {"127.0.0.1"}, bound  # not 0.0.0.0: unreachable from other hosts
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
        assert all(w.startswith("tcp://127.0.0.1:") for w in client.scheduler_info()["workers"])
        status, ctype, body = _get(client.dashboard_link)
        assert status == 200 and "text/html" in ctype and "Dask" in body


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run a job (simulated panel, bootstrap: a few seconds) in a thread and fetch the dashboard
    it printed while it runs."""
    out = tmp_path_factory.mktemp("dash") / "res"
    job = parse_job({
        "name": "dash",
        "data": {"source": "simulate", "simulate": {"units": 300_000, "periods": 8, "seed": 1}, "npartitions": 4},
        "estimators": [{"kind": "att_gt"}],
        "inference": {"bootstrap": True, "n_boot": 999, "seed": 5},
        "cluster": {"profile": "local", "performance_report": False,
                    "overrides": {"n_workers": 2, "threads_per_worker": 1, "dashboard_address": "127.0.0.1:0"}},
        "output": str(out), "report": False,
    })
    lines: list[str] = []
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["summary"] = run_job(job, progress=False, echo=lines.append)
        except BaseException as exc:  # noqa: BLE001 - reported by the tests
            result["error"] = exc

    th = threading.Thread(target=target, daemon=True)
    th.start()
    deadline = time.monotonic() + 120
    while not any(s.startswith("dashboard: ") for s in lines):
        assert th.is_alive() or "error" not in result, result.get("error")
        assert time.monotonic() < deadline, "the job printed no dashboard URL"
        time.sleep(0.05)
    link = next(s for s in lines if s.startswith("dashboard: ")).split(" ", 1)[1]
    base = link.rsplit("/", 1)[0]
    obs: dict[str, Any] = {"link": link, "status": None, "metrics": [], "prefixes": {}}
    while th.is_alive() and time.monotonic() < deadline:
        try:
            code, ctype, text = _get(base + "/metrics")
        except OSError as exc:  # URLError included: the job closed its cluster (it goes on saving)
            obs["closed"] = repr(exc)
            break
        if not th.is_alive():
            break
        if code != 200:
            obs["metrics"].append((code, ctype))
            if obs["status"] is None:
                obs["status"] = _get(link)
                obs["status_during_job"] = th.is_alive()
            time.sleep(0.3)
            continue
        obs["metrics"].append((code, ctype))
        for prefix, states in prefix_states(text).items():
            seen = obs["prefixes"].setdefault(prefix, {})
            for state, n in states.items():
                seen[state] = max(seen.get(state, 0.0), n)
        if obs["status"] is None and "attgt-stats" in obs["prefixes"]:
            try:
                obs["status"] = _get(link)  # the estimator is running now
            except OSError:
                break
            obs["status_during_job"] = th.is_alive()
        time.sleep(0.2)
    th.join(timeout=180)
    obs["result"] = result
    return obs


def test_job_succeeds_and_prints_a_loopback_dashboard(observed: dict[str, Any]) -> None:
    assert "error" not in observed["result"], observed["result"].get("error")
    assert urlparse(observed["link"]).hostname == "127.0.0.1"
    assert observed["result"]["summary"]["metadata"]["panel_shape"]["units"] == 300_000


def test_status_page_served_while_the_job_runs(observed: dict[str, Any]) -> None:
    assert observed["status"] is not None, "the job ended before /status could be fetched"
    status, ctype, body = observed["status"]
    assert status == 200 and "text/html" in ctype
    assert "<html" in body.lower() and "Dask" in body
    if "status_during_job" in observed:
        assert observed["status_during_job"]


def test_metrics_show_the_estimator_stages(observed: dict[str, Any]) -> None:
    if importlib.util.find_spec("prometheus_client") is None:
        pytest.skip("prometheus_client is not installed: distributed serves /metrics only with it "
                    "(pip install prometheus-client)")
    assert observed["metrics"] and all(code == 200 for code, _ in observed["metrics"]), observed["metrics"]
    assert all("text/plain" in ctype for _, ctype in observed["metrics"])
    prefixes = observed["prefixes"]
    missing = [p for p in ESTIMATOR_PREFIXES if p not in prefixes]
    assert not missing, f"prefixes {missing} never showed up; seen {sorted(prefixes)}"
    # the statistics and influence/bootstrap stages were seen completing tasks while the job ran
    for p in ("attgt-stats", "attgt-influence"):
        assert prefixes[p].get("memory", 0) > 0, (p, prefixes[p])
    assert "panel-layout" in prefixes  # the panel was loaded on the same cluster
