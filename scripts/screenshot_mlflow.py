"""Take the README's screenshot: a study's runs in a real `mlflow ui`, the parent run with its trials nested under it.

    python scripts/screenshot_mlflow.py --study smoke --tracking-uri sqlite:////tmp/shot/mlflow.db \\
        --out docs/mlflow-runs.png

Needs Debian's chromium (`apt-get install chromium`) and a local MLflow store a study logged to (it refuses one that
does not exist, so it never leaves an empty mlflow.db behind). Starts `mlflow ui` on a free loopback port, opens the
study's runs view (#/experiments/<id>/runs?workflowType=machine_learning, not MLflow 3's GenAI view), expands the
parent run and shows the trials' accuracies and parameters (the UI's own saved view state, set through Chromium's
DevTools pipe), waits until every trial's row is drawn, saves a PNG and stops the UI and Chromium. Anything missing,
a picture Chromium did not save included, exits 1 with one `error: ...` line.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from sweeper.cli import no_phoning_home
from sweeper.urls import SQLITE_PREFIX, absolute_sqlite, runs_view

WAIT_SECONDS = 90  # for `mlflow ui` to answer and for the page to draw the runs (measured: ~5 s and ~3 s here)
SETTLE_SECONDS = 1.5  # after the last row appears: fonts and icons finish drawing
URL_BLANK = "about:blank"  # the page Chromium starts on, before the runs view is opened in it
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Columns of the runs table: what a trial is judged by and what was searched
COLUMNS = ["metrics.`val_accuracy`", "metrics.`test_accuracy`", "params.`lr`", "params.`momentum`",
           "params.`weight_decay`", "params.`effective_decay`"]  # fmt: skip
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
]  # fmt: skip


class ScreenshotError(Exception):
    """What stops the picture: printed as one ``error: ...`` line."""


class Refused(ScreenshotError):
    """Chromium answered a command with an error (e.g. an evaluation while the page reloads)."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", required=True, help="study (= MLflow experiment) name")
    parser.add_argument(
        "--tracking-uri", default="sqlite:///mlflow.db", help="a local store: sqlite:///FILE or a folder"
    )
    parser.add_argument("--out", type=Path, default=Path("mlflow-runs.png"))
    parser.add_argument("--size", default="1500,620", help="viewport width,height in pixels")
    parser.add_argument("--chromium", help="the browser (default: chromium or chromium-browser on PATH)")
    args = parser.parse_args()
    try:
        url = screenshot(args.study, args.tracking_uri, args.out, size=args.size, chromium=args.chromium)
    except ScreenshotError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} ({url})")
    return 0


def screenshot(study: str, tracking_uri: str, out: Path, *, size: str, chromium: str | None) -> str:
    """Save the study's runs view to ``out``; returns the URL it showed."""
    uri = absolute_sqlite(tracking_uri)
    check_store(uri)  # before MLflow opens it: opening a missing SQLite file creates it, empty
    browser = chromium or shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise ScreenshotError("chromium not found: apt-get install chromium (or pass --chromium PATH)")
    width, height = (int(n) for n in size.split(","))
    no_phoning_home(os.environ)  # before mlflow is imported: no telemetry from this process or the UI
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        raise ScreenshotError(f"no experiment {study!r} at {uri}")
    parents = client.search_runs([experiment.experiment_id], "tags.`sweeper.role` = 'study'", max_results=1)
    if not parents:
        raise ScreenshotError(f"no study run in experiment {study!r}: run `sweeper study run {study}` first")
    parent = parents[0].info.run_id
    trials = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")
    if not trials:
        raise ScreenshotError(f"study {study!r} has no trial runs yet")
    shown = [run.info.run_id for run in trials[:20]]  # the rows a first page holds
    with tempfile.TemporaryDirectory() as tmp, mlflow_ui(uri, Path(tmp) / "mlflow-ui.log") as base:
        url = f"{base}/{runs_view(experiment.experiment_id)}"
        png = capture(browser, Path(tmp) / "profile", url, experiment.experiment_id, parent, shown, width, height)
    if not png.startswith(PNG_MAGIC):
        raise ScreenshotError(f"Chromium saved no picture of {url}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(png)
    if not out.is_file() or out.stat().st_size == 0:
        raise ScreenshotError(f"no picture at {out} after writing it")
    return url


def check_store(uri: str) -> None:
    """A local store that exists and holds something; anything else is refused."""
    if uri.startswith(SQLITE_PREFIX):
        path = Path(uri[len(SQLITE_PREFIX) :])
        if not path.is_file() or path.stat().st_size == 0:
            raise ScreenshotError(f"no MLflow store at {path}: run a study there first, or pass --tracking-uri")
    elif "://" not in uri or uri.startswith("file://"):
        path = Path(uri.removeprefix("file://"))
        if not path.is_dir():
            raise ScreenshotError(f"no MLflow store folder at {path}: run a study there first, or pass --tracking-uri")
    else:
        raise ScreenshotError(f"--tracking-uri must be a local store (sqlite:///FILE or a folder), got {uri}")


@contextlib.contextmanager
def mlflow_ui(uri: str, log: Path) -> Any:
    """`mlflow ui` over ``uri`` on a free loopback port, in a process group of its own; yields its base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port",
           str(port), "--workers", "1"]  # fmt: skip
    with open(log, "wb") as sink:
        ui = subprocess.Popen(
            cmd,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=no_phoning_home(dict(os.environ), server=True),
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            if ui.poll() is not None:
                raise ScreenshotError(f"mlflow ui exited: {log.read_text(errors='replace')[-300:].strip()}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise ScreenshotError(f"mlflow ui did not answer within {WAIT_SECONDS} s") from None
                time.sleep(0.5)
        yield base
    finally:
        stop_group(ui)


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group ``proc`` leads, SIGKILL after 20 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def capture(
    browser: str, profile: Path, url: str, experiment_id: str, parent: str, trials: list[str], width: int, height: int
) -> bytes:
    """Open ``url`` in headless Chromium (a fresh profile), set the runs table's saved state (the parent expanded,
    the accuracy and parameter columns, the assistant panel closed), reload, wait for the trials' rows; PNG bytes."""
    with DevTools(browser, profile) as tools:
        page = tools.page()
        tools.send("Emulation.setDeviceMetricsOverride", page, width=width, height=height, deviceScaleFactor=1,
                   mobile=False)  # fmt: skip
        tools.send("Page.navigate", page, url=url)
        tools.wait_for(page, [parent], what="the study's parent run")
        state_key = f'MLflowLocalStorage-1.1-ExperimentPage-["{experiment_id}"]-ReactComponentState'
        script = f"""(() => {{
            const key = {json.dumps(state_key)};
            const state = JSON.parse(localStorage.getItem(key) || "{{}}");
            state.runsExpanded = {{...(state.runsExpanded || {{}}), {json.dumps(parent)}: true}};
            state.selectedColumns = {json.dumps(COLUMNS)};
            localStorage.setItem(key, JSON.stringify(state));
            localStorage.setItem("mlflow.assistant.panelOpen_v1", "false");
            return true;
        }})()"""
        tools.evaluate(page, script)
        tools.send("Page.reload", page)
        tools.wait_for(page, trials, what="the trial runs nested under the parent")
        time.sleep(SETTLE_SECONDS)
        return base64.b64decode(tools.send("Page.captureScreenshot", page, format="png").get("data", ""))


