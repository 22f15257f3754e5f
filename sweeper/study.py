"""A study's life outside its trials: options, plan (validate everything first), open, finish, and queries.

``plan_study`` resolves and validates the space, config, sampler, pruner, objective and data without creating
anything; ``open_study`` then creates (or loads) the Optuna study, its MLflow experiment and parent run, and
records what workers need to run the same study. Trials are run by ``sweeper.trials``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState

from pipelines.config import Config
from pipelines.data import Splits, SplitsCache
from pipelines.errors import UserError, one_line
from pipelines.lr_finder import lr_range_test
from pipelines.train import check_trainable
from sweeper import outcome, study_plots
from sweeper.objective import Objective
from sweeper.outcome import Outcome
from sweeper.samplers import MULTI_OBJECTIVE_UNSUPPORTED, make_pruner, make_sampler
from sweeper.space import Space, load_space, space_from_yaml
from sweeper.storage import (
    check_creatable,
    make_storage,
    missing_sqlite_file,
    parse_storage_url,
    resolve_storage_url,
)
from sweeper.tracking import Tracker
from sweeper.urls import mask_url

STUDY_VAL_SIZE = 5000  # images held out of train for the objective (CIFAR-10: 45k train / 5k val)


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

    def resolved(self, recorded: Mapping[str, Any]) -> StudyOptions:
        """Unset choices from the study's record (so workers follow `study init`), else the defaults."""
        return dataclasses.replace(
            self,
            sampler=self.sampler or recorded.get("sampler", "tpe"),
            pruner=self.pruner or recorded.get("pruner", "median"),
            objective=self.objective or recorded.get("objective", Objective.val.value),
        )


@dataclass(frozen=True)
class StudyPlan:
    """Everything a study needs, resolved and validated, before anything is created."""

    opts: StudyOptions  # with sampler, pruner and objective resolved
    storage_url: str
    space: Space
    config: Config
    sampler: optuna.samplers.BaseSampler
    pruner: optuna.pruners.BasePruner


@dataclass
class StudyContext:
    """An open study: what `study init` recorded in it, so that workers on other machines run the same study."""

    study: optuna.Study
    space: Space
    config: Config
    tracker: Tracker
    parent_run_id: str
    opts: StudyOptions  # with sampler, pruner and objective resolved

    @property
    def objective(self) -> Objective:
        return Objective(self.opts.objective)


def study_config_base() -> Config:
    """The recipe with a class-balanced validation split for the objective."""
    return Config().with_overrides({"data.val_size": STUDY_VAL_SIZE})


def plan_study(
    opts: StudyOptions,
    *,
    space: Space | None,
    config: Config | None,
    overrides: Mapping[str, Any] | None = None,
    data: SplitsCache | None = None,
    keep_recorded: bool = False,
) -> StudyPlan:
    """Resolve space and config (given, else the study's recorded ones, else the defaults; ``overrides`` on
    top) and validate them, the data too when ``data`` is given; reads the storage if the study exists and
    creates nothing (no half-made study). ``keep_recorded``: an existing study's recorded space, config, sampler,
    pruner and objective must not change (UserError naming what would)."""
    storage_url = resolve_storage_url(opts.storage)
    parse_storage_url(storage_url)
    check_creatable(storage_url)  # a SQLite file in a folder that is not there: say so before MLflow makes its own
    recorded: Mapping[str, Any] = {}
    if not missing_sqlite_file(storage_url):
        recorded = _recorded_attrs(make_storage(storage_url, heartbeat=False), opts.name)
    opts = opts.resolved(recorded)
    source = f"study {opts.name}"
    if space is None:
        space = space_from_yaml(recorded["space"], source=source) if "space" in recorded else load_space(None)
    if config is None:
        config = Config.from_yaml(recorded["config"], source=source) if "config" in recorded else study_config_base()
    if overrides:
        config = config.with_overrides(overrides)
    try:
        objective = Objective(opts.objective)
    except ValueError as err:
        choices = ", ".join(o.value for o in Objective)
        raise UserError(f"unknown objective {opts.objective!r}: use one of {choices}") from err
    recorded_objective = recorded.get("objective")
    if recorded_objective and recorded_objective != objective.value:
        raise UserError(
            f"study {opts.name!r} optimizes {recorded_objective}: a study's objectives cannot change to "
            f"{objective.value} (its trials would mix the two); start another study"
        )
    if objective.multi and opts.pruner != "none":
        opts = dataclasses.replace(opts, pruner="none")  # Optuna prunes single-objective studies only
    if objective.multi and opts.sampler in MULTI_OBJECTIVE_UNSUPPORTED:
        raise UserError(
            f"--sampler {opts.sampler} cannot optimize two objectives ({objective.value}); "
            "use tpe (the default), random, gp or grid"
        )
    if objective.split == "val" and config.data.val_size <= 0:
        raise UserError("objective val needs data.val_size > 0 (a validation split); set it or use --objective test")
    if keep_recorded and recorded:
        _refuse_changes(opts, space, config, recorded)
    if data is not None:  # as `train` checks a config, every value the space can draw (ops, batch sizes ...)
        check_trainable(config, data.get(config.data))
        space.check_against(config, check=_trainable_with(data))
    else:
        space.check_against(config)
    sampler = make_sampler(opts.sampler, space, seed=opts.seed)
    pruner = make_pruner(opts.pruner, epochs=config.train.epochs)
    return StudyPlan(opts, storage_url, space, config, sampler, pruner)


