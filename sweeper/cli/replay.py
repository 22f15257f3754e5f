"""`sweeper replay`: a study's trial, or a config YAML, trained again for several seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.errors import UserError
from sweeper.cli._common import (
    DataOpt,
    JsonOpt,
    RichProgress,
    RunBars,
    RunsOpt,
    SetOpt,
    StorageOpt,
    TrackingOpt,
    print_json,
    print_runs_link,
    user_errors,
)


@user_errors
def replay(
    source: Annotated[
        list[str] | None,
        typer.Argument(
            help="A config YAML (e.g. from `study best --export`), and/or key=value overrides.", show_default=False
        ),
    ] = None,
    study: Annotated[
        str | None, typer.Option("--study", help="Replay a trial of this study.", show_default=False)
    ] = None,
    trial: Annotated[
        int | None, typer.Option("--trial", help="Trial number (default: the best).", show_default=False)
    ] = None,
    seeds: Annotated[int, typer.Option("--seeds", "-k", help="Independent runs, seeds train.seed, +1, ...")] = 3,
    set_: SetOpt = None,
    data: DataOpt = None,
    storage: StorageOpt = None,
    tracking_uri: TrackingOpt = None,
    runs_dir: RunsOpt = Path("runs"),
    json_: JsonOpt = False,
) -> None:
    """Re-run a study's final config on the full training set for K seeds; print test accuracy mean ± std.

    Each run is an MLflow run tagged sweeper.role=replay, linked to its source trial; weights are kept.
    """
    from pipelines.paths import check_writable
    from sweeper.replay import plan_replay
    from sweeper.replay import replay as do_replay
    from sweeper.tracking import Tracker

    words = list(source or [])
    files = [w for w in words if "=" not in w]
    toks = [*(set_ or []), *(w for w in words if "=" in w)]
    if seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {seeds}")
    if (study is None) == (not files):
        raise UserError("give either a config YAML or --study NAME (with --trial N for a given trial)")
    if len(files) > 1:
        raise UserError(f"one config file at a time, got {', '.join(files)}")
    check_writable(runs_dir, what="--runs-dir")
    plan = plan_replay(  # data and config problems before MLflow records anything
        study=study,
        trial=trial,
        config_file=Path(files[0]) if files else None,
        storage=storage,
        tokens=toks,
        extra={"data.path": data} if data else None,
        runs_dir=runs_dir,
    )
    tracker = Tracker(tracking_uri, plan.source.experiment, spool_dir=runs_dir / plan.source.experiment / "spool")
    with RunBars() as bars:

        def progress(k: int) -> list[RichProgress]:
            return [bars.start(f"seed {plan.config.train.seed + k}")]

        result = do_replay(plan, seeds=seeds, tracker=tracker, runs_dir=runs_dir, progress=progress)
    if json_:
        print_json({"source": plan.source.label, **result.to_dict()})
        return
    accs = ", ".join(f"{100 * a:.2f}%" for a in result.accuracies)
    typer.echo(
        f"replay of {plan.source.label}: test accuracy {100 * result.mean:.2f}% ± {100 * result.std:.2f}% "
        f"over {seeds} seeds ({accs})"
    )
    print_runs_link(tracker.uri, tracker.experiment_id)
