"""Commands around one training run: train, lr-find, model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from sweeper.cli._common import (
    ConfigOpt,
    DataOpt,
    JsonOpt,
    OverridesArg,
    RichProgress,
    SetOpt,
    err_console,
    print_json,
    resolve_cli_config,
    user_errors,
)


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

    cfg = resolve_cli_config(config, set_, overrides, **{"data.path": data, "train.out_dir": str(out) if out else None})
    progress = RichProgress()
    try:
        result = run(cfg, callbacks=[progress])
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


@user_errors
def lr_find(
    overrides: OverridesArg = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: DataOpt = None,
    min_lr: Annotated[float, typer.Option("--min-lr", help="First LR of the sweep.")] = 1e-4,
    max_lr: Annotated[float, typer.Option("--max-lr", help="Last LR of the sweep.")] = 10.0,
    iters: Annotated[int, typer.Option("--iters", "-n", help="Training steps of the sweep.")] = 100,
    mode: Annotated[str, typer.Option(help="exp (log-spaced) or linear.")] = "exp",
    json_: JsonOpt = False,
) -> None:
    """LR range test: suggest the max and min LR of the cycle.

    Raises the LR from --min-lr to --max-lr over --iters real training steps, smooths the loss, stops early on
    divergence and restores the weights. Suggests a max LR (fastai's valley; also steepest slope and
    min-loss/10) and a min LR (max / schedule.start_div); writes lr_finder.png to train.out_dir.
    """
    from pipelines.lr_finder import lr_range_test

    cfg = resolve_cli_config(config, set_, overrides, **{"data.path": data})
    with _steps_bar(iters) as advance:
        result = lr_range_test(
            cfg,
            min_lr=min_lr,
            max_lr=max_lr,
            num_iter=iters,
            mode=mode,
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
    Console().print(table)
    typer.echo(
        f"suggested max LR (optim.lr) {result.max_lr:.4g}, min LR {result.min_lr:.4g}; plot: {result.plot}"
        + (f"; stopped early at lr {result.diverged_at:.3g} (loss diverged)" if result.diverged_at else "")
    )


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
    width: Annotated[float, typer.Option(help="Width multiplier (model.width).")] = 1.0,
    classes: Annotated[int, typer.Option(help="Number of classes.")] = 10,
    json_: JsonOpt = False,
) -> None:
    """Print the custom ResNet-9 layer by layer: output shapes and parameters (6,573,120 at width 1)."""
    from pipelines.config import ModelConfig
    from pipelines.model import build_model, count_parameters, layer_table

    net = build_model(ModelConfig(width=width), num_classes=classes)
    rows = layer_table(net)
    total = count_parameters(net)
    if json_:
        print_json(
            {
                "params": total,
                "width": width,
                "classes": classes,
                "layers": [
                    {"name": r.name, "kind": r.kind, "output_shape": list(r.output_shape), "params": r.params}
                    for r in rows
                ],
            }
        )
        return
    table = Table(title=f"custom ResNet-9 (width {width:g}, {classes} classes, input 3x32x32)")
    table.add_column("block")
    table.add_column("layers")
    table.add_column("output shape", justify="right")
    table.add_column("params", justify="right")
    for r in rows:
        table.add_row(r.name, r.kind, " x ".join(map(str, r.output_shape[1:])), f"{r.params:,}")
    table.add_section()
    table.add_row("total", "", "", f"{total:,}")
    Console(width=140).print(table)