def _trainable_with(data: SplitsCache) -> Callable[[Config], None]:
    def check(config: Config) -> None:
        check_trainable(config, data.get(config.data))

    return check


MACHINE_KEYS = ("data.cache_dir",)  # settings of the machine, not of the experiment: free to differ


def _refuse_changes(opts: StudyOptions, space: Space, config: Config, recorded: Mapping[str, Any]) -> None:
    changes = [
        f"{key} {recorded[key]} -> {new}"
        for key, new in (("sampler", opts.sampler), ("pruner", opts.pruner), ("objective", opts.objective))
        if key in recorded and recorded[key] != new
    ]
    if "space" in recorded and recorded["space"] != space.to_yaml():
        changes.append("the space")
    if "config" in recorded:
        before = _flat(Config.from_yaml(recorded["config"], source=f"study {opts.name}").to_dict())
        after = _flat(config.to_dict())
        changes += [f"{k} {before.get(k)} -> {after.get(k)}" for k in sorted(after) if before.get(k) != after.get(k)
                    and k not in MACHINE_KEYS]  # fmt: skip
    if changes:
        shown = ", ".join(changes[:4]) + (f" and {len(changes) - 4} more" if len(changes) > 4 else "")
        raise UserError(f"study {opts.name!r} exists with other settings ({shown}); pass --force to record these")


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


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
            directions=Objective(opts.objective).directions,
            load_if_exists=True,
            sampler=plan.sampler,
            pruner=plan.pruner,
        )
    except (sqlalchemy.exc.SQLAlchemyError, ValueError) as err:
        raise UserError(f"cannot create study {opts.name!r} in {mask_url(plan.storage_url)}: {one_line(err)}") from err
    attrs = study.user_attrs
    parent = tracker.parent_run(
        opts.name,
        run_id=attrs.get("mlflow_parent_run_id"),
        params={
            "storage": mask_url(plan.storage_url),
            "sampler": opts.sampler,
            "pruner": opts.pruner,
            "objective": opts.objective,
        },
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
    names = Objective(opts.objective).names
    if study.metric_names != names:  # optuna-dashboard shows these instead of "Objective 0"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # marked experimental
            study.set_metric_names(names)
    if attrs.get("space") != wanted["space"] or attrs.get("config") != wanted["config"]:
        tracker.log_artifact_text(parent, "space.yaml", wanted["space"])
        tracker.log_artifact_text(parent, "config.yaml", wanted["config"])
    tracker.flush()
    return StudyContext(study, plan.space, plan.config, tracker, parent, opts)


def close_study(ctx: StudyContext, ended: Outcome) -> None:
    """End the study's parent run as this process leaves it (FINISHED, KILLED or FAILED); the next process that
    opens the study marks it RUNNING again. With several workers, the last one to leave has the final word."""
    ctx.tracker.end_run(ctx.parent_run_id, ended)


@contextlib.contextmanager
def holding(ctx: StudyContext) -> Iterator[StudyContext]:
    """The study open for this block; its parent run ended as the block ends: complete, interrupted or failed."""
    ctx.tracker.reopen(ctx.parent_run_id)  # the last process to leave the study ended it
    ended = Outcome.FAILED
    try:
        yield ctx
        ended = Outcome.COMPLETE
    except KeyboardInterrupt:
        ended = Outcome.INTERRUPTED
        raise
    finally:
        close_study(ctx, ended)


def enqueue_lr_finder(ctx: StudyContext, splits: Splits) -> float:
    """Run the LR range test on the study's config and enqueue a trial at its suggested LR (the config's
    momentum and weight decay); returns that LR (the one to train with, at the config's batch size)."""
    found = lr_range_test(ctx.config, splits=splits)
    # the range test finds the LR to train with; the space's LR is the one at the reference batch size
    params = ctx.space.lr_finder_point(found.max_lr / ctx.config.lr_scale, ctx.config)
    ctx.study.enqueue_trial(params, user_attrs={"source": "lr_finder"}, skip_if_exists=True)
    return found.max_lr


def finish_study(ctx: StudyContext, *, out_dir: Path) -> dict[str, Path]:
    """The best trial (or, for a multi-objective study, the Pareto front: tags and pareto.json) and the study's
    plots on the parent run; returns the files written."""
    study = ctx.study
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if not complete:
        ctx.tracker.flush()
        return {}
    if ctx.objective.multi:
        front = pareto_rows(study, ctx.objective)
        ctx.tracker.set_tags(ctx.parent_run_id, {"pareto.trials": ",".join(str(r["number"]) for r in front)})
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "pareto.json").write_text(json.dumps({"objectives": ctx.objective.keys, "pareto": front}, indent=2))
        ctx.tracker.log_artifact(ctx.parent_run_id, out_dir / "pareto.json")
    else:
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
    written = study_plots.write_study_plots(study, out_dir, objective=ctx.objective)
    for path in written.values():
        ctx.tracker.log_artifact(ctx.parent_run_id, path, "study_plots")
    ctx.tracker.flush()
    return written


