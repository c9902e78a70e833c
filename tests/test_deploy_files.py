"""The container and Kubernetes files of the job service.

Where a Docker daemon answers, the image is built and its entry point runs; elsewhere (as on the
machines this suite usually runs on) the Dockerfile and the manifests are checked for structure
and for agreement with each other and with ``dte-dask serve``'s options.
"""
from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
K8S = REPO / "cluster_configs" / "kubernetes"


# ----------------------------------------------------------------------------- Dockerfile
def _instructions(text: str) -> list[tuple[str, str]]:
    """``[(INSTRUCTION, arguments)]`` with line continuations joined and comments dropped."""
    out, buf = [], ""
    for line in text.splitlines():
        s = line.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        buf += s
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def _exec_form(args: str) -> list[str]:
    v = json.loads(args)
    assert isinstance(v, list) and all(isinstance(x, str) for x in v), args
    return v


def _serve_options() -> set[str]:
    from dte_dask.cli.serve import command

    return {opt for p in command.params for opt in getattr(p, "opts", [])}


def _flags(args: list[str]) -> dict[str, str]:
    out = {}
    it = iter(args)
    for a in it:
        assert a.startswith("--"), a
        if "=" in a:
            k, v = a.split("=", 1)
        else:
            k, v = a, next(it)
        out[k] = v
    return out


def test_dockerfile_structure() -> None:
    ins = _instructions(DOCKERFILE.read_text())
    names = [i for i, _ in ins]
    froms = [a for i, a in ins if i == "FROM"]
    assert len(froms) == 2 and all(f.startswith("python:3.11") for f in froms)  # build stage + runtime stage
    assert froms[0].endswith(" AS build")
    for i, a in ins:
        if i == "COPY" and not a.startswith("--from"):
            for src in shlex.split(a)[:-1]:
                assert (REPO / src).exists(), f"COPY {src}: not in the repository"
    assert any(i == "RUN" and "dte_dask[service]" in a for i, a in ins)
    user = [a for i, a in ins if i == "USER"]
    assert user and user[-1] not in ("root", "0"), "the service must not run as root"
    assert names.index("USER") > max(k for k, n in enumerate(names) if n == "RUN")
    exposed = {int(p) for i, a in ins if i == "EXPOSE" for p in a.split()}
    assert exposed == {8000, 9090}
    health = next(a for i, a in ins if i == "HEALTHCHECK")
    assert "/health" in health and "127.0.0.1:8000" in health
    entry = _exec_form(next(a for i, a in ins if i == "ENTRYPOINT"))
    assert entry == ["dte-dask", "serve"]
    flags = _flags(_exec_form(next(a for i, a in ins if i == "CMD")))
    assert set(flags) <= _serve_options(), set(flags) - _serve_options()
    assert flags["--host"] == "0.0.0.0" and flags["--port"] == "8000" and flags["--metrics-port"] == "9090"
    volume = _exec_form(next(a for i, a in ins if i == "VOLUME"))
    assert Path(flags["--db"]).parent.as_posix() in volume
    ignore = (REPO / ".dockerignore").read_text().split()
    assert ".git" in ignore and "tests" in ignore


def test_pyproject_has_the_service_extra() -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"].get("optional-dependencies", {})
    assert "service" in extras, "the Dockerfile installs dte_dask[service]: add the `service` extra to pyproject.toml"
    names = {r.split(">")[0].split("=")[0].split("[")[0].strip().lower().replace("_", "-") for r in extras["service"]}
    assert {"fastapi", "uvicorn", "prometheus-client"} <= names


