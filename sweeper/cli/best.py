"""`sweeper study best`: a study's best trial, or a multi-objective study's Pareto front and its cheapest trial
reaching an accuracy; the chosen trial's config exported for `sweeper replay`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from pipelines.errors import UserError
from sweeper.cli._common import JsonOpt, NameArg, StorageOpt, console, print_json, user_errors
from sweeper.cli.live import fmt, pct


@user_errors
def best(
    name: NameArg,
    storage: StorageOpt = None,
    export: Annotated[
        Path | None, typer.Option("--export", help="Write the chosen trial's resolved config YAML here.")
    ] = None,
    min_accuracy: Annotated[
        float | None,
        typer.Option(
            "--min-accuracy",
            help="Multi-objective studies: the cheapest trial whose accuracy is at least this (a fraction, e.g. 0.9).",
            show_default=False,
        ),
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Show the best trial of study NAME (and export its config for `sweeper replay FILE`).

    A multi-objective study (--objective val,train_seconds ...) has a Pareto front instead: shown as a table;
    --min-accuracy A picks the cheapest trial that reaches A, --export writes its config.
    """
    from pipelines.paths import check_writable
    from sweeper.queries import best_row, best_trial, is_multi_objective, load_study

    if export is not None:
        check_writable(export, what="--export", folder=False)
    study = load_study(storage, name)
    if is_multi_objective(study):
        _pareto(study, min_accuracy=min_accuracy, export=export, json_=json_)
        return
    if min_accuracy is not None:
        raise UserError(f"--min-accuracy picks from a multi-objective study's front; {name!r} has one objective")
    trial = best_trial(study)
    payload = {"study": name, **best_row(trial, study.user_attrs)}
    if _export(trial, export, payload, json_=json_):
        return
    typer.echo(f"best trial {trial.number} of {name}: objective {100 * trial.value:.2f}%")
    for k, v in {**trial.params, "lr": payload["lr"]}.items():
        typer.echo(f"  {k} = {fmt(v)}")
    if export is not None:
        typer.echo(f"config written to {export}")


def _export(trial: Any, export: Path | None, payload: dict[str, Any], *, json_: bool) -> bool:
    """Write the trial's config to ``export`` (if given, noted in ``payload``); print ``payload`` as JSON when asked.
    True when the JSON was the whole answer."""
    from sweeper import records

    if export is not None:
        export.parent.mkdir(parents=True, exist_ok=True)
        export.write_text(trial.user_attrs[records.CONFIG])
        payload["exported"] = str(export)
    if json_:
        print_json(payload)
    return json_


def _pareto(study: Any, *, min_accuracy: float | None, export: Path | None, json_: bool) -> None:
    """The front of a multi-objective study as a table (or JSON), or the cheapest trial reaching an accuracy."""
    from sweeper import records
    from sweeper.queries import cheapest_reaching, pareto_row, pareto_rows

    objective = records.study_objective(study.user_attrs)
    if min_accuracy is None:
        if export is not None:
            raise UserError("a multi-objective study has no single best trial: give --min-accuracy A to pick one")
        front = pareto_rows(study, objective)
        if json_:
            print_json({"study": study.study_name, "objectives": objective.keys, "pareto": front})
            return
        table = Table(title=f"Pareto front of {study.study_name}: {objective.split} accuracy against {objective.cost}")
        epochs_column = objective.cost != "epochs"  # else the cost is the epochs already
        for column in ("#", *objective.names, *(["epochs"] if epochs_column else []), "lr"):
            table.add_column(column, justify="right", no_wrap=True)
        for row in front:
            accuracy, cost = row["values"].values()
            epochs = [fmt(row["epochs"])] if epochs_column else []
            table.add_row(str(row["number"]), pct(accuracy), f"{cost:.4g}", *epochs, fmt(row["lr"], ".3g"))
        console().print(table)
        return
    trial = cheapest_reaching(study, objective, min_accuracy)
    payload = pareto_row(trial, objective, study.user_attrs)
    if _export(trial, export, payload, json_=json_):
        return
    accuracy, cost = trial.values
    typer.echo(
        f"cheapest trial reaching {objective.split} accuracy {min_accuracy:g}: {trial.number} "
        f"({pct(accuracy)}, {objective.cost} {cost:.4g}); replay it with: "
        f"sweeper replay --study {study.study_name} --trial {trial.number}"
    )
    if export is not None:
        typer.echo(f"config written to {export}")
