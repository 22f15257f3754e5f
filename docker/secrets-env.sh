#!/bin/sh
# secrets-env COMMAND [ARG...]: for each secret variable below whose VAR_FILE is set, export VAR with
# that file's content (and drop VAR_FILE), then exec COMMAND. The entrypoint shim of the stack's images:
# compose puts the secrets into files under /run/secrets (docker-compose.yml, `secrets:`), so no
# password is in the container's configuration, where `docker inspect` and `docker compose config`
# would show it; it reaches only the process that needs it (libpq reads PGPASSWORD, MLflow's client
# MLFLOW_TRACKING_PASSWORD, docker/mlflow-entrypoint.sh the other two). A named list, not every *_FILE
# variable: others, such as SSL_CERT_FILE, are paths to leave alone. A secret file is named after the
# .env variable it comes from, so a missing or empty one says which to set.
set -eu

for name in PGPASSWORD MLFLOW_TRACKING_PASSWORD MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY; do
    eval "path=\${${name}_FILE:-}"
    [ -n "${path}" ] || continue
    # compose writes no file at all for a variable that is set but empty (.env.example's state)
    if [ ! -s "${path}" ]; then
        echo "secrets-env: ${path} is missing or empty: set $(basename "${path}") in .env" >&2
        exit 2
    fi
    if [ ! -r "${path}" ]; then
        echo "secrets-env: ${name}_FILE names ${path}, which this user ($(id -u)) cannot read" >&2
        exit 2
    fi
    value=$(cat "${path}")
    export "${name}=${value}"
    unset "${name}_FILE"
done
exec "$@"
