#!/bin/sh
# Entrypoint of docker/mlflow.Dockerfile: `mlflow server ARGS...`, behind basic auth unless
# MLFLOW_BASIC_AUTH=false. The backend store comes from MLFLOW_BACKEND_STORE_URI (read by
# `mlflow server` itself), so no password appears in the process list.
#
# With basic auth, this writes the ini that MLflow reads from MLFLOW_AUTH_CONFIG_PATH, from:
#   MLFLOW_AUTH_DATABASE_URI        SQLAlchemy URL of the user and permission store (required)
#   MLFLOW_AUTH_ADMIN_USERNAME      admin user created on the first start (default: admin)
#   MLFLOW_AUTH_ADMIN_PASSWORD      its password, 12 characters or more (required)
#   MLFLOW_AUTH_DEFAULT_PERMISSION  what users get on resources they were not granted:
#                                   READ, EDIT, MANAGE or NO_PERMISSIONS (default: READ)
# and MLflow itself needs MLFLOW_FLASK_SERVER_SECRET_KEY (CSRF protection of the sign-up form).
# The admin credentials only seed the user store on its first start; changing them later does
# not change the stored user: rotate the password through MLflow's API (docs/stack.md).
set -eu

die() {
    echo "mlflow-entrypoint: $*" >&2
    exit 2
}

case "${MLFLOW_BASIC_AUTH:-true}" in
    true | 1 | yes) ;;
    false | 0 | no) exec mlflow server "$@" ;;
    *) die "MLFLOW_BASIC_AUTH must be true or false, got '${MLFLOW_BASIC_AUTH}'" ;;
esac

: "${MLFLOW_AUTH_DATABASE_URI:?set MLFLOW_AUTH_DATABASE_URI (the basic-auth user store)}"
: "${MLFLOW_AUTH_ADMIN_PASSWORD:?set MLFLOW_AUTH_ADMIN_PASSWORD (12 characters or more)}"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?set MLFLOW_FLASK_SERVER_SECRET_KEY (any long random string)}"
admin_username="${MLFLOW_AUTH_ADMIN_USERNAME:-admin}"
default_permission="${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}"

case "${default_permission}" in
    READ | EDIT | MANAGE | NO_PERMISSIONS) ;;
    *) die "MLFLOW_AUTH_DEFAULT_PERMISSION must be READ, EDIT, MANAGE or NO_PERMISSIONS, got '${default_permission}'" ;;
esac

newline='
'
# One ini value: no line breaks (they would start a new key), and '%' doubled because MLflow
# reads the file with configparser's %-interpolation. Called as `x=$(ini_value ...)` so that
# `die` in the subshell stops the script (set -e sees the failed assignment).
ini_value() {
    case "$2" in
        *"${newline}"*) die "$1 must be a single line" ;;
        *) printf '%s' "$2" | sed 's/%/%%/g' ;;
    esac
}
database_uri=$(ini_value MLFLOW_AUTH_DATABASE_URI "${MLFLOW_AUTH_DATABASE_URI}")
admin_username=$(ini_value MLFLOW_AUTH_ADMIN_USERNAME "${admin_username}")
admin_password=$(ini_value MLFLOW_AUTH_ADMIN_PASSWORD "${MLFLOW_AUTH_ADMIN_PASSWORD}")

config="${MLFLOW_AUTH_CONFIG_PATH:-${HOME:-/tmp}/basic_auth.ini}"
umask 077
cat >"${config}" <<INI
[mlflow]
default_permission = ${default_permission}
database_uri = ${database_uri}
admin_username = ${admin_username}
admin_password = ${admin_password}
INI
export MLFLOW_AUTH_CONFIG_PATH="${config}"

exec mlflow server --app-name basic-auth "$@"
