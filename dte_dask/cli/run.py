"""``dte-dask run JOB.yaml``: run a job spec on its cluster profile and write its results."""
from __future__ import annotations

import click


class _RunCommand(click.Command):
    """``--help`` lists the registered estimators (read from the registry when help is shown)."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from dte_dask.registry import list_estimators

        rows = [(e.name, f"{e.label}; options: {', '.join(e.options.model_fields) or '-'}"
                 + (f"; aggregations: {', '.join(e.aggregations)}" if e.aggregations else ""))
                for e in list_estimators()]
        with formatter.section("Estimators (the kind of an entry of `estimators:`)"):
            formatter.write_dl(rows)


@click.command(name="run", cls=_RunCommand)
@click.argument("job_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--data", "data", default=None, help="Override the job's data source (path, 'mpdta' or 'simulate').")
@click.option("--out", "out", default=None, help="Override the job's output folder.")
@click.option("--profile", default=None, help="Override the job's cluster profile (name or YAML path).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Terminal progress bar.")
@click.option("--price-per-core-hour", type=click.FloatRange(min=0), default=None,
              help="Report the run's cost: core-hours (wall time x worker threads) x this price.")
def command(job_file: str, data: str | None, out: str | None, profile: str | None, progress: bool,
            price_per_core_hour: float | None) -> None:
    """Run JOB_FILE: load the panel, run its estimators, write CSV/parquet, summary.json and reports."""
    from dte_dask.exceptions import DteDaskError
    from dte_dask.jobs.runner import run_job
    from dte_dask.jobs.spec import parse_job, with_overrides

    try:
        job = with_overrides(parse_job(job_file), data=data, out=out, profile=profile)
        run_job(job, progress=progress, echo=click.echo, price_per_core_hour=price_per_core_hour)
    except DteDaskError as exc:
        raise click.ClickException(str(exc)) from None
