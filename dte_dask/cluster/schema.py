"""Schema of the cluster profiles (``cluster_configs/<name>.yaml``), as pydantic models.

A profile is a YAML mapping with a ``kind`` (``local``, ``ssh`` or ``slurm``), a ``cluster``
section whose keys are those of the matching Dask deployment (``LocalCluster``,
``distributed.SSHCluster``, ``dask_jobqueue.SLURMCluster``), an optional ``security`` section
(TLS) and a few connection settings. Every mapping is *closed*: a key the schema does not know
is an error that names it (``cluster.worker_options.nthread``), so typos never pass silently.

:func:`validate_profile` turns a plain mapping into a :data:`Profile` model or raises
:class:`ProfileError`; :func:`profile_json_schema` gives the same rules as JSON Schema (for
editors and other tools).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from dte_dask.exceptions import DteDaskError

__all__ = [
    "ProfileError", "AdaptSpec", "SecuritySpec", "LocalSpec", "ConnectOptions", "SSHWorkerOptions",
    "SchedulerOptions", "SSHSpec", "SlurmSpec", "LocalProfile", "SSHProfile", "SlurmProfile",
    "Profile", "KINDS", "TOP_LEVEL_KEYS", "validate_profile", "profile_json_schema",
]

KINDS = ("local", "ssh", "slurm")
"""Deployment kinds a profile can describe."""


class ProfileError(DteDaskError, ValueError):
    """A cluster profile cannot be found, parsed or validated (the message says which key)."""


class _Closed(BaseModel):
    """Base of every section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", populate_by_name=False)


NumactlMode = Literal["auto", "always", "never"]
Bytes = PositiveInt | str


# --------------------------------------------------------------------------------------------
# security
# --------------------------------------------------------------------------------------------
class SecuritySpec(_Closed):
    """TLS between scheduler, workers and client (``distributed.security.Security``).

    One CA signs one certificate used by every role (mutual TLS: each side presents it and
    checks the other's against the CA). Files default to ``<directory>/{ca,cert,key}.pem``;
    ``directory`` defaults to ``dask.config["dte_dask.cluster.tls-directory"]``. On SSH and
    Slurm clusters the files must exist at the same absolute paths on every host (a shared
    file system, or copy them).
    """

    tls: bool = False
    directory: str | None = None
    ca_file: str | None = None
    cert: str | None = None
    key: str | None = None
    generate: bool = Field(
        True, description="create a CA and a certificate in `directory` when they are missing")
    hostnames: list[str] = Field(
        default_factory=list,
        description="extra DNS names / IPs put in a generated certificate "
                    "(localhost, 127.0.0.1 and this host are always included)")
    require_encryption: bool = True


# --------------------------------------------------------------------------------------------
# local
# --------------------------------------------------------------------------------------------
class LocalSpec(_Closed):
    """``distributed.LocalCluster`` options.

    ``n_workers``/``threads_per_worker``/``memory_limit`` left ``null`` come from the NUMA plan
    of this machine (:func:`dte_dask.cluster.numa.plan_workers`): each NUMA node's CPUs split
    into processes and threads as Dask's LocalCluster splits a machine
    (:func:`dte_dask.cluster.local.default_workers`; with only ``threads_per_worker`` given, one
    worker per node), 90% of the memory split evenly.
    """

    n_workers: Annotated[int, Field(ge=0)] | None = Field(
        None, description="0: a scheduler only, for workers started elsewhere (e.g. a Kubernetes Deployment)")
    threads_per_worker: PositiveInt | None = None
    memory_limit: Bytes | None = None
    processes: bool = True
    host: str = "127.0.0.1"
    scheduler_port: Annotated[int, Field(ge=0, le=65535)] = 0
    dashboard_address: str | None = "127.0.0.1:8787"
    pin_cpus: bool = Field(False, description="pin each worker to the CPUs of its NUMA plan")
    local_directory: str | None = None
    env: dict[str, str] = Field(
        default_factory=dict,
        description="environment variables of the worker processes (in the environment each worker process "
                    "starts with, after distributed.nanny.pre-spawn-environ); needs processes: true")

    @model_validator(mode="after")
    def _env_needs_processes(self) -> "LocalSpec":
        if self.env and not self.processes:
            raise ValueError("cluster.env needs processes: true (threads share this process's environment)")
        return self


