"""A study's life outside its trials: options, plan (validate everything first), open, hold, finish.

``plan_study`` resolves and validates the space, config, sampler, pruner, objective and data without creating
anything; ``open_study`` then creates (or loads) the Optuna study, its MLflow experiment and parent run, and
records what workers need to run the same study. Trials are run by ``sweeper.trials``; studies are read back by
``sweeper.queries``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.trial import TrialState

from pipelines.config import Config
from pipelines.data import Splits, SplitsCache
from pipelines.errors import UserError, one_line
from pipelines.lr_finder import lr_range_test
from pipelines.reuse import RunCache
from pipelines.train import check_data
from sweeper import records, study_plots
from sweeper.objective import Objective
from sweeper.outcome import Outcome
from sweeper.queries import pareto_rows
from sweeper.samplers import MULTI_OBJECTIVE_UNSUPPORTED, make_pruner, make_sampler
from sweeper.space import Space, load_space
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
            sampler=self.sampler or recorded.get(records.SAMPLER, "tpe"),
            pruner=self.pruner or recorded.get(records.PRUNER, "median"),
            objective=self.objective or recorded.get(records.OBJECTIVE, Objective.val.value),
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
    storage_url = _checked_storage_url(opts.storage)
    recorded = _recorded_attrs(storage_url, opts.name)
    opts = opts.resolved(recorded)
    space = space or records.study_space(recorded, name=opts.name) or load_space(None)
    config = config or records.study_config(recorded, name=opts.name) or study_config_base()
    if overrides:
        config = config.with_overrides(overrides)
    opts = _checked_objective(opts, recorded, config)
    if keep_recorded and recorded:
        _refuse_changes(opts, space, config, recorded)
    _check_values(space, config, data)
    sampler = make_sampler(opts.sampler, space, seed=opts.seed)
    pruner = make_pruner(opts.pruner, epochs=config.train.epochs)
    return StudyPlan(opts, storage_url, space, config, sampler, pruner)


def _checked_storage_url(storage: str | None) -> str:
    url = resolve_storage_url(storage)
    parse_storage_url(url)
    check_creatable(url)  # a SQLite file in a folder that is not there: say so before MLflow makes its own
    return url


def _recorded_attrs(storage_url: str, name: str) -> dict[str, Any]:
    """What study ``name`` recorded (its user attributes); empty for a study (or a SQLite file) not made yet."""
    if missing_sqlite_file(storage_url):
        return {}
    storage = make_storage(storage_url, heartbeat=False)
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        return {}
    return dict(storage.get_study_user_attrs(study_id))


def _checked_objective(opts: StudyOptions, recorded: Mapping[str, Any], config: Config) -> StudyOptions:
    """``opts`` with an objective that exists, is the one the study recorded, fits the sampler and the data
    split; pruning off for two objectives."""
    try:
        objective = Objective(opts.objective)
    except ValueError as err:
        choices = ", ".join(o.value for o in Objective)
        raise UserError(f"unknown objective {opts.objective!r}: use one of {choices}") from err
    recorded_objective = recorded.get(records.OBJECTIVE)
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
    return opts


def _check_values(space: Space, config: Config, data: SplitsCache | None) -> None:
    """Every value the space can draw must make a valid config, and, with ``data``, one trainable on that data (as
    `train` checks a config: augmentation ops, batch sizes ...)."""
    if data is None:
        space.check_against(config)
        return

    def trainable(candidate: Config) -> None:
        check_data(candidate, data.get(candidate.data))

    trainable(config)
    space.check_against(config, check=trainable)


MACHINE_KEYS = ("data.cache_dir",)  # settings of the machine, not of the experiment: free to differ


def _refuse_changes(opts: StudyOptions, space: Space, config: Config, recorded: Mapping[str, Any]) -> None:
    changes = [
        f"{key} {recorded[key]} -> {new}"
        for key, new in (
            (records.SAMPLER, opts.sampler), (records.PRUNER, opts.pruner), (records.OBJECTIVE, opts.objective)
        )
        if key in recorded and recorded[key] != new
    ]  # fmt: skip
    if records.SPACE in recorded and recorded[records.SPACE] != space.to_yaml():
        changes.append("the space")
    before = records.study_config(recorded, name=opts.name)
    if before is not None:
        old, new = _flat(before.to_dict()), _flat(config.to_dict())
        changes += [f"{k} {old.get(k)} -> {new.get(k)}" for k in sorted(new) if old.get(k) != new.get(k)
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
        run_id=attrs.get(records.PARENT_RUN_ID),
        params={
            "storage": mask_url(plan.storage_url),
            "sampler": opts.sampler,
            "pruner": opts.pruner,
            "objective": opts.objective,
        },
    )
    wanted = {
        records.SPACE: plan.space.to_yaml(),
        records.STUDY_CONFIG: plan.config.to_yaml(),
        records.OBJECTIVE: opts.objective,
        records.SAMPLER: opts.sampler,
        records.PRUNER: opts.pruner,
        records.PARENT_RUN_ID: attrs.get(records.PARENT_RUN_ID, parent),
        records.EXPERIMENT_ID: tracker.experiment_id,
        records.TRACKING_URI: mask_url(tracker.uri),
    }
    for key, value in wanted.items():
        if attrs.get(key) != value:
            study.set_user_attr(key, value)
    names = Objective(opts.objective).names
    if study.metric_names != names:  # optuna-dashboard shows these instead of "Objective 0"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # marked experimental
            study.set_metric_names(names)
    if any(attrs.get(key) != wanted[key] for key in (records.SPACE, records.STUDY_CONFIG)):
        tracker.log_artifact_text(parent, "space.yaml", wanted[records.SPACE])
        tracker.log_artifact_text(parent, "config.yaml", wanted[records.STUDY_CONFIG])
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


def enqueue_lr_finder(ctx: StudyContext, splits: Splits, *, cache: RunCache | None = None) -> float:
    """Run the LR range test on the study's config (on the trials' ``cache``: its model compiled once for both)
    and enqueue a trial at its suggested LR (the config's momentum and weight decay); returns that LR (the one to
    train with, at the config's batch size)."""
    found = lr_range_test(ctx.config, splits=splits, cache=cache)
    # the range test finds the LR to train with; the space's LR is the one at the reference batch size
    params = ctx.space.lr_finder_point(found.max_lr / ctx.config.lr_scale, ctx.config)
    ctx.study.enqueue_trial(params, user_attrs={records.SOURCE: records.SOURCE_LR_FINDER}, skip_if_exists=True)
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
        ctx.tracker.set_tags(ctx.parent_run_id, {records.PARETO_TAG: ",".join(str(r["number"]) for r in front)})
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "pareto.json").write_text(json.dumps({"objectives": ctx.objective.keys, "pareto": front}, indent=2))
        ctx.tracker.log_artifact(ctx.parent_run_id, out_dir / "pareto.json")
    else:
        best = study.best_trial
        shown = {
            "trial_number": best.number,
            "value": best.value,
            **best.params,
            "lr": best.user_attrs.get(records.LR, float("nan")),
        }
        tags = {records.BEST_PREFIX + k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in shown.items()}
        ctx.tracker.set_tags(ctx.parent_run_id, tags)
    written = study_plots.write_study_plots(study, out_dir, objective=ctx.objective)
    for path in written.values():
        ctx.tracker.log_artifact(ctx.parent_run_id, path, "study_plots")
    ctx.tracker.flush()
    return written
