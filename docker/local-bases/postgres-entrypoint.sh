#!/bin/sh
# Entrypoint of the postgres stand-in (postgres.Dockerfile): the official image's interface, in short.
# On an empty PGDATA: initdb with POSTGRES_USER and its password (scram-sha-256 over TCP), a server on
# the Unix socket only while /docker-entrypoint-initdb.d/*.sql and *.sh run against POSTGRES_DB, then
# the real server. The password is read from POSTGRES_PASSWORD_FILE or POSTGRES_PASSWORD and never
# printed.
set -eu

if [ "$(id -u)" = 0 ]; then
    mkdir -p "${PGDATA}" /var/run/postgresql
    chown -R postgres:postgres "${PGDATA}" /var/run/postgresql
    chmod 700 "${PGDATA}"
    exec gosu postgres "$0" "$@"
fi

user="${POSTGRES_USER:-postgres}"
db="${POSTGRES_DB:-${user}}"

if [ "${1:-}" = postgres ] && [ ! -s "${PGDATA}/PG_VERSION" ]; then
    password="${POSTGRES_PASSWORD:-}"
    if [ -n "${POSTGRES_PASSWORD_FILE:-}" ] && [ -s "${POSTGRES_PASSWORD_FILE}" ]; then
        password=$(cat "${POSTGRES_PASSWORD_FILE}")
    fi
    if [ -z "${password}" ]; then
        echo "docker-entrypoint: superuser password is not specified: set POSTGRES_PASSWORD (or a non-empty POSTGRES_PASSWORD_FILE)" >&2
        exit 2
    fi
    pwfile=$(mktemp)
    trap 'rm -f "${pwfile}"' EXIT
    printf '%s\n' "${password}" >"${pwfile}"
    initdb --username="${user}" --pwfile="${pwfile}" --auth-local=trust --auth-host=scram-sha-256 \
        --encoding=UTF8 -D "${PGDATA}" >/dev/null
    rm -f "${pwfile}"
    echo "host all all all scram-sha-256" >>"${PGDATA}/pg_hba.conf"
    echo "listen_addresses = '*'" >>"${PGDATA}/postgresql.conf"
    pg_ctl -D "${PGDATA}" -o "-c listen_addresses=''" -w start >/dev/null
    if [ "${db}" != postgres ]; then
        psql -v ON_ERROR_STOP=1 --username="${user}" --dbname=postgres -q -c "CREATE DATABASE \"${db}\""
    fi
    for f in /docker-entrypoint-initdb.d/*; do
        case "${f}" in
            *.sql) echo "docker-entrypoint: running ${f}"; psql -v ON_ERROR_STOP=1 --username="${user}" --dbname="${db}" -q -f "${f}" ;;
            *.sh) echo "docker-entrypoint: running ${f}"; . "${f}" ;;
            *) ;;
        esac
    done
    pg_ctl -D "${PGDATA}" -m fast -w stop >/dev/null
    echo "docker-entrypoint: database initialised"
fi

exec "$@"
