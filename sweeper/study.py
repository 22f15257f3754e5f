"""Optuna studies over a search space, each trial a training run tracked in MLflow.

Order of record (nothing lost): the objective returns, Optuna writes the trial's state and value to its storage,
then our study callback ends the trial's MLflow run. A trial whose worker dies is failed by the heartbeat and
retried (Optuna's RetryHeartbeatStaleTrialCallback); its MLflow run is ended as FAILED by whichever worker notices.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from pipelines.callbacks import Callback, EpochMetrics
from pipelines.config import Config
from pipelines.data import Splits, load_splits
from pipelines.errors import UserError
from pipelines.train import ModelCache, check_trainable, run
from sweeper.space import Space, load_space, optim_params, space_from_yaml
from sweeper.tracking import Tracker, TrialRun, absolute_sqlite, mask_url

log = logging.getLogger(__name__)

DEFAULT_STORAGE = "sqlite:///sweeper.db"
STORAGE_ENV = "SWEEPER_STORAGE"
SAMPLERS = ("tpe", "cmaes", "random", "gp", "grid")
PRUNERS = ("median", "hyperband", "none")
OBJECTIVES = ("val", "test")
STUDY_VAL_SIZE = 5000  # images held out of train for the objective (CIFAR-10: 45k train / 5k val)
HEARTBEAT_SECONDS = 20  # a running trial's heartbeat period on a server database ($SWEEPER_HEARTBEAT_SECONDS)
GRACE_SECONDS = 60  # no heartbeat for this long: the trial is failed and retried ($SWEEPER_GRACE_SECONDS)
MAX_RETRY = 2  # retries of a trial whose worker died
MAX_CONSECUTIVE_FAILURES = 3  # then the study stops: something is systematically wrong


def resolve_storage_url(url: str | None) -> str:
    """--storage, else $SWEEPER_STORAGE, else sqlite:///sweeper.db (made absolute)."""
    return absolute_sqlite(url or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE)


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def make_storage(
    url: str | None, *, heartbeat: bool = True, tracker_uri: str | None = None, runs_dir: str = "runs"
) -> RDBStorage:
    """Optuna's RDB storage; on a server database with pre-ping (reconnect after a dropped connection) and a
    heartbeat that fails and retries the trials of dead workers."""
    url = resolve_storage_url(url)
    parsed = _parse_url(url)
    kwargs: dict[str, Any] = {}
    if is_sqlite(url):
        engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 30}}
    else:
        engine_kwargs = {"pool_pre_ping": True, "pool_recycle": 300}
        if parsed.drivername.startswith("postgresql"):
            engine_kwargs["connect_args"] = {"connect_timeout": 10}
        if heartbeat:
            kwargs.update(
                heartbeat_interval=_env_int("SWEEPER_HEARTBEAT_SECONDS", HEARTBEAT_SECONDS),
                grace_period=_env_int("SWEEPER_GRACE_SECONDS", GRACE_SECONDS),
                heartbeat_stale_trial_callback=StaleTrialHandler(tracker_uri, runs_dir=runs_dir),
            )
    try:
        storage = _reconnecting(RDBStorage)(url, engine_kwargs=engine_kwargs, **kwargs)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError, optuna.exceptions.StorageInternalError) as err:
        detail = " ".join(str(getattr(err, "orig", None) or err).split())[:200]
        raise UserError(f"cannot open storage {mask_url(url)}: {detail}") from err
    if not is_sqlite(url):
        _retry_on_disconnect(storage)
    return storage


RECONNECT_DELAYS = (0.5, 1.0, 2.0, 4.0)  # seconds between tries of a storage call whose connection was dropped


