"""Run the compose stack for real and check it: `make stack-test`.

Starts a Docker engine when none answers (and stops it again at the end), builds local stand-ins for the
base images when no registry can be reached (scripts/local-bases.sh, cached), builds the project's images,
brings up PostgreSQL, the storage proxy, MLflow, the dashboard, `init` and two CPU workers (docker/compose.cpu.yml)
on a tiny study of the shared CIFAR-10 copy, checks what a user would look at, then `compose down -v`. Prints a
PASS/FAIL line per check and the duration; exits 1 when a check failed, 2 when the stack could not be run.

Runs as its own compose project (`sweeper-stacktest`) with generated secrets, free loopback ports and its
own env file, so it neither reads nor touches a stack of yours (`.env`, project `sweeper`). Needs root (to
start dockerd and debootstrap), the Compose v2 plugin, and about 15 GB of free disk for the engine's images
and build cache (docs/stack.md has the last run's numbers). Standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the checks beside it, however this file is loaded
from stack_checks import (
    PROJECT,
    ROOT,
    STUDY,
    WORKERS,
    Connections,
    Report,
    StackError,
    basic_auth,
    check_containers,
    check_dashboard,
    check_mlflow,
    check_no_secret_shown,
    check_nothing_left,
    check_proxy,
    check_study,
    check_worker_logs,
    check_workers,
    guarded,
    run,
    say,
    wait_for_workers,
)  # fmt: skip

SHARED_DATA = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.xz"
CACHE = Path(os.environ.get("SWEEPER_STACK_CACHE", "/var/cache/sweeper-stack"))
# A study that trains in seconds on the CPU: 1,000 images, an eighth of the width, one epoch.
TINY = [
    "data.train_limit=1000",
    "data.test_limit=500",
    "data.val_size=500",
    "model.width=0.125",
    "train.epochs=1",
    "train.batch_size=128",
]
OFFICIAL_BASES = {  # build argument / image variable -> the image the files name
    "SWEEPER_PYTHON_BASE": "python:3.12.12-slim-bookworm",
    "SWEEPER_POSTGRES_IMAGE": "postgres:16.10-bookworm",
    "SWEEPER_WORKER_BASE": "pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime",
}
LOCAL_BASES = {
    "SWEEPER_PYTHON_BASE": "sweeper-local/python:bookworm",
    "SWEEPER_POSTGRES_IMAGE": "sweeper-local/postgres:15-bookworm",
    "SWEEPER_WORKER_BASE": "sweeper-local/torch:2.14.1",
}
STACK_VARIABLES = (  # what the compose files read: none may leak in from the caller's shell
    "POSTGRES_PASSWORD",
    "MLFLOW_ADMIN_USERNAME",
    "MLFLOW_ADMIN_PASSWORD",
    "MLFLOW_SECRET_KEY",
    "STUDY_NAME",
    "TRIALS_PER_WORKER",
    "SWEEPER_DATA",
    "SWEEPER_DATA_DIR",
    "MLFLOW_PORT",
    "DASHBOARD_PORT",
    "MLFLOW_DEFAULT_PERMISSION",
    "MLFLOW_BASIC_AUTH",
    "SWEEPER_BIND_ADDR",
    "SWEEPER_STORAGE_HOST",
    "SWEEPER_MLFLOW_URI",
    *OFFICIAL_BASES,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the engine


def engine_answers() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0


@contextlib.contextmanager
def docker_engine() -> Iterator[None]:
    """The running engine, or one started here (data root in CACHE, so images persist between runs)."""
    if shutil.which("docker") is None:
        raise StackError("no docker client: install Docker (apt-get install docker.io)")
    if engine_answers():
        yield
        return
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise StackError("no Docker engine answers and there is no dockerd to start: apt-get install docker.io")
    if os.geteuid() != 0:
        raise StackError("no Docker engine answers; starting one needs root (sudo make stack-test)")
    CACHE.mkdir(parents=True, exist_ok=True)
    log = (CACHE / "dockerd.log").open("ab")
    say(f"starting dockerd (data root {CACHE / 'docker'}, log {CACHE / 'dockerd.log'})")
    proc = subprocess.Popen(  # its own session, so a Ctrl-C here reaches it only through the stop below
        [dockerd, "--data-root", str(CACHE / "docker")], stdout=log, stderr=log, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 60
        while not engine_answers():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise StackError(f"dockerd did not come up: see {CACHE / 'dockerd.log'}")
            time.sleep(1)
        yield
    finally:
        say("stopping the dockerd started here")
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def base_images(local: bool) -> dict[str, str]:
    """The official base images when the registry answers (pulled), else the local stand-ins (built)."""
    if not local:
        try:
            for image in OFFICIAL_BASES.values():
                if subprocess.run(["docker", "image", "inspect", image], capture_output=True, check=False).returncode:
                    say(f"pulling {image}")
                    run(["docker", "pull", "--quiet", image], timeout=1800)
            return dict(OFFICIAL_BASES)
        except (StackError, subprocess.TimeoutExpired) as err:
            say(f"no registry ({str(err).splitlines()[-1][:160]}): using local stand-ins")
    run(["sh", str(ROOT / "scripts" / "local-bases.sh")], timeout=3600)
    return dict(LOCAL_BASES)


# -- the stack


class Stack:
    """One compose project: its env file, secrets and ports, and the commands on it."""

    def __init__(self, workdir: Path, data: str, bases: dict[str, str], trials: int) -> None:
        self.secrets = {
            "POSTGRES_PASSWORD": secrets.token_hex(24),
            "MLFLOW_ADMIN_PASSWORD": secrets.token_hex(24),
            "MLFLOW_SECRET_KEY": secrets.token_hex(24),
        }
        self.mlflow_port, self.dashboard_port = free_port(), free_port()
        self.trials = trials
        data_path = Path(data)
        if data_path.exists():
            self.data = f"/data/{data_path.name}"
            data_dir = {"SWEEPER_DATA_DIR": str(data_path.resolve().parent)}
        else:
            self.data, data_dir = data, {}
        settings = {
            **self.secrets,
            "MLFLOW_ADMIN_USERNAME": "admin",
            "STUDY_NAME": STUDY,
            "TRIALS_PER_WORKER": str(trials),
            "SWEEPER_DATA": self.data,
            **data_dir,
            "MLFLOW_PORT": str(self.mlflow_port),
            "DASHBOARD_PORT": str(self.dashboard_port),
            **bases,
        }
        self.env_file = workdir / "stack.env"
        self.env_file.touch(mode=0o600)
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        self.env = {k: v for k, v in os.environ.items() if k not in STACK_VARIABLES}
        self.env["COMPOSE_BAKE"] = "false"  # no buildx needed: compose's own BuildKit client
        self.env["COMPOSE_PROGRESS"] = "plain"

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> str:
        files = ["-f", "docker-compose.yml", "-f", "docker/compose.cpu.yml"]
        cmd = ["docker", "compose", "--env-file", str(self.env_file), "-p", PROJECT, *files, *args]
        return run(cmd, env=self.env, timeout=timeout, check=check)

    def containers(self, service: str | None = None) -> list[dict[str, Any]]:
        out = self.compose("ps", "--all", "--format", "json", *([service] if service else []))
        rows = [json.loads(line) for line in out.splitlines() if line.strip().startswith("{")]
        if len(rows) == 1 and isinstance(rows[0], list):  # older compose: one JSON array
            rows = rows[0]
        return rows

    def inspect(self, names: Sequence[str]) -> list[dict[str, Any]]:
        return json.loads(run(["docker", "inspect", *names])) if names else []

    def mlflow(
        self,
        path: str,
        params: dict[str, str] | None = None,
        *,
        auth: bool = True,
        raw: bool = False,
        post: dict[str, Any] | None = None,
    ) -> Any:
        """GET (POST ``post`` as JSON) from the MLflow server on its published port, as admin unless ``auth`` is
        false: JSON, or the bytes when ``raw``."""
        url = f"http://127.0.0.1:{self.mlflow_port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        data = json.dumps(post).encode() if post is not None else None
        request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
        if auth:
            request.add_header("Authorization", f"Basic {basic_auth(self.secrets['MLFLOW_ADMIN_PASSWORD'])}")
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
        return body if raw else json.loads(body)


# -- the run


def stack_test(args: argparse.Namespace, report: Report) -> None:
    with docker_engine(), tempfile.TemporaryDirectory(prefix="stack-test-") as tmp:
        say(
            f"engine {run(['docker', 'version', '--format', '{{.Server.Version}}']).strip()}, "
            f"compose {run(['docker', 'compose', 'version', '--short']).strip()}"
        )
        bases = base_images(args.local_bases)
        stack = Stack(Path(tmp), args.data, bases, args.trials)
        stack.compose("down", "--volumes", "--remove-orphans", check=False)  # a previous run's leftovers
        try:
            started = time.monotonic()
            say("building the project's images")
            stack.compose("build", timeout=3600)
            say(f"built in {time.monotonic() - started:.0f} s; starting postgres and mlflow")
            stack.compose("up", "--detach", "--wait", "postgres", "mlflow", timeout=600)
            say(f"creating study {STUDY!r} with a one-off init (data {stack.data}), as docs/stack.md shows")
            init_out = stack.compose(
                "run", "--rm", "init", "study", "init", STUDY, "--data", stack.data, "--set", *TINY, timeout=900
            )
            say(f"starting the dashboard, init and {WORKERS} workers of {args.trials} trials each (through the proxy)")
            stack.compose("up", "--detach", "--scale", f"worker={WORKERS}", timeout=900)
            connections = Connections(stack)
            workers = wait_for_workers(stack, args.timeout, connections)
            say("the workers are done; checking")
            hosts = guarded(report, "the workers", check_workers, report, stack, workers) or []
            guarded(report, "the storage proxy", check_proxy, report, stack, connections)
            complete = guarded(report, "the study", check_study, report, stack) or []
            experiment_id = guarded(report, "MLflow", check_mlflow, report, stack, hosts, len(complete))
            if experiment_id is not None:
                guarded(report, "the workers' logs", check_worker_logs, report, stack, experiment_id)
            guarded(report, "the dashboard", check_dashboard, report, stack)
            guarded(report, "the containers", check_containers, report, stack)
            guarded(report, "the secrets", check_no_secret_shown, report, stack, init_out)
        except StackError:
            with contextlib.suppress(Exception):
                print(stack.compose("logs", "--no-color", "--tail", "40", check=False)[-6000:])
            raise
        finally:
            say("compose down -v")
            stack.compose("down", "--volumes", "--remove-orphans", timeout=300, check=False)
        check_nothing_left(report)
        say("disk: " + " | ".join(run(["docker", "system", "df", "--format", "{{.Type}} {{.Size}}"]).splitlines()))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        default=str(SHARED_DATA) if SHARED_DATA.exists() else "cifar10",
        help="a data file or folder on the host (mounted at /data), or cifar10 to download (default: the shared copy)",
    )
    parser.add_argument("--trials", type=int, default=2, help="trials per worker (default 2)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds the workers may take (default 1800)")
    parser.add_argument(
        "--local-bases", action="store_true", help="use the local stand-in base images, registry or not"
    )
    args = parser.parse_args(argv)
    report = Report()
    started = time.monotonic()
    code = 0
    try:
        stack_test(args, report)
    except (StackError, subprocess.TimeoutExpired) as err:
        print(f"stack-test: could not run the stack: {err}", file=sys.stderr)
        code = 2
    except Exception as err:  # noqa: BLE001 - still a verdict line and the duration, after the teardown ran
        print(f"stack-test: stopped by {type(err).__name__}: {err}", file=sys.stderr)
        code = 2
    elapsed = time.monotonic() - started
    verdict = "FAIL" if report.failed or code else "PASS"
    print(f"stack-test: {verdict}: {report.passed} passed, {len(report.failed)} failed in {elapsed / 60:.1f} min")
    return code or (1 if report.failed else 0)


if __name__ == "__main__":
    sys.exit(main())