# --------------------------------------------------------------------------------------------
# ssh
# --------------------------------------------------------------------------------------------
class ConnectOptions(_Closed):
    """The ``asyncssh.connect`` options a profile may set (only the ones set are passed).

    ``known_hosts: null`` disables host-key checking (asyncssh semantics); leaving it out uses
    ``~/.ssh/known_hosts``.
    """

    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    username: str | None = None
    client_keys: list[str] | None = None
    known_hosts: str | None = None
    config: list[str] | None = None
    agent_path: str | None = None
    passphrase: str | None = None
    connect_timeout: PositiveFloat | None = None
    login_timeout: PositiveFloat | None = None
    keepalive_interval: PositiveFloat | None = None

    @model_validator(mode="before")
    @classmethod
    def _empty_means_unset(cls, data: Any) -> Any:
        # profiles write `known_hosts: ${LOCAL_SSHD_KNOWN_HOSTS:-}`: an empty string (or a list
        # of empty strings) means "not set", so asyncssh's own default applies
        if not isinstance(data, dict):
            return data
        out = {}
        for k, v in data.items():
            if v == "":
                continue
            if isinstance(v, list) and v and all(x == "" for x in v):
                continue
            out[k] = v
        return out


class SSHWorkerOptions(_Closed):
    """Options of each remote worker (``distributed.Nanny`` / ``Worker``)."""

    n_workers: PositiveInt | None = None
    nthreads: PositiveInt | None = None
    memory_limit: Bytes | None = None
    interface: str | None = None
    host: str | None = None
    local_directory: str | None = None
    resources: dict[str, float] | None = None
    death_timeout: PositiveFloat | None = None
    lifetime: str | None = None
    lifetime_stagger: str | None = None
    lifetime_restart: bool | None = None
    dashboard: bool | None = None
    dashboard_address: str | None = None
    preload: list[str] | None = None
    preload_argv: list[str] | None = None
    name: str | None = None


class SchedulerOptions(_Closed):
    """Options of the scheduler (``distributed.Scheduler``) of an SSH or Slurm cluster."""

    host: str | None = None
    port: Annotated[int, Field(ge=0, le=65535)] | None = None
    interface: str | None = None
    protocol: Literal["tcp", "tls", "tcp://", "tls://"] | None = None
    dashboard: bool | None = None
    dashboard_address: str | None = None
    idle_timeout: str | None = None
    preload: list[str] | None = None
    preload_argv: list[str] | None = None


class SSHSpec(_Closed):
    """``distributed.SSHCluster`` options.

    ``hosts[0]`` runs the scheduler, every further entry one worker process group (repeat a
    host to run several). ``numactl``: ``auto`` probes each worker host over SSH and, where
    ``numactl`` exists, prefixes ``remote_python`` with ``numactl --cpunodebind=N --membind=N``,
    the k-th entry of a host going to its k-th NUMA node (round robin); ``always`` requires
    numactl; ``never`` leaves ``remote_python`` alone.
    """

    hosts: list[str] = Field(min_length=2)
    connect_options: ConnectOptions | list[ConnectOptions] = Field(default_factory=ConnectOptions)
    worker_options: SSHWorkerOptions = Field(default_factory=SSHWorkerOptions)
    scheduler_options: SchedulerOptions = Field(default_factory=SchedulerOptions)
    remote_python: str | list[str] | None = None
    worker_class: str = "distributed.Nanny"
    numactl: NumactlMode = "auto"
    env: dict[str, str] = Field(
        default_factory=dict, description="environment variables set for the remote processes")
    forward_env: list[str] = Field(
        default_factory=list,
        description="glob patterns of variables of THIS process copied to the remote processes "
                    "(e.g. OPENBLAS_*: the same BLAS kernels give bit-identical results)")

    @field_validator("connect_options", "remote_python")
    @classmethod
    def _per_host_lists(cls, value: Any, info: Any) -> Any:
        hosts = info.data.get("hosts")
        if isinstance(value, list) and hosts is not None and info.field_name == "connect_options":
            if len(value) != len(hosts):
                raise ValueError(f"a list of connect_options needs one entry per host "
                                 f"({len(hosts)}), got {len(value)}")
        if isinstance(value, list) and hosts is not None and info.field_name == "remote_python":
            if len(value) != len(hosts):
                raise ValueError(f"a list of remote_python needs one entry per host "
                                 f"({len(hosts)}), got {len(value)}")
        return value