def _retry_on_disconnect(storage: RDBStorage) -> None:
    """Pre-ping replaces connections that died in the pool; a connection dropped *during* a call (a database
    restart, pg_terminate_backend) fails that call once, so each storage call is retried on a fresh one.
    Every method is wrapped, private ones too: Optuna's _CachedStorage calls _create_new_trial, _get_trials,
    _set_trial_param and _get_best_trial_id, and the heartbeat thread record_heartbeat. Optuna's writes are one
    transaction each, so a retried call either did nothing or is repeated whole; a state change whose commit
    landed before the connection died is recognised on retry (see _reconnecting). The one non-idempotent call,
    creating a trial, could at worst leave one extra trial if its reply was lost."""
    for name in dir(RDBStorage):
        if name.startswith("__") or name in _NOT_WRAPPED or not callable(getattr(RDBStorage, name, None)):
            continue
        method = getattr(storage, name)
        if callable(method):
            setattr(storage, name, _reconnecting(method))


_NOT_WRAPPED = frozenset({"remove_session", "upgrade", "get_current_version", "get_head_version", "get_all_versions"})


def _reconnecting(method: Any) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        retried = False
        for delay in (*RECONNECT_DELAYS, None):
            try:
                return method(*args, **kwargs)
            except optuna.exceptions.UpdateFinishedTrialError:
                if retried and method.__name__ == "set_trial_state_values":
                    return True  # our first try committed before the connection died
                raise
            except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.OperationalError) as err:
                if delay is None or not _is_disconnect(err):
                    raise
                log.warning("storage connection lost in %s; retrying in %.1fs", method.__name__, delay)
                time.sleep(delay)
                retried = True
        raise AssertionError("unreachable")

    call.__name__ = method.__name__
    return call


# What PostgreSQL clients say when an open connection is cut (not when none can be made: that is not retried)
DISCONNECT_MARKERS = (
    "closed the connection",
    "terminating connection",
    "connection already closed",
    "connection has been closed",
    "connection reset",
)


def _is_disconnect(err: BaseException) -> bool:
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, sqlalchemy.exc.DBAPIError):
            text = str(seen).lower()
            if seen.connection_invalidated or any(marker in text for marker in DISCONNECT_MARKERS):
                return True
        seen = seen.__cause__ or seen.__context__
    return False


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = int(text)
    except ValueError as err:
        raise UserError(f"{name} must be a whole number of seconds, got {text!r}") from err
    if value < 1:
        raise UserError(f"{name} must be >= 1, got {value}")
    return value


class StaleTrialHandler:
    """Heartbeat callback for a trial whose worker died: end its MLflow run as FAILED, then retry the trial."""

    def __init__(self, tracker_uri: str | None, *, runs_dir: str = "runs") -> None:
        self.tracker_uri = tracker_uri
        self.runs_dir = runs_dir
        self.retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY, inherit_intermediate_values=False)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id:
            try:
                spool = Path(self.runs_dir) / study.study_name / "spool"
                tracker = Tracker(self.tracker_uri, study.study_name, spool_dir=spool)
                tracker.end_run(run_id, "failed", reason="worker lost (no heartbeat)")
            except Exception:  # noqa: BLE001 - the retry must happen even if MLflow is down
                log.exception("could not end the MLflow run %s of stale trial %d", run_id, trial.number)
        self.retry(study, trial)


