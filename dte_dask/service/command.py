"""``dte-dask serve``: the HTTP job service (submit, watch, fetch, cancel) in front of a cluster."""
from __future__ import annotations

import click

from dte_dask.storage import parse_storage_options


@click.command(name="serve")
@click.option("--profile", default="local", show_default=True,
              help="Cluster profile (name or YAML path) started once; every job runs on it.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0: any free port, printed at startup).")
@click.option("--metrics-port", default=None, type=click.IntRange(0, 65535),
              help="Also serve /metrics and /health on this port (still token-protected).")
@click.option("--db", "db", default="dte-dask-service/jobs.sqlite", show_default=True, type=click.Path(dir_okay=False),
              help="SQLite job database (created if missing).")
@click.option("--results-dir", default=None, type=click.Path(file_okay=False),
              help="Where jobs write their results  [default: 'results' next to --db]")
@click.option("--token-file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="File whose first line is the API token  [default: $DTE_DASK_TOKEN]")
@click.option("--data-root", "data_roots", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Folder file sources must lie in (repeatable). None: only 'mpdta' and 'simulate'.")
@click.option("--allow-bucket", "data_buckets", multiple=True, metavar="URL",
              help="Object-store prefix URL sources may lie under, e.g. s3://bucket/panels/ (repeatable).")
@click.option("--bucket-option", "bucket_options", multiple=True, metavar="KEY=VALUE", callback=parse_storage_options,
              help="Storage option for reading the allowed buckets, e.g. endpoint_url=https://... or "
                   "profile=NAME (repeatable; credentials come from the environment, never from here).")
@click.option("--max-concurrent", default=2, show_default=True, type=click.IntRange(1, 1024),
              help="Jobs running at once; the rest wait in a queue.")
@click.option("--max-queued", default=1000, show_default=True, type=click.IntRange(0, 10**6),
              help="Jobs waiting at most (then 429).")
@click.option("--max-request-bytes", default=256 << 10, show_default=True, type=click.IntRange(1024, 1 << 30),
              help="Largest request body (then 413).")
@click.option("--max-simulate-rows", default=50_000_000, show_default=True, type=click.IntRange(1),
              help="Largest simulated panel (units x periods) a job may ask for.")
@click.option("--max-n-boot", default=100_000, show_default=True, type=click.IntRange(2),
              help="Most bootstrap draws a job may ask for.")
@click.option("--max-work", default=1e14, show_default=True, type=click.FloatRange(1),
              help="Largest estimated work of a job (units x cells x (periods + draws), summed over its "
                   "estimators); larger jobs are refused with 422.")
@click.option("--max-task-memory", default="4GiB", show_default=True,
              help="Largest estimated memory of one task of a job (e.g. 512MiB); larger: 422.")
@click.option("--job-timeout", default=6 * 3600.0, show_default=True, type=click.FloatRange(0),
              help="Wall-clock limit of a running job in seconds (then it fails); 0: none.")
@click.option("--job-memory", default=None,
              help="Memory budget of a running job on the workers (e.g. 8GiB): the bytes of its results "
                   "held in worker memory; past it the job is stopped and fails. Default: none.")
@click.option("--retain-days", default=30.0, show_default=True, type=click.FloatRange(0),
              help="Delete finished jobs and their results this many days after they ended "
                   "(checked at startup and hourly); 0: keep them.")
@click.option("--min-cell-size", default=None, type=click.IntRange(1),
              help="Disclosure control: suppress every estimate with fewer treated or control units than "
                   "this, in every job's outputs; jobs may ask for more, never less. Default: off.")
@click.option("--round-counts", default=None, metavar="B|suppress",
              help="Disclosure control: publish unit counts rounded to a multiple of B, or 'suppress' to "
                   "publish none; jobs may ask for coarser, never finer. Default: exact counts.")
@click.option("--ssl-certfile", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Serve HTTPS with this PEM certificate (chain); needs --ssl-keyfile. See docs/security.md.")
@click.option("--ssl-keyfile", default=None, type=click.Path(exists=True, dir_okay=False),
              help="The certificate's PEM private key.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
def command(profile: str, host: str, port: int, metrics_port: int | None, db: str, results_dir: str | None,
            token_file: str | None, data_roots: tuple[str, ...], data_buckets: tuple[str, ...],
            bucket_options: dict | None, max_concurrent: int, max_queued: int,
            max_request_bytes: int, max_simulate_rows: int, max_n_boot: int, max_work: float, max_task_memory: str,
            job_timeout: float, job_memory: str | None, retain_days: float, min_cell_size: int | None,
            round_counts: str | None, ssl_certfile: str | None, ssl_keyfile: str | None, log_level: str) -> None:
    """Serve the job API: POST /jobs, GET /jobs[/ID[/results[/NAME]]], DELETE /jobs/ID, /metrics, /health.

    Every route but /health needs `Authorization: Bearer TOKEN` (TOKEN from $DTE_DASK_TOKEN or
    --token-file). Jobs use the schema of `dte-dask run`; they run on the cluster of --profile,
    started once here, at most --max-concurrent at a time. Stop with Ctrl-C / SIGTERM: running jobs
    are marked interrupted, queued ones run after the next start (same --db).
    """
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn", "prometheus_client") if importlib.util.find_spec(m) is None]
    if missing:
        raise click.ClickException(f"the service needs {missing}: pip install 'dte_dask[service]'")
    from dask.utils import parse_bytes

    from dte_dask.cluster import resolve_profile
    from dte_dask.exceptions import DteDaskError
    from dte_dask.service.server import serve
    from dte_dask.service.settings import Limits, ServiceSettings, read_token

    if bool(ssl_certfile) != bool(ssl_keyfile):
        raise click.UsageError("--ssl-certfile and --ssl-keyfile go together")

    try:
        task_bytes = parse_bytes(max_task_memory)
        job_bytes = parse_bytes(job_memory) if job_memory else None
    except (ValueError, TypeError) as exc:
        raise click.BadParameter(f"not a size ({exc}); e.g. 512MiB, 8GiB") from None
    from pydantic import ValidationError

    from dte_dask.disclosure import DisclosureSpec

    try:
        rc = int(round_counts) if round_counts is not None and round_counts.strip().isdigit() else round_counts
        disclosure = DisclosureSpec(min_cell_size=min_cell_size, round_counts=rc)
    except ValidationError as exc:
        raise click.BadParameter(exc.errors()[0]["msg"], param_hint="--round-counts") from None
    try:
        resolve_profile(profile)  # fail fast, before binding anything
        settings = ServiceSettings(
            profile=profile, token=read_token(token_file), db_path=db, results_dir=results_dir,
            data_roots=tuple(data_roots), data_buckets=tuple(data_buckets),
            bucket_options=bucket_options or {}, max_concurrent=max_concurrent, max_queued=max_queued,
            max_request_bytes=max_request_bytes, job_timeout_s=job_timeout or None, job_memory_bytes=job_bytes,
            retain_days=retain_days or None, disclosure=disclosure,
            limits=Limits(max_simulate_rows=max_simulate_rows, max_n_boot=max_n_boot, max_work=max_work,
                          max_task_bytes=task_bytes))
        serve(settings, host=host, port=port, metrics_port=metrics_port, log_level=log_level,
              ssl_keyfile=ssl_keyfile, ssl_certfile=ssl_certfile)
    except (DteDaskError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
