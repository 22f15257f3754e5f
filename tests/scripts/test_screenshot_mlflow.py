"""scripts/screenshot_mlflow.py: it refuses what would give no picture, with one line, and leaves nothing behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "screenshot_mlflow.py"


# A stand-in for Chromium on its DevTools pipe (commands on fd 3, answers on fd 4, NUL-terminated JSON): it answers
# every command, finds every run on the page, and then takes a screenshot with no picture in it -- or ("crash")
# exits at the first command.
FAKE_CHROMIUM = """#!{python}
import json, os, sys
crash = {crash}
buffer = b""
while True:
    chunk = os.read(3, 65536)
    if not chunk or crash:
        sys.exit(0)
    buffer += chunk
    while b"\\0" in buffer:
        raw, buffer = buffer.split(b"\\0", 1)
        command = json.loads(raw)
        result = {{
            "Target.getTargets": {{"targetInfos": [{{"type": "page", "targetId": "page-1"}}]}},
            "Target.attachToTarget": {{"sessionId": "session-1"}},
            "Runtime.evaluate": {{"result": {{"type": "boolean", "value": True}}}},
            "Page.captureScreenshot": {{"data": ""}},
        }}.get(command["method"], {{}})
        os.write(4, json.dumps({{"id": command["id"], "result": result}}).encode() + b"\\0")
        if command["method"] == "Browser.close":
            sys.exit(0)
"""


def screenshot(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=180)


def running_with(text: str) -> list[str]:
    """Command lines of the processes that still run and name ``text``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            line = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in line and "pytest" not in line:
            found.append(line)
    return found


def test_a_store_that_does_not_exist_is_refused_and_not_created(tmp_path):
    done = screenshot("--study", "smoke", "--out", tmp_path / "shot.png")  # the default: sqlite:///mlflow.db here
    assert done.returncode == 1
    refused = f"error: no MLflow store at {tmp_path / 'mlflow.db'}: run a study there first, or pass --tracking-uri"
    assert done.stderr.splitlines() == [refused]
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "shot.png").exists()
    elsewhere = screenshot("--study", "smoke", "--tracking-uri", f"sqlite:///{tmp_path}/missing/mlflow.db")
    assert elsewhere.returncode == 1 and len(elsewhere.stderr.splitlines()) == 1
    assert not (tmp_path / "missing").exists()


@pytest.mark.slow
@pytest.mark.parametrize("crash", [False, True])
def test_no_picture_from_chromium_exits_1_with_one_line_and_stops_the_ui(tmp_path, crash):
    store = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(store)
    experiment = client.create_experiment("smoke", artifact_location=(tmp_path / "mlartifacts").as_uri())
    parent = client.create_run(experiment, tags={"sweeper.role": "study"}, run_name="smoke").info.run_id
    client.create_run(
        experiment, tags={"sweeper.role": "trial", "mlflow.parentRunId": parent}, run_name="smoke-trial-0"
    )
    chromium = tmp_path / "chromium"
    chromium.write_text(FAKE_CHROMIUM.format(python=sys.executable, crash=crash))
    chromium.chmod(0o755)
    out = tmp_path / "docs" / "shot.png"
    done = screenshot("--study", "smoke", "--tracking-uri", store, "--out", out, "--chromium", chromium)
    assert done.returncode == 1, done.stdout + done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: ") and "saved no picture" in line
    assert not out.exists()
    assert running_with(store) == []  # its `mlflow ui` is gone, workers and all