def make_sampler(name: str, space: Space, *, seed: int | None) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        # multivariate: models the (effective_decay, rho, alpha) interactions; constant liar: parallel workers
        # don't all sample the same point while trials are running.
        return optuna.samplers.TPESampler(multivariate=True, constant_liar=True, seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    raise UserError(f"unknown sampler {name!r}: use one of {', '.join(SAMPLERS)}")


def make_pruner(name: str, *, epochs: int) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=max(1, epochs // 4))
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise UserError(f"unknown pruner {name!r}: use one of {', '.join(PRUNERS)}")


@dataclass(frozen=True, kw_only=True)
class StudyOptions:
    name: str
    storage: str | None = None
    tracking_uri: str | None = None
    sampler: str | None = None  # None: the study's recorded choice, else tpe
    pruner: str | None = None  # None: recorded, else median
    objective: str | None = None  # None: recorded, else val
    seed: int | None = None
    runs_dir: str = "runs"

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in "/'\"`\\") or self.name.strip() != self.name:
            raise UserError(
                f"study name {self.name!r} must be non-empty, without quotes, slashes or surrounding spaces"
            )
        if self.sampler is not None and self.sampler not in SAMPLERS:
            raise UserError(f"unknown sampler {self.sampler!r}: use one of {', '.join(SAMPLERS)}")
        if self.pruner is not None and self.pruner not in PRUNERS:
            raise UserError(f"unknown pruner {self.pruner!r}: use one of {', '.join(PRUNERS)}")
        if self.objective is not None and self.objective not in OBJECTIVES:
            raise UserError(f"unknown objective {self.objective!r}: use val or test")

    def resolved(self, recorded: Mapping[str, Any]) -> StudyOptions:
        """Unset choices from the study's record (so workers follow `study init`), else the defaults."""
        return dataclasses.replace(
            self,
            sampler=self.sampler or recorded.get("sampler", "tpe"),
            pruner=self.pruner or recorded.get("pruner", "median"),
            objective=self.objective or recorded.get("objective", "val"),
        )


class StudyObserver:
    """What a live view hears about; all no-ops by default."""

    def on_study(self, study: optuna.Study, *, space: Space, config: Config) -> None: ...

    def on_trial_start(self, number: int, params: Mapping[str, Any]) -> None: ...

    def on_epoch(self, number: int, metrics: EpochMetrics) -> None: ...

    def on_trial_end(self, trial: FrozenTrial, state: str, seconds: float) -> None: ...


@dataclass
class StudyContext:
    """What `study init` records in the study, so that workers on other machines run the same study."""

    study: optuna.Study
    space: Space
    config: Config
    tracker: Tracker
    parent_run_id: str
    opts: StudyOptions  # with sampler, pruner and objective resolved


def study_config_base() -> Config:
    """The recipe with a class-balanced validation split for the objective."""
    return Config().with_overrides({"data.val_size": STUDY_VAL_SIZE})


@dataclass(frozen=True)
class StudyPlan:
    """Everything a study needs, resolved and validated, before anything is created."""

    opts: StudyOptions
    storage_url: str
    space: Space
    config: Config
    recorded: Mapping[str, Any]  # the study's user attrs if it exists


def plan_study(
    opts: StudyOptions,
    *,
    space: Space | None,
    config: Config | None,
    overrides: Mapping[str, Any] | None = None,
    data: SplitsCache | None = None,
) -> StudyPlan:
    """Resolve space and config (given, else the study's recorded ones, else the defaults; ``overrides`` on
    top) and validate them, the data too when ``data`` is given; reads the storage if the study exists and
    creates nothing (no half-made study)."""
    storage_url = resolve_storage_url(opts.storage)
    _parse_url(storage_url)
    recorded: Mapping[str, Any] = {}
    if not _missing_sqlite_file(storage_url):
        recorded = _recorded_attrs(make_storage(storage_url, heartbeat=False), opts.name)
    opts = opts.resolved(recorded)
    if space is None:
        space = space_from_yaml(recorded["space"], source=f"study {opts.name}") if "space" in recorded else load_space(None)
    if config is None:
        config = Config.from_yaml(recorded["config"], source=f"study {opts.name}") if "config" in recorded else study_config_base()
    if overrides:
        config = config.with_overrides(overrides)
    if opts.objective == "val" and config.data.val_size <= 0:
        raise UserError("objective val needs data.val_size > 0 (a validation split); set it or use --objective test")
    space.check_against(config)
    make_sampler(opts.sampler, space, seed=opts.seed)
    make_pruner(opts.pruner, epochs=config.train.epochs)
    if data is not None:
        check_trainable(config, data.get(config))
    return StudyPlan(opts, storage_url, space, config, recorded)


def open_study(plan: StudyPlan) -> StudyContext:
    """Create (or load) the study, its MLflow experiment and parent run, and record space and config."""
    opts = plan.opts
    # fails here, before the study or the experiment exists, if MLflow is down; the storage next, so that a
    # storage that cannot be opened leaves no experiment behind (the experiment is created on first use)
    tracker = Tracker(opts.tracking_uri, opts.name, spool_dir=Path(opts.runs_dir) / opts.name / "spool")
    storage = make_storage(plan.storage_url, tracker_uri=tracker.uri, runs_dir=opts.runs_dir)
    try:
        study = optuna.create_study(
            study_name=opts.name,
            storage=storage,
            direction="maximize",
            load_if_exists=True,
            sampler=make_sampler(opts.sampler, plan.space, seed=opts.seed),
            pruner=make_pruner(opts.pruner, epochs=plan.config.train.epochs),
        )
    except (sqlalchemy.exc.SQLAlchemyError, ValueError) as err:
        raise UserError(f"cannot create study {opts.name!r} in {mask_url(plan.storage_url)}: {err}") from err
    attrs = study.user_attrs
    parent = tracker.parent_run(
        opts.name,
        run_id=attrs.get("mlflow_parent_run_id"),
        params={"storage": mask_url(plan.storage_url), "sampler": opts.sampler, "pruner": opts.pruner, "objective": opts.objective},
    )
    wanted = {
        "space": plan.space.to_yaml(),
        "config": plan.config.to_yaml(),
        "objective": opts.objective,
        "sampler": opts.sampler,
        "pruner": opts.pruner,
        "mlflow_parent_run_id": attrs.get("mlflow_parent_run_id", parent),
        "mlflow_experiment_id": tracker.experiment_id,
        "tracking_uri": mask_url(tracker.uri),
    }
    for key, value in wanted.items():
        if attrs.get(key) != value:
            study.set_user_attr(key, value)
    if attrs.get("space") != wanted["space"] or attrs.get("config") != wanted["config"]:
        tracker.log_artifact_text(parent, "space.yaml", wanted["space"])
        tracker.log_artifact_text(parent, "config.yaml", wanted["config"])
    tracker.flush()
    return StudyContext(study, plan.space, plan.config, tracker, parent, opts)


def _parse_url(url: str) -> sqlalchemy.engine.URL:
    try:
        return sqlalchemy.engine.make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError) as err:
        raise UserError(
            f"malformed storage URL {mask_url(url)!r}: expected e.g. sqlite:///sweeper.db or "
            "postgresql+psycopg2://user:pass@host:5432/db"
        ) from err


