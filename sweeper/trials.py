"""Trials of an open study, run in this process: each one a training run reported to Optuna and MLflow.

Order of record (nothing lost): the objective returns, Optuna writes the trial's state and value to its storage,
then our after-trial callback ends the trial's MLflow run. A trial whose worker dies is failed and retried by
the storage's heartbeat (``sweeper.storage``); its MLflow run is ended as FAILED by whichever worker notices.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState

from pipelines.callbacks import Callback, EpochMetrics
from pipelines.config import Config
from pipelines.data import Splits, SplitsCache
from pipelines.errors import UserError, chain, one_line, out_of_space
from pipelines.result import Result
from pipelines.reuse import RunCache
from pipelines.train import run
from sweeper import interrupts, outcome, pruning, records
from sweeper.connections import WORKER_ENV
from sweeper.interrupts import InterruptCheck
from sweeper.objective import Objective, objective_value, objective_values
from sweeper.outcome import Outcome
from sweeper.space import Space, run_params
from sweeper.storage import StorageUnavailable
from sweeper.study import StudyContext
from sweeper.tracking import TrialRun

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_FAILURES = 3  # then the study stops: something is systematically wrong


class StudyObserver:
    """What a live view hears about; all no-ops by default."""

    def on_study(self, study: optuna.Study, *, space: Space, objective: Objective) -> None: ...

    def on_trial(self, trial: FrozenTrial, *, front: set[int] | None = None) -> None:
        """``trial``, as the storage holds it now, started, finished an epoch or ended; at its end, ``front``: the
        numbers of a multi-objective study's Pareto front (else empty), None before."""


class TrialReporter(Callback):
    """Records the trial's epochs (``records.EpochRecorder``: the objective, so pruners can act, and the epoch's
    metrics), tells the observer, and asks the pruner whether to stop (not after the last epoch: the trial is
    complete then): Optuna's ``should_prune``, or, in a multi-objective study, which Optuna refuses to prune, the
    study's own rule (``sweeper.pruning``) on the trial as the storage holds it."""

    def __init__(self, trial: optuna.Trial, objective: Objective, observer: StudyObserver, *, epochs: int) -> None:
        self.trial, self.objective, self.observer, self.epochs = trial, objective, observer, epochs
        self.recorder = records.EpochRecorder(trial, objective)
        self._read: tuple[int, FrozenTrial] | None = None  # the trial as read after recording an epoch

    def on_epoch(self, metrics: EpochMetrics) -> None:
        self.recorder.record(metrics, objective_value(self.objective, metrics))
        self._read = (metrics.epoch, _frozen(self.trial))
        self.observer.on_trial(self._read[1])

    def should_stop(self, metrics: EpochMetrics) -> str | None:
        value = objective_value(self.objective, metrics)
        if value is None or metrics.epoch >= self.epochs:  # None: not evaluated this epoch
            return None
        if self.objective.multi:  # the reason names the epoch and the median it missed
            read = self._read  # the epoch's record, read once for the observer: nothing is written in between
            frozen = read[1] if read is not None and read[0] == metrics.epoch else _frozen(self.trial)
            return pruning.stop_reason(self.trial.study, frozen)
        return Outcome.PRUNED.value if self.trial.should_prune() else None


def _frozen(trial: optuna.Trial) -> FrozenTrial:
    """The running ``trial`` as the storage holds it now (Optuna's public way: its study's running trials)."""
    running = trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return next(t for t in running if t.number == trial.number)


# The trials a shared budget counts (`study run --workers N --n-trials M`): those run or running; a waiting one
# (a dead worker's trial to retry, an enqueued one) counts once a worker takes it
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)


def trial_count(study: optuna.Study) -> int:
    """The trials of ``study`` a budget of trials counts (:data:`COUNTED`)."""
    return len(study.get_trials(deepcopy=False, states=COUNTED))


def trial_config(config: Config, objective: Objective) -> Config:
    """What a trial trains: ``config`` with the test set evaluated once, at the end, when the objective (and the
    pruner) read the validation split and train.test_every is unset: no decision reads the test set before."""
    if objective.split == "val" and config.train.test_every is None:
        return config.with_overrides({"train.test_every": config.train.epochs})
    return config


