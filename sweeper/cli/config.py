"""`sweeper config ...`: the resolved config."""

from __future__ import annotations

import typer

from sweeper.cli._common import ConfigOpt, DataOpt, OverridesArg, SetOpt, resolve_cli_config, user_errors

config_app = typer.Typer(help="Show the resolved config.", no_args_is_help=True)


@config_app.command("show")
@user_errors
def config_show(
    overrides: OverridesArg = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: DataOpt = None,
) -> None:
    """Print the resolved config (recipe defaults <- --config <- --data <- --set) as YAML, and the LR it trains
    with (optim.lr, scaled with the batch size when optim.lr_scaling says so) as a closing comment."""
    cfg = resolve_cli_config(config, set_, overrides, **{"data.path": data})
    typer.echo(cfg.to_yaml(), nl=False)
    scaled = ""
    if cfg.optim.lr_scaling != "none":
        scaled = (
            f" = optim.lr {cfg.optim.lr:g} x {cfg.lr_scale:.4g} ({cfg.optim.lr_scaling} scaling, batch "
            f"{cfg.train.batch_size} against {cfg.optim.reference_batch_size})"
        )
    typer.echo(f"# effective lr: {cfg.effective_lr:.6g}{scaled}")
