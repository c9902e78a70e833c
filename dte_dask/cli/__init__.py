"""The ``dte-dask`` command line: one module per sub-command, wired here."""
from __future__ import annotations

import importlib
import warnings

import click

# sub-command name -> module holding a click command called ``command``
_COMMANDS = {
    "demo": "dte_dask.cli.demo",
    "simulate": "dte_dask.cli.simulate",
    "doctor": "dte_dask.cli.doctor",
    "report": "dte_dask.cli.report",
    "certs": "dte_dask.cli.certs",
    "run": "dte_dask.cli.run",
    "submit": "dte_dask.cli.submit",
    "serve": "dte_dask.cli.serve",
}


class _LazyGroup(click.Group):
    """Import each sub-command's module only when it is used (keeps ``--help`` fast)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in _COMMANDS:
            return None
        return importlib.import_module(_COMMANDS[name]).command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dte_dask")
def main() -> None:
    """dte_dask: staggered difference-in-differences on Dask, from a laptop to a cluster."""
    warnings.formatwarning = format_warning


_PYTHON_FORMAT = warnings.formatwarning


def format_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001 - warnings' signature
    """Our warnings (about the data or the estimates) as one ``warning: ...`` line, without the
    file, line and source of the code that raised them; any other warning as Python prints it."""
    from dte_dask.exceptions import DteDaskWarning

    if isinstance(category, type) and issubclass(category, DteDaskWarning):
        return f"warning: {message}\n"
    return _PYTHON_FORMAT(message, category, filename, lineno, line)
