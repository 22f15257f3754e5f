# Optuna Dashboard on the sweeper stack's PostgreSQL storage. Built by docker-compose.yml.
# Build context: the repository root. PYTHON_BASE names another Debian-based Python image
# (scripts/stack_test.py passes a local stand-in where no registry is reachable).
ARG PYTHON_BASE=python:3.12.12-slim-bookworm
FROM ${PYTHON_BASE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# It reads the study through the storage proxy (docker-compose.yml's `storage`), with Optuna's gRPC
# client: the same optuna as the proxy's (docker/worker-constraints.txt), since 5.1 changed how a
# trial's dates cross the wire (a 5.0 client cannot read a 5.1 proxy's trials), and grpcio and
# protobuf as pinned there. psycopg2 still lets OPTUNA_STORAGE name PostgreSQL itself. gunicorn
# serves it with threads: optuna-dashboard's own server (wsgiref) answers one request at a time.
RUN pip install --no-cache-dir "optuna-dashboard==0.21.0" "optuna==5.0.0" "grpcio==1.85.3" "protobuf==7.36.2" \
        "psycopg2-binary==2.9.13" "gunicorn==27.0.1"

RUN groupadd --gid 10001 dashboard \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin dashboard

COPY --chmod=0644 docker/dashboard-serve.py /usr/local/lib/dashboard-serve.py
COPY --chmod=0755 docker/secrets-env.sh /usr/local/bin/secrets-env

# dashboard; numeric, so a runtime that checks for "not root" (Kubernetes runAsNonRoot) can verify it.
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=6 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/api/meta', timeout=4)"]
# secrets-env reads a database password from /run/secrets into PGPASSWORD, where one is mounted (none
# in docker-compose.yml, which points the dashboard at the storage proxy).
ENTRYPOINT ["secrets-env", "python", "/usr/local/lib/dashboard-serve.py"]
