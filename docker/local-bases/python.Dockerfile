# Stand-in for python:3.12.12-slim-bookworm where no image registry can be reached: Debian bookworm's
# Python 3.11 in a virtual environment first on PATH, so `python` and `pip` behave as in the official
# image (pip installs without Debian's externally-managed guard). pip and Python's ssl use Debian's CA
# bundle, which scripts/local-bases.sh extends with the host's own CAs. Built by scripts/local-bases.sh.
ARG DEBIAN_BASE=sweeper-local/debian:bookworm
FROM ${DEBIAN_BASE}

ENV PATH=/usr/local/python/bin:$PATH \
    LANG=C.UTF-8 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

# passwd gives groupadd/useradd, as in the official image.
# bookworm's packages as they are today, as a rebuilt official image would take them: no version pins.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv passwd ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /usr/local/python \
    && python --version && pip --version
CMD ["python3"]
