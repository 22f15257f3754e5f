"""Commands around one training run: train, lr-find, model."""

from __future__ import annotations

import enum
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from pipelines import lr_range
from pipelines.errors import UserError
from sweeper.cli._common import (
    ConfigOpt,
    DataOpt,
    JsonOpt,
    OverridesArg,
    RichProgress,
    RunBars,
    SetOpt,
    console,
    err_console,
    print_json,
    resolve_cli_config,
    user_errors,
)

if TYPE_CHECKING:
    from pipelines.callbacks import Callback
    from pipelines.config import Config


@user_errors
def train(
    overrides: OverridesArg = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: DataOpt = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Output folder (train.out_dir).", show_default=False)
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Train the custom ResNet-9 with One Cycle (the recipe by default).

    Writes config.yaml, metrics.json, model.pt and plots/ (lr_schedule, curves, misclassified) to train.out_dir.

    Example: sweeper train --data ../shared/data/cifar10-jpeg.tar.xz --set model.width=0.25 train.epochs=4
    """
    from pipelines.train import run
    from sweeper.interrupts import InterruptCheck

    cfg = resolve_cli_config(config, set_, overrides, **{"data.path": data, "train.out_dir": str(out) if out else None})
    progress = RichProgress()
    try:
        result = run(cfg, callbacks=[progress, InterruptCheck()])
    finally:
        progress.close()
    if json_:
        print_json(result.summary())
        return
    acc = result.test_accuracy
    err_console.print(
        f"[bold]{result.status}[/]: test accuracy {100 * acc:.2f}% after {len(result.history)} epochs, "
        f"{result.seconds:.1f}s training on {result.device}; outputs in {result.out_dir}"
        if acc is not None
        else f"{result.status}: {result.reason}",
        highlight=False,
    )


class RangeMetric(str, enum.Enum):
    loss = "loss"
    accuracy = "accuracy"


ACCURACY_PANEL = "Accuracy range test (--metric accuracy)"


@user_errors
def lr_find(
    overrides: OverridesArg = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: DataOpt = None,
    metric: Annotated[
        RangeMetric,
        typer.Option(
            "--metric",
            help="loss: one sweep of the LR over --iters steps (Smith 2015); accuracy: one short run per max LR.",
        ),
    ] = RangeMetric.loss,
    min_lr: Annotated[
        float, typer.Option("--min-lr", help="First LR of the sweep (loss), lowest LR (accuracy).")
    ] = lr_range.MIN_LR,
    max_lr: Annotated[
        float, typer.Option("--max-lr", help="Last LR of the sweep (loss), highest LR (accuracy).")
    ] = lr_range.MAX_LR,
    iters: Annotated[
        int | None,
        typer.Option("--iters", "-n", help="Training steps of the sweep (loss).", show_default=str(lr_range.NUM_ITER)),
    ] = None,
    mode: Annotated[
        str | None,
        typer.Option(help="exp (log-spaced) or linear (loss).", show_default=lr_range.MODES[0]),
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(
            "--epochs",
            help="Epochs of each run.",
            show_default=str(lr_range.ACCURACY_EPOCHS),
            rich_help_panel=ACCURACY_PANEL,
        ),
    ] = None,
    lrs: Annotated[
        str | None,
        typer.Option(
            "--lrs",
            help="The max LRs to try, e.g. 0.05,0.1,0.2,0.4,0.8; "
            "default: --points log-spaced from --min-lr to --max-lr.",
            show_default=False,
            rich_help_panel=ACCURACY_PANEL,
        ),
    ] = None,
    points: Annotated[
        int | None,
        typer.Option(
            "--points",
            help="How many LRs when --lrs is not given.",
            show_default=str(lr_range.ACCURACY_POINTS),
            rich_help_panel=ACCURACY_PANEL,
        ),
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            "--tracking-uri",
            help="Log the runs to MLflow: a parent run (experiment lr-find) with one child per LR.",
            show_default=False,
            rich_help_panel=ACCURACY_PANEL,
        ),
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """LR range test: suggest the max LR (and the min LR) of the cycle.

    --metric loss raises the LR from --min-lr to --max-lr over --iters real training steps, smooths the loss,
    stops early on divergence and restores the weights. Suggests a max LR (fastai's valley; also steepest slope
    and min-loss/10) and a min LR (max / schedule.start_div); writes lr_finder.png to train.out_dir.

    --metric accuracy trains one --epochs run per max LR with the config's policy and suggests the LR of the best
    validation accuracy (test accuracy when data.val_size is 0); writes lr_accuracy.png to train.out_dir.

    Example: sweeper lr-find --metric accuracy --epochs 5 --lrs 0.05,0.1,0.2,0.4,0.8
    """
    other = (
        {"--iters": iters, "--mode": mode}
        if metric is RangeMetric.accuracy
        else {"--epochs": epochs, "--lrs": lrs, "--points": points, "--tracking-uri": tracking_uri}
    )
    given = [name for name, value in other.items() if value is not None]
    if given:
        raise UserError(f"{', '.join(given)} do(es) not apply to --metric {metric.value}")
    from pipelines.paths import check_writable

    cfg = resolve_cli_config(config, set_, overrides, **{"data.path": data})
    check_writable(Path(cfg.train.out_dir), what="train.out_dir")  # where the plot goes
    if metric is RangeMetric.accuracy:
        epochs = lr_range.ACCURACY_EPOCHS if epochs is None else epochs
        lrs_list = _lrs(lrs, min_lr, max_lr, lr_range.ACCURACY_POINTS if points is None else points)
        _accuracy_range(cfg, lrs=lrs_list, epochs=epochs, tracking_uri=tracking_uri, json_=json_)
        return
    from pipelines.lr_finder import lr_range_test

    iters = lr_range.NUM_ITER if iters is None else iters
    with _steps_bar(iters) as advance:
        result = lr_range_test(
            cfg,
            min_lr=min_lr,
            max_lr=max_lr,
            num_iter=iters,
            mode=mode or lr_range.MODES[0],
            on_step=advance,
            plot_path=Path(cfg.train.out_dir) / "lr_finder.png",
        )
    if json_:
        print_json(result.to_dict())
        return
    table = Table(title="LR range test")
    table.add_column("suggestion")
    table.add_column("lr", justify="right")
    for name, lr in result.suggestions.items():
        table.add_row(name, f"{lr:.4g}")
    console().print(table)
    typer.echo(
        f"suggested max LR {_as_optim_lr(result.max_lr, cfg)}, min LR {result.min_lr:.4g}; plot: {result.plot}"
        + (f"; stopped early at lr {result.diverged_at:.3g} (loss diverged)" if result.diverged_at else "")
    )


def _as_optim_lr(lr: float, cfg: Config) -> str:
    """An LR to train with, and the optim.lr that gives it (they differ with optim.lr_scaling)."""
    if cfg.lr_scale == 1:
        return f"(optim.lr) {lr:.4g}"
    return (
        f"{lr:.4g} at batch {cfg.train.batch_size}: optim.lr {lr / cfg.lr_scale:.4g} ({cfg.optim.lr_scaling} scaling)"
    )


def _lrs(text: str | None, low: float, high: float, points: int) -> list[float]:
    """--lrs as numbers, else ``points`` LRs log-spaced from ``low`` to ``high``."""
    if text is not None:
        try:
            return [float(word) for word in text.split(",") if word.strip()]
        except ValueError as err:
            raise UserError(f"--lrs must be numbers separated by commas, e.g. 0.1,0.2,0.4; got {text!r}") from err
    if points < 2:
        raise UserError(f"--points must be >= 2, got {points}")
    if not 0 < low < high:
        raise UserError(f"--min-lr and --max-lr must satisfy 0 < min < max, got {low} and {high}")
    return [low * (high / low) ** (i / (points - 1)) for i in range(points)]


def _accuracy_range(cfg: Config, *, lrs: list[float], epochs: int, tracking_uri: str | None, json_: bool) -> None:
    from pipelines.lr_finder import accuracy_range_test, plan_accuracy_range
    from sweeper.interrupts import InterruptCheck

    plan = plan_accuracy_range(cfg, lrs=lrs, epochs=epochs)  # every mistake before anything is recorded
    plot_path = Path(cfg.train.out_dir) / "lr_accuracy.png"
    parent = None
    with RunBars() as bars:

        def progress(i: int, run_cfg: Config) -> list[Callback]:
            return [bars.start(f"lr {run_cfg.optim.lr:.3g} ({i + 1}/{len(plan.configs)})"), InterruptCheck()]

        if tracking_uri is None:
            result = accuracy_range_test(plan, callbacks=progress, plot_path=plot_path)
        else:
            from sweeper.range_test import EXPERIMENT, tracked_accuracy_range_test
            from sweeper.tracking import Tracker

            tracker = Tracker(tracking_uri, EXPERIMENT, spool_dir=Path("runs") / EXPERIMENT / "spool")
            result, parent = tracked_accuracy_range_test(plan, tracker=tracker, plot_path=plot_path, progress=progress)
    if json_:
        print_json({**result.to_dict(), **({"mlflow_parent_run_id": parent} if parent else {})})
        return
    table = Table(title=f"Accuracy range test ({result.metric} accuracy after {epochs} epochs)")
    for column in ("max lr", "accuracy", "run"):
        table.add_column(column, justify="left" if column == "run" else "right")
    for p in result.points:
        best = " (best)" if p.lr == result.suggested_lr else ""
        table.add_row(f"{p.lr:.4g}", f"{100 * p.accuracy:.2f}%{best}", p.status)
    console().print(table)
    typer.echo(
        f"suggested max LR (optim.lr) {result.suggested_lr:.4g}; plot: {result.plot}"
    )  # the LRs tried are optim.lr


class _steps_bar:
    """A plain progress bar for the range test's steps."""

    def __init__(self, total: int) -> None:
        from rich.progress import Progress

        self.progress = Progress(console=err_console, transient=True)
        self.task = self.progress.add_task("lr-find", total=total)

    def __enter__(self) -> Callable[[int, float, float], None]:
        self.progress.start()
        return self.advance

    def advance(self, step: int, lr: float, loss: float) -> None:
        self.progress.update(self.task, completed=step + 1, description=f"lr-find lr {lr:.3g} loss {loss:.3f}")

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


@user_errors
def model(
    overrides: OverridesArg = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    width: Annotated[
        float | None, typer.Option(help="Width multiplier: the same as --set model.width=...", show_default=False)
    ] = None,
    classes: Annotated[int, typer.Option(help="Number of classes.")] = 10,
    json_: JsonOpt = False,
) -> None:
    """Print the custom ResNet-9 the config builds, layer by layer: output shapes and parameters (6,573,120 at
    width 1).

    Every model.* key shapes it: e.g. sweeper model --set model.width=0.5 model.whiten=patch3 model.activation=celu
    """
    from pipelines.model import build_model, count_parameters, layer_table

    if classes < 1:
        raise UserError(f"--classes must be >= 1, got {classes}")
    cfg = resolve_cli_config(config, set_, overrides, **{"model.width": width})
    net = build_model(cfg.model, num_classes=classes)
    rows = layer_table(net)
    total, trainable = count_parameters(net), count_parameters(net, trainable=True)  # model.bn_weight frozen: fewer
    settings = cfg.model.__dict__
    if json_:
        print_json(
            {
                "params": total,
                "trainable_params": trainable,
                **settings,
                "model": settings,
                "classes": classes,
                "layers": [
                    {"name": r.name, "kind": r.kind, "output_shape": list(r.output_shape), "params": r.params}
                    for r in rows
                ],
            }
        )
        return
    shown = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in settings.items())
    table = Table(title=f"custom ResNet-9 ({shown}, {classes} classes, input 3x32x32)")
    table.add_column("block")
    table.add_column("layers")
    table.add_column("output shape", justify="right")
    table.add_column("params", justify="right")
    for r in rows:
        table.add_row(r.name, r.kind, " x ".join(map(str, r.output_shape[1:])), f"{r.params:,}")
    table.add_section()
    table.add_row("total", "", "", f"{total:,}")
    if trainable != total:
        table.add_row("trainable", "batch-norm scales frozen at 1", "", f"{trainable:,}")
    console(width=140).print(table)
