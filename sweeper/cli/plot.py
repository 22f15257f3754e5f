"""`sweeper plot ...`: figures drawn without training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipelines.errors import UserError, one_line
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
    run: Annotated[
        Path | None,
        typer.Option(
            "--run",
            help="Draw the LRs a finished run used (its train.out_dir, with metrics.json) instead of the config's "
            "plan: the way to see plateau's cuts.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Draw the LR policy per iteration, warm-up included (any schedule.policy), without training.

    Example: sweeper plot schedule --set schedule.policy=cosine schedule.warmup_epochs=2 schedule.warmup=linear
    """
    from pipelines import plots

    if run is not None:
        lrs, steps, title = _recorded(run)
        path = plots.plot_lr_schedule(lrs, out, steps_per_epoch=steps, title=title)
        typer.echo(f"wrote {path}")
        return
    from pipelines.schedules import schedule_curve

    cfg = resolve_cli_config(config, set_, overrides)
    size = train_size or ((cfg.data.train_limit or CIFAR10_TRAIN_SIZE) - cfg.data.val_size)
    steps = size // cfg.train.batch_size
    if steps < 1:
        raise UserError(f"train.batch_size ({cfg.train.batch_size}) is larger than the training set ({size} images)")
    curve = schedule_curve(cfg, steps_per_epoch=steps)
    sched = cfg.schedule
    span = f"{sched.warmup_epochs:g} epoch{'' if sched.warmup_epochs == 1 else 's'}"
    warmup = f", {sched.warmup} warm-up of {span}" if curve.warmup_steps else ""
    plan = "\nthe plan before any cut: cuts depend on the run (see --run)" if curve.adaptive else ""
    title = f"{sched.policy}{warmup} (peak lr {cfg.effective_lr:g}, {cfg.train.epochs} epochs x {steps} steps){plan}"
    path = plots.plot_lr_schedule(curve.lrs, out, steps_per_epoch=steps, momenta=curve.momenta, title=title)
    typer.echo(f"wrote {path}")


def _recorded(run: Path) -> tuple[list[float], int, str]:
    """(every step's LR, steps per epoch, a title) from a finished run's metrics.json."""
    path = run / "metrics.json"
    try:
        recorded = json.loads(path.read_text())
    except OSError as err:
        raise UserError(f"cannot read {path} ({err.strerror}): --run takes a finished run's train.out_dir") from err
    except ValueError as err:
        raise UserError(f"{path} is not valid JSON ({one_line(err)})") from err
    if not isinstance(recorded, dict) or "lrs" not in recorded or "steps_per_epoch" not in recorded:
        raise UserError(f"{path} has no per-step LRs (a run of an older sweeper); train it again to draw them")
    config_file = run / "config.yaml"
    policy = ""
    if config_file.is_file():
        from pipelines.config import Config

        policy = f"{Config.load(config_file).schedule.policy}, "
    return recorded["lrs"], int(recorded["steps_per_epoch"]), f"{policy}as used by {run}"
