"""The ``sweeper`` command line: one Typer sub-app per concern, joined here."""

from __future__ import annotations

import logging
import os
import signal
import sys
import warnings
from collections.abc import MutableMapping

import typer

from pipelines.errors import UserError
from sweeper import interrupts
from sweeper.cli import config as _config
from sweeper.cli import plot as _plot
from sweeper.cli import replay as _replay
from sweeper.cli import storage as _storage
from sweeper.cli import study as _study
from sweeper.cli import train as _train
from sweeper.urls import MaskingStream

app = typer.Typer(
    name="sweeper",
    help="Experiment-tracked hyperparameter sweeps for the custom ResNet-9 on CIFAR-10 with One Cycle.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,  # plain tracebacks: rich wraps long lines, and a URL split in two escapes masking
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("train")(_train.train)
app.command("lr-find")(_train.lr_find)
app.command("model")(_train.model)
app.add_typer(_config.config_app, name="config")
app.add_typer(_plot.plot_app, name="plot")
app.add_typer(_study.study_app, name="study")
app.add_typer(_storage.storage_app, name="storage")
app.command("replay")(_replay.replay)


def main() -> None:
    """The console script: user errors exit 2 (one line), Ctrl-C and SIGTERM exit 130 after recording the
    running trial as interrupted (see _common.user_errors); anything else is a bug and shows its traceback.
    Nothing it prints shows a URL's password: stdout and stderr mask them (sweeper.urls.MaskingStream)."""
    no_phoning_home(os.environ)  # before mlflow or albumentations is imported: both read it at import
    sys.stdout, sys.stderr = MaskingStream(sys.stdout), MaskingStream(sys.stderr)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    quiet_libraries()
    for signum in (signal.SIGINT, signal.SIGTERM):  # `docker stop`, `kill`: the same clean stop as Ctrl-C
        signal.signal(signum, _on_stop_signal)
    sys.unraisablehook = _unraisable
    try:
        app()
    finally:
        if interrupts.requested():  # Python restores the default handlers as it exits: a late Ctrl-C would kill
            for signum in (signal.SIGINT, signal.SIGTERM):  # it (exit -2) instead of letting it exit 130
                signal.signal(signum, signal.SIG_IGN)


# Set, unless the user set them, for our commands and the processes they start (workers inherit them).
QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",  # MLflow >= 3.2 sends usage events (mlflow.telemetry) unless true
    "NO_ALBUMENTATIONS_UPDATE": "1",  # albumentations asks PyPI for a newer version at import unless 1/true
}
# And for an `mlflow server`/`mlflow ui` we start: no job runner (about seven huey consumer processes per server,
# for MLflow's GenAI jobs, which sweeper never submits)
SERVER_ENV = {**QUIET_ENV, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def no_phoning_home(env: MutableMapping[str, str], *, server: bool = False) -> MutableMapping[str, str]:
    """Telemetry and update checks off in ``env`` (os.environ, or a child's environment; ``server``: an MLflow
    server's, job runner off too), each variable only where it is not set already. Returns ``env``."""
    for key, value in (SERVER_ENV if server else QUIET_ENV).items():
        env.setdefault(key, value)
    return env


def _on_stop_signal(signum: int, frame: object) -> None:
    """The first Ctrl-C or SIGTERM stops the work (at once, or at the next safe point of a study's trial loop);
    later ones let the running trial be recorded first. Writes with os.write: a handler may interrupt a print."""
    first = not interrupts.requested()
    if interrupts.request():
        raise KeyboardInterrupt(f"signal {signum}")
    note = b"stopping at the next step\n" if first else b"already stopping: recording the running trial first\n"
    os.write(2, note)


def _unraisable(unraisable: sys.UnraisableHookArgs) -> None:
    """A Ctrl-C that lands in a finaliser is dropped by Python, noisily; interrupts.check raises it again."""
    if not isinstance(unraisable.exc_value, KeyboardInterrupt):
        sys.__unraisablehook__(unraisable)


def quiet_libraries() -> None:
    """Our own tables and bars say what happened; keep Optuna's and MLflow's INFO lines out of them."""
    import os

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Optuna logs a trial stopped by Ctrl-C with its traceback and its missing value; we say "interrupted" once
    logging.getLogger("optuna.study._optimize").addFilter(_quiet_optuna)
    # the heartbeat and TPE's group option are marked experimental; we chose them knowingly (sweeper.storage,
    # sweeper.samplers), so the warning would only repeat that to every user
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported (lazily, later)
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _quiet_optuna(record: logging.LogRecord) -> bool:
    """Optuna's warnings about a trial stopped by Ctrl-C (its traceback, its missing value) say no more than our
    "interrupted": dropped. A trial that failed on a UserError keeps Optuna's line, without the traceback."""
    error = record.exc_info[1] if record.exc_info else None
    if interrupts.requested() or isinstance(error, KeyboardInterrupt):
        return False
    if record.getMessage().endswith("failed with value None."):  # our own line said why the trial failed
        return False
    if isinstance(error, UserError):
        record.exc_info = None
    return True


__all__ = ["QUIET_ENV", "SERVER_ENV", "app", "main", "no_phoning_home"]
