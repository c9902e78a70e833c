"""``python -m dte_dask.service ...`` = ``dte-dask serve ...``."""
from dte_dask.service.command import command

if __name__ == "__main__":
    command(prog_name="dte-dask serve")
