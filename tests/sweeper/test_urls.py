"""sweeper.urls: the one password mask, everywhere a URL reaches a person or a record (the console script run as users
run it: its entry point, sweeper.cli.main, with its masked streams), and links to the MLflow runs view."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from conftest import TINY, artifacts, free_port
from sweeper.urls import RunsLink, mask_url, runs_link


def test_masks_passwords_in_urls():
    assert mask_url("postgresql+psycopg2://u:secret@db:5432/x") == "postgresql+psycopg2://u:***@db:5432/x"
    assert mask_url("http://admin:pw@mlflow:5000") == "http://admin:***@mlflow:5000"
    assert mask_url("sqlite:///sweeper.db") == "sqlite:///sweeper.db"


def test_runs_links_open_the_runs_view_without_a_password():
    """MLflow 3 shows an experiment's GenAI view unless asked for the runs; a browser asks for the credentials."""
    view = "#/experiments/7/runs?workflowType=machine_learning"
    assert runs_link("https://alice:s3cret@example.org/mlflow/", "7") == RunsLink(f"https://example.org/mlflow/{view}")
    assert runs_link("http://mlflow:5000", "7") == RunsLink(f"http://mlflow:5000/{view}")
    local = RunsLink(f"http://127.0.0.1:5000/{view}", serve="mlflow ui --backend-store-uri sqlite:////srv/mlflow.db")
    assert runs_link("sqlite:////srv/mlflow.db", "7") == local
    served = runs_link("postgresql://u:s3cret@db/mlflow", "7")
    assert served is not None and "s3cret" not in served.serve
    assert runs_link("databricks", "7") is None


def test_runs_link_uses_the_browsers_address_of_the_ui_where_one_is_given(monkeypatch):
    """In the compose stack a worker tracks to http://mlflow:5000, a name only the containers know; the link it
    prints must be the published port (SWEEPER_MLFLOW_UI, set by docker-compose.yml)."""
    monkeypatch.setenv("SWEEPER_MLFLOW_UI", "http://127.0.0.1:5001/")
    view = "#/experiments/7/runs?workflowType=machine_learning"
    assert runs_link("http://mlflow:5000", "7") == RunsLink(f"http://127.0.0.1:5001/{view}")
    local = runs_link("sqlite:////srv/mlflow.db", "7")  # a local store is still seen through `mlflow ui`
    assert local is not None and local.serve is not None


RAW = "Pw/7#x?y:z%q"  # / # ? : % as typed, which URL parsers cut short
ENCODED = "Pw%2F7%40x%3Fy%3Az%25q"  # the same characters and @, percent-encoded
FRAGMENTS = ("Pw/7", "7#x", "x?y", "y:z", "z%q", "Pw%2F7", "%40x", "%3Az", "%25q")  # no piece of either may show


def leaks(text: str) -> list[str]:
    return [fragment for fragment in FRAGMENTS if fragment in text]


class CommandLines:
    """Every process's command line, read from /proc while a command runs: the workers' included."""

    def __init__(self) -> None:
        self.seen: set[tuple[int, str]] = set()  # (pid, command line): an exited process's reads empty
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self.stop.is_set():
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                try:
                    line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                if line:
                    self.seen.add((int(entry.name), line))
            self.stop.wait(0.2)

    def __enter__(self) -> CommandLines:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


@pytest.mark.slow
@pytest.mark.parametrize("password", [RAW, ENCODED], ids=["raw", "percent-encoded"])
def test_a_study_on_two_workers_shows_the_password_nowhere(
    image_folder, mlflow_server, pg_url, tmp_path, password, console_script
):
    name = f"secret-{'raw' if password == RAW else 'encoded'}"  # one MLflow server for the session: one experiment each
    storage = pg_url.replace("postgres@", f"postgres:{password}@")  # trust auth: any password connects
    tracking = mlflow_server.uri.replace("http://", f"http://admin:{ENCODED}@")  # requests decodes it for basic auth
    with CommandLines() as processes:
        done = console_script(
            "study", "run", name, "--workers", 2, "--n-trials", 2, "--data", image_folder, "--storage", storage,
            "--tracking-uri", tracking, "--sampler", "random", "--set", *TINY, "train.epochs=1",
        )  # fmt: skip
        rc, output = done.code, done.output
    assert rc == 0, output[-3000:]
    assert not leaks(output)
    lines = [line for _, line in processes.seen]
    workers = [line for line in lines if f"study run {name}" in line and "--trials-until" in line]
    assert len(workers) == 2 and not leaks(" ".join(line for line in lines if "pytest" not in line))
    for path in (tmp_path / "runs").rglob("*"):
        if path.is_file() and path.suffix in (".yaml", ".json", ".log", ".jsonl"):
            assert not leaks(path.read_text(errors="ignore")), path
    study = optuna.load_study(study_name=name, storage=pg_url)
    records = [study.user_attrs] + [t.user_attrs | t.system_attrs for t in study.trials]
    assert not leaks(json.dumps(records))
    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 3
    assert not leaks(json.dumps([{"params": r.data.params, "tags": r.data.tags} for r in runs]))
    assert "***" in client.get_run(study.user_attrs["mlflow_parent_run_id"]).data.params["storage"]


