"""`sweeper study ...` and `sweeper replay`: thin commands over sweeper.study and sweeper.replay."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from pipelines.callbacks import EpochMetrics
from pipelines.config import Config
from pipelines.errors import UserError
from sweeper.cli._common import (
    ConfigOpt,
    DataOpt,
    JsonOpt,
    OverridesArg,
    RichProgress,
    SetOpt,
    err_console,
    print_json,
    tokens,
    user_errors,
)
from sweeper.overrides import parse_overrides, resolve_config

log = logging.getLogger(__name__)

study_app = typer.Typer(help="Run, inspect and export Optuna studies (one MLflow experiment each).", no_args_is_help=True)

NameArg = Annotated[str, typer.Argument(help="Study name (also the MLflow experiment's name).", show_default=False)]
StorageOpt = Annotated[
    str | None,
    typer.Option(
        "--storage",
        help="Optuna storage URL; default $SWEEPER_STORAGE or sqlite:///sweeper.db. "
        "Many workers: postgresql+psycopg2://user:pass@host:5432/db",
        show_default=False,
    ),
]
TrackingOpt = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        help="MLflow tracking URI; default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db (artifacts in ./mlartifacts).",
        show_default=False,
    ),
]
SpaceOpt = Annotated[
    str | None,
    typer.Option(
        "--space",
        help="Search space: reparam (effective_decay, momentum, weight_decay; the default), plain (lr, momentum, "
        "weight_decay) or a YAML file.",
        show_default=False,
    ),
]
SamplerOpt = Annotated[
    str | None,
    typer.Option("--sampler", help="tpe | cmaes | random | gp | grid  [default: the study's, else tpe]", show_default=False),
]
PrunerOpt = Annotated[
    str | None,
    typer.Option("--pruner", help="median | hyperband | none  [default: the study's, else median]", show_default=False),
]
ObjectiveOpt = Annotated[
    str | None,
    typer.Option(
        "--objective",
        help="val: accuracy on the held-out split (data.val_size); test: on the test set  [default: the study's, else val]",
        show_default=False,
    ),
]
RunsOpt = Annotated[Path, typer.Option("--runs-dir", help="Where trials write their outputs (<runs-dir>/<study>/trial-N).")]


def _study_inputs(
    config: Path | None, set_: list[str] | None, overrides: list[str] | None, data: str | None, space: str | None
) -> tuple[Any, Config | None, dict[str, Any]]:
    """(space, config file's config, overrides); None means "the study's recorded one, or the default"."""
    from sweeper.overrides import machine_overrides
    from sweeper.space import load_space

    changes = {"data.path": data} if data else {}
    changes.update(parse_overrides(tokens(set_, overrides)))
    changes = {**machine_overrides(changes), **changes}
    cfg = resolve_config(config) if config is not None else None
    return (load_space(space) if space else None), cfg, changes


def _opts(name: str, storage: str | None, tracking: str | None, sampler: str, pruner: str, objective: str, runs: Path, seed: int | None):  # noqa: ANN202
    from sweeper.study import StudyOptions

    return StudyOptions(
        name=name,
        storage=storage,
        tracking_uri=tracking,
        sampler=sampler,
        pruner=pruner,
        objective=objective,
        runs_dir=str(runs),
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
) -> None:
    """Create the study, its MLflow experiment and parent run, recording space and config (idempotent).

    Run it once before starting many workers, so they never race to create them.
    """
    from sweeper.study import SplitsCache, open_study, plan_study

    sp, cfg, changes = _study_inputs(config, set_, overrides, data, space)
    opts = _opts(name, storage, tracking_uri, sampler, pruner, objective, Path("runs"), None)
    ctx = open_study(plan_study(opts, space=sp, config=cfg, overrides=changes, data=SplitsCache()))
    typer.echo(
        f"study {name!r} ready: {len(ctx.study.trials)} trials so far; MLflow experiment {ctx.tracker.experiment_id}, "
        f"parent run {ctx.parent_run_id}"
    )


@study_app.command("run")
@user_errors
def run_cmd(
    name: NameArg,
    overrides: OverridesArg = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: DataOpt = None,
    space: SpaceOpt = None,
    n_trials: Annotated[int | None, typer.Option("--n-trials", "-n", help="Trials to run in this process.")] = 10,
    timeout: Annotated[float | None, typer.Option("--timeout", help="Stop starting trials after this many seconds.")] = None,
    sampler: SamplerOpt = None,
    pruner: PrunerOpt = None,
    storage: StorageOpt = None,
    tracking_uri: TrackingOpt = None,
    objective: ObjectiveOpt = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Sampler seed (reproducible suggestions).")] = None,
    runs_dir: RunsOpt = Path("runs"),
    workers: Annotated[
        str | None,
        typer.Option(
            "--workers",
            help="Worker processes on this machine: a number or auto (one per visible GPU). Needs a server "
            "database (--storage postgresql+psycopg2://...). --n-trials is split over them.",
            show_default=False,
        ),
    ] = None,
    gpus: Annotated[
        str | None, typer.Option("--gpus", help="One worker per listed GPU, e.g. 0,1,2,3.", show_default=False)
    ] = None,
    from_lr_finder: Annotated[
        bool, typer.Option("--from-lr-finder", help="Enqueue a first trial at the LR range test's suggestion.")
    ] = False,
    json_: JsonOpt = False,
) -> None:
    """Create or resume study NAME and run trials; each trial trains the ResNet and is tracked in MLflow.

    The default space samples effective_decay = lr*wd/(1-momentum), momentum and weight decay (Myrtle.ai part 5)
    and trains with lr = effective_decay*(1-momentum)/wd. A second run adds trials to the same study.

    Example: sweeper study run smoke --data ../shared/data/cifar10-jpeg.tar.xz --n-trials 3
    --set data.train_limit=5000 data.test_limit=1000 data.val_size=1000 model.width=0.25 train.epochs=2
    """
    from sweeper.study import SplitsCache, StudyRunner, finish_study, open_study, plan_study

    if n_trials is not None and n_trials < 1:
        raise UserError(f"--n-trials must be >= 1, got {n_trials}")
    sp, cfg, changes = _study_inputs(config, set_, overrides, data, space)
    opts = _opts(name, storage, tracking_uri, sampler, pruner, objective, runs_dir, seed)
    worker_plan = None
    if workers is not None or gpus is not None:
        from sweeper.workers import plan_workers

        worker_plan = plan_workers(workers=workers, gpus=gpus, n_trials=n_trials or 1, storage=storage)
    cache = SplitsCache()  # data problems surface in plan_study, before any study or run exists
    study_plan = plan_study(opts, space=sp, config=cfg, overrides=changes, data=cache)
    if from_lr_finder and worker_plan is not None and (len(worker_plan) > 1 or gpus):
        raise UserError("--from-lr-finder runs in one process: enqueue it with a single `study run` first")
    ctx = open_study(study_plan)
    opts = ctx.opts
    if worker_plan is not None and (len(worker_plan) > 1 or gpus):
        _run_workers(ctx, opts, worker_plan, timeout=timeout, json_=json_)
        return
    view = LiveStudyView(name, quiet=json_)
    runner = StudyRunner(opts, ctx, observer=view, data=cache)
    if from_lr_finder:
        _enqueue_lr_finder(ctx, runner)
    with view:
        study = runner.run(n_trials=n_trials, timeout=timeout)
        plots = finish_study(ctx, out_dir=runs_dir / name / "study_plots")
    from sweeper.study import trial_rows

    rows = trial_rows(study)
    best = max((r for r in rows if r["state"] == "complete"), key=lambda r: r["value"], default=None)
    if json_:
        print_json({"study": name, "trials": rows, "best": best, "plots": {k: str(v) for k, v in plots.items()}})
        return
    if best:
        err_console.print(
            f"best: trial {best['number']} {opts.objective} accuracy {100 * best['value']:.2f}% "
            f"(lr {best['lr']:.4g}); replay it with: sweeper replay --study {name}",
            highlight=False,
        )


def _run_workers(ctx: Any, opts: Any, plan: list, *, timeout: float | None, json_: bool) -> None:
    """Start one `study run` process per worker on the shared storage; show one table read from the storage."""
    from sweeper.study import finish_study, trial_rows
    from sweeper.workers import start_worker, stop_workers

    runs_dir = Path(opts.runs_dir)
    log_dir = runs_dir / opts.name / "logs"
    procs = []
    for p in plan:
        args = ["--sampler", opts.sampler, "--pruner", opts.pruner, "--objective", opts.objective]
        if opts.seed is not None:
            args += ["--seed", str(opts.seed + p.index)]  # distinct seeds: workers must not sample alike
        if timeout is not None:
            args += ["--timeout", str(timeout)]
        procs.append(
            start_worker(p, study=opts.name, storage=opts.storage, tracking_uri=opts.tracking_uri,
                         runs_dir=runs_dir, extra_args=args, log_dir=log_dir)
        )
    err_console.print(
        f"{len(procs)} workers on study {opts.name!r} "
        + ", ".join(f"#{p.index}: {p.n_trials} trials" + (f" on GPU {p.gpu}" if p.gpu else "") for p in plan)
        + f"; logs in {log_dir}",
        highlight=False,
    )
    view = LiveStudyView(opts.name, quiet=json_)
    study = ctx.study
    try:
        with view:
            while any(proc.poll() is None for proc in procs):
                try:
                    view.show_rows(trial_rows(study))
                except Exception as err:  # noqa: BLE001 - the view must not take the workers down with it
                    log.warning("could not refresh the table: %s", err)
                time.sleep(1.0)
            view.show_rows(trial_rows(study))
    finally:
        stop_workers(procs)  # no-op when all have exited; else SIGINT, then SIGKILL after a deadline
    failed = [(p.index, proc.returncode) for p, proc in zip(plan, procs) if proc.returncode != 0]
    plots = finish_study(ctx, out_dir=runs_dir / opts.name / "study_plots")
    rows = trial_rows(study)
    if json_:
        print_json({"study": opts.name, "trials": rows, "workers": len(plan), "failed_workers": failed,
                    "plots": {k: str(v) for k, v in plots.items()}})
    if failed:
        raise UserError(
            "worker(s) " + ", ".join(f"#{i} (exit {rc})" for i, rc in failed) + f" failed; see {log_dir}/worker-N.log"
        )


def _enqueue_lr_finder(ctx: Any, runner: Any) -> None:
    """Trial 0 at the range test's suggested LR with the config's momentum and weight decay."""
    from pipelines.lr_finder import lr_range_test
    from sweeper.space import EFFECTIVE_DECAY, effective_decay

    cfg = ctx.config
    err_console.print("running the LR range test for --from-lr-finder ...")
    found = lr_range_test(cfg, splits=runner.splits(cfg))
    names = ctx.space.names
    params: dict[str, float] = {}
    if EFFECTIVE_DECAY in names:
        params[EFFECTIVE_DECAY] = effective_decay(
            lr=found.max_lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay
        )
    if "lr" in names:
        params["lr"] = found.max_lr
    if "momentum" in names:
        params["momentum"] = cfg.optim.momentum
    if "weight_decay" in names:
        params["weight_decay"] = cfg.optim.weight_decay
    ctx.study.enqueue_trial(params, user_attrs={"source": "lr_finder"}, skip_if_exists=True)
    err_console.print(f"enqueued a trial at lr {found.max_lr:.4g} (LR range test valley)")


class LiveStudyView:
    """A live table of the trials (number, parameters, accuracy, state, time) on stderr, plus the running
    trial's progress bar."""

    def __init__(self, name: str, *, quiet: bool = False, console: Console | None = None) -> None:
        self.name = name
        self.console = console or err_console
        self.rows: dict[int, dict[str, Any]] = {}
        self.objective = "val"
        self.live: Live | None = None
        self.quiet = quiet

    # StudyObserver
    def on_study(self, study: Any, *, space: Any, config: Config) -> None:
        from sweeper.study import trial_rows

        self.objective = study.user_attrs.get("objective", "val")
        for row in trial_rows(study):
            self.rows[row["number"]] = {**row, "started": None}
        self._refresh()

    def on_trial_start(self, number: int, params: Mapping[str, Any]) -> None:
        self.rows[number] = {
            "number": number,
            "state": "running",
            "value": None,
            "params": dict(params),
            "test_accuracy": None,
            "epoch": None,
            "started": time.perf_counter(),
            "seconds": None,
        }
        self._refresh()

    def on_epoch(self, number: int, metrics: EpochMetrics) -> None:
        row = self.rows.get(number)
        if row is not None:
            row["epoch"] = metrics.epoch
            row["value"] = metrics.val_accuracy if metrics.val_accuracy is not None else metrics.test_accuracy
            row["test_accuracy"] = metrics.test_accuracy
            self._refresh()

    def on_trial_end(self, trial: Any, state: str, seconds: float) -> None:
        row = self.rows.setdefault(trial.number, {"number": trial.number, "params": trial.params, "epoch": None})
        row.update(state=state, seconds=seconds, started=None)
        if trial.value is not None:
            row["value"] = trial.value
        row["test_accuracy"] = trial.user_attrs.get("test_accuracy", row.get("test_accuracy"))
        self._refresh()

    def show_rows(self, rows: list[dict[str, Any]]) -> None:
        """Replace the table's rows with what the storage says (the multi-worker view)."""
        for row in rows:
            self.rows[row["number"]] = {**row, "started": None}
        self._refresh()

    def _table(self) -> Table:
        table = Table(title=f"study {self.name}", expand=False)
        # effective decay lr*wd/(1-momentum), momentum, weight decay, lr: the reparametrised space's axes
        for col in ("#", "λα/(1-ρ)", "ρ", "α", "λ", self.objective, "test", "state", "time"):
            table.add_column(col, justify="left" if col == "state" else "right", no_wrap=True)
        for number in sorted(self.rows)[-30:]:
            r = self.rows[number]
            p = r.get("params") or {}
            secs = r.get("seconds")
            if r.get("started") is not None:
                secs = time.perf_counter() - r["started"]
            state = r.get("state", "")
            if state == "running" and r.get("epoch"):
                state = f"running (epoch {r['epoch']})"
            table.add_row(
                str(number),
                _fmt(p.get("effective_decay"), ".1e"),
                _fmt(p.get("momentum") or p.get("optim.momentum"), ".3f"),
                _fmt(p.get("weight_decay") or p.get("optim.weight_decay"), ".1e"),
                _fmt(p.get("lr") or p.get("optim.lr") or r.get("lr"), ".3g"),
                _pct(r.get("value")),
                _pct(r.get("test_accuracy")),
                state,
                f"{secs:.0f}s" if secs is not None else "",
            )
        return table

    def _refresh(self) -> None:
        if self.live is not None:
            self.live.update(self._table())

    def __enter__(self) -> LiveStudyView:
        if not self.quiet:
            self.live = Live(self._table(), console=self.console, refresh_per_second=2, transient=False)
            self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.update(self._table())
            self.live.stop()
            self.live = None


def _fmt(value: Any, spec: str = ".4g") -> str:
    if value is None:
        return ""
    return format(value, spec) if isinstance(value, float) else str(value)


def _pct(value: Any) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, (int, float)) else ""


