# The sweeper worker: the `sweeper` CLI on PyTorch's CUDA runtime image.
# docker-compose.yml builds it for the `init` and `worker` services; docs/stack.md runs it alone on a
# second machine. Build context: the repository root (see .dockerignore).
#
# Base: PyTorch 2.8.0 with CUDA 12.8 and cuDNN 9, Python 3.11 in /opt/conda, torch and torchvision
# installed with pip (pytorch/pytorch's Dockerfile). CUDA 12.8 runs on Hopper (H100/H200) and older;
# the host needs an NVIDIA driver for CUDA 12.x and the NVIDIA Container Toolkit. WORKER_BASE names
# another image with Python >= 3.10 and torch + torchvision installed with pip (scripts/stack_test.py
# passes a local stand-in where no registry is reachable).
ARG WORKER_BASE=pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime
FROM ${WORKER_BASE}

# Telemetry off: MLflow's usage reports and albumentations' update check, which only time out offline.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    MPLBACKEND=Agg \
    SWEEPER_CACHE_DIR=/cache \
    MLFLOW_DISABLE_TELEMETRY=true \
    NO_ALBUMENTATIONS_UPDATE=1

# uid/gid 10001: above the range a host's own users get, so files the worker writes to a bind mount
# belong to nobody there by accident. /work/runs (trial outputs), /cache and /data are created here,
# owned by the user, so a fresh named volume mounted on them inherits that owner.
RUN groupadd --gid 10001 sweeper \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/sweeper --shell /usr/sbin/nologin sweeper \
    && mkdir -p /work/runs /cache /data \
    && chown sweeper:sweeper /work /work/runs /cache /data

COPY --chmod=0755 docker/secrets-env.sh /usr/local/bin/secrets-env
COPY docker/worker-constraints.txt pyproject.toml /tmp/sweeper-src/
COPY pipelines/ /tmp/sweeper-src/pipelines/
COPY sweeper/ /tmp/sweeper-src/sweeper/
# Every dependency at the version docker/worker-constraints.txt pins (a lock file: a rebuild installs
# what was tested), and the base image's torch and torchvision held at their versions, read from the
# installed packages' metadata: a dependency that wanted another torch would otherwise make pip swap in
# a PyPI build for another CUDA. `sweeper --help` fails the build if the CLI cannot start.
RUN pip install --no-cache-dir --constraint /tmp/sweeper-src/worker-constraints.txt /tmp/sweeper-src \
        "torch==$(python -c 'import importlib.metadata as m; print(m.version("torch"))')" \
        "torchvision==$(python -c 'import importlib.metadata as m; print(m.version("torchvision"))')" \
    && sweeper --help > /dev/null \
    && rm -rf /tmp/sweeper-src

WORKDIR /work
# sweeper; numeric, so a runtime that checks for "not root" (Kubernetes runAsNonRoot) can verify it.
USER 10001:10001
ENTRYPOINT ["secrets-env", "sweeper"]
CMD ["--help"]