def _missing_sqlite_file(url: str) -> bool:
    if not is_sqlite(url):
        return False
    database = _parse_url(url).database
    return not database or database == ":memory:" or not Path(database).exists()


def _recorded_attrs(storage: RDBStorage, name: str) -> dict[str, Any]:
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        return {}
    return dict(storage.get_study_user_attrs(study_id))


class _TrialReporter(Callback):
    """Reports the objective each epoch so pruners can act; relays epochs to the observer."""

    def __init__(self, trial: optuna.Trial, objective: str, observer: StudyObserver) -> None:
        self.trial, self.objective, self.observer = trial, objective, observer

    def value(self, metrics: EpochMetrics) -> float:
        return metrics.val_accuracy if self.objective == "val" and metrics.val_accuracy is not None else metrics.test_accuracy

    def on_epoch(self, metrics: EpochMetrics) -> None:
        self.observer.on_epoch(self.trial.number, metrics)

    def should_stop(self, metrics: EpochMetrics) -> str | None:
        self.trial.report(self.value(metrics), metrics.epoch)
        return "pruned" if self.trial.should_prune() else None


class SplitsCache:
    """The last loaded data splits, reused while trials share the same data config."""

    def __init__(self) -> None:
        self._key: Any = None
        self._splits: Splits | None = None

    def get(self, config: Config) -> Splits:
        if self._splits is None or self._key != config.data:
            self._splits = load_splits(config.data)
            self._key = config.data
        return self._splits


