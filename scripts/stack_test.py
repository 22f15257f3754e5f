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
import base64
import contextlib
import json
import os
import re
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
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "sweeper-stacktest"
STUDY = "stack-test"
WORKERS = 2
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


T = TypeVar("T")


class StackError(Exception):
    """The stack could not be brought up far enough to check it."""


class Report:
    """PASS/FAIL lines as checks are made; the verdict at the end."""

    def __init__(self) -> None:
        self.failed: list[str] = []
        self.passed = 0

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        print(f"{'PASS' if ok else 'FAIL'}  {name}" + (f": {detail}" if detail else ""), flush=True)
        if ok:
            self.passed += 1
        else:
            self.failed.append(name)
        return ok


def say(message: str) -> None:
    print(f"stack-test: {message}", flush=True)


def run(cmd: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 600, check: bool = True) -> str:
    """Run a command, return its stdout; on failure raise StackError with its output's tail."""
    proc = subprocess.run(list(cmd), cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-25:]
        raise StackError(f"{' '.join(cmd[:6])} ... exited {proc.returncode}:\n" + "\n".join(tail))
    return proc.stdout + (proc.stderr if not check else "")


def basic_auth(password: str) -> str:
    """The admin's HTTP basic-auth credentials, as the Authorization header carries them."""
    return base64.b64encode(f"admin:{password}".encode()).decode()


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


