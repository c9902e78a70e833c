"""Job specs (YAML/JSON) and the runner behind ``dte-dask run`` / ``submit`` / ``serve``."""
