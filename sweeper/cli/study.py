"""`sweeper study ...`: commands over sweeper.study, sweeper.trials and sweeper.workers, and their output."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from pipelines.errors import UserError
from sweeper.cli import best as _best
from sweeper.cli._common import (
    ConfigOpt,
    DataOpt,
    JsonOpt,
    NameArg,
    OverridesArg,
    RunsOpt,
    SetOpt,
    StorageOpt,
    TrackingOpt,
    console,
    err_console,
    print_json,
    print_runs_link,
    tokens,
    user_errors,
)
from sweeper.cli.live import LiveStudyView, pct
from sweeper.objective import Objective
from sweeper.outcome import Outcome
from sweeper.samplers import PrunerName, SamplerName
from sweeper.urls import mask_url

if TYPE_CHECKING:
    from pipelines.config import Config
    from sweeper.space import Space
    from sweeper.study import StudyContext, StudyOptions

study_app = typer.Typer(
    help="Run, inspect and export Optuna studies (one MLflow experiment each).", no_args_is_help=True
)

SEARCH_PANEL = "Search"
BUDGET_PANEL = "Budget"
WORKERS_PANEL = "Workers"


SpaceOpt = Annotated[
    str | None,
    typer.Option(
        "--space",
        help="Search space: reparam (effective_decay, momentum, weight_decay; the default), plain (lr, momentum, "
        "weight_decay) or a YAML file.",
        show_default=False,
        rich_help_panel=SEARCH_PANEL,
    ),
]
SamplerOpt = Annotated[
    SamplerName | None,
    typer.Option(
        "--sampler", help="Optuna sampler.", show_default="the study's, else tpe", rich_help_panel=SEARCH_PANEL
    ),
]
PrunerOpt = Annotated[
    PrunerName | None,
    typer.Option(
        "--pruner",
        help="Stops unpromising trials early.",
        show_default="the study's, else median",
        rich_help_panel=SEARCH_PANEL,
    ),
]
ObjectiveOpt = Annotated[
    Objective | None,
    typer.Option(
        "--objective",
        help="val: accuracy on the held-out split (data.val_size); test: on the test set. With ,train_seconds or "
        ",epochs: that accuracy against the cost, both optimized (a Pareto front; no pruning).",
        show_default="the study's, else val",
        rich_help_panel=SEARCH_PANEL,
    ),
]


def _study_inputs(
    config: Path | None, set_: list[str] | None, overrides: list[str] | None, data: str | None, space: str | None
) -> tuple[Space | None, Config | None, dict[str, Any]]:
    """(space, config file's config, overrides); None means "the study's recorded one, or the default"."""
    from sweeper.overrides import collect_overrides, resolve_config
    from sweeper.space import load_space

    changes = collect_overrides(tokens(set_, overrides), extra={"data.path": data} if data else None)
    cfg = resolve_config(config) if config is not None else None
    return (load_space(space) if space else None), cfg, changes


def _opts(
    name: str,
    *,
    storage: str | None,
    tracking: str | None,
    sampler: SamplerName | None,
    pruner: PrunerName | None,
    objective: Objective | None,
    runs_dir: Path = Path("runs"),
    seed: int | None = None,
) -> StudyOptions:
    from sweeper.study import StudyOptions

    return StudyOptions(
        name=name,
        storage=storage,
        tracking_uri=tracking,
        sampler=sampler.value if sampler else None,
        pruner=pruner.value if pruner else None,
        objective=objective.value if objective else None,
        runs_dir=str(runs_dir),
        seed=seed,
    )


@study_app.command("init")
@user_errors
def init(
    name: NameArg,
    overrides: OverridesArg = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: DataOpt = None,
    space: SpaceOpt = None,
    storage: StorageOpt = None,
    tracking_uri: TrackingOpt = None,
    sampler: SamplerOpt = None,
    pruner: PrunerOpt = None,
    objective: ObjectiveOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="Record other settings for a study that exists (its trials stay).")
    ] = False,
) -> None:
    """Create the study, its MLflow experiment and parent run, recording space and config (idempotent).

    Run it once before starting many workers, so they never race to create them. Run again on an existing study,
    it refuses other settings than the recorded ones unless --force.
    """
    from pipelines.data import SplitsCache
    from sweeper.study import close_study, open_study, plan_study

    sp, cfg, changes = _study_inputs(config, set_, overrides, data, space)
    opts = _opts(name, storage=storage, tracking=tracking_uri, sampler=sampler, pruner=pruner, objective=objective)
    plan = plan_study(opts, space=sp, config=cfg, overrides=changes, data=SplitsCache(), keep_recorded=not force)
    _pruning_note(plan.opts.objective)
    ctx = open_study(plan)
    close_study(ctx, Outcome.COMPLETE)  # made and recorded; `study run` marks it RUNNING again
    typer.echo(
        f"study {name!r} ready: {len(ctx.study.trials)} trials so far; MLflow experiment {ctx.tracker.experiment_id}, "
        f"parent run {ctx.parent_run_id}"
    )
    print_runs_link(ctx.tracker.uri, ctx.tracker.experiment_id)


