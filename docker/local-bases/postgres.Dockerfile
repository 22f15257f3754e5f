# Stand-in for postgres:16.10-bookworm where no image registry can be reached: Debian bookworm's
# PostgreSQL 15 behind an entrypoint with the official image's interface (POSTGRES_USER,
# POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE, POSTGRES_DB, /docker-entrypoint-initdb.d, PGDATA,
# `postgres -c ...` arguments). Built by scripts/local-bases.sh.
ARG DEBIAN_BASE=sweeper-local/debian:bookworm
FROM ${DEBIAN_BASE}

# Debian's package creates a cluster of its own; the entrypoint makes one in PGDATA instead.
# bookworm's packages as they are today, as a rebuilt official image would take them: no version pins.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-15 gosu \
    && rm -rf /var/lib/apt/lists/* \
    && pg_dropcluster 15 main \
    && mkdir -p /docker-entrypoint-initdb.d /var/lib/postgresql/data /var/run/postgresql \
    && chown postgres:postgres /var/lib/postgresql/data /var/run/postgresql

ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data \
    LANG=C.UTF-8
COPY --chmod=0755 postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
VOLUME /var/lib/postgresql/data
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]
