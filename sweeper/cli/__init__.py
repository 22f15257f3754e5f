"""The ``sweeper`` command line: one Typer sub-app per concern, joined here."""

from __future__ import annotations

import logging
import signal
import warnings

import typer

from sweeper.cli import config as _config
from sweeper.cli import plot as _plot
from sweeper.cli import replay as _replay
from sweeper.cli import study as _study
from sweeper.cli import train as _train

app = typer.Typer(
    name="sweeper",
    help="Experiment-tracked hyperparameter sweeps for the custom ResNet-9 on CIFAR-10 with One Cycle.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("train")(_train.train)
app.command("lr-find")(_train.lr_find)
app.command("model")(_train.model)
app.add_typer(_config.config_app, name="config")
app.add_typer(_plot.plot_app, name="plot")
app.add_typer(_study.study_app, name="study")
app.command("replay")(_replay.replay)


def main() -> None:
    """The console script: user errors exit 2 (one line), Ctrl-C and SIGTERM exit 130 after recording the
    running trial as interrupted (see _common.user_errors); anything else is a bug and shows its traceback."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    quiet_libraries()
    signal.signal(signal.SIGTERM, _raise_interrupt)  # `docker stop`, `kill`: the same clean stop as Ctrl-C
    app()


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def quiet_libraries() -> None:
    """Our own tables and bars say what happened; keep Optuna's and MLflow's INFO lines out of them."""
    import os

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # the heartbeat and TPE's group option are marked experimental; we chose them knowingly (sweeper.storage,
    # sweeper.samplers), so the warning would only repeat that to every user
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported (lazily, later)
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


__all__ = ["app", "main"]