def _pruning_note(objective: str) -> None:
    if Objective(objective).multi:
        err_console.print("note: pruning is off for multi-objective studies (Optuna prunes one objective only)")


@study_app.command("run")
@user_errors
def run_cmd(
    name: NameArg,
    overrides: OverridesArg = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: DataOpt = None,
    space: SpaceOpt = None,
    sampler: SamplerOpt = None,
    pruner: PrunerOpt = None,
    objective: ObjectiveOpt = None,
    seed: Annotated[
        int | None,
        typer.Option("--seed", help="Sampler seed (reproducible suggestions).", rich_help_panel=SEARCH_PANEL),
    ] = None,
    from_lr_finder: Annotated[
        bool,
        typer.Option(
            "--from-lr-finder",
            help="Enqueue a first trial at the LR range test's suggestion.",
            rich_help_panel=SEARCH_PANEL,
        ),
    ] = False,
    n_trials: Annotated[
        int | None,
        typer.Option("--n-trials", "-n", help="Trials to run in this process.", rich_help_panel=BUDGET_PANEL),
    ] = 10,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", help="Stop starting trials after this many seconds.", rich_help_panel=BUDGET_PANEL),
    ] = None,
    storage: StorageOpt = None,
    tracking_uri: TrackingOpt = None,
    runs_dir: RunsOpt = Path("runs"),
    workers: Annotated[
        str | None,
        typer.Option(
            "--workers",
            help="Worker processes on this machine: a number or auto (one per visible GPU). Needs a server "
            "database (--storage postgresql+psycopg2://...). --n-trials is split over them.",
            show_default=False,
            rich_help_panel=WORKERS_PANEL,
        ),
    ] = None,
    gpus: Annotated[
        str | None,
        typer.Option(
            "--gpus", help="One worker per listed GPU, e.g. 0,1,2,3.", show_default=False, rich_help_panel=WORKERS_PANEL
        ),
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Create or resume study NAME and run trials; each trial trains the ResNet and is tracked in MLflow.

    The default space samples effective_decay = lr*wd/(1-momentum), momentum and weight decay (Myrtle.ai part 5)
    and trains with lr = effective_decay*(1-momentum)/wd. A second run adds trials to the same study.

    Example: sweeper study run smoke --data ../shared/data/cifar10-jpeg.tar.xz --n-trials 3
    --set data.train_limit=5000 data.test_limit=1000 data.val_size=1000 model.width=0.25 train.epochs=2
    """
    from pipelines.data import SplitsCache
    from pipelines.paths import check_writable
    from sweeper.study import enqueue_lr_finder, holding, open_study, plan_study
    from sweeper.trials import TrialRunner
    from sweeper.workers import needs_processes, plan_workers

    if n_trials is not None and n_trials < 1:
        raise UserError(f"--n-trials must be >= 1, got {n_trials}")
    if timeout is not None and not timeout > 0:
        raise UserError(f"--timeout must be a positive number of seconds, got {timeout}")
    check_writable(runs_dir, what="--runs-dir")
    sp, cfg, changes = _study_inputs(config, set_, overrides, data, space)
    opts = _opts(
        name,
        storage=storage,
        tracking=tracking_uri,
        sampler=sampler,
        pruner=pruner,
        objective=objective,
        runs_dir=runs_dir,
        seed=seed,
    )
    worker_plan = None
    if workers is not None or gpus is not None:
        worker_plan = plan_workers(workers=workers, gpus=gpus, n_trials=n_trials or 1, storage=storage)
    cache = SplitsCache()  # data problems surface in plan_study, before any study or run exists
    study_plan = plan_study(opts, space=sp, config=cfg, overrides=changes, data=cache)
    in_processes = needs_processes(worker_plan, gpus=gpus)
    if from_lr_finder and in_processes:
        raise UserError("--from-lr-finder runs in one process: enqueue it with a single `study run` first")
    _pruning_note(study_plan.opts.objective)
    with holding(open_study(study_plan)) as ctx:
        if in_processes:
            assert worker_plan is not None
            _run_workers(ctx, worker_plan, timeout=timeout, json_=json_)
            return
        view = LiveStudyView(name, space=ctx.space, objective=ctx.objective, quiet=json_)
        runner = TrialRunner(ctx, observer=view, data=cache)
        if from_lr_finder:
            err_console.print("running the LR range test for --from-lr-finder ...")
            lr = enqueue_lr_finder(ctx, runner.splits(ctx.config), cache=runner.cache)
            err_console.print(f"enqueued a trial at lr {lr:.4g} (LR range test valley)")
        with view:
            study = runner.run(n_trials=n_trials, timeout=timeout)
            plots = _finish(ctx)
    _report(ctx, study, plots, json_=json_)


def _report(ctx: StudyContext, study: Any, plots: dict[str, str], *, json_: bool, **extra: Any) -> None:
    """What a finished `study run` prints: the trials (JSON), or the best trial (the Pareto front's size), how to
    replay it and where its runs are in MLflow, each on a line of its own (stderr)."""
    from sweeper.queries import pareto_rows
    from sweeper.records import trial_rows

    name, rows = ctx.opts.name, trial_rows(study)
    if ctx.objective.multi:
        front = pareto_rows(study, ctx.objective) if study.best_trials else []
        if json_:
            print_json({"study": name, "trials": rows, "pareto": front, "plots": plots, **extra})
            return
        err_console.print(f"Pareto front: {len(front)} trial(s)", highlight=False)
        err_console.print(f"see them with: sweeper study best {name}", highlight=False, markup=False)
    else:
        best = max((r for r in rows if r["state"] == Outcome.COMPLETE.value), key=_row_value, default=None)
        if json_:
            print_json({"study": name, "trials": rows, "best": best, "plots": plots, **extra})
            return
        if best:
            err_console.print(
                f"best: trial {best['number']} {ctx.objective.value} accuracy {100 * best['value']:.2f}% "
                f"(lr {best['lr']:.4g})",
                highlight=False,
            )
            err_console.print(f"replay it with: sweeper replay --study {name}", highlight=False, markup=False)
    print_runs_link(ctx.tracker.uri, ctx.tracker.experiment_id)


def _row_value(row: dict[str, Any]) -> float:
    return row["value"]


def _finish(ctx: StudyContext) -> dict[str, str]:
    from sweeper.study import finish_study

    plots = finish_study(ctx, out_dir=Path(ctx.opts.runs_dir) / ctx.opts.name / "study_plots")
    return {k: str(v) for k, v in plots.items()}


def _run_workers(ctx: StudyContext, plan: list[Any], *, timeout: float | None, json_: bool) -> None:
    """The workers' processes with one table read from the storage, then the study's plots."""
    from sweeper.records import trial_rows
    from sweeper.workers import run_workers, workers_log_dir

    opts = ctx.opts
    err_console.print(
        f"{len(plan)} workers on study {opts.name!r} "
        + ", ".join(f"#{p.index}: {p.n_trials} trials" + (f" on GPU {p.gpu}" if p.gpu else "") for p in plan)
        + f"; logs in {workers_log_dir(opts)}",
        highlight=False,
    )
    view = LiveStudyView(opts.name, space=ctx.space, objective=ctx.objective, quiet=json_)

    def refresh() -> None:
        view.show_rows(trial_rows(ctx.study))

    with view:
        result = run_workers(opts, plan, timeout=timeout, refresh=refresh)
    plots = _finish(ctx)
    _report(ctx, ctx.study, plots, json_=json_, workers=len(plan), failed_workers=result.failed)
    result.check()


@study_app.command("sync")
@user_errors
def sync(
    name: NameArg,
    tracking_uri: TrackingOpt = None,
    storage: StorageOpt = None,
    runs_dir: RunsOpt = Path("runs"),
    json_: JsonOpt = False,
) -> None:
    """Upload what was spooled while MLflow was unreachable (runs/NAME/spool), in order, then remove it.

    Trials whose MLflow run was created by the sync get its id recorded in the study (the --storage it ran on).
    """
    from sweeper.queries import record_synced_run_ids
    from sweeper.spool import sync_spool
    from sweeper.tracking import Tracker

    spool = runs_dir / name / "spool"
    if not spool.exists():
        raise UserError(f"nothing to sync: no spool at {spool}")
    tracker = Tracker(tracking_uri, name, spool_dir=spool)
    done = sync_spool(tracker.client, spool)
    unrecorded = None
    if done["run_ids"]:
        try:
            record_synced_run_ids(storage, name, done["run_ids"])
        except UserError as err:  # MLflow has everything; only the study's pointers to it are missing
            unrecorded = str(err)
    if json_:
        print_json({**done, "run_ids_recorded": unrecorded is None})
        return
    typer.echo(f"synced {done['operations']} operations from {done['files']} spool files to {mask_url(tracker.uri)}")
    if done["skipped"]:
        typer.echo(f"{done['skipped']} operations were rejected by MLflow and skipped: see the warnings above")
    if unrecorded:
        typer.echo(f"the new runs' ids were not recorded in the study ({unrecorded}); pass --storage")


@study_app.command("list")
@user_errors
def list_cmd(storage: StorageOpt = None, json_: JsonOpt = False) -> None:
    """List the studies in the storage with their trial counts and best values."""
    from sweeper.queries import list_studies

    studies = list_studies(storage)
    if json_:
        print_json(studies)
        return
    table = Table(title="studies")
    for col in ("name", "trials", "best value", "best trial", "started"):
        table.add_column(col)
    for s in studies:
        best = pct(s["best_value"]) if "pareto_trials" not in s else f"front of {s['pareto_trials']}"
        number = "" if s["best_trial"] is None else str(s["best_trial"])
        table.add_row(s["name"], str(s["trials"]), best, number, s["started"] or "")
    console().print(table)


@study_app.command("show")
@user_errors
def show(name: NameArg, storage: StorageOpt = None, json_: JsonOpt = False) -> None:
    """Show every trial of study NAME: its searched parameters, objective, test accuracy, state and time."""
    from sweeper import records
    from sweeper.queries import load_study

    study = load_study(storage, name)
    rows = records.trial_rows(study)
    attrs = study.user_attrs
    if json_:
        shown = {k: v for k, v in attrs.items() if k not in (records.STUDY_CONFIG, records.SPACE)}
        print_json({"study": name, "objective": attrs.get(records.OBJECTIVE), "attrs": shown, "trials": rows})
        return
    space = records.study_space(attrs, name=name)
    view = LiveStudyView(name, space=space, objective=records.study_objective(attrs))
    view.show_rows(rows)
    console().print(view.table())


study_app.command("best")(_best.best)
