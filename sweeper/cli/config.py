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
    """Print the resolved config (recipe defaults <- --config <- --data <- --set) as YAML."""
    typer.echo(resolve_cli_config(config, set_, overrides, **{"data.path": data}).to_yaml(), nl=False)
