"""``dte-dask submit JOB.yaml --profile slurm``: run a job as a Slurm batch job."""
from __future__ import annotations

import click


@click.command(name="submit")
@click.argument("job_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--profile", default=None,
              help="Cluster profile the batch job starts (name or YAML path; default: the job's). "
                   "'local': workers inside the allocation; 'slurm'/'slurm-numa': worker jobs of their own.")
@click.option("--data", "data", default=None, help="Override the job's data source.")
@click.option("--out", "out", default=None, help="Override the job's output folder (the script and log go there too).")
@click.option("-p", "--partition", default=None, help="#SBATCH --partition")
@click.option("-t", "--time", "time_", default=None, help="#SBATCH --time (e.g. 02:00:00 or 1-00:00:00)")
@click.option("-c", "--cpus", type=click.IntRange(min=1), default=None, help="#SBATCH --cpus-per-task")
@click.option("--mem", default=None, help="#SBATCH --mem (e.g. 64G)")
@click.option("-A", "--account", default=None, help="#SBATCH --account")
@click.option("-J", "--job-name", default=None, help="#SBATCH --job-name (default dte-<job name>)")
@click.option("-S", "--sbatch", "directives", multiple=True, metavar="OPTION",
              help="Extra #SBATCH directive, repeatable: -S --qos=high -S '--constraint=numa'.")
@click.option("--setup", multiple=True, metavar="LINE",
              help="Shell line run before the job, repeatable (module load ..., source venv/bin/activate).")
@click.option("--python", default=None, help="Interpreter in the job (default: this one; same path on the nodes).")
@click.option("--check-data/--no-check-data", default=True, show_default=True,
              help="Check here that the data source and its columns exist (skip when only the nodes see it).")
@click.option("--dry-run", is_flag=True, help="Print the batch script; write and submit nothing.")
@click.option("--wait", "wait", is_flag=True, help="Wait for the job to finish; exit 1 unless it COMPLETED.")
@click.option("--timeout", type=float, default=24 * 3600.0, show_default=True, help="Seconds --wait waits.")
@click.option("--parsable", is_flag=True, help="Print only the job id (for scripts).")
def command(job_file: str, profile: str | None, data: str | None, out: str | None, partition: str | None,
            time_: str | None, cpus: int | None, mem: str | None, account: str | None, job_name: str | None,
            directives: tuple[str, ...], setup: tuple[str, ...], python: str | None, check_data: bool,
            dry_run: bool, wait: bool, timeout: float, parsable: bool) -> None:
    """Write a batch script that runs JOB_FILE with `dte-dask run` and sbatch it; prints the job id.

    The script, a frozen copy of the job and the Slurm log (slurm-<id>.out, with the dashboard
    URL) go to the job's output folder.
    """
    import time

    from dte_dask.cluster.profiles import resolve_profile
    from dte_dask.exceptions import DteDaskError
    from dte_dask.jobs.spec import check_data_source, parse_job, with_overrides
    from dte_dask.jobs.submit import FINISHED_OK, SlurmOptions, submit_job, wait_for_job

    try:
        job = with_overrides(parse_job(job_file), data=data, out=out, profile=profile)
        prof = resolve_profile(job.cluster.profile, **job.cluster.overrides)  # fails here, not in the queue
        if check_data:
            check_data_source(job.data)
        opts = SlurmOptions(partition=partition, time=time_, cpus=cpus, mem=mem, account=account,
                            job_name=job_name, directives=tuple(directives), setup=tuple(setup), python=python)
        t0 = time.time()
        sub = submit_job(job, profile=job.cluster.profile, options=opts, dry_run=dry_run, source=job_file)
    except DteDaskError as exc:
        raise click.ClickException(str(exc)) from None
    if dry_run:
        click.echo(sub.script_text, nl=False)
        return
    if prof.kind == "local" and prof.spec.cluster.memory_limit is None:
        click.echo("note: the local profile sizes its workers from the node's memory (capped by the job's "
                   "cgroup); set cluster.overrides.memory_limit (and n_workers) in the job to fit --mem",
                   err=True)
    if parsable:
        click.echo(sub.job_id)
    else:
        click.echo(f"submitted Slurm job {sub.job_id}: {sub.script}")
        click.echo(f"  log: {sub.log}   results: {sub.output}")
        click.echo(f"  watch: squeue -j {sub.job_id}; the dashboard URL is printed at the top of the log")
    if wait:
        try:
            state = wait_for_job(sub.job_id, timeout=timeout)
        except TimeoutError as exc:
            raise click.ClickException(str(exc)) from None
        if not parsable:
            click.echo(f"Slurm job {sub.job_id}: {state}")
        summary = sub.output / "summary.json"
        fresh = summary.exists() and summary.stat().st_mtime >= t0 - 1
        if state not in (FINISHED_OK, "UNKNOWN") or not fresh:
            raise click.ClickException(f"job {sub.job_id} ended {state} without results; see {sub.log}")
