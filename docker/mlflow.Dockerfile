# The MLflow tracking server of the sweeper stack: PostgreSQL backend store, artifacts proxied to a
# volume at /mlartifacts, basic auth (see docker/mlflow-entrypoint.sh). Built by docker-compose.yml.
# Build context: the repository root. PYTHON_BASE names another Debian-based Python image
# (scripts/stack_test.py passes a local stand-in where no registry is reachable).
ARG PYTHON_BASE=python:3.12.12-slim-bookworm
FROM ${PYTHON_BASE}

# Telemetry off (MLflow's usage reports), and no job-runner processes: `mlflow server` otherwise starts
# about seven huey consumers for jobs this stack never submits.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false

# mlflow[auth] brings Flask-WTF, which the basic-auth app needs; psycopg2-binary is the PostgreSQL
# driver behind postgresql:// store URIs. Versions pinned so a rebuild serves the same schema.
RUN pip install --no-cache-dir "mlflow[auth]==3.17.2" "psycopg2-binary==2.9.13"

# uid/gid 10001 as in the worker image. /mlartifacts is created owned by that user, so a fresh named
# volume mounted on it inherits the owner.
RUN groupadd --gid 10001 mlflow \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/mlflow --shell /usr/sbin/nologin mlflow \
    && mkdir -p /mlartifacts \
    && chown mlflow:mlflow /mlartifacts

COPY --chmod=0755 docker/mlflow-entrypoint.sh /usr/local/bin/mlflow-entrypoint
COPY --chmod=0755 docker/secrets-env.sh /usr/local/bin/secrets-env

WORKDIR /home/mlflow
# mlflow; numeric, so a runtime that checks for "not root" (Kubernetes runAsNonRoot) can verify it.
USER 10001:10001
EXPOSE 5000
# /health answers without credentials, also under basic auth. Host 127.0.0.1:5000 must be in
# --allowed-hosts (docker-compose.yml lists it).
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=6 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4)"]
# secrets-env reads the passwords from /run/secrets (docker-compose.yml) into the server's environment.
ENTRYPOINT ["secrets-env", "mlflow-entrypoint"]
CMD ["--host=0.0.0.0", "--port=5000", "--serve-artifacts", "--artifacts-destination=/mlartifacts"]