@study_app.command("sync")
@user_errors
def sync(
    name: NameArg,
    tracking_uri: TrackingOpt = None,
    runs_dir: RunsOpt = Path("runs"),
    json_: JsonOpt = False,
) -> None:
    """Upload what was spooled while MLflow was unreachable (runs/NAME/spool), in order, then remove it."""
    from sweeper.tracking import Tracker, sync_spool

    spool = runs_dir / name / "spool"
    if not spool.exists():
        raise UserError(f"nothing to sync: no spool at {spool}")
    tracker = Tracker(tracking_uri, name, spool_dir=spool)
    done = sync_spool(tracker.client, spool)
    if json_:
        print_json(done)
        return
    typer.echo(f"synced {done['operations']} operations from {done['files']} spool files to {tracker.uri}")


@study_app.command("list")
@user_errors
def list_cmd(storage: StorageOpt = None, json_: JsonOpt = False) -> None:
    """List the studies in the storage with their trial counts and best values."""
    from sweeper.study import list_studies

    studies = list_studies(storage)
    if json_:
        print_json(studies)
        return
    table = Table(title="studies")
    for col in ("name", "trials", "best value", "best trial", "started"):
        table.add_column(col)
    for s in studies:
        table.add_row(s["name"], str(s["trials"]), _pct(s["best_value"]), str(s["best_trial"] or ""), s["started"] or "")
    Console().print(table)


