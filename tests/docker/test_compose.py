"""docker-compose.yml and docker/compose.*.yml, checked without a Docker engine.

The compose files are read the way Compose reads them (YAML, then `${VAR}` interpolation from .env) and validated
against the Compose Specification schema, and Compose's own parser runs them where it is installed; the stack is held
to its rules: pinned images, UIs on loopback only, PostgreSQL unpublished, no secret in a tracked file (secrets travel
as files), an .env.example that names what the stack reads, GPU workers that wait for `init`, the storage proxy alone
on the optuna database, and the cpu and multihost overrides. docs/stack.md describes the stack these files make.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import stack_files
from stack_files import (
    COMPOSE_FILE,
    COMPOSE_SCHEMA,
    DOCKERFILES,
    LOOPBACK,
    OVERRIDE_FILES,
    POSTGRES_INIT_DIR,
    ROOT,
    SECRET_NAME,
    TEST_SECRET,
    THE_SECRETS,
    URL_CREDENTIALS,
    base_images,
    compose_command,
    dockerfile_instructions,
    dockerfile_of,
    is_pinned,
    load_yaml,
    published_host_ip,
    read_env_example,
    references,
    resolved,
    secret_variables,
    strings,
    user_env,
)

# stack_files' module-scoped fixtures (shared with test_dockerfiles.py), bound here where pytest looks for them.
compose = stack_files.compose
services = stack_files.services


@pytest.fixture(scope="module")
def compose_validator() -> jsonschema.Draft7Validator:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


@pytest.mark.parametrize("path", [COMPOSE_FILE, *OVERRIDE_FILES], ids=lambda path: path.name)
def test_compose_file_matches_compose_spec(path: Path, compose_validator: jsonschema.Draft7Validator) -> None:
    document = resolved(path, SWEEPER_BIND_ADDR="10.0.0.5")
    errors = sorted(compose_validator.iter_errors(document), key=lambda error: list(error.absolute_path))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors)


def test_schema_rejects_a_misspelt_key(compose_validator: jsonschema.Draft7Validator) -> None:
    document = resolved(COMPOSE_FILE)
    document["services"]["worker"]["depends_on"]["init"]["conditon"] = "service_healthy"
    assert list(compose_validator.iter_errors(document))


def test_docker_compose_accepts_the_stack(tmp_path: Path) -> None:
    """Compose's own parser, where one is installed (it needs no engine for `config`)."""
    command = compose_command()
    if command is None:
        pytest.skip("no Docker Compose v2 here; the schema test above covers the file's shape")
    env_file = tmp_path / ".env"
    env_file.write_text(
        "".join(f"{key}={value}\n" for key, value in {**user_env(), "SWEEPER_BIND_ADDR": "10.0.0.5"}.items())
    )
    files = [COMPOSE_FILE, *OVERRIDE_FILES]
    args = [*command, "--project-directory", str(ROOT), "--env-file", str(env_file)]
    args += [arg for path in files for arg in ("-f", str(path))]
    result = subprocess.run(
        [*args, "config", "--format", "json"], check=False, capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "variable is not set" not in result.stderr, result.stderr  # every optional variable has a default
    config = json.loads(result.stdout)
    # Compose's interpolation agrees with the reading above: nested ${A:+,${A:-}:*} included
    hosts = next(a for a in config["services"]["mlflow"]["command"] if a.startswith("--allowed-hosts="))
    assert hosts.endswith(",127.0.0.1:*,10.0.0.5:*"), hosts
    assert TEST_SECRET not in result.stdout  # the secrets stay out of the merged configuration
    assert config["services"]["worker"]["environment"]["SWEEPER_MLFLOW_UI"] == "http://127.0.0.1:5000"


def test_stack_has_its_services(services: dict[str, Any]) -> None:
    assert {"postgres", "storage", "mlflow", "optuna-dashboard", "init", "worker"} <= set(services)


def test_every_image_is_pinned(services: dict[str, Any]) -> None:
    for name, service in services.items():
        if "build" in service:
            # A local name for what compose builds: the pin that matters is the Dockerfile's FROM.
            assert ":" in service["image"] and not service["image"].endswith(":latest"), name
        else:
            assert is_pinned(service["image"]), f"{name}: {service['image']} is not an exact version"
    for dockerfile in DOCKERFILES:
        for image in base_images(dockerfile):
            assert is_pinned(image), f"{dockerfile.name}: FROM {image} is not an exact version"


def test_postgres_image_can_be_replaced_and_defaults_to_the_pinned_one(services: dict[str, Any]) -> None:
    assert services["postgres"]["image"] == "postgres:16.10-bookworm"
    local = resolved(COMPOSE_FILE, SWEEPER_POSTGRES_IMAGE="sweeper-local/postgres:15-bookworm")
    assert local["services"]["postgres"]["image"] == "sweeper-local/postgres:15-bookworm"


def test_published_ports_bind_loopback_only(services: dict[str, Any]) -> None:
    published = 0
    for name, service in services.items():
        assert service.get("network_mode") != "host", f"{name} would share the host's network"
        for port in service.get("ports", []):
            assert published_host_ip(port) == LOOPBACK, f"{name} publishes {port!r} beyond {LOOPBACK}"
            published += 1
    assert published == 2  # the MLflow UI and Optuna Dashboard (neither PostgreSQL nor the storage proxy)


def test_uis_are_on_their_documented_ports(services: dict[str, Any]) -> None:
    assert services["mlflow"]["ports"] == ["127.0.0.1:5000:5000"]
    assert services["optuna-dashboard"]["ports"] == ["127.0.0.1:8080:8080"]
    moved = resolved(COMPOSE_FILE, MLFLOW_PORT="5001", DASHBOARD_PORT="8081")["services"]
    assert moved["mlflow"]["ports"] == ["127.0.0.1:5001:5000"]
    assert moved["optuna-dashboard"]["ports"] == ["127.0.0.1:8081:8080"]


def test_postgres_is_not_published(services: dict[str, Any]) -> None:
    assert not services["postgres"].get("ports")
    assert "network_mode" not in services["postgres"]


def test_multihost_override_publishes_only_on_a_named_address() -> None:
    raw = load_yaml(ROOT / "docker" / "compose.multihost.yml")
    for name, service in raw["services"].items():
        for port in service["ports"]:
            assert port.startswith("${SWEEPER_BIND_ADDR:?"), f"{name}: {port!r} must bind SWEEPER_BIND_ADDR"
    with pytest.raises(KeyError, match="SWEEPER_BIND_ADDR"):
        resolved(ROOT / "docker" / "compose.multihost.yml")


@pytest.mark.parametrize("path", [COMPOSE_FILE, *OVERRIDE_FILES], ids=lambda path: path.name)
def test_no_secret_value_reaches_the_configuration(path: Path) -> None:
    """No secret in an environment value, a URL or a `${VAR}` reference: any of them would put the password
    into `docker compose config` and `docker inspect`. Secrets travel as files (`secrets:`)."""
    raw = load_yaml(path)
    for where, text in strings(raw):
        key = where.rsplit(".", 1)[-1]
        if ".environment." in f".{where}":
            assert not SECRET_NAME.search(key), f"{where}: a secret as an environment value; use {key}_FILE"
        assert not URL_CREDENTIALS.search(text), f"{where}: a password in a URL"
    for ref in references(raw):
        assert ref.name not in THE_SECRETS, f"{path.name} {ref.where}: ${{{ref.name}}} puts the secret in the config"


def test_secrets_are_files_named_after_their_env_variable(compose: dict[str, Any]) -> None:
    values, _ = read_env_example()
    assert {name for name in values if SECRET_NAME.search(name)} == THE_SECRETS
    assert all(values[name] == "" for name in THE_SECRETS), "ship secrets empty: nothing starts until they are set"
    variables = secret_variables(compose)
    assert set(variables.values()) == THE_SECRETS
    for name, service in compose["services"].items():
        mounted = {}
        for entry in service.get("secrets", []):
            assert entry["target"] == variables[entry["source"]], f"{name}: name the file after its .env variable"
            mounted[f"/run/secrets/{entry['target']}"] = entry
        for key, value in service.get("environment", {}).items():
            if key.endswith("_FILE"):
                assert value in mounted, f"{name}: {key} names {value}, a secret it does not mount"
        for entry in mounted.values():  # Engine 20.10 fails the copy of a secret given an owner (getent)
            assert not {"uid", "gid"} & set(entry), f"{name}: {entry}"


def test_env_example_defines_every_variable_without_default() -> None:
    values, commented = read_env_example()
    for ref in references(load_yaml(COMPOSE_FILE)):
        if not ref.has_default:
            assert ref.name in values, f"docker-compose.yml {ref.where} needs {ref.name}: add it to .env.example"
    for path in OVERRIDE_FILES:
        for ref in references(load_yaml(path)):
            if not ref.has_default:
                assert ref.name in values.keys() | commented, (
                    f"{path.name} {ref.where} needs {ref.name} in .env.example"
                )


def test_env_example_names_only_variables_the_stack_reads() -> None:
    values, commented = read_env_example()
    documents = [load_yaml(path) for path in [COMPOSE_FILE, *OVERRIDE_FILES]]
    used = {ref.name for document in documents for ref in references(document)}
    used |= {name for document in documents for name in secret_variables(document).values()}
    assert set(values) | commented <= used


def test_worker_reserves_one_gpu_and_waits_for_init(services: dict[str, Any]) -> None:
    worker = services["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert worker["depends_on"] == {
        "init": {"condition": "service_completed_successfully"},
        "mlflow": {"condition": "service_healthy"},
        "storage": {"condition": "service_healthy"},
    }
    # `--scale worker=N` needs replicas that do not collide on a name or a host port.
    assert "container_name" not in worker and not worker.get("ports")


def test_init_creates_the_study_the_workers_run(services: dict[str, Any]) -> None:
    assert services["init"]["command"] == ["study", "init", "resnet9-cifar10", "--data", "cifar10"]
    assert services["init"]["restart"] == "no"
    assert services["worker"]["command"] == ["study", "run", "resnet9-cifar10", "--n-trials", "20", "--data", "cifar10"]
    mine = resolved(COMPOSE_FILE, STUDY_NAME="wd-sweep", TRIALS_PER_WORKER="5")["services"]
    assert mine["init"]["command"][2] == mine["worker"]["command"][2] == "wd-sweep"
    assert mine["worker"]["command"][4] == "5"
    own_data = resolved(COMPOSE_FILE, SWEEPER_DATA="/data/cifar10-jpeg.tar.xz")["services"]
    assert (
        own_data["init"]["command"][-2:]
        == own_data["worker"]["command"][-2:]
        == ["--data", "/data/cifar10-jpeg.tar.xz"]
    )


def test_sweeper_containers_get_storage_tracking_and_cache(services: dict[str, Any], compose: dict[str, Any]) -> None:
    for name in ("init", "worker"):
        env = services[name]["environment"]
        assert env["SWEEPER_STORAGE"] == "grpc://storage:13000"  # the storage proxy: no database connection
        assert "PGPASSWORD_FILE" not in env
        assert [entry["target"] for entry in services[name]["secrets"]] == ["MLFLOW_ADMIN_PASSWORD"]
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert env["MLFLOW_TRACKING_USERNAME"] == "admin"
        assert env["MLFLOW_TRACKING_PASSWORD_FILE"] == "/run/secrets/MLFLOW_ADMIN_PASSWORD"
        assert env["SWEEPER_CACHE_DIR"] == "/cache"
        assert {"sweeper-cache:/cache", "sweeper-runs:/work/runs"} <= set(services[name]["volumes"])
    assert {"sweeper-cache", "sweeper-runs"} <= set(compose["volumes"])
    remote = resolved(COMPOSE_FILE, SWEEPER_STORAGE_HOST="10.0.0.5", SWEEPER_MLFLOW_URI="http://10.0.0.5:5000")
    env = remote["services"]["worker"]["environment"]
    assert env["SWEEPER_STORAGE"] == "grpc://10.0.0.5:13000" and env["MLFLOW_TRACKING_URI"] == "http://10.0.0.5:5000"


def test_the_storage_proxy_alone_holds_the_optuna_database(services: dict[str, Any]) -> None:
    """`storage` serves the optuna database on the compose network only; the dashboard reads through it too, and
    of the sweeper containers only `storage` has the database's password."""
    storage = services["storage"]
    assert storage["command"] == ["storage", "serve", "--host", "0.0.0.0", "--allow-remote", "--port", "13000"]
    assert not storage.get("ports") and "network_mode" not in storage
    assert storage["environment"]["SWEEPER_STORAGE"].startswith("postgresql+psycopg2://sweeper@postgres:5432/optuna?")
    assert storage["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert "GrpcStorageProxy(host='127.0.0.1', port=13000).get_all_studies()" in storage["healthcheck"]["test"][-1]
    assert services["optuna-dashboard"]["environment"] == {"OPTUNA_STORAGE": "grpc://storage:13000"}
    with_password = {name for name, svc in services.items()
                     if any(entry["target"] == "POSTGRES_PASSWORD" for entry in svc.get("secrets", []))}  # fmt: skip
    assert with_password == {"postgres", "mlflow", "storage"}


def test_data_dir_is_a_read_only_mount_in_init_and_the_workers(services: dict[str, Any]) -> None:
    """`init` checks the data source as the workers read it: both get SWEEPER_DATA and the /data mount."""
    bound = resolved(COMPOSE_FILE, SWEEPER_DATA_DIR="/srv/datasets", SWEEPER_DATA="/data/cifar-10-python.tar.gz")
    for name in ("init", "worker"):
        assert "sweeper-data:/data:ro" in services[name]["volumes"]
        assert "/srv/datasets:/data:ro" in bound["services"][name]["volumes"]
        assert bound["services"][name]["command"][-2:] == ["--data", "/data/cifar-10-python.tar.gz"]


def test_mlflow_proxies_artifacts_to_a_volume_behind_basic_auth(
    services: dict[str, Any], compose: dict[str, Any]
) -> None:
    mlflow = services["mlflow"]
    command = mlflow["command"]
    assert "--serve-artifacts" in command and "--artifacts-destination=/mlartifacts" in command
    assert "mlflow-artifacts:/mlartifacts" in mlflow["volumes"] and "mlflow-artifacts" in compose["volumes"]
    hosts = next(arg for arg in command if arg.startswith("--allowed-hosts=")).split("=", 1)[1].split(",")
    assert {"mlflow", "mlflow:5000", "localhost:*", "127.0.0.1:*"} <= set(hosts)
    assert len(hosts) == len(set(hosts)), f"a host listed twice: {hosts}"
    published = resolved(COMPOSE_FILE, SWEEPER_BIND_ADDR="10.0.0.5")["services"]["mlflow"]["command"]
    assert any(arg.startswith("--allowed-hosts=") and arg.endswith(",10.0.0.5:*") for arg in published)
    env = mlflow["environment"]
    assert env["MLFLOW_BACKEND_STORE_URI"] == "postgresql+psycopg2://sweeper@postgres:5432/mlflow"
    assert env["MLFLOW_AUTH_DATABASE_URI"] == "postgresql+psycopg2://sweeper@postgres:5432/mlflow_auth"
    assert env["PGPASSWORD_FILE"] == "/run/secrets/POSTGRES_PASSWORD"
    assert env["MLFLOW_BASIC_AUTH"] == "true"
    assert env["MLFLOW_AUTH_ADMIN_USERNAME"] == services["worker"]["environment"]["MLFLOW_TRACKING_USERNAME"]
    # the admin the server creates is the user the workers log in as
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD_FILE"] == services["worker"]["environment"]["MLFLOW_TRACKING_PASSWORD_FILE"]
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY_FILE"] == "/run/secrets/MLFLOW_SECRET_KEY"


def test_postgres_init_creates_the_databases_mlflow_uses(services: dict[str, Any]) -> None:
    assert "./docker/postgres-init:/docker-entrypoint-initdb.d:ro" in services["postgres"]["volumes"]
    sql = " ".join(path.read_text() for path in sorted(POSTGRES_INIT_DIR.glob("*.sql")))
    created = set(re.findall(r"CREATE DATABASE (\w+);", sql))
    used = {uri.rsplit("/", 1)[1].split("?")[0] for where, uri in strings(services) if uri.startswith("postgresql")}
    env = services["postgres"]["environment"]
    assert used == created | {env["POSTGRES_DB"]} == {"optuna", "mlflow", "mlflow_auth"}


def test_healthy_conditions_have_a_healthcheck(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for target, rule in service.get("depends_on", {}).items():
            if rule["condition"] != "service_healthy":
                continue
            dockerfile = dockerfile_of(services[target])
            in_image = dockerfile is not None and any(
                keyword == "HEALTHCHECK" for keyword, _ in dockerfile_instructions(dockerfile)
            )
            assert "healthcheck" in services[target] or in_image, f"{name} waits for {target} to be healthy"


def test_cpu_override_drops_the_gpu_reservation() -> None:
    text = (ROOT / "docker" / "compose.cpu.yml").read_text()
    assert re.search(r"^  worker:\n    deploy: !reset \{\}$", text, re.MULTILINE)
    command = compose_command()
    if command is None:
        return  # Compose's own merge, where it is installed:
    env = {**os.environ, **user_env()}
    result = subprocess.run(
        [
            *command,
            "-f",
            str(COMPOSE_FILE),
            "-f",
            str(ROOT / "docker" / "compose.cpu.yml"),
            "config",
            "--format",
            "json",
        ],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    worker = json.loads(result.stdout)["services"]["worker"]
    assert not (worker.get("deploy") or {}).get("resources"), worker.get("deploy")