def pareto_rows(study: optuna.Study, objective: Objective) -> list[dict[str, Any]]:
    """A multi-objective study's Pareto front (Optuna's best_trials), by increasing cost (see pareto_row)."""
    return [pareto_row(t, objective, study.user_attrs) for t in sorted(study.best_trials, key=_cost)]


def pareto_row(trial: FrozenTrial, objective: Objective, study_attrs: Mapping[str, Any]) -> dict[str, Any]:
    """A trial of a multi-objective study as `study best --json` and pareto.json show it: number, values by
    key (e.g. val, train_seconds), params, epochs, lr, MLflow run id."""
    config = (
        Config.from_yaml(trial.user_attrs["config"], source=f"trial {trial.number}")
        if "config" in trial.user_attrs
        else None
    )
    return {
        "number": trial.number,
        "values": dict(zip(objective.keys, trial.values, strict=True)),
        "params": trial.params,
        "epochs": config.train.epochs if config else None,
        "lr": trial.user_attrs.get("lr"),
        "mlflow_run_id": outcome.run_id(trial, study_attrs),
    }


def cheapest_reaching(study: optuna.Study, objective: Objective, accuracy: float) -> FrozenTrial:
    """The complete trial of least cost whose accuracy is at least ``accuracy`` (ties: the more accurate)."""
    if not 0 <= accuracy <= 1:  # NaN fails this too
        hint = f"; for {accuracy:g} % write {accuracy / 100:g}" if 1 < accuracy <= 100 else ""
        raise UserError(f"--min-accuracy must be a fraction between 0 and 1, got {accuracy:g}{hint}")
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    reaching = [t for t in complete if t.values[0] >= accuracy]
    if not reaching:
        best = max((t.values[0] for t in complete), default=None)
        seen = f"the best reached {best:.4g}" if best is not None else "no trial is complete"
        raise UserError(f"no trial of {study.study_name!r} reaches {objective.split} accuracy {accuracy:g} ({seen})")
    return min(reaching, key=_cost_then_accuracy)


def _cost(trial: FrozenTrial) -> float:
    return trial.values[1]


def _cost_then_accuracy(trial: FrozenTrial) -> tuple[float, float]:
    return trial.values[1], -trial.values[0]


# -- queries --------------------------------------------------------------------------------------------------


def _recorded_attrs(storage: optuna.storages.BaseStorage, name: str) -> dict[str, Any]:
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        return {}
    return dict(storage.get_study_user_attrs(study_id))


