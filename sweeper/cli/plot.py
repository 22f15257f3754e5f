"""`sweeper plot ...`: figures drawn without training."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.errors import UserError
from sweeper.cli._common import ConfigOpt, OverridesArg, SetOpt, resolve_cli_config, user_errors

CIFAR10_TRAIN_SIZE = 50_000  # images in the official training set, for schedule plots without loading data

plot_app = typer.Typer(help="Draw figures without training.", no_args_is_help=True)


@plot_app.command("schedule")
@user_errors
def plot_schedule(
    overrides: OverridesArg = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG to write.")] = Path("lr_schedule.png"),
    train_size: Annotated[
        int | None,
        typer.Option(
            help="Training images per epoch; default data.train_limit or 50,000 (CIFAR-10), less data.val_size."
        ),
    ] = None,
) -> None:
    """Draw the LR policy per iteration (one-cycle curve or triangular cycles), without training."""
    from pipelines import plots
    from pipelines.schedules import schedule_curve

    cfg = resolve_cli_config(config, set_, overrides)
    size = train_size or ((cfg.data.train_limit or CIFAR10_TRAIN_SIZE) - cfg.data.val_size)
    steps = size // cfg.train.batch_size
    if steps < 1:
        raise UserError(f"train.batch_size ({cfg.train.batch_size}) is larger than the training set ({size} images)")
    curve = schedule_curve(cfg, steps_per_epoch=steps)
    title = f"{cfg.schedule.policy} (peak lr {cfg.optim.lr:g}, {cfg.train.epochs} epochs x {steps} steps)"
    path = plots.plot_lr_schedule(curve.lrs, out, steps_per_epoch=steps, momenta=curve.momenta, title=title)
    typer.echo(f"wrote {path}")
