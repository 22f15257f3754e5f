"""`python -m benchmarks.scale` at CI's size: a few workers through the proxy on the real PostgreSQL, one killed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO_ROOT


def test_workers_behind_the_proxy_lose_nothing_and_a_killed_ones_trial_is_retried(pg_url) -> None:
    threads = 4
    out = subprocess.run(
        [
            sys.executable, "-m", "benchmarks.scale", "--modes", "proxy", "--workers", "3", "--kill-workers", "3",
            "--seconds", "5", "--trial-seconds", "0.5", "--heartbeat", "1", "--grace", "4", "--threads",
            str(threads), "--no-write", "--json",
        ],
        cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    plain, killed = json.loads(out.stdout)["runs"]
    for run in (plain, killed):
        assert run["mode"] == "proxy" and run["workers"] == 3
        assert run["complete_trials"] > 0
        assert run["duplicated_trials"] == 0 and run["lost_trials"] == [] and run["stuck_running_trials"] == []
        assert run["failed_workers"] == [] and run["unexplained_failed_trials"] == []
        assert 0 < run["peak_db_connections"] <= threads + 1  # the proxy's pool: its threads and the reaper
    assert killed["killed_workers"] == killed["killed_trials"] == 1
    assert killed["killed_trials_failed_and_retried"] == killed["killed_trials_retried_and_complete"] == 1
    assert killed["waiting_trials_left"] == 0
