"""scripts/stack_test.py and its checks (scripts/stack_checks.py) without a Docker engine: the verdict, the exit
codes, and the secret scan.

`make stack-test` itself needs root and Docker (docs/stack.md records its last run); these check what the
script promises when it cannot get that far, and the parts that decide PASS or FAIL.
"""

from __future__ import annotations

import base64
import importlib.util
import subprocess
import sys
from types import ModuleType
from typing import Any

import pytest

from conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "stack_test.py"


@pytest.fixture(scope="module")
def stack_test() -> ModuleType:
    spec = importlib.util.spec_from_file_location("stack_test", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_help_names_what_it_runs() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0
    for option in ("--data", "--trials", "--timeout", "--local-bases"):
        assert option in result.stdout


def test_a_stack_that_cannot_come_up_exits_2_with_a_verdict(stack_test: ModuleType, monkeypatch, capsys) -> None:
    def no_engine(args: Any, report: Any) -> None:
        raise stack_test.StackError("no Docker engine answers and there is no dockerd to start")

    monkeypatch.setattr(stack_test, "stack_test", no_engine)
    assert stack_test.main([]) == 2
    out, err = capsys.readouterr()
    assert "could not run the stack: no Docker engine" in err
    assert out.strip().splitlines()[-1].startswith("stack-test: FAIL: 0 passed, 0 failed in ")


def test_an_unexpected_error_still_ends_with_a_verdict(stack_test: ModuleType, monkeypatch, capsys) -> None:
    def broken(args: Any, report: Any) -> None:
        report.check("something", True)
        raise KeyError("experiment")

    monkeypatch.setattr(stack_test, "stack_test", broken)
    assert stack_test.main([]) == 2
    out, err = capsys.readouterr()
    assert "stopped by KeyError" in err
    assert "stack-test: FAIL: 1 passed, 0 failed" in out


def test_a_failed_check_fails_the_run_and_a_broken_one_is_a_fail_line(stack_test: ModuleType, capsys) -> None:
    report = stack_test.Report()
    assert report.check("fine", True, "detail") is True
    assert stack_test.guarded(report, "MLflow", lambda: 1 / 0) is None
    out = capsys.readouterr().out.splitlines()
    assert out == ["PASS  fine: detail", "FAIL  MLflow could be checked: ZeroDivisionError: division by zero"]
    assert report.passed == 1 and report.failed == ["MLflow could be checked"]


class FakeStack:
    """What check_no_secret_shown reads of a stack: its secrets and the four texts it scans."""

    def __init__(self, secrets: dict[str, str], leak: str = "") -> None:
        self.secrets = secrets
        self.leak = leak

    def containers(self) -> list[dict[str, str]]:
        return []

    def compose(self, *args: str, **kwargs: Any) -> str:
        return ("logs " + self.leak) if args[0] == "logs" else "services: {}"

    def inspect(self, names: Any) -> list[Any]:
        return []


@pytest.mark.parametrize("encoded", [False, True])
def test_the_secret_scan_finds_a_password_also_as_a_basic_auth_header(
    stack_test: ModuleType, monkeypatch, capsys, encoded: bool
) -> None:
    secrets = {"POSTGRES_PASSWORD": "p" * 48, "MLFLOW_ADMIN_PASSWORD": "a" * 48, "MLFLOW_SECRET_KEY": "k" * 48}
    header = base64.b64encode(f"admin:{secrets['MLFLOW_ADMIN_PASSWORD']}".encode()).decode()
    leak = f"Authorization: Basic {header}" if encoded else f"password={secrets['POSTGRES_PASSWORD']}"
    checks = sys.modules[stack_test.check_no_secret_shown.__module__]  # scripts/stack_checks.py, loaded beside it
    monkeypatch.setattr(checks, "run", lambda cmd, **kwargs: "CONTAINER ID")
    report = stack_test.Report()
    stack_test.check_no_secret_shown(report, FakeStack(secrets, leak), "")
    assert report.failed == ["no secret in the logs"]
    assert report.passed == 3
    shown = "MLFLOW_ADMIN_PASSWORD (as a basic-auth header)" if encoded else "POSTGRES_PASSWORD"
    assert f"FAIL  no secret in the logs: {shown} shown" in capsys.readouterr().out