def list_studies(storage_url: str | None) -> list[dict[str, Any]]:
    """Name, trials, best value and trial, start time of each study; none for a SQLite file not made yet."""
    if missing_sqlite_file(resolve_storage_url(storage_url)):
        return []  # reading must not create the file
    storage = make_storage(storage_url, heartbeat=False)
    out = []
    for s in optuna.get_all_study_summaries(storage, include_best_trial=True):
        multi = len(s.directions) > 1
        best = None if multi else s.best_trial
        row = {
            "name": s.study_name,
            "trials": s.n_trials,
            "best_value": best.value if best else None,
            "best_trial": best.number if best else None,
            "started": s.datetime_start.isoformat() if s.datetime_start else None,
        }
        if multi:  # no single best: the size of the Pareto front instead
            row["pareto_trials"] = len(optuna.load_study(study_name=s.study_name, storage=storage).best_trials)
        out.append(row)
    return out


def load_study(storage_url: str | None, name: str) -> optuna.Study:
    url = resolve_storage_url(storage_url)
    if missing_sqlite_file(url):  # reading must not create the file
        raise UserError(f"no study {name!r}: {mask_url(url)} does not exist yet (run `sweeper study run` first)")
    storage = make_storage(storage_url, heartbeat=False)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError as err:
        names = ", ".join(s.study_name for s in optuna.get_all_study_summaries(storage)) or "none"
        where = mask_url(resolve_storage_url(storage_url))
        raise UserError(f"no study {name!r} in {where} (studies: {names})") from err


def record_synced_run_ids(storage_url: str | None, name: str, run_ids: Mapping[str, str]) -> None:
    """Remember which real MLflow run each pending id became (see ``outcome.run_id``)."""
    study = load_study(storage_url, name)
    known = dict(study.user_attrs.get(outcome.SYNCED_RUN_IDS, {}))
    study.set_user_attr(outcome.SYNCED_RUN_IDS, {**known, **run_ids})


def study_space(study: optuna.Study) -> Space:
    """The space the study recorded (the default space for a study made without sweeper)."""
    text = study.user_attrs.get("space")
    return space_from_yaml(text, source=f"study {study.study_name}") if text else load_space(None)


def study_objective(study: optuna.Study) -> str:
    """The objective the study recorded (val for a study made without sweeper)."""
    return str(study.user_attrs.get("objective", Objective.val.value))


def is_multi_objective(study: optuna.Study) -> bool:
    return len(study.directions) > 1


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One dict per trial: number, state, value (the last reported while it runs), epoch, params, lr, test
    accuracy, seconds and MLflow run id."""
    rows = []
    attrs = study.user_attrs
    multi = is_multi_objective(study)
    front = {t.number for t in study.best_trials} if multi else set()
    for t in study.trials:
        seconds = None
        if t.datetime_complete and t.datetime_start:
            seconds = (t.datetime_complete - t.datetime_start).total_seconds()
        last_epoch = max(t.intermediate_values, default=None)
        running_value = t.intermediate_values[last_epoch] if last_epoch is not None else None
        rows.append(
            {
                "number": t.number,
                "state": outcome.state_label(t),
                "value": (t.values[0] if t.values else None) if t.state.is_finished() else running_value,
                **({"values": t.values, "pareto": t.number in front} if multi else {}),
                "epoch": last_epoch,
                "params": t.params,
                "lr": t.user_attrs.get("lr"),
                "test_accuracy": t.user_attrs.get("test_accuracy"),
                "seconds": seconds,
                "mlflow_run_id": outcome.run_id(t, attrs),
            }
        )
    return rows


def best_trial(study: optuna.Study, number: int | None = None) -> FrozenTrial:
    """Trial ``number`` of the study (it must have a recorded config), else the best complete one."""
    if number is not None:
        matches = [t for t in study.trials if t.number == number]
        if not matches:
            raise UserError(f"study {study.study_name!r} has no trial {number}")
        trial = matches[0]
        if "config" not in trial.user_attrs:
            raise UserError(f"trial {number} of {study.study_name!r} has no recorded config")
        return trial
    if is_multi_objective(study):
        raise UserError(
            f"study {study.study_name!r} has two objectives: no single best trial; pick one from its Pareto front "
            f"(`sweeper study best {study.study_name} [--min-accuracy A]`) and pass --trial N"
        )
    try:
        return study.best_trial
    except ValueError as err:
        raise UserError(f"study {study.study_name!r} has no complete trial yet") from err
