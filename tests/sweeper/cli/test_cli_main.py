"""The console script (sweeper.cli.main) as users run it: what it sets up before any command runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY
from sweeper.cli import QUIET_ENV

# Runs the console script with an import hook that notes the environment the moment mlflow and albumentations are
# first imported (both read these variables at import: albumentations to skip its update check).
SPY = """
import importlib.abc, json, os, sys
from sweeper.cli import QUIET_ENV
seen = {}
class Spy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name in ("mlflow", "albumentations") and name not in seen:
            seen[name] = {key: os.environ.get(key) for key in QUIET_ENV}
sys.meta_path.insert(0, Spy())
sys.argv = ["sweeper", *sys.argv[1:]]
try:
    from sweeper.cli import main
    main()
finally:
    with open("seen.json", "w") as out:
        json.dump(seen, out)
"""


def run_console_script(*args: object, env: dict[str, str]) -> dict[str, dict[str, str | None]]:
    clean = {k: v for k, v in os.environ.items() if k not in QUIET_ENV}
    done = subprocess.run(
        [sys.executable, "-c", SPY, *map(str, args)], env={**clean, **env}, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(Path("seen.json").read_text())


@pytest.mark.parametrize("user", [{}, {"MLFLOW_DISABLE_TELEMETRY": "false"}])
def test_commands_turn_telemetry_and_update_checks_off_before_the_libraries_load(image_folder, user):
    seen = run_console_script("study", "init", "quiet", "--data", image_folder, "--set", *TINY, env=user)
    assert set(seen) == {"mlflow", "albumentations"}  # the command imported both, after main() set the variables
    for library, env in seen.items():
        assert env == {**QUIET_ENV, **user}, library  # what the user set themselves is kept
