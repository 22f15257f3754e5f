"""`sweeper plot ...`: figures drawn without training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pipelines.errors import UserError, one_line
from sweeper.cli._common import ConfigOpt, OverridesArg, SetOpt, resolve_cli_config, user_errors

if TYPE_CHECKING:
    from pipelines.config import Config

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
    every: Annotated[
        bool,
        typer.Option(
            "--all",
            help="Draw every policy, without and with the warm-up (schedule.warmup over schedule.warmup_epochs, "
            "2 if unset), one panel each, for the config's LR and epochs.",
        ),
    ] = False,
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
    from pipelines.paths import check_writable

    plots.check_image_path(out)
    check_writable(out, what="--out", folder=False)
    if run is not None:
        if config is not None or set_ or overrides or train_size is not None or every:
            raise UserError(
                "--run draws what a finished run used: --config, --set, --train-size and --all do not apply"
            )
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
    if every:
        path = plots.plot_lr_schedules(_every_policy(cfg, steps), out, steps_per_epoch=steps)
        typer.echo(f"wrote {path}")
        return
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
    lrs, steps = recorded["lrs"], recorded["steps_per_epoch"]
    numbers = isinstance(lrs, list) and lrs and all(isinstance(v, (int, float)) for v in lrs)
    if not numbers or not isinstance(steps, int) or steps < 1:
        raise UserError(f"{path}: lrs must be a list of numbers and steps_per_epoch a whole number >= 1")
    from pipelines.config import Config

    try:  # the policy is only the title's: a config that no longer loads does not stop the plot
        policy = f"{Config.load(run / 'config.yaml').schedule.policy}, "
    except UserError:
        policy = ""
    return lrs, steps, f"{policy}as used by {run}"


def _every_policy(cfg: Config, steps: int) -> dict[str, tuple[float, ...]]:
    """Panel title -> per-step LRs: each policy without warm-up, then with the config's (or a 2-epoch) warm-up."""
    from pipelines.config import POLICIES
    from pipelines.schedules import schedule_curve

    warmup_epochs = cfg.schedule.warmup_epochs or 2.0
    milestones = list(cfg.schedule.milestones) or [cfg.train.epochs // 2, 3 * cfg.train.epochs // 4]
    curves = {}
    for policy in POLICIES:
        for warm in (0.0, warmup_epochs):
            try:
                variant = cfg.with_overrides(
                    {"schedule.policy": policy, "schedule.warmup_epochs": warm, "schedule.milestones": milestones}
                )
            except UserError as err:  # e.g. one_cycle's peak inside a long warm-up: say so in the panel
                curves[f"{policy}, {cfg.schedule.warmup} warm-up {warm:g}: {err}"] = ()
                continue
            label = f"{policy}, {cfg.schedule.warmup} warm-up {warm:g} epochs" if warm else policy
            curves[label] = schedule_curve(variant, steps_per_epoch=steps).lrs
    return curves
