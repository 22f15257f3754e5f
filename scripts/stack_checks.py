"""What `make stack-test` checks on a stack that ran (scripts/stack_test.py brings it up and down): PASS/FAIL lines
as checks are made (:class:`Report`), PostgreSQL's clients sampled while the workers run (:class:`Connections`),
and one function per group of checks, each run under :func:`guarded` so one group's error fails that group only.
Standard library only.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from stack_test import Stack

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "sweeper-stacktest"
STUDY = "stack-test"
WORKERS = 2

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