class DevTools:
    """Headless Chromium driven over its DevTools pipe (--remote-debugging-pipe: JSON messages ending in NUL,
    commands on the child's fd 3, answers on its fd 4), so no WebDriver or websocket library is needed."""

    def __init__(self, browser: str, profile: Path) -> None:
        self.browser, self.profile = browser, profile
        self.next_id = 0
        self.buffer = b""

    def __enter__(self) -> DevTools:
        to_child, self.commands = os.pipe()
        self.answers, from_child = os.pipe()

        def as_fd_3_and_4() -> None:  # above 10 first, so neither dup2 overwrites the other's source
            high_in, high_out = fcntl.fcntl(to_child, fcntl.F_DUPFD, 10), fcntl.fcntl(from_child, fcntl.F_DUPFD, 10)
            os.dup2(high_in, 3)
            os.dup2(high_out, 4)

        self.proc = subprocess.Popen(
            [self.browser, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-pipe", URL_BLANK],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=as_fd_3_and_4,  # safe here: this script runs one thread
            pass_fds=(3, 4),
            start_new_session=True,
        )
        os.close(to_child)
        os.close(from_child)
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):  # it may be gone already; the group is stopped below either way
            self.send("Browser.close")
        os.close(self.commands)
        os.close(self.answers)
        stop_group(self.proc)

    def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """One DevTools command (to the page's ``session``, else the browser); its result."""
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        try:
            os.write(self.commands, json.dumps(message).encode() + b"\0")
        except BrokenPipeError:
            raise ScreenshotError(f"Chromium exited before {method}; it saved no picture") from None
        while True:
            while b"\0" not in self.buffer:
                chunk = os.read(self.answers, 1 << 16)
                if not chunk:
                    raise ScreenshotError(f"Chromium closed its DevTools pipe ({method}); it saved no picture")
                self.buffer += chunk
            raw, self.buffer = self.buffer.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self.next_id:  # events (no id) and other answers are not waited for
                if "error" in answer:
                    raise Refused(f"Chromium refused {method}: {answer['error'].get('message')}")
                return answer.get("result", {})

    def page(self) -> str:
        """A session on the browser's one page."""
        targets = self.send("Target.getTargets")["targetInfos"]
        target = next((t for t in targets if t["type"] == "page"), None)
        if target is None:
            raise ScreenshotError("Chromium opened no page")
        return self.send("Target.attachToTarget", targetId=target["targetId"], flatten=True)["sessionId"]

    def evaluate(self, session: str, expression: str) -> Any:
        result = self.send("Runtime.evaluate", session, expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def wait_for(self, session: str, run_ids: list[str], *, what: str) -> None:
        """Until the page links every run in ``run_ids`` (its row is drawn), else ScreenshotError naming ``what``."""
        check = f"{json.dumps(run_ids)}.every(id => document.querySelector(`a[href$='/runs/${{id}}']`) !== null)"
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            with contextlib.suppress(Refused):  # the page may be between two documents
                if self.evaluate(session, check):
                    return
            if time.monotonic() > deadline:
                raise ScreenshotError(f"the runs view did not show {what} within {WAIT_SECONDS} s")
            time.sleep(0.3)


if __name__ == "__main__":
    raise SystemExit(main())