def wait_for_workers(stack: Stack, timeout: float, connections: Connections) -> list[dict[str, Any]]:
    """Until every worker has exited, noting PostgreSQL's clients every few seconds meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        connections.sample()
        workers = stack.containers("worker")
        if len(workers) >= WORKERS and all(w.get("State") == "exited" for w in workers):
            return workers
        if time.monotonic() > deadline:
            raise StackError(f"workers still running after {timeout:.0f} s: {[w.get('State') for w in workers]}")
        time.sleep(3)


class Connections:
    """Who PostgreSQL served while the workers ran: (database, application_name, client address) of every client
    connection, sampled from pg_stat_activity (psql over the container's socket, itself left out)."""

    QUERY = (
        "SELECT datname, application_name, host(client_addr) FROM pg_stat_activity "
        "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
    )

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.seen: set[tuple[str, str, str]] = set()
        self.samples = 0

    def sample(self) -> None:
        out = self.stack.compose(
            "exec", "-T", "postgres", "psql", "-U", "sweeper", "-d", "optuna", "-AtF", "|", "-c", self.QUERY,
            check=False,
        )  # fmt: skip
        rows = [tuple(line.split("|")) for line in out.splitlines() if line.count("|") == 2]
        self.seen.update(rows)  # type: ignore[arg-type]
        self.samples += bool(rows)


# -- the checks


def check_workers(report: Report, stack: Stack, workers: list[dict[str, Any]]) -> list[str]:
    codes = [w.get("ExitCode") for w in workers]
    report.check(f"{WORKERS} workers ran and exited 0", len(workers) == WORKERS and codes == [0] * WORKERS, f"{codes}")
    details = stack.inspect([w["ID"] for w in workers])
    return [d["Config"]["Hostname"] for d in details]


def check_proxy(report: Report, stack: Stack, connections: Connections) -> None:
    """The workers' trials went through the storage proxy (their storage is grpc://storage:13000, and every trial
    holds the heartbeat the proxy records for a worker's lease), and PostgreSQL's optuna database served the
    proxy alone: no worker, init or dashboard container ever connected to PostgreSQL."""
    rows = stack.containers()
    details = stack.inspect([r["ID"] for r in rows])
    service_of = {
        net["IPAddress"]: d["Config"]["Labels"].get("com.docker.compose.service", d["Name"])
        for d in details
        for net in (d["NetworkSettings"].get("Networks") or {}).values()
        if net.get("IPAddress")
    }
    storages = {
        env.split("=", 1)[1]
        for d in details
        if d["Config"]["Labels"].get("com.docker.compose.service") == "worker"
        for env in d["Config"].get("Env") or []
        if env.startswith("SWEEPER_STORAGE=")
    }
    out = stack.compose(
        "exec", "-T", "postgres", "psql", "-U", "sweeper", "-d", "optuna", "-At", "-c",
        "SELECT count(*), count(h.trial_id) FROM trials t LEFT JOIN trial_heartbeats h USING (trial_id)",
    )  # fmt: skip
    trials, leased = (int(n) for n in out.strip().splitlines()[-1].split("|"))
    report.check(
        "the workers' trials went through the storage proxy",
        storages == {"grpc://storage:13000"} and trials > 0 and leased == trials,
        f"worker storage {sorted(storages)}; {leased} of {trials} trials hold the heartbeat of a lease",
    )
    clients = {(db, app, service_of.get(ip, f"unknown {ip}")) for db, app, ip in connections.seen}
    optuna = {(app, service) for db, app, service in clients if db == "optuna"}
    services = {service for _, _, service in clients}
    report.check(
        "PostgreSQL saw only the storage proxy's connections",
        connections.samples > 0 and optuna == {("sweeper-storage", "storage")} and services <= {"storage", "mlflow"},
        f"{connections.samples} samples: " + ", ".join(f"{db} <- {svc} ({app})" for db, app, svc in sorted(clients)),
    )


def check_study(report: Report, stack: Stack) -> list[dict[str, Any]]:
    out = stack.compose("run", "--rm", "--no-deps", "init", "study", "show", STUDY, "--json", timeout=300)
    shown = json.loads(out[out.index("{") :])
    trials = shown["trials"]
    complete = [t for t in trials if t["state"] == "complete"]
    want = WORKERS * stack.trials
    report.check("one study holds every worker's trials", len(complete) == want, f"{len(complete)} of {want} complete")
    return complete


def check_mlflow(report: Report, stack: Stack, hosts: list[str], trials: int) -> str:
    """The server's view of the study: login, runs, an artifact; returns the experiment's id."""
    try:
        stack.mlflow("/api/2.0/mlflow/experiments/get-by-name", {"experiment_name": STUDY}, auth=False)
        status = 200
    except urllib.error.HTTPError as err:
        status = err.code
    report.check("MLflow refuses requests without credentials", status == 401, f"HTTP {status}")
    found = stack.mlflow("/api/2.0/mlflow/experiments/get-by-name", {"experiment_name": STUDY})
    experiment_id = str(found["experiment"]["experiment_id"])
    trial_runs = check_runs(report, stack, experiment_id, hosts, trials)
    if trial_runs:
        check_artifact(report, stack, experiment_id, trial_runs[0])
    return experiment_id


def check_runs(report: Report, stack: Stack, experiment_id: str, hosts: list[str], trials: int) -> list[str]:
    """The parent run and the trial runs nested under it, with metrics, from both workers; the trial runs' ids."""
    search = {"experiment_ids": [experiment_id], "max_results": 1000}
    runs = stack.mlflow("/api/2.0/mlflow/runs/search", post=search).get("runs", [])
    tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
    parents = [r for r, t in zip(runs, tags, strict=True) if t.get("sweeper.role") == "study"]
    report.check("MLflow has the study's parent run", len(parents) == 1, f"{len(parents)} parent runs")
    if not parents:
        return []
    parent_id = parents[0]["info"]["run_id"]
    children = [(r, t) for r, t in zip(runs, tags, strict=True) if t.get("mlflow.parentRunId") == parent_id]
    report.check("every trial run is nested under it", len(children) == trials, f"{len(children)} of {trials}")
    with_metrics = [r for r, _ in children if {m["key"] for m in r["data"].get("metrics", [])} >= {"val_accuracy"}]
    report.check("the trial runs have their metrics", len(with_metrics) == len(children) > 0, f"{len(with_metrics)}")
    ran_on = {t.get("sweeper.host") for _, t in children}
    report.check(
        "both workers ran trials", ran_on == set(hosts), f"trial hosts {sorted(map(str, ran_on))}, workers {hosts}"
    )
    return [r["info"]["run_id"] for r, _ in children]


def check_artifact(report: Report, stack: Stack, experiment_id: str, run_id: str) -> None:
    """A trial's picture, read back through the server's artifact proxy."""
    name = "a trial's artifacts read back through the proxy"
    picture = find_artifact(stack, run_id, "", ".png")
    if picture is None:
        report.check(name, False, "no .png among its artifacts")
        return
    path = f"/api/2.0/mlflow-artifacts/artifacts/{experiment_id}/{run_id}/artifacts/{picture}"
    body = stack.mlflow(urllib.parse.quote(path), raw=True)
    report.check(name, body[:8] == b"\x89PNG\r\n\x1a\n", f"{picture}: {len(body)} bytes")


def find_artifact(stack: Stack, run_id: str, path: str, suffix: str) -> str | None:
    listed = stack.mlflow("/api/2.0/mlflow/artifacts/list", {"run_id": run_id, **({"path": path} if path else {})})
    for entry in listed.get("files", []):
        if entry.get("is_dir"):
            found = find_artifact(stack, run_id, entry["path"], suffix)
            if found:
                return found
        elif entry["path"].endswith(suffix):
            return str(entry["path"])
    return None


def check_worker_logs(report: Report, stack: Stack, experiment_id: str) -> None:
    """What `docker compose logs` shows of each worker's end: the best trial, the replay hint and the link to the
    study's runs view (the published port, not the service name), each whole on its own line."""
    link = f"runs in MLflow: http://127.0.0.1:{stack.mlflow_port}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    wanted = {
        "best": re.compile(r"best: trial \d+ val accuracy \d+\.\d\d% \(lr [-+.\de]+\)"),
        "replay": re.compile(re.escape(f"replay it with: sweeper replay --study {STUDY}")),
        "link": re.compile(re.escape(link)),
    }
    out = stack.compose("logs", "--no-color", "--no-log-prefix", "worker")
    lines = [line.strip() for line in out.splitlines()]
    found = {key: sum(bool(pattern.fullmatch(line)) for line in lines) for key, pattern in wanted.items()}
    report.check(
        "each worker's log ends with the best trial, the replay hint and the runs link, a line each",
        all(count == WORKERS for count in found.values()),
        ", ".join(f"{key} ×{count}" for key, count in found.items()),
    )


