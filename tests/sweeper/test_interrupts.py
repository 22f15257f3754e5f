"""sweeper.interrupts and the console script's signal handler (sweeper.cli._on_stop_signal): the first Ctrl-C or
SIGTERM stops the work, at once or at the next safe point; later ones are only noted, so the running trial is
recorded as interrupted, its MLflow run and the study's parent run end KILLED, and the command exits 130.

The state machine is called directly; signals are sent to this process (os.kill) with the handler installed, and
`sweeper study run` runs in this process with a signal sent at a chosen moment of its trial. Two cases run the
console script as a process of its own and stop it from outside, as a user or `docker stop` would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from conftest import TINY, invoke, reported_epoch, start_sweeper, wait_for
from sweeper import interrupts
from sweeper.cli import _on_stop_signal, _unraisable
from sweeper.interrupts import InterruptCheck, allowed, check, deferred, request, requested

FIRST = "stopping at the next step\n"  # what the handler writes when the first stop has to wait for a safe point
LATER = "already stopping: recording the running trial first\n"  # what it writes for every later one


@pytest.fixture(autouse=True)
def no_stop_requested() -> Iterator[None]:
    """The state is per process: each test starts, and leaves, with no stop requested and no block open."""
    interrupts.reset()
    yield
    interrupts.reset()


@pytest.fixture()
def stop_handler() -> Iterator[None]:
    """The console script's handler on SIGINT and SIGTERM, as main() installs it; the previous ones afterwards."""
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    for signum in previous:
        signal.signal(signum, _on_stop_signal)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def notes(err: str) -> list[str]:
    """The handler's notes among what reached file descriptor 2 (where it writes, with os.write)."""
    return [line + "\n" for line in err.splitlines() if line + "\n" in (FIRST, LATER)]


def send(signum: int) -> None:
    """Signal this process; Python runs the handler in the main thread before the next line (raising from here)."""
    os.kill(os.getpid(), signum)
    time.sleep(0)  # a point to run it at, for certain


# -- the state machine ----------------------------------------------------------------------------------------------


def test_nothing_stops_until_a_stop_is_requested():
    assert not requested()
    check()
    InterruptCheck().on_step(0, 0.1)


def test_the_first_request_outside_a_study_stops_at_once_and_later_ones_never():
    assert request() is True  # the handler raises KeyboardInterrupt
    assert requested()
    assert request() is False and request() is False  # the clean-up after the first runs to its end


def test_inside_a_deferred_block_a_request_is_noted_and_raised_at_the_next_check():
    with deferred():
        assert request() is False  # Optuna is asking for or recording a trial: not now
        assert requested()
        with pytest.raises(KeyboardInterrupt):
            check()  # the next safe point


def test_training_inside_a_deferred_block_is_open_to_an_immediate_stop():
    with deferred(), allowed():
        assert request() is True


def test_a_request_noted_before_training_starts_is_raised_as_it_starts():
    with deferred():
        request()
        with pytest.raises(KeyboardInterrupt), allowed():
            pytest.fail("the training started although a stop was requested")


def test_blocks_close_when_their_body_raises():
    with pytest.raises(RuntimeError), deferred(), allowed():
        raise RuntimeError("a trial failed")
    assert request() is True  # outside every block again: the first request stops at once


def test_the_training_callback_stops_at_the_next_step_or_epoch():
    callback = InterruptCheck()
    request()
    with pytest.raises(KeyboardInterrupt):
        callback.on_step(7, 0.1)
    with pytest.raises(KeyboardInterrupt):
        callback.on_epoch(None)  # type: ignore[arg-type]  # the metrics are not read


# -- the signal handler, with signals sent to this process --------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stop_signal_raises_at_once_and_a_second_is_only_noted(stop_handler, capfd, signum):
    with pytest.raises(KeyboardInterrupt):
        send(signum)
    assert requested()
    send(signal.SIGINT)  # an impatient Ctrl-C: no second KeyboardInterrupt to cut the clean-up short
    send(signal.SIGTERM)
    assert capfd.readouterr().err == LATER * 2


def test_a_signal_while_optuna_records_waits_for_the_next_safe_point(stop_handler, capfd):
    with deferred():
        send(signal.SIGINT)  # no KeyboardInterrupt here
        assert capfd.readouterr().err == FIRST
        with pytest.raises(KeyboardInterrupt):
            check()