def _docker_works() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _docker_works(), reason="no working Docker daemon here: the structure tests stand in")
def test_docker_image_builds_and_starts() -> None:  # pragma: no cover - needs a Docker daemon
    tag = "dte-dask-service:test"
    r = subprocess.run(["docker", "build", "-t", tag, str(REPO)], capture_output=True, text=True, timeout=1800,
                       check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r = subprocess.run(["docker", "run", "--rm", tag, "--help"], capture_output=True, text=True, timeout=120,
                       check=False)
    assert r.returncode == 0 and "--max-concurrent" in r.stdout, r.stdout + r.stderr
    r = subprocess.run(["docker", "run", "--rm", "--entrypoint", "id", tag, "-u"], capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.stdout.strip() == "10001"


# ----------------------------------------------------------------------------- Kubernetes
def _all_docs() -> dict[tuple[str, str], dict[str, Any]]:
    """Every object of the kustomization, by (kind, name)."""
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kust["kind"] == "Kustomization"
    out = {}
    for res in kust["resources"]:
        for doc in yaml.safe_load_all((K8S / res).read_text()):
            assert {"apiVersion", "kind", "metadata"} <= set(doc), res
            assert doc["metadata"]["name"].startswith("dte-dask-service")
            out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


SERVICE_OWN = {"dte-dask-service", "dte-dask-service-profile", "dte-dask-service-state"}


def _docs() -> dict[str, dict[str, Any]]:
    """The service pod's own objects (Deployment, Service, ConfigMap, volume claim), by kind."""
    return {kind: doc for (kind, name), doc in _all_docs().items() if name in SERVICE_OWN}


def test_manifests_are_complete() -> None:
    assert set(_all_docs()) == {
        ("Deployment", "dte-dask-service"), ("Service", "dte-dask-service"), ("ConfigMap", "dte-dask-service-profile"),
        ("PersistentVolumeClaim", "dte-dask-service-state"), ("Deployment", "dte-dask-service-workers"),
        ("Service", "dte-dask-service-scheduler"), ("HorizontalPodAutoscaler", "dte-dask-service-workers"),
        ("NetworkPolicy", "dte-dask-service-scheduler")}
    docs = _docs()
    assert set(docs) == {"Deployment", "Service", "ConfigMap", "PersistentVolumeClaim"}
    assert docs["Deployment"]["apiVersion"] == "apps/v1" and docs["Service"]["apiVersion"] == "v1"
    for p in K8S.glob("*.yaml"):  # every file parses, the example secret too
        assert list(yaml.safe_load_all(p.read_text()))
    secret = yaml.safe_load((K8S / "secret.example.yaml").read_text())
    assert secret["kind"] == "Secret" and "token" in secret["stringData"]


def test_deployment_probes_ports_resources() -> None:
    docs = _docs()
    dep, svc = docs["Deployment"], docs["Service"]
    spec = dep["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= pod_labels.items()
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    # SQLite on a ReadWriteOnce volume: one owner at a time
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    (c,) = spec["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 8000, "metrics": 9090, "scheduler": 8786}
    for probe in ("livenessProbe", "readinessProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] == "/health" and get["port"] in ("http", 8000), probe
    assert c["livenessProbe"]["initialDelaySeconds"] >= c["readinessProbe"]["initialDelaySeconds"]
    req = c["resources"]["requests"]
    assert {"cpu", "memory"} <= set(req)
    assert c["resources"]["limits"]["memory"] == req["memory"]
    # the Service exposes both named ports; Prometheus is pointed at the metrics one
    assert {p["name"]: p["targetPort"] for p in svc["spec"]["ports"]} == {"http": "http", "metrics": "metrics"}
    ann = spec["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/path"] == "/metrics" and int(ann["prometheus.io/port"]) == ports["metrics"]
    # arguments are options of `dte-dask serve`, and agree with the ports and volumes
    flags = _flags(c["args"])
    assert set(flags) <= _serve_options(), set(flags) - _serve_options()
    assert int(flags["--port"]) == ports["http"] and int(flags["--metrics-port"]) == ports["metrics"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    assert set(mounts) == set(vols)
    assert Path(flags["--db"]).parent.as_posix() == mounts["state"]
    assert vols["state"]["persistentVolumeClaim"]["claimName"] == docs["PersistentVolumeClaim"]["metadata"]["name"]
    assert Path(flags["--profile"]).parent.as_posix() == mounts["profile"]
    assert vols["profile"]["configMap"]["name"] == docs["ConfigMap"]["metadata"]["name"]
    assert Path(flags["--profile"]).name in docs["ConfigMap"]["data"]
    assert flags["--data-root"] == mounts["data"]
    # the token comes from a Secret, never from the manifest itself
    env = {e["name"]: e for e in c["env"]}
    assert "secretKeyRef" in env["DTE_DASK_TOKEN"]["valueFrom"]
    sc = spec["template"]["spec"]["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0
    assert c["securityContext"]["allowPrivilegeEscalation"] is False


def test_configmap_profile_is_a_valid_cluster_profile() -> None:
    from dte_dask.cluster.schema import validate_profile

    cm = _docs()["ConfigMap"]
    profile = yaml.safe_load(cm["data"]["profile.yaml"])
    spec = validate_profile(profile, where="configmap.yaml")
    assert spec.kind == "local"
    c = spec.cluster
    # a scheduler only, on the port the pod exposes as "scheduler"; the worker pods join it
    assert c.n_workers == 0 and c.host == "0.0.0.0"
    dep = _docs()["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert {p["name"]: p["containerPort"] for p in dep["ports"]}["scheduler"] == c.scheduler_port


def test_workers_hpa_and_network_policy() -> None:
    from dask.utils import parse_bytes

    docs = _all_docs()
    workers = docs[("Deployment", "dte-dask-service-workers")]
    api = docs[("Deployment", "dte-dask-service")]
    sched = docs[("Service", "dte-dask-service-scheduler")]
    # the API's selectors never pick worker pods, and the other way round
    w_labels = workers["spec"]["template"]["metadata"]["labels"]
    a_labels = api["spec"]["template"]["metadata"]["labels"]
    assert workers["spec"]["selector"]["matchLabels"].items() <= w_labels.items()
    assert not api["spec"]["selector"]["matchLabels"].items() <= w_labels.items()
    assert not docs[("Service", "dte-dask-service")]["spec"]["selector"].items() <= w_labels.items()
    assert sched["spec"]["selector"].items() <= a_labels.items()
    # workers dial the scheduler Service on its port, and fit their container
    (c,) = workers["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["dask", "worker"]
    (port,) = sched["spec"]["ports"]
    assert c["args"][0] == f"tcp://{sched['metadata']['name']}:{port['port']}" and port["targetPort"] == "scheduler"
    flags = dict(a.split("=", 1) for a in c["args"][1:] if "=" in a)
    assert parse_bytes(flags["--memory-limit"]) < parse_bytes(c["resources"]["limits"]["memory"].replace("Gi", "GiB"))
    assert c["image"] == api["spec"]["template"]["spec"]["containers"][0]["image"]
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    # the autoscaler scales the workers on CPU and on the queue depth the service exports
    hpa = docs[("HorizontalPodAutoscaler", "dte-dask-service-workers")]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "dte-dask-service-workers"}
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    obj = metrics["Object"]["object"]
    assert obj["describedObject"]["name"] == "dte-dask-service"
    exported = (Path(__file__).parents[1] / "dte_dask" / "service" / "metrics.py").read_text()
    assert f'"{obj["metric"]["name"]}"' in exported  # a metric the service really exports
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 60
    # only worker pods reach the scheduler port
    pol = docs[("NetworkPolicy", "dte-dask-service-scheduler")]
    assert pol["spec"]["podSelector"]["matchLabels"].items() <= a_labels.items()
    rules = {tuple(p["port"] for p in r["ports"]): r for r in pol["spec"]["ingress"]}
    assert rules[(8786,)]["from"][0]["podSelector"]["matchLabels"].items() <= w_labels.items()
    assert "from" not in rules[(8000, 9090)]


def test_scheduler_only_profile_takes_external_workers(tmp_path) -> None:
    """The ConfigMap's profile (n_workers: 0) starts a scheduler that `dask worker` processes join,
    as the worker pods do, and a job runs on them."""
    import subprocess
    import sys

    import dte_dask
    from dte_dask.cluster import connect

    profile = yaml.safe_load(_docs()["ConfigMap"]["data"]["profile.yaml"])
    profile["cluster"].update(host="127.0.0.1", scheduler_port=0, dashboard_address=None,
                              local_directory=str(tmp_path / "dask"))
    with connect(profile) as client:
        assert len(client.scheduler_info()["workers"]) == 0
        proc = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", client.scheduler.address,
                                 "--nthreads=1", "--memory-limit=1GiB", "--no-dashboard",
                                 f"--local-directory={tmp_path / 'w'}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            client.wait_for_workers(1, timeout=60)
            res = dte_dask.att_gt(dte_dask.datasets.load_mpdta(), outcome="lemp", unit="countyreal", time="year",
                                  group="first_treat", bootstrap=False)
            assert len(res.to_frame()) == 12
        finally:
            proc.terminate()
            proc.wait(timeout=30)