@pytest.mark.parametrize(
    "password",
    [RAW, "Pw/7#x@y:z%q", "Pw 7 x'y", ENCODED],
    ids=["raw", "raw-with-at", "spaces-quote", "percent-encoded"],
)
def test_errors_about_urls_with_passwords_show_none_of_them(image_folder, tmp_path, password, console_script):
    port = free_port()
    cases = {
        "unreachable storage": ["study", "list", "--storage", f"postgresql+psycopg2://u:{password}@127.0.0.1:{port}/x"],
        "bare postgresql": ["study", "list", "--storage", f"postgresql://u:{password}@127.0.0.1:{port}/x"],
        "malformed storage": ["study", "list", "--storage", f"postgres//u:{password}@oops"],
        "unreachable tracking": [
            "study", "run", "x", "--data", image_folder, "--set", *TINY, "train.epochs=1",
            "--tracking-uri", f"http://u:{password}@127.0.0.1:{port}",
        ],
        "unsupported tracking scheme": [
            "study", "run", "x", "--data", image_folder, "--set", *TINY, "train.epochs=1", "--tracking-uri", f"ftp://u:{password}@host/x",
        ],
        "sync to an unreachable server": ["study", "sync", "x", "--tracking-uri", f"http://u:{password}@127.0.0.1:{port}"],
        "password as a query parameter": [
            "study", "list", "--storage", f"postgresql://u@127.0.0.1:{port}/x?password={password.replace(' ', '%20')}",
        ],
    }  # fmt: skip
    (tmp_path / "runs" / "x" / "spool").mkdir(parents=True)
    (tmp_path / "runs" / "x" / "spool" / "w.jsonl").write_text('{"op": "batch", "run_id": "r", "tags": [["a", "b"]]}\n')
    for case, args in cases.items():
        done = console_script(*args)
        rc, output = done.code, done.output
        assert rc == 2, (case, output[-2000:])
        assert "error:" in output, (case, output[-2000:])
        if "@" in password:  # a raw @ is refused without showing the URL at all
            assert "percent-encoded as %40" in output or "***" in output, (case, output[-2000:])
        else:
            assert "***" in output, (case, output[-2000:])
        assert not leaks(output) and "Pw 7" not in output, (case, output[-2000:])


@pytest.mark.slow
def test_no_password_reaches_logs_mlflow_or_config(
    image_folder, mlflow_server, pg_url, tmp_path, console_script, monkeypatch
):
    secret = "s3cretPassw0rd"
    storage = pg_url.replace("postgres@", f"postgres:{secret}@")  # trust auth: any password connects
    monkeypatch.setenv("SWEEPER_STORAGE", storage)
    done = console_script(
        "study", "run", "secret", "--data", image_folder, "--n-trials", 1, "--storage", storage,
        "--tracking-uri", mlflow_server.uri, "--set", *TINY, "train.epochs=1",
    )  # fmt: skip
    rc, output = done.code, done.output
    assert rc == 0, output[-2000:]
    assert secret not in output
    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name("secret")
    for run in client.search_runs([exp.experiment_id]):
        dumped = json.dumps({"params": run.data.params, "tags": run.data.tags})
        assert secret not in dumped
        for path in sorted(
            {"config.yaml", "space.yaml"} & artifacts(client, run.info.run_id)
        ):  # not every run has both
            text = Path(client.download_artifacts(run.info.run_id, path, str(tmp_path))).read_text()
            assert secret not in text
    study = optuna.load_study(study_name="secret", storage=storage)
    assert secret not in json.dumps(study.user_attrs) and "***" in study.user_attrs["tracking_uri"] + json.dumps(
        client.get_run(study.user_attrs["mlflow_parent_run_id"]).data.params
    )
    for path in Path("runs").rglob("*"):
        if path.is_file() and path.suffix in (".yaml", ".json", ".log", ".jsonl"):
            assert secret not in path.read_text(errors="ignore"), path
