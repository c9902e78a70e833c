"""Settings of one ``dte-dask serve`` process (the CLI builds them; tests may too)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dte_dask.disclosure import DisclosureSpec
from dte_dask.exceptions import DteDaskError

TOKEN_ENV = "DTE_DASK_TOKEN"


class ServiceConfigError(DteDaskError):
    """The service cannot start with these settings (no token, unreadable token file...)."""


@dataclass(frozen=True)
class Limits:
    """What one submitted job may ask for (checked before it is queued; 422 naming the field).

    They bound the work an authenticated caller can start with one small request: the simulated
    panel's size, the bootstrap draws, the number of estimators and of partitions, the estimated
    work and largest task of the job (:mod:`dte_dask.service.limits`), and the size of the spec's
    fields (the job name, any string, list or mapping).
    """

    max_simulate_rows: int = 50_000_000
    max_n_boot: int = 100_000
    max_estimators: int = 32
    max_npartitions: int = 4096
    max_work: float = 1e14
    max_task_bytes: int = 4 << 30
    max_name_chars: int = 200
    max_string_chars: int = 4096
    max_list_items: int = 1000


@dataclass(frozen=True)
class ServiceSettings:
    """Everything a service process needs.

    Attributes
    ----------
    profile : str or mapping
        Cluster profile (name, YAML path or inline mapping) started once at startup; every job
        runs on it (a job's own ``cluster.profile`` / ``overrides`` are recorded, not used).
    token : str
        The bearer token required on every route but ``/health``.
    db_path : Path
        SQLite file of the job store (created with its folder).
    results_dir : Path
        Each job writes ``results_dir/<job id>/`` (a job's own ``output`` is not used).
    data_roots : tuple of Path
        Folders file sources (parquet/CSV paths or globs) must lie in; empty: only the
        ``mpdta`` and ``simulate`` sources are accepted. Relative sources are read from the first.
    data_buckets : tuple of str
        Object-store prefixes (``s3://bucket/prefix/``) URL sources must lie under.
    bucket_options : dict
        The storage options the service reads those buckets with (``endpoint_url``, ``profile``,
        ...; no credentials: they come from the service's environment). A job cannot set its own.
    max_concurrent : int
        Jobs running at once; more wait in a FIFO queue of at most ``max_queued`` (then 429).
    max_request_bytes : int
        Largest request body accepted (413 beyond).
    job_timeout_s : float or None
        Wall-clock limit of a running job; past it the job is stopped and marked ``failed``
        ("wall-clock limit ... exceeded"). None: no limit.
    job_memory_bytes : int or None
        Memory budget of a running job on the workers: the bytes of its results held in worker
        memory (the scheduler's ``nbytes`` of the tasks it submitted); past it the job is stopped
        and marked ``failed``. None: no budget.
    disclosure : DisclosureSpec
        The service's disclosure control (``--min-cell-size``, ``--round-counts``): applied to every
        job that sets none; a job may ask for stricter settings, never looser ones (422).
    retain_days : float or None
        Finished jobs older than this (by their end) are deleted with their results, at startup
        and every ``purge_interval_s``. None: kept for ever.
    public_url : str or None
        Printed when ready (the CLI sets it from the bound socket).
    """

    profile: Any = "local"
    token: str = ""
    db_path: Path = Path("dte-dask-service") / "jobs.sqlite"
    results_dir: Path | None = None
    data_roots: tuple[Path, ...] = ()
    data_buckets: tuple[str, ...] = ()
    bucket_options: dict[str, Any] = field(default_factory=dict)
    max_concurrent: int = 2
    max_queued: int = 1000
    max_request_bytes: int = 256 << 10
    limits: Limits = field(default_factory=Limits)
    metrics_port: int | None = None
    public_url: str | None = None
    shutdown_grace_s: float = 10.0
    job_timeout_s: float | None = 6 * 3600.0
    job_memory_bytes: int | None = None
    retain_days: float | None = 30.0
    purge_interval_s: float = 3600.0
    disclosure: DisclosureSpec = field(default_factory=DisclosureSpec)

    def __post_init__(self) -> None:
        if not self.token:
            raise ServiceConfigError(f"no API token: set {TOKEN_ENV} or pass --token-file")
        if self.max_concurrent < 1:
            raise ServiceConfigError("max_concurrent must be >= 1")
        if self.max_queued < 0:
            raise ServiceConfigError("max_queued must be >= 0")
        for name in ("job_timeout_s", "job_memory_bytes", "retain_days"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ServiceConfigError(f"{name} must be > 0 (or None: no limit)")
        object.__setattr__(self, "db_path", Path(self.db_path).expanduser().absolute())
        res = self.results_dir if self.results_dir is not None else self.db_path.parent / "results"
        object.__setattr__(self, "results_dir", Path(res).expanduser().absolute())
        roots = []
        for r in self.data_roots:
            p = Path(r).expanduser()
            if not p.is_dir():
                raise ServiceConfigError(f"data root {os.fspath(r)!r} is not a directory")
            roots.append(p.resolve())
        object.__setattr__(self, "data_roots", tuple(roots))
        from dte_dask.service.paths import normalise_bucket_prefix
        from dte_dask.storage import check_no_secrets

        try:
            object.__setattr__(self, "data_buckets", tuple(normalise_bucket_prefix(b) for b in self.data_buckets))
            check_no_secrets(self.bucket_options, "bucket options")
        except ValueError as exc:
            raise ServiceConfigError(str(exc)) from None

    @property
    def results_root(self) -> Path:
        assert self.results_dir is not None
        return self.results_dir


def read_token(token_file: str | os.PathLike[str] | None = None, environ: dict[str, str] | None = None) -> str:
    """The API token: the first line of ``token_file`` if given, else ``$DTE_DASK_TOKEN``.

    Raises
    ------
    ServiceConfigError
        Neither is set, the file cannot be read, or the token is empty.
    """
    env = os.environ if environ is None else environ
    if token_file is not None:
        try:
            text = Path(token_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ServiceConfigError(f"cannot read token file {os.fspath(token_file)!r}: {exc}") from None
        token = text.strip().splitlines()[0].strip() if text.strip() else ""
        if not token:
            raise ServiceConfigError(f"token file {os.fspath(token_file)!r} is empty")
        return token
    token = env.get(TOKEN_ENV, "").strip()
    if not token:
        raise ServiceConfigError(f"no API token: set {TOKEN_ENV} or pass --token-file")
    return token