@dataclass
class StudyRunner:
    """Runs trials of one study in this process; data and compiled models are reused across trials."""

    opts: StudyOptions
    ctx: StudyContext
    observer: StudyObserver = field(default_factory=StudyObserver)
    models: ModelCache = field(default_factory=ModelCache)
    data: SplitsCache = field(default_factory=SplitsCache)
    _open: dict[int, tuple[TrialRun, float]] = field(default_factory=dict)
    _failures: int = 0

    def splits(self, config: Config) -> Splits:
        return self.data.get(config)

    def objective(self, trial: optuna.Trial) -> float:
        ctx = self.ctx
        overrides = ctx.space.suggest(trial, ctx.config)
        out_dir = Path(self.opts.runs_dir) / self.opts.name / f"trial-{trial.number:04d}"
        config = ctx.config.with_overrides({**overrides, "train.out_dir": str(out_dir)})
        params = {**optim_params(config), **overrides}
        started = time.perf_counter()
        tracked = ctx.tracker.trial_run(ctx.parent_run_id, study=self.opts.name, number=trial.number, params=params)
        self._open[trial.number] = (tracked, started)
        trial.set_user_attr("mlflow_run_id", tracked.run_id)
        trial.set_user_attr("config", config.to_yaml())
        trial.set_user_attr("lr", config.optim.lr)
        self.observer.on_trial_start(trial.number, params)
        reporter = _TrialReporter(trial, self.opts.objective, self.observer)
        try:
            result = run(config, callbacks=[tracked, reporter], splits=self.splits(config), models=self.models)
        except KeyboardInterrupt:
            trial.set_user_attr("reason", "interrupted")
            raise
        except Exception as err:
            trial.set_user_attr("reason", f"{type(err).__name__}: {err}"[:500])
            log.exception("trial %d failed", trial.number)
            raise
        trial.set_user_attr("test_accuracy", result.test_accuracy)
        trial.set_user_attr("train_seconds", result.seconds)
        if result.status == "diverged":
            trial.set_user_attr("reason", "diverged")
            raise optuna.TrialPruned(result.reason)
        if result.status == "stopped":
            trial.set_user_attr("reason", result.reason or "pruned")
            raise optuna.TrialPruned(result.reason)
        value = reporter.value(result.history[-1])
        return value

    def after_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Optuna calls this after the trial's state is in the storage: now end its MLflow run."""
        tracked, started = self._open.get(trial.number, (None, time.perf_counter()))
        state = _tracking_state(trial)
        seconds = time.perf_counter() - started
        if tracked is not None:
            tracked.finish(state, reason=trial.user_attrs.get("reason"), trial_seconds=seconds)
            self._open.pop(trial.number, None)
        best = None
        try:
            best = study.best_value
        except ValueError:
            pass
        self.ctx.tracker.log_study_point(self.ctx.parent_run_id, number=trial.number, value=trial.value, best=best)
        self.observer.on_trial_end(trial, state, seconds)
        self._failures = self._failures + 1 if trial.state == TrialState.FAIL else 0
        if self._failures >= MAX_CONSECUTIVE_FAILURES:
            log.error("%d trials failed in a row; stopping the study", self._failures)
            study.stop()

    def run(self, *, n_trials: int | None, timeout: float | None) -> optuna.Study:
        study = self.ctx.study
        self.splits(self.ctx.config)  # fail on data problems before the first trial starts
        self.observer.on_study(study, space=self.ctx.space, config=self.ctx.config)
        try:
            study.optimize(
                self.objective,
                n_trials=n_trials,
                timeout=timeout,
                callbacks=[self.after_trial],
                catch=(Exception,),
                gc_after_trial=False,
            )
        except BaseException as err:
            self._end_open_runs(study, interrupted=isinstance(err, KeyboardInterrupt))
            raise
        if self._failures >= MAX_CONSECUTIVE_FAILURES:
            last = study.trials[-1].user_attrs.get("reason", "unknown error")
            raise UserError(f"{self._failures} trials failed in a row (last: {last}); see the log above")
        return study


    def _end_open_runs(self, study: optuna.Study, *, interrupted: bool) -> None:
        """On the way out of optimize (Ctrl-C, or an error Optuna did not catch): record each trial still open
        as failed in the storage first, then end its MLflow run (KILLED or FAILED), then flush the queue."""
        state = "interrupted" if interrupted else "failed"
        for number, (tracked, started) in list(self._open.items()):
            try:
                trial = study.trials[number] if number < len(study.trials) else None
                if trial is not None and trial.state == TrialState.RUNNING:
                    study._storage.set_trial_user_attr(trial._trial_id, "reason", state)
                    study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
            except Exception:  # noqa: BLE001 - the storage may be what failed; the heartbeat will catch it
                log.exception("could not record trial %d as %s", number, state)
            tracked.finish(state, reason=state, trial_seconds=time.perf_counter() - started)
            self._open.pop(number, None)
        self.ctx.tracker.flush()


