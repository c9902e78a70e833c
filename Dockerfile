# dte_dask job service: `dte-dask serve` (FastAPI + uvicorn) in front of a Dask cluster.
#   docker build -t dte-dask-service .
#   docker run -p 8000:8000 -e DTE_DASK_TOKEN=... -v dte-state:/var/lib/dte-dask dte-dask-service
# The default profile is a LocalCluster inside the container (see
# cluster_configs/kubernetes/configmap.yaml for a sized one); pass --profile to use ssh/slurm.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY dte_dask ./dte_dask
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[service]"

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DASK_TEMPORARY_DIRECTORY=/tmp/dask
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "dte_dask[service]" \
    && rm -rf /wheels \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin dte \
    && mkdir -p /var/lib/dte-dask /data \
    && chown 10001:10001 /var/lib/dte-dask
USER 10001
WORKDIR /home/dte
VOLUME ["/var/lib/dte-dask"]
# 8000: the API; 9090: /metrics (and /health) only
EXPOSE 8000 9090
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["dte-dask", "serve"]
CMD ["--host", "0.0.0.0", "--port", "8000", "--metrics-port", "9090", "--profile", "local", \
     "--db", "/var/lib/dte-dask/jobs.sqlite", "--data-root", "/data"]