def trial_values(trial: optuna.Trial, result: Result, objective: Objective) -> float | list[float]:
    """Record what ``trial``'s run produced (test accuracy, training seconds: a pruned trial's partial cost) and
    return its objective values; raise ``optuna.TrialPruned`` with the reason recorded for a run that diverged or
    was stopped by the pruner."""
    trial.set_user_attr(records.TEST_ACCURACY, result.test_accuracy)
    trial.set_user_attr(records.TRAIN_SECONDS, result.seconds)
    ended = outcome.of_result(result)
    if ended is Outcome.DIVERGED:
        trial.set_user_attr(records.REASON, Outcome.DIVERGED.value)
        raise optuna.TrialPruned(result.reason)
    if ended is Outcome.PRUNED:
        trial.set_user_attr(records.REASON, result.reason or Outcome.PRUNED.value)
        raise optuna.TrialPruned(result.reason)
    return objective_values(objective, result)


@dataclass
class _Open:
    """A trial this process started and whose MLflow run is not ended yet."""

    trial: optuna.Trial
    tracked: TrialRun


@dataclass
class TrialRunner:
    """Runs trials of one open study in this process; data and compiled models are reused across trials."""

    ctx: StudyContext
    observer: StudyObserver = field(default_factory=StudyObserver)
    cache: RunCache = field(default_factory=lambda: RunCache(compile_on_cuda=True))
    data: SplitsCache = field(default_factory=SplitsCache)
    _open: dict[int, _Open] = field(default_factory=dict)
    _failures: int = 0
    _fatal: UserError | None = None  # what stops the study after the running trial (a full disk)

    def splits(self, config: Config) -> Splits:
        return self.data.get(config.data)

    def objective(self, trial: optuna.Trial) -> float | list[float]:
        ctx = self.ctx
        out_dir = Path(ctx.opts.runs_dir) / ctx.opts.name / f"trial-{trial.number:04d}"
        try:
            overrides = ctx.space.suggest(trial, ctx.config)
            config = trial_config(
                ctx.config.with_overrides({**overrides, "train.out_dir": str(out_dir)}), ctx.objective
            )
        except UserError as err:  # a combination of drawn values the config rejects: this trial fails, alone
            trial.set_user_attr(records.REASON, one_line(err, limit=500))
            log.warning("trial %d draws an invalid config: %s", trial.number, err)
            raise
        params = {**run_params(config), **overrides}
        tracked = ctx.tracker.trial_run(ctx.parent_run_id, study=ctx.opts.name, number=trial.number, params=params)
        self._open[trial.number] = _Open(trial, tracked)
        trial.set_user_attr(records.RUN_ID, tracked.run_id)
        trial.set_user_attr(records.CONFIG, config.to_yaml())
        trial.set_user_attr(records.LR, config.effective_lr)
        if os.environ.get(WORKER_ENV):  # one of `study run --workers N`'s processes: say which
            trial.set_user_attr(records.WORKER, int(os.environ[WORKER_ENV]))
        self.observer.on_trial(_frozen(trial))
        reporter = TrialReporter(trial, ctx.objective, self.observer, epochs=config.train.epochs)
        try:
            callbacks = [tracked, reporter, InterruptCheck()]
            with interrupts.allowed():  # training may be cut anywhere; Optuna's calls around it may not
                result = run(config, callbacks=callbacks, splits=self.splits(config), cache=self.cache)
        except KeyboardInterrupt:
            trial.set_user_attr(records.REASON, Outcome.INTERRUPTED.value)
            raise
        except UserError as err:  # e.g. a drawn batch size larger than the data: one line, no traceback
            trial.set_user_attr(records.REASON, one_line(err, limit=500))
            log.warning("trial %d failed: %s", trial.number, err)
            self._stop_if_out_of_space(err)
            raise
        except Exception as err:
            trial.set_user_attr(records.REASON, one_line(err, with_type=True, limit=500))
            self._stop_if_out_of_space(err)
            if self._fatal is None:
                log.exception("trial %d failed", trial.number)
            raise
        tracked.log_compile(result.compile_seconds)  # the worker's first trial on CUDA
        return trial_values(trial, result, ctx.objective)

    def _stop_if_out_of_space(self, err: BaseException) -> None:
        """A full disk fails every trial after this one too: the study stops once this trial is recorded."""
        full = out_of_space(err)
        if full is not None and self._fatal is None:
            self._fatal = UserError(full)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Optuna calls this after the trial's state is in the storage: now end its MLflow run."""
        ended = records.of_trial(trial) or Outcome.FAILED
        entry = self._open.get(trial.number)
        if entry is not None:
            entry.tracked.finish(
                ended, reason=trial.user_attrs.get(records.REASON), trial_seconds=records.trial_seconds(trial)
            )
            self._open.pop(trial.number)  # only now: an interrupt during finish leaves it for _end_open_trials
        values = trial.values or []
        best, front = None, records.front_numbers(study)
        if not self.ctx.objective.multi:
            with contextlib.suppress(ValueError):  # no complete trial yet
                best = study.best_value
        self.ctx.tracker.log_study_point(
            self.ctx.parent_run_id, number=trial.number, value=values[0] if values else None, best=best,
            cost=values[1] if len(values) > 1 else None,
        )  # fmt: skip
        self.observer.on_trial(trial, front=front)
        self._failures = self._failures + 1 if trial.state == TrialState.FAIL else 0
        if self._fatal is not None:
            study.stop()
        elif self._failures >= MAX_CONSECUTIVE_FAILURES:
            log.error("%d trials failed in a row; stopping the study", self._failures)
            study.stop()
        interrupts.check()  # a Ctrl-C that came during Optuna's calls (or that Python dropped) stops the study here

    def run(self, *, n_trials: int | None, timeout: float | None, until: int | None = None) -> optuna.Study:
        """Run up to ``n_trials`` trials (None: until ``timeout`` or a stop), and none once the study holds
        ``until`` trials, whoever ran them (the share of workers that run one budget together)."""
        study = self.ctx.study
        self.splits(self.ctx.config)  # fail on data problems before the first trial starts
        self.observer.on_study(study, space=self.ctx.space, objective=self.ctx.objective)
        callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] = [self.after_trial]
        if until is not None:
            if trial_count(study) >= until:  # the others ran the whole budget already
                return study
            callbacks.append(MaxTrialsCallback(until, states=COUNTED))
        try:
            with interrupts.deferred():
                study.optimize(
                    self.objective,
                    n_trials=n_trials,
                    timeout=timeout,
                    callbacks=callbacks,
                    catch=(Exception,),
                    gc_after_trial=False,
                )
        except BaseException as err:
            real = _real_error(err)
            self._end_open_trials(study, interrupted=isinstance(real, KeyboardInterrupt))
            if real is not err:
                raise real from None
            raise
        if self._fatal is not None:
            raise self._fatal
        if self._failures >= MAX_CONSECUTIVE_FAILURES:
            last = study.trials[-1].user_attrs.get(records.REASON, "unknown error")
            raise UserError(f"{self._failures} trials failed in a row (last: {last}); see the log above")
        return study

    def _end_open_trials(self, study: optuna.Study, *, interrupted: bool) -> None:
        """On the way out of optimize (Ctrl-C, or an error Optuna did not catch): record each trial still open
        as failed in the storage first, then end its MLflow run (KILLED or FAILED; as recorded, for a trial Optuna
        had already finished), then flush the queue."""
        ended = Outcome.INTERRUPTED if interrupted else Outcome.FAILED
        for number, entry in list(self._open.items()):
            seconds = records.trial_seconds(entry.trial)
            try:
                entry.trial.set_user_attr(records.REASON, ended.value)
                study.tell(entry.trial, state=TrialState.FAIL, skip_if_finished=True)
            except optuna.exceptions.UpdateFinishedTrialError:  # Optuna recorded it already: end the run as it ended
                recorded = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
                ended_as = records.of_trial(recorded) if recorded is not None else None
                if recorded is not None and ended_as is not None:  # e.g. complete, and Ctrl-C while its run ended
                    reason = recorded.user_attrs.get(records.REASON)
                    entry.tracked.finish(ended_as, reason=reason, trial_seconds=records.trial_seconds(recorded))
            except StorageUnavailable:
                log.warning("trial %d could not be recorded as %s: the database is unavailable", number, ended.value)
            except Exception:  # the storage may be what failed; the heartbeat will catch it
                log.exception("could not record trial %d as %s", number, ended.value)
            entry.tracked.finish(ended, reason=ended.value, trial_seconds=seconds)
            self._open.pop(number, None)
        self.ctx.tracker.flush()


def _real_error(err: BaseException) -> BaseException:
    """The error to report for ``err``. Optuna 5.0's _run_trial (study/_optimize.py) reads ``updated_state`` in a
    ``finally`` that its ``except`` may not have set: when its tell fails and so does the get_trial in that except
    (the database gone, a second Ctrl-C), an UnboundLocalError hides what happened. Return that instead."""
    if not isinstance(err, UnboundLocalError):
        return err
    return next((e for e in chain(err) if isinstance(e, (KeyboardInterrupt, StorageUnavailable))), err)
