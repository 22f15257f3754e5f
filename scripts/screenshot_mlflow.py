"""Take the README's screenshot: a trial's run page in a real `mlflow ui`, rendered by headless Chromium.

    python scripts/screenshot_mlflow.py --study smoke --out docs/mlflow-trial.png   # in the folder holding mlflow.db

Needs Debian's chromium (`apt-get install chromium`). Starts `mlflow ui` on a free loopback port, opens the best
trial's artifact view of plots/curves.png (or --artifact), waits for the page to render, saves a PNG, stops the UI.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from mlflow import MlflowClient

RENDER_MS = 20_000  # virtual time Chromium gives the React app to fetch and draw (measured: ~8 s suffices here)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", required=True, help="study (= MLflow experiment) name")
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--artifact", default="plots/curves.png", help="artifact to open in the run page")
    parser.add_argument("--out", type=Path, default=Path("mlflow-trial.png"))
    parser.add_argument("--size", default="1500,1000", help="window width,height in pixels")
    args = parser.parse_args()

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("chromium not found: apt-get install chromium")
    client = MlflowClient(args.tracking_uri)
    exp = client.get_experiment_by_name(args.study)
    if exp is None:
        sys.exit(f"no experiment {args.study!r} at {args.tracking_uri}")
    runs = client.search_runs(
        [exp.experiment_id],
        "tags.`sweeper.role` = 'trial' and tags.`sweeper.state` = 'complete'",
        order_by=["metrics.val_accuracy DESC"],
        max_results=1,
    )
    if not runs:
        sys.exit(f"no complete trial in {args.study!r}")
    run = runs[0]
    port = free_port()
    ui = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "ui",
            "--backend-store-uri",
            args.tracking_uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        url = f"{base}/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}/artifacts/{args.artifact}"
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run(
                [
                    chromium,
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    f"--user-data-dir={profile}",
                    "--hide-scrollbars",
                    f"--window-size={args.size}",
                    f"--virtual-time-budget={RENDER_MS}",
                    f"--screenshot={args.out.absolute()}",
                    url,
                ],
                check=True,
                capture_output=True,
                timeout=120,
            )
        print(f"wrote {args.out} ({url})")
    finally:
        ui.terminate()
        ui.wait(timeout=20)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