def _tracking_state(trial: FrozenTrial) -> str:
    reason = trial.user_attrs.get("reason")
    if trial.state == TrialState.COMPLETE:
        return "complete"
    if trial.state == TrialState.PRUNED:
        return "diverged" if reason == "diverged" else "pruned"
    if reason == "interrupted":
        return "interrupted"
    return "failed"


def finish_study(ctx: StudyContext, *, out_dir: Path) -> dict[str, Path]:
    """Best params as tags and the study's plots on the parent run; returns the plots written."""
    from sweeper import study_plots

    study = ctx.study
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if not complete:
        ctx.tracker.flush()
        return {}
    best = study.best_trial
    ctx.tracker.set_tags(
        ctx.parent_run_id,
        {
            "best.trial_number": best.number,
            "best.value": f"{best.value:.6g}",
            **{f"best.{k}": (f"{v:.6g}" if isinstance(v, float) else v) for k, v in best.params.items()},
            "best.lr": f"{best.user_attrs.get('lr', float('nan')):.6g}",
        },
    )
    written = study_plots.write_study_plots(study, out_dir)
    for path in written.values():
        ctx.tracker.log_artifact(ctx.parent_run_id, path, "study_plots")
    ctx.tracker.flush()
    return written


# -- inspection ---------------------------------------------------------------------------------------------


def list_studies(storage_url: str | None) -> list[dict[str, Any]]:
    storage = make_storage(storage_url, heartbeat=False)
    out = []
    for s in optuna.get_all_study_summaries(storage, include_best_trial=True):
        best = s.best_trial
        out.append(
            {
                "name": s.study_name,
                "trials": s.n_trials,
                "best_value": best.value if best else None,
                "best_trial": best.number if best else None,
                "started": s.datetime_start.isoformat() if s.datetime_start else None,
            }
        )
    return out


def load_study(storage_url: str | None, name: str) -> optuna.Study:
    storage = make_storage(storage_url, heartbeat=False)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError as err:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise UserError(f"no study {name!r} in {mask_url(resolve_storage_url(storage_url))} (studies: {', '.join(names) or 'none'})") from err


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    rows = []
    for t in study.trials:
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
        last_epoch = max(t.intermediate_values, default=None)
        running_value = t.intermediate_values[last_epoch] if last_epoch is not None else None
        rows.append(
            {
                "number": t.number,
                "state": _tracking_state(t) if t.state.is_finished() else t.state.name.lower(),
                "value": t.value if t.state.is_finished() else running_value,
                "epoch": last_epoch,
                "params": t.params,
                "lr": t.user_attrs.get("lr"),
                "test_accuracy": t.user_attrs.get("test_accuracy"),
                "seconds": seconds,
                "mlflow_run_id": t.user_attrs.get("mlflow_run_id"),
            }
        )
    return rows


def best_trial(study: optuna.Study, number: int | None = None) -> FrozenTrial:
    if number is not None:
        matches = [t for t in study.trials if t.number == number]
        if not matches:
            raise UserError(f"study {study.study_name!r} has no trial {number}")
        trial = matches[0]
        if "config" not in trial.user_attrs:
            raise UserError(f"trial {number} of {study.study_name!r} has no recorded config")
        return trial
    try:
        return study.best_trial
    except ValueError as err:
        raise UserError(f"study {study.study_name!r} has no complete trial yet") from err