# --------------------------------------------------------------------------------------------
# slurm
# --------------------------------------------------------------------------------------------
class SlurmSpec(_Closed):
    """``dask_jobqueue.SLURMCluster`` options (per job), plus ``jobs`` to start.

    ``numactl`` puts ``numactl --cpunodebind=<nodes> --membind=<nodes>`` in front of the
    worker's ``python``: ``always`` unconditionally, ``auto`` only when the compute node has
    numactl (decided in the job script), ``never`` not at all. ``numa_nodes: auto`` binds to
    the NUMA node(s) of the CPUs the job was given (``numactl --show`` in the job script);
    otherwise a node list such as ``"0"`` or ``"0,1"``.
    """

    cores: PositiveInt
    memory: str
    processes: PositiveInt = 1
    walltime: Annotated[str, Field(pattern=r"^(\d+-)?\d{1,2}(:\d{2}){0,2}$")] = "00:30:00"
    jobs: Annotated[int, Field(ge=0)] = 1
    queue: str | None = None
    account: str | None = None
    job_name: str | None = None
    job_cpu: PositiveInt | None = None
    job_mem: str | None = None
    job_extra_directives: list[str] = Field(default_factory=list)
    job_directives_skip: list[str] = Field(default_factory=list)
    job_script_prologue: list[str] = Field(default_factory=list)
    worker_extra_args: list[str] = Field(default_factory=list)
    interface: str | None = None
    local_directory: str | None = None
    log_directory: str | None = None
    shared_temp_directory: str | None = None
    python: str | None = None
    death_timeout: PositiveFloat | None = None
    scheduler_options: SchedulerOptions = Field(default_factory=SchedulerOptions)
    env: dict[str, str] = Field(
        default_factory=dict,
        description="environment variables exported in the job script")
    forward_env: list[str] = Field(
        default_factory=list,
        description="glob patterns of variables of THIS process exported in the job script "
                    "(e.g. OPENBLAS_*: the same BLAS kernels give bit-identical results)")
    numactl: NumactlMode = "never"
    numa_nodes: Annotated[str, Field(pattern=r"^(auto|\d+([,-]\d+)*)$")] = "auto"


# --------------------------------------------------------------------------------------------
# profile
# --------------------------------------------------------------------------------------------
class AdaptSpec(_Closed):
    """Adaptive scaling (``distributed.deploy.Adaptive``): workers are added while tasks queue and
    released when idle, between ``minimum`` and ``maximum`` workers (Slurm: worker processes,
    ``processes`` per job)."""

    minimum: Annotated[int, Field(ge=0)] = Field(0, description="workers kept when idle")
    maximum: PositiveInt = Field(..., description="workers at most")
    interval: str = Field("1s", description="how often the scheduler is asked for a target")
    wait_count: PositiveInt = Field(3, description="consecutive idle checks before a worker goes")
    target_duration: str = Field("5s", description="aim to finish the queued work in about this long")

    @model_validator(mode="after")
    def _bounds(self) -> AdaptSpec:
        if self.minimum > self.maximum:
            raise ValueError(f"minimum ({self.minimum}) must not exceed maximum ({self.maximum})")
        for name in ("interval", "target_duration"):
            from dask.utils import parse_timedelta

            try:
                parse_timedelta(getattr(self, name))
            except (ValueError, TypeError, KeyError):
                raise ValueError(f"{name}: {getattr(self, name)!r} is not a duration such as '2s' or '500ms'") \
                    from None
        return self


class _ProfileBase(_Closed):
    version: Literal[1] = 1
    description: str = ""
    security: SecuritySpec = Field(default_factory=SecuritySpec)
    wait_for_workers: Annotated[int, Field(ge=0)] | None = Field(
        None, description="workers connect() waits for; default: all the profile starts")
    wait_timeout: PositiveFloat = Field(
        120.0, description="seconds connect() waits for them (dte_dask.cluster.wait-timeout)")
    adapt: AdaptSpec | None = Field(
        None, description="adaptive scaling between minimum and maximum workers (local and slurm)")


class LocalProfile(_ProfileBase):
    kind: Literal["local"]
    cluster: LocalSpec = Field(default_factory=LocalSpec)

    @model_validator(mode="after")
    def _adapt_layout(self) -> LocalProfile:
        if self.adapt is not None and self.cluster.pin_cpus:
            raise ValueError("adapt: pinned workers (cluster.pin_cpus: true) need a fixed layout; "
                             "set pin_cpus: false or drop adapt")
        return self


