"""The ``sweeper`` command line: one Typer sub-app per concern, joined here."""

from __future__ import annotations

import logging

import typer

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
app.add_typer(_train.config_app, name="config")
app.add_typer(_train.plot_app, name="plot")
app.add_typer(_study.study_app, name="study")
app.command("replay")(_study.replay)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    quiet_libraries()
    app()


def quiet_libraries() -> None:
    """Our own tables and bars say what happened; keep Optuna's and MLflow's INFO lines out of them."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


__all__ = ["app", "main"]