def test_a_signal_during_a_trials_training_interrupts_it_at_once(stop_handler, capfd):
    with deferred(), allowed(), pytest.raises(KeyboardInterrupt):
        send(signal.SIGINT)
    assert capfd.readouterr().err == ""


def test_a_ctrl_c_python_drops_in_a_finaliser_is_not_reported_but_other_errors_are(monkeypatch):
    reported: list[BaseException] = []
    monkeypatch.setattr("sys.__unraisablehook__", lambda args: reported.append(args.exc_value))
    _unraisable(types.SimpleNamespace(exc_value=KeyboardInterrupt("signal 2")))  # type: ignore[arg-type]
    error = ValueError("in a finaliser")
    _unraisable(types.SimpleNamespace(exc_value=error))  # type: ignore[arg-type]
    assert reported == [error]


# -- a study stopped in this process at a chosen moment of its trial -----------------------------------------------


def at(monkeypatch: pytest.MonkeyPatch, target: str, signals: Callable[..., list[int]]) -> None:
    """Wrap ``target`` ("module.Class.method"): before the method runs, send the signals ``signals(*args)`` lists."""
    module, cls, name = target.rsplit(".", 2)
    owner = getattr(__import__(module, fromlist=[cls]), cls)
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        for signum in signals(*args, **kwargs):
            send(signum)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)


def once(*signals: int) -> Callable[..., list[int]]:
    """The signals, the first time the wrapped method is called; nothing afterwards."""
    left = [list(signals)]

    def take(*args: object, **kwargs: object) -> list[int]:
        return left.pop() if left else []

    return take


def stop_study(image_folder: Path, tmp_path: Path) -> tuple[object, str, str]:
    """`sweeper study run stop` (2 trials of 3 epochs) in this process: (its result, storage, tracking URI)."""
    storage, tracking = f"sqlite:///{tmp_path / 'sweeper.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = invoke(
        "study", "run", "stop", "--data", image_folder, "--n-trials", 2, "--storage", storage, "--tracking-uri",
        tracking, "--pruner", "none", "--json", "--set", *TINY, "train.epochs=3",
    )  # fmt: skip
    return result, storage, tracking


def assert_interrupted(result, storage: str, tracking: str, *, state: TrialState = TrialState.FAIL) -> None:
    """Exit 130 and one line; one trial, recorded as ``state`` (failed, reason interrupted: unless Optuna had it
    complete already), its run ended as recorded, and the study's parent run ended KILLED."""
    assert result.exit_code == 130, result.output
    assert result.stderr.strip().splitlines() == ["interrupted"], result.output
    (trial,) = optuna.load_study(study_name="stop", storage=storage).trials  # no trial started after the stop
    assert trial.state == state
    client = MlflowClient(tracking)
    run = client.get_run(trial.user_attrs["mlflow_run_id"])
    if state == TrialState.FAIL:
        assert trial.user_attrs["reason"] == "interrupted"
        assert run.info.status == "KILLED" and run.data.tags["sweeper.state"] == "interrupted"
    else:
        assert run.info.status == "FINISHED" and run.data.tags["sweeper.state"] == "complete"
    experiment = client.get_experiment_by_name("stop")
    assert len(client.search_runs([experiment.experiment_id], "tags.`sweeper.role` = 'trial'")) == 1
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`sweeper.role` = 'study'")
    assert parent.info.status == "KILLED"  # the study's run ends with its process, not left RUNNING


def test_ctrl_c_as_a_trial_starts_is_noted_and_stops_it_before_it_trains(
    image_folder, tmp_path, stop_handler, capfd, monkeypatch
):
    at(monkeypatch, "sweeper.cli.live.LiveStudyView.on_trial", once(signal.SIGINT))  # its MLflow run made
    assert_interrupted(*stop_study(image_folder, tmp_path))
    assert notes(capfd.readouterr().err) == [FIRST]


def test_ctrl_c_right_after_an_evaluation_stops_the_trial_while_it_reports(
    image_folder, tmp_path, stop_handler, monkeypatch
):
    at(monkeypatch, "sweeper.trials.TrialReporter.should_stop", once(signal.SIGINT))  # reporting, pruning
    assert_interrupted(*stop_study(image_folder, tmp_path))


def mid_epoch_2(*signals: int) -> Callable[..., list[int]]:
    """The signals at the 4th step of the second epoch (7 steps an epoch), once."""
    fired = once(*signals)
    return lambda self, step, lr: fired() if step == 7 + 3 else []