class SSHProfile(_ProfileBase):
    kind: Literal["ssh"]
    cluster: SSHSpec

    @model_validator(mode="after")
    def _no_adapt(self) -> SSHProfile:
        if self.adapt is not None:
            raise ValueError("adapt: an SSH cluster runs one worker set on its fixed host list; adaptive "
                             "scaling is available for local and slurm profiles")
        return self


class SlurmProfile(_ProfileBase):
    kind: Literal["slurm"]
    cluster: SlurmSpec


Profile = Annotated[LocalProfile | SSHProfile | SlurmProfile, Field(discriminator="kind")]
"""A validated profile: :class:`LocalProfile`, :class:`SSHProfile` or :class:`SlurmProfile`."""

TOP_LEVEL_KEYS = frozenset(_ProfileBase.model_fields) | {"kind", "cluster"}
"""Keys of a profile outside its ``cluster`` section."""

_ADAPTER: TypeAdapter[Any] = TypeAdapter(Profile)


_UNION_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "ConnectOptions"}


def _is_union_tag(part: Any) -> bool:
    """pydantic puts the union member it tried into ``loc`` (``constrained-int``,
    ``list[ConnectOptions]``, ``function-after[...]``); those are not profile keys."""
    if not isinstance(part, str):
        return False
    return part in _UNION_TAGS or "[" in part or part.startswith(("constrained-", "function-"))


def _loc(loc: tuple[Any, ...], keep_last: bool = False) -> str:
    parts = list(loc)
    if parts and parts[0] in KINDS:  # the discriminator tag pydantic puts first
        parts = parts[1:]
    last = parts[-1:] if keep_last else []
    body = parts[:-1] if keep_last else parts
    kept = [str(p) for p in body if not _is_union_tag(p)] + [str(p) for p in last]
    return ".".join(kept) or "<profile>"


_TYPE_ONLY = {"model_type", "dict_type", "list_type", "model_attributes_type"}


def format_validation_error(exc: ValidationError, where: str) -> str:
    """One readable message for all errors of a pydantic ``ValidationError``."""
    errors = exc.errors()
    unknown: list[str] = []
    found: dict[str, list[str]] = {}
    for err in errors:
        if err.get("type") == "extra_forbidden":
            loc = _loc(tuple(err.get("loc", ())), keep_last=True)
            if loc not in unknown:
                unknown.append(loc)
    locs = [_loc(tuple(e.get("loc", ())), keep_last=e.get("type") == "extra_forbidden")
            for e in errors]
    for err, loc in zip(errors, locs, strict=True):
        if err.get("type") == "extra_forbidden":
            continue
        # "should be a dict" from one union member is noise when another member got further
        if err.get("type") in _TYPE_ONLY and any(o.startswith(loc + ".") for o in locs):
            continue
        msgs = found.setdefault(loc, [])
        if err.get("msg") not in msgs:
            msgs.append(str(err.get("msg")))
    lines = []
    if unknown:
        lines.append(f"unknown key(s): {', '.join(unknown)}")
    lines.extend(f"{loc}: {' or '.join(msgs)}" for loc, msgs in found.items())
    return f"invalid cluster profile {where}: " + "; ".join(lines)


def validate_profile(data: Any, where: str = "<mapping>") -> Any:
    """Validate a profile mapping.

    Parameters
    ----------
    data : mapping
        The profile, as read from YAML (after defaults and overrides were merged in).
    where : str
        Named in error messages (e.g. the file).

    Returns
    -------
    LocalProfile, SSHProfile or SlurmProfile

    Raises
    ------
    ProfileError
        Naming every unknown key (``unknown key(s): cluster.nthread``) and every bad value.
    """
    if not isinstance(data, dict):
        raise ProfileError(f"invalid cluster profile {where}: expected a mapping, "
                           f"got {type(data).__name__}")
    kind = data.get("kind")
    if kind not in KINDS:
        raise ProfileError(f"invalid cluster profile {where}: 'kind' must be one of "
                           f"{list(KINDS)}, got {kind!r}")
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise ProfileError(format_validation_error(exc, where)) from None


def profile_json_schema() -> dict[str, Any]:
    """The profile rules as a JSON Schema (draft 2020-12) dictionary."""
    return _ADAPTER.json_schema()
