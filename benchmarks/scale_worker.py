"""The worker of `python -m benchmarks.scale`: sweeper's own worker path with the training replaced by a sleep.

A forked process opens its own storage (``sweeper.storage.make_storage``), loads the study and runs Optuna's
optimize loop with :class:`SleepTrials` as objective and after-trial callback, writing what it saw as JSON lines
for the parent to measure.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from pipelines.callbacks import EpochMetrics
from pipelines.config import Config
from sweeper import records
from sweeper.objective import Objective
from sweeper.samplers import make_pruner, make_sampler
from sweeper.space import Space, load_space
from sweeper.storage import StorageUnavailable, make_storage

STUDY = "scale"


@dataclass(frozen=True)
class WorkerSpec:
    index: int
    storage: str
    log: Path  # JSON lines: start / epoch / end of each trial, error
    trial_seconds: float  # the sleep standing in for training
    epochs: int  # reports per trial, as a trial reports each epoch
    seconds: float  # Optuna's timeout: no trial starts after it


class SleepTrials:
    """The benchmark-only objective and after-trial callback: a trial's storage traffic as ``TrialRunner`` makes
    it (suggestions, config, LR, each epoch's value and metrics, test accuracy, seconds, the best value read
    after each trial), with the training replaced by a sleep. Writes what it saw to ``spec.log``."""

    def __init__(self, spec: WorkerSpec, space: Space, config: Config) -> None:
        self.spec, self.space, self.config = spec, space, config
        self.out = open(spec.log, "a", buffering=1)  # noqa: SIM115 - one line per event, open for the run
        self.mark = time.time()  # the end of the previous trial (or the start)
        self.returned = 0.0

    def event(self, **fields: Any) -> None:
        self.out.write(json.dumps({"t": time.time(), **fields}) + "\n")

    def objective(self, trial: optuna.Trial) -> float:
        overrides = self.space.suggest(trial, self.config)
        asked = time.time()
        self.event(event="start", number=trial.number, trial_id=trial._trial_id, ask=asked - self.mark)
        config = self.config.with_overrides(overrides)
        trial.set_user_attr(records.CONFIG, config.to_yaml())
        trial.set_user_attr(records.LR, config.effective_lr)
        recorder = records.EpochRecorder(trial, Objective.val)
        value = 0.5
        for epoch in range(1, self.spec.epochs + 1):
            time.sleep(self.spec.trial_seconds / self.spec.epochs)
            value = 0.9 - 0.1 / epoch  # any number: the storage is what is measured
            metrics = EpochMetrics(
                epoch=epoch, train_loss=1.0 / epoch, train_accuracy=value, test_loss=None, test_accuracy=None,
                val_loss=1.0 / epoch, val_accuracy=value, lr=config.effective_lr, epoch_seconds=0.0, eval_seconds=0.0,
            )  # fmt: skip
            recorder.record(metrics, value)
            self.event(event="epoch", number=trial.number, trial_id=trial._trial_id, epoch=epoch)
        trial.set_user_attr(records.TEST_ACCURACY, value)
        trial.set_user_attr(records.TRAIN_SECONDS, self.spec.trial_seconds)
        self.returned = time.time()
        return value

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        told = time.time()
        with contextlib.suppress(ValueError):  # no complete trial yet
            _ = study.best_value
        self.event(
            event="end", number=trial.number, trial_id=trial._trial_id, state=trial.state.name,
            value=trial.value, tell=told - self.returned,
        )  # fmt: skip
        self.mark = time.time()


def worker_main(spec: WorkerSpec, ready: Any, go: Any) -> None:
    """A forked worker: its own storage and study, then trials until ``spec.seconds`` have passed."""
    import logging

    logging.basicConfig(
        filename=str(spec.log.with_suffix(".log")), level=logging.WARNING, format="%(asctime)s %(name)s %(message)s"
    )
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    space, config = load_space(None), Config()
    trials = SleepTrials(spec, space, config)
    code = 0
    try:
        storage = make_storage(spec.storage, runs_dir=str(spec.log.parent / "runs"))
        study = optuna.load_study(
            study_name=STUDY,
            storage=storage,
            sampler=make_sampler("random", space, seed=spec.index),  # a sampler that reads no trials: storage cost
            pruner=make_pruner("none", epochs=spec.epochs),
        )
        ready.put(spec.index)
        go.wait()
        trials.mark = time.time()
        study.optimize(
            trials.objective,
            timeout=spec.seconds,
            callbacks=[trials.after_trial],
            catch=(Exception,),
            gc_after_trial=False,
        )
    except Exception as err:  # noqa: BLE001 - what stopped this worker is a result of the run
        trials.event(event="error", error=f"{type(err).__name__}: {str(err).splitlines()[0][:300]}")
        code = 2 if isinstance(err, StorageUnavailable) else 1
        if not go.is_set():
            ready.put(spec.index)  # a worker that failed before the start must not hold the others up
    trials.out.close()
    os._exit(code)  # no atexit of the parent's (forked) state