@pytest.mark.parametrize(
    ("first", "later"),
    [
        (signal.SIGINT, []),
        (signal.SIGINT, [signal.SIGINT]),  # a second Ctrl-C while the first is handled
        (signal.SIGINT, [signal.SIGINT, signal.SIGINT]),
        (signal.SIGTERM, [signal.SIGINT]),  # docker stop, then an impatient Ctrl-C
    ],
    ids=["ctrl-c", "ctrl-c-twice", "ctrl-c-three-times", "sigterm-then-ctrl-c"],
)
def test_a_stop_signal_mid_epoch_exits_130_with_one_line_and_records_the_trial(
    image_folder, tmp_path, stop_handler, capfd, monkeypatch, first, later
):
    at(monkeypatch, "sweeper.interrupts.InterruptCheck.on_step", mid_epoch_2(first))
    at(monkeypatch, "sweeper.tracking.TrialRun.finish", once(*later))  # while the trial is recorded
    assert_interrupted(*stop_study(image_folder, tmp_path))
    assert notes(capfd.readouterr().err) == [LATER] * len(later)


def test_ctrl_c_while_optuna_records_a_finished_trial_keeps_it_complete_and_starts_no_other(
    image_folder, tmp_path, stop_handler, capfd, monkeypatch
):
    at(monkeypatch, "sweeper.trials.TrialRunner.after_trial", once(signal.SIGINT))  # deferred: raised after it
    assert_interrupted(*stop_study(image_folder, tmp_path), state=TrialState.COMPLETE)
    assert notes(capfd.readouterr().err) == [FIRST]


# -- the console script as a process of its own, stopped from outside ----------------------------------------------


def study_process(name: str, image_folder: Path, tmp_path: Path) -> tuple[subprocess.Popen, str, str, Path]:
    storage, tracking = f"sqlite:///{tmp_path / 'sweeper.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}"
    log = tmp_path / "stderr.log"
    proc = start_sweeper(
        "study", "run", name, "--data", image_folder, "--n-trials", 2, "--storage", storage, "--tracking-uri",
        tracking, "--pruner", "none", "--json", "--set", *TINY, "train.epochs=60", log=log, stdout=False,
    )  # fmt: skip
    wait_for(lambda: reported_epoch(storage, name), 120, "a running trial to report an epoch")
    return proc, storage, tracking, log


def assert_one_line_and_recorded(name: str, rc: int, log: Path, storage: str, tracking: str) -> None:
    stderr = log.read_text()
    assert rc == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "UnboundLocalError" not in stderr and "Exception ignored" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip() and line + "\n" not in (FIRST, LATER)]
    assert lines == ["interrupted"], stderr[-3000:]
    (trial,) = optuna.load_study(study_name=name, storage=storage).trials  # no trial started after the stop
    assert trial.state == TrialState.FAIL and trial.user_attrs["reason"] == "interrupted"
    client = MlflowClient(tracking)
    run = client.get_run(trial.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags["sweeper.state"] == "interrupted"
    experiment = client.get_experiment_by_name(name)
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`sweeper.role` = 'study'")
    assert parent.info.status == "KILLED"


@pytest.mark.slow
def test_ctrl_c_mid_trial_exits_130_records_the_trial_and_a_later_run_resumes(image_folder, tmp_path):
    proc, storage, tracking, log = study_process("ctrlc", image_folder, tmp_path)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(timeout=60)
    assert time.monotonic() - sent < 10  # at once, not after the epoch or the trial
    assert_one_line_and_recorded("ctrlc", rc, log, storage, tracking)
    again = start_sweeper(
        "study", "run", "ctrlc", "--n-trials", 1, "--storage", storage, "--tracking-uri", tracking,
        "--set", "train.epochs=1", log=tmp_path / "again.log",
    )  # fmt: skip
    assert again.wait(timeout=120) == 0, (tmp_path / "again.log").read_text()[-2000:]
    states = [t.state for t in optuna.load_study(study_name="ctrlc", storage=storage).trials]
    assert states == [TrialState.FAIL, TrialState.COMPLETE]


@pytest.mark.slow
def test_sigterm_then_ctrl_c_mid_trial_exits_130_and_records_the_trial(image_folder, tmp_path):
    proc, storage, tracking, log = study_process("term", image_folder, tmp_path)
    proc.send_signal(signal.SIGTERM)  # docker stop
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # then an impatient Ctrl-C
    assert_one_line_and_recorded("term", proc.wait(timeout=60), log, storage, tracking)
