"""The images' shell entrypoints, docker/secrets-env.sh and docker/mlflow-entrypoint.sh, run with sh.

secrets-env.sh exports each mounted secret file (`*_FILE`) as its variable and refuses an empty or missing one;
mlflow-entrypoint.sh writes MLflow's basic-auth ini from the environment and starts the server with it (a fake
`mlflow` on PATH records what it would have served).
"""

from __future__ import annotations

import configparser
import os
import subprocess
from pathlib import Path

import pytest

from stack_files import MLFLOW_ENTRYPOINT, SECRETS_ENV, TEST_SECRET


def run_secrets_env(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "sh",
            str(SECRETS_ENV),
            "sh",
            "-c",
            'printf "%s|%s|%s" "$PGPASSWORD" "${PGPASSWORD_FILE-unset}" "$SSL_CERT_FILE"',
        ],
        check=False,
        env={"PATH": os.environ["PATH"], "SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_secrets_env_exports_each_file_and_runs_the_command(tmp_path: Path) -> None:
    secret = tmp_path / "POSTGRES_PASSWORD"
    secret.write_text(TEST_SECRET + "\n")
    result = run_secrets_env(tmp_path, PGPASSWORD_FILE=str(secret))
    assert result.returncode == 0, result.stderr
    # the value, its _FILE variable gone, and a *_FILE that names no secret (a CA bundle) left alone
    assert result.stdout == f"{TEST_SECRET}|unset|/etc/ssl/certs/ca-certificates.crt"


def test_secrets_env_refuses_an_empty_secret_naming_the_variable_to_set(tmp_path: Path) -> None:
    secret = tmp_path / "MLFLOW_ADMIN_PASSWORD"
    secret.write_text("")
    result = run_secrets_env(tmp_path, PGPASSWORD_FILE=str(secret))
    assert result.returncode == 2 and "set MLFLOW_ADMIN_PASSWORD in .env" in result.stderr
    assert result.stdout == ""
    # compose writes no file for a variable set to nothing, as .env.example ships them
    missing = run_secrets_env(tmp_path, PGPASSWORD_FILE=str(tmp_path / "POSTGRES_PASSWORD"))
    assert missing.returncode == 2 and "missing or empty: set POSTGRES_PASSWORD in .env" in missing.stderr


@pytest.fixture()
def fake_mlflow(tmp_path: Path) -> Path:
    """A `mlflow` on PATH that records its arguments and the auth ini instead of serving."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "mlflow"
    script.write_text(
        "#!/bin/sh\n"
        'printf "%s\\n" "$@" > "$RECORD_DIR/args"\n'
        'if [ -n "${MLFLOW_AUTH_CONFIG_PATH:-}" ]; then cp "$MLFLOW_AUTH_CONFIG_PATH" "$RECORD_DIR/ini"; fi\n'
    )
    script.chmod(0o755)
    return bin_dir


def run_entrypoint(fake_mlflow: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {"PATH": f"{fake_mlflow}:{os.environ['PATH']}", "HOME": str(tmp_path), "RECORD_DIR": str(tmp_path)}
    return subprocess.run(
        ["sh", str(MLFLOW_ENTRYPOINT), "--host=0.0.0.0", "--serve-artifacts"],
        check=False,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


AUTH_ENV = {
    "MLFLOW_AUTH_DATABASE_URI": "postgresql://sweeper:pw@postgres:5432/mlflow_auth",
    "MLFLOW_AUTH_ADMIN_USERNAME": "boss",
    "MLFLOW_AUTH_ADMIN_PASSWORD": "s3cret%with%percent",
    "MLFLOW_FLASK_SERVER_SECRET_KEY": "flask-key",
}


def test_mlflow_entrypoint_writes_the_auth_ini_and_starts_basic_auth(fake_mlflow: Path, tmp_path: Path) -> None:
    result = run_entrypoint(fake_mlflow, tmp_path, **AUTH_ENV, MLFLOW_AUTH_DEFAULT_PERMISSION="NO_PERMISSIONS")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "args").read_text().split() == [
        "server",
        "--app-name",
        "basic-auth",
        "--host=0.0.0.0",
        "--serve-artifacts",
    ]
    ini = configparser.ConfigParser()  # as MLflow reads it, %-interpolation included
    ini.read(tmp_path / "ini")
    assert dict(ini["mlflow"]) == {
        "default_permission": "NO_PERMISSIONS",
        "database_uri": AUTH_ENV["MLFLOW_AUTH_DATABASE_URI"],
        "admin_username": "boss",
        "admin_password": "s3cret%with%percent",
    }
    assert (tmp_path / "basic_auth.ini").stat().st_mode & 0o077 == 0  # readable by its owner only


def test_mlflow_entrypoint_refuses_to_start_without_admin_password(fake_mlflow: Path, tmp_path: Path) -> None:
    env = {key: value for key, value in AUTH_ENV.items() if key != "MLFLOW_AUTH_ADMIN_PASSWORD"}
    result = run_entrypoint(fake_mlflow, tmp_path, **env)
    assert result.returncode != 0 and "MLFLOW_AUTH_ADMIN_PASSWORD" in result.stderr
    assert not (tmp_path / "args").exists()


def test_mlflow_entrypoint_rejects_a_multiline_value(fake_mlflow: Path, tmp_path: Path) -> None:
    result = run_entrypoint(
        fake_mlflow, tmp_path, **{**AUTH_ENV, "MLFLOW_AUTH_ADMIN_PASSWORD": "a\nadmin_username = x"}
    )
    assert result.returncode == 2 and "single line" in result.stderr
    assert not (tmp_path / "args").exists()


def test_mlflow_entrypoint_rejects_an_unknown_permission(fake_mlflow: Path, tmp_path: Path) -> None:
    result = run_entrypoint(fake_mlflow, tmp_path, **AUTH_ENV, MLFLOW_AUTH_DEFAULT_PERMISSION="ALL")
    assert result.returncode == 2 and "MLFLOW_AUTH_DEFAULT_PERMISSION" in result.stderr


def test_mlflow_entrypoint_without_basic_auth_passes_arguments_through(fake_mlflow: Path, tmp_path: Path) -> None:
    result = run_entrypoint(fake_mlflow, tmp_path, MLFLOW_BASIC_AUTH="false")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "args").read_text().split() == ["server", "--host=0.0.0.0", "--serve-artifacts"]
    assert not (tmp_path / "ini").exists()
