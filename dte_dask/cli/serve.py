"""``dte-dask serve``: defined with the service (:mod:`dte_dask.service.command`), so that the
service never imports the CLI."""
from dte_dask.service.command import command

__all__ = ["command"]