def check_dashboard(report: Report, stack: Stack) -> None:
    url = f"http://127.0.0.1:{stack.dashboard_port}/api/studies"
    with urllib.request.urlopen(url, timeout=30) as response:
        studies = json.loads(response.read())["study_summaries"]
    ours = [s for s in studies if s.get("study_name") == STUDY]
    report.check("the dashboard serves the study", len(ours) == 1, f"{[s.get('study_name') for s in studies]}")
    if ours:
        with urllib.request.urlopen(f"{url}/{ours[0]['study_id']}?after=0", timeout=30) as response:
            detail = json.loads(response.read())
        names = detail.get("objective_names") or []  # the study's metric names, as the dashboard shows them
        report.check("the dashboard names the objective", bool(names) and "Objective 0" not in names, f"{names}")


def check_containers(report: Report, stack: Stack) -> None:
    rows = stack.containers()
    details = stack.inspect([r["ID"] for r in rows])
    with_health = {
        d["Name"].lstrip("/"): d["State"].get("Health", {}).get("Status") for d in details if d["State"].get("Health")
    }
    report.check(
        "every healthcheck is green",
        len(with_health) >= 3 and set(with_health.values()) == {"healthy"},
        ", ".join(f"{k} {v}" for k, v in sorted(with_health.items())),
    )
    users = {d["Name"].lstrip("/"): d["Config"].get("User") for d in details if "postgres" not in d["Name"]}
    report.check(
        "the sweeper, MLflow and dashboard containers run as uid 10001",
        set(users.values()) == {"10001:10001"},
        ", ".join(f"{k} {v}" for k, v in sorted(users.items())),
    )
    env = {d["Name"].lstrip("/"): d["Config"].get("Env") or [] for d in details}
    telemetry = {
        k: "MLFLOW_DISABLE_TELEMETRY=true" in v for k, v in env.items() if "postgres" not in k and "dashboard" not in k
    }
    report.check("MLflow telemetry is off in MLflow and the workers", all(telemetry.values()), f"{telemetry}")
    mlflow = [d["Name"].lstrip("/") for d in details if "-mlflow-" in d["Name"]]
    if mlflow:
        processes = run(["docker", "top", mlflow[0], "-eo", "pid,args"])
        huey = [line for line in processes.splitlines() if "huey" in line]
        report.check("the MLflow server runs no job-runner processes", not huey, f"{len(huey)} huey processes")


def check_no_secret_shown(report: Report, stack: Stack, extra_output: str) -> None:
    rows = stack.containers()
    texts = {
        "docker compose config": stack.compose("config"),
        "docker ps": run(["docker", "ps", "--all", "--no-trunc"]),
        "docker inspect": json.dumps(stack.inspect([r["ID"] for r in rows])),
        "the logs": stack.compose("logs", "--no-color", "--timestamps") + extra_output,
    }
    header = basic_auth(stack.secrets["MLFLOW_ADMIN_PASSWORD"])
    forms = {**stack.secrets, "MLFLOW_ADMIN_PASSWORD (as a basic-auth header)": header}
    for where, text in texts.items():
        shown = [name for name, value in forms.items() if value in text]
        report.check(
            f"no secret in {where}", not shown, f"{', '.join(shown)} shown" if shown else f"{len(text):,} chars"
        )


def guarded(report: Report, what: str, check: Callable[..., T], *args: Any) -> T | None:
    """Run one group of checks; an error in it (a refused request, an answer of another shape) is a FAIL line
    naming it, and the other groups still run."""
    try:
        return check(*args)
    except Exception as err:  # noqa: BLE001 - any error of a check is that check's failure
        report.check(f"{what} could be checked", False, f"{type(err).__name__}: {str(err)[:300]}")
        return None


def check_nothing_left(report: Report) -> None:
    label = f"label=com.docker.compose.project={PROJECT}"
    containers = run(["docker", "ps", "--all", "--quiet", "--filter", label]).split()
    volumes = run(["docker", "volume", "ls", "--quiet", "--filter", label]).split()
    networks = run(["docker", "network", "ls", "--quiet", "--filter", label]).split()
    left = len(containers) + len(volumes) + len(networks)
    report.check(
        "compose down -v leaves nothing",
        left == 0,
        f"{len(containers)} containers, {len(volumes)} volumes, {len(networks)} networks",
    )


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
