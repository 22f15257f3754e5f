"""What every command shares: option aliases, the one error handler, the rich progress callback."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console, ConsoleDimensions
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from pipelines.callbacks import Callback, EpochMetrics
from pipelines.config import Config
from pipelines.errors import UserError
from sweeper.overrides import resolve_config
from sweeper.urls import mask_url

UNWRAPPED_WIDTH = 10_000  # columns on a stream that is not a terminal: wide enough that no line of ours wraps


class _LogConsole(Console):
    """A rich Console that wraps to the terminal's width on a terminal, and not at all on a file, a pipe or
    compose logs, where rich would wrap at 80 columns. Asked at every print: CliRunner swaps the streams."""

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        return size if self.is_terminal else ConsoleDimensions(UNWRAPPED_WIDTH, size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]

    def print(self, *objects: Any, soft_wrap: bool | None = None, **kwargs: Any) -> None:
        if soft_wrap is None and not self.is_terminal:
            soft_wrap = True  # no word wrap, no cropping: a long line arrives whole
        super().print(*objects, soft_wrap=soft_wrap, **kwargs)


def console(*, stderr: bool = False, width: int | None = None) -> Console:
    """The console every command prints its tables and lines with (stdout, or stderr): ``width`` columns on a
    terminal (default: the terminal's), and when the stream is not a terminal, each line whole on one line."""
    return _LogConsole(stderr=stderr, width=width)


err_console = console(stderr=True)

# Help panels: how `--help` groups the options of a command
CONFIG_PANEL = "Config"
STORE_PANEL = "Storage and tracking"

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="YAML config (sections data, model, augment, schedule, optim, train).",
        show_default=False,
        rich_help_panel=CONFIG_PANEL,
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        help="Override a config key: --set optim.lr=0.2 (repeatable; further key=value words may follow).",
        show_default=False,
        rich_help_panel=CONFIG_PANEL,
    ),
]
OverridesArg = Annotated[
    list[str] | None,
    typer.Argument(help="More key=value overrides, e.g. model.width=0.25 train.epochs=4.", show_default=False),
]
DataOpt = Annotated[
    str | None,
    typer.Option(
        "--data",
        help="Data source: cifar10 (download), cifar-10-python.tar.gz or its folder, an ImageFolder dir "
        "with train/ and test/, or a .tar/.tar.gz/.tar.xz/.zip of one. Same as --set data.path=...",
        show_default=False,
        rich_help_panel=CONFIG_PANEL,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of tables.")]
NameArg = Annotated[str, typer.Argument(help="Study name (also the MLflow experiment's name).", show_default=False)]
StorageOpt = Annotated[
    str | None,
    typer.Option(
        "--storage",
        help="Optuna storage URL; default $SWEEPER_STORAGE or sqlite:///sweeper.db. "
        "Many workers: postgresql+psycopg2://user:pass@host:5432/db",
        show_default=False,
        rich_help_panel=STORE_PANEL,
    ),
]
TrackingOpt = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        help="MLflow tracking URI; default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db (artifacts in ./mlartifacts).",
        show_default=False,
        rich_help_panel=STORE_PANEL,
    ),
]
RunsOpt = Annotated[
    Path,
    typer.Option(
        "--runs-dir",
        help="Where trials write their outputs (<runs-dir>/<study>/trial-N).",
        rich_help_panel=STORE_PANEL,
    ),
]

F = TypeVar("F", bound=Callable[..., Any])


EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention


def user_errors(func: F) -> F:
    """Print a UserError as one ``error: ...`` line on stderr and exit 2; Ctrl-C/SIGTERM (already recorded by
    the code below as an interrupted trial) exits 130; anything else keeps its traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UserError as err:
            err_console.print(f"[bold red]error:[/] {escape(mask_url(str(err)))}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except KeyboardInterrupt:
            err_console.print("interrupted", highlight=False)
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper  # type: ignore[return-value]


def tokens(set_: Sequence[str] | None, extra: Sequence[str] | None) -> list[str]:
    return [*(set_ or []), *(extra or [])]


def resolve_cli_config(
    config: Path | None, set_: Sequence[str] | None, overrides: Sequence[str] | None, **extra: object
) -> Config:
    """A command's config: the recipe <- --config <- ``extra`` (e.g. --data) <- --set and key=value words."""
    return resolve_config(config, tokens(set_, overrides), extra={k: v for k, v in extra.items() if v is not None})


def print_runs_link(tracking_uri: str, experiment_id: str) -> None:
    """Where to see the runs in MLflow, each on its own line (stderr): the runs view, not MLflow 3's GenAI view;
    for a local store, the `mlflow ui` command first. No password: the link leaves the URL's user info out."""
    from sweeper.urls import runs_link

    link = runs_link(tracking_uri, experiment_id)
    if link is None:
        return
    if link.serve:
        err_console.print(f"start the MLflow UI with: {link.serve}", highlight=False, markup=False)
    err_console.print(f"runs in MLflow: {link.url}", highlight=False, markup=False)


def print_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")


class RichProgress(Callback):
    """A progress bar over all training steps (epoch, loss, accuracy, ETA) on stderr, one line per epoch."""

    def __init__(self, *, label: str = "train", console: Console | None = None, epoch_lines: bool = True) -> None:
        self.console = console or err_console
        self.label = label
        self.epoch_lines = epoch_lines
        self.progress: Progress | None = None
        self.task: Any = None
        self.epochs_total = 0
        self.steps_per_epoch = 1

    def on_start(self, *, total_steps: int, steps_per_epoch: int, lrs: Sequence[float]) -> None:
        self.steps_per_epoch = max(steps_per_epoch, 1)
        self.epochs_total = total_steps // self.steps_per_epoch
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(f"{self.label} epoch 1/{self.epochs_total}", total=total_steps, stats="")

    def on_step(self, step: int, lr: float) -> None:
        if self.progress is not None:
            self.progress.advance(self.task)

    def on_epoch(self, metrics: EpochMetrics) -> None:
        if self.progress is None:
            return
        stats = f"loss {metrics.train_loss:.3f} train {100 * metrics.train_accuracy:.1f}%"
        if metrics.test_accuracy is not None:
            stats += f" test {100 * metrics.test_accuracy:.1f}%"
        if metrics.val_accuracy is not None:
            stats += f" val {100 * metrics.val_accuracy:.1f}%"
        next_epoch = min(metrics.epoch + 1, self.epochs_total)
        self.progress.update(self.task, description=f"{self.label} epoch {next_epoch}/{self.epochs_total}", stats=stats)
        if self.epoch_lines:
            self.progress.console.print(
                f"epoch {metrics.epoch:>3}/{self.epochs_total}  {stats}  lr {metrics.lr:.4g}  "
                f"{metrics.epoch_seconds:.1f}s (+{metrics.eval_seconds:.1f}s eval)",
                highlight=False,
            )

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class RunBars:
    """One progress bar at a time for a command that trains several runs (replay's seeds, the accuracy range
    test's LRs): each run's bar replaces the last; the last one closes with the block."""

    def __init__(self) -> None:
        self.bar: RichProgress | None = None

    def start(self, label: str) -> RichProgress:
        """A new bar (no per-epoch lines) labelled ``label``, the previous one closed."""
        self.close()
        self.bar = RichProgress(label=label, epoch_lines=False)
        return self.bar

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> RunBars:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