@study_app.command("show")
@user_errors
def show(name: NameArg, storage: StorageOpt = None, json_: JsonOpt = False) -> None:
    """Show every trial of study NAME: parameters, objective, test accuracy, state and time."""
    from sweeper.study import load_study, trial_rows

    study = load_study(storage, name)
    rows = trial_rows(study)
    if json_:
        print_json({"study": name, "objective": study.user_attrs.get("objective"), "attrs": _public_attrs(study), "trials": rows})
        return
    view = LiveStudyView(name)
    view.objective = study.user_attrs.get("objective", "val")
    view.show_rows(rows)
    Console().print(view._table())


def _public_attrs(study: Any) -> dict[str, Any]:
    return {k: v for k, v in study.user_attrs.items() if k not in ("config", "space")}


@study_app.command("best")
@user_errors
def best(
    name: NameArg,
    storage: StorageOpt = None,
    export: Annotated[Path | None, typer.Option("--export", help="Write the best trial's resolved config YAML here.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Show the best trial of study NAME (and export its config for `sweeper replay FILE`)."""
    from sweeper.study import best_trial, load_study

    study = load_study(storage, name)
    trial = best_trial(study)
    payload = {
        "study": name,
        "trial": trial.number,
        "value": trial.value,
        "params": trial.params,
        "lr": trial.user_attrs.get("lr"),
        "test_accuracy": trial.user_attrs.get("test_accuracy"),
        "mlflow_run_id": trial.user_attrs.get("mlflow_run_id"),
    }
    if export is not None:
        export.parent.mkdir(parents=True, exist_ok=True)
        export.write_text(trial.user_attrs["config"])
        payload["exported"] = str(export)
    if json_:
        print_json(payload)
        return
    typer.echo(f"best trial {trial.number} of {name}: objective {100 * trial.value:.2f}%")
    for k, v in {**trial.params, "lr": payload["lr"]}.items():
        typer.echo(f"  {k} = {_fmt(v)}")
    if export is not None:
        typer.echo(f"config written to {export}")


@user_errors
def replay(
    source: Annotated[
        list[str] | None,
        typer.Argument(help="A config YAML (e.g. from `study best --export`), and/or key=value overrides.", show_default=False),
    ] = None,
    study: Annotated[str | None, typer.Option("--study", help="Replay a trial of this study.", show_default=False)] = None,
    trial: Annotated[int | None, typer.Option("--trial", help="Trial number (default: the best).", show_default=False)] = None,
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
    from sweeper.replay import ReplaySource, replay as do_replay
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
    extra = {"data.path": data} if data else {}
    if study is not None:
        from sweeper.study import best_trial, load_study

        st = load_study(storage, study)
        chosen = best_trial(st, trial)
        base = Config.from_yaml(chosen.user_attrs["config"], source=f"trial {chosen.number} of {study}")
        cfg = resolve_config(None, toks, extra=extra, base=base)
        src = ReplaySource(
            label=f"{study}-trial-{chosen.number}",
            study=study,
            trial_number=chosen.number,
            trial_run_id=chosen.user_attrs.get("mlflow_run_id"),
            parent_run_id=st.user_attrs.get("mlflow_parent_run_id"),
        )
        tracker = Tracker(tracking_uri, study, spool_dir=runs_dir / study / "spool")
    else:
        path = Path(files[0])
        cfg = resolve_config(path, toks, extra=extra)
        src = ReplaySource(label=path.stem)
        tracker = Tracker(tracking_uri, "replay", spool_dir=runs_dir / "replay" / "spool")
    bars: list[RichProgress] = []

    def progress(k: int) -> list[RichProgress]:
        for bar in bars:
            bar.close()
        bars[:] = [RichProgress(label=f"seed {cfg.train.seed + k}", epoch_lines=False)]
        return bars

    try:
        result = do_replay(cfg, source=src, seeds=seeds, tracker=tracker, runs_dir=runs_dir, progress=progress)
    finally:
        for bar in bars:
            bar.close()
    if json_:
        print_json({"source": src.label, **result.to_dict()})
        return
    accs = ", ".join(f"{100 * a:.2f}%" for a in result.accuracies)
    typer.echo(
        f"replay of {src.label}: test accuracy {100 * result.mean:.2f}% ± {100 * result.std:.2f}% over {seeds} seeds ({accs})"
    )

