"""The accuracy range test tracked in MLflow: a parent run, one child run per max LR, through a study's machinery.

The runs are ``pipelines.lr_finder.accuracy_range_test``'s; this module only hands each one a ``TrialRun`` (the
callback a study's trials log through), ends it with its outcome, and records the points and the plot on the
parent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pipelines.callbacks import Callback
from pipelines.config import Config
from pipelines.lr_finder import AccuracyRange, AccuracyRangeResult, accuracy_range_test
from pipelines.result import Result
from sweeper import outcome, records
from sweeper.outcome import Outcome
from sweeper.space import run_params
from sweeper.tracking import Tracker, TrialRun

EXPERIMENT = "lr-find"  # the MLflow experiment of range tests run outside a study


def tracked_accuracy_range_test(
    plan: AccuracyRange,
    *,
    tracker: Tracker,
    plot_path: Path | None = None,
    progress: Callable[[int, Config], Sequence[Callback]] | None = None,
) -> tuple[AccuracyRangeResult, str]:
    """Run the accuracy range test (checked by ``pipelines.lr_finder.plan_accuracy_range``) with each run logged
    as a child of a new parent run; (result, parent run id)."""
    started = time.perf_counter()
    name = f"lr-find-{time.strftime('%Y%m%d-%H%M%S')}"
    lrs = ",".join(f"{cfg.optim.lr:g}" for cfg in plan.configs)
    parent = tracker.new_parent_run(name, role=records.ROLE_RANGE,
                                    params={"metric": "accuracy", "epochs": plan.epochs, "lrs": lrs})  # fmt: skip
    runs: dict[int, TrialRun] = {}

    def callbacks(i: int, cfg: Config) -> list[Callback]:
        runs[i] = tracker.trial_run(
            parent,
            study=name,
            number=i,
            params=run_params(cfg),
            role=records.ROLE_RANGE_POINT,
            run_name=f"{name}-lr-{cfg.optim.lr:g}",
        )
        return [runs[i], *(progress(i, cfg) if progress else ())]

    def on_result(i: int, cfg: Config, result: Result) -> None:
        runs[i].finish(outcome.of_result(result), reason=result.reason, trial_seconds=result.total_seconds)

    try:
        result = accuracy_range_test(plan, callbacks=callbacks, on_result=on_result, plot_path=plot_path)
    except BaseException as err:
        ended = Outcome.INTERRUPTED if isinstance(err, KeyboardInterrupt) else Outcome.FAILED
        for run in runs.values():
            run.finish(ended, reason=ended.value)  # a no-op for the runs already finished
        tracker.end_run(parent, ended, reason=ended.value, seconds=time.perf_counter() - started)
        raise
    for i, point in enumerate(result.points):
        tracker.log_study_point(parent, number=i, value=point.accuracy, best=None)
    tags = {records.SUGGESTED_LR_TAG: f"{result.suggested_lr:.6g}", records.METRIC_TAG: result.metric}
    tracker.set_tags(parent, tags)
    if result.plot is not None:
        tracker.log_artifact(parent, result.plot)
    tracker.end_run(parent, Outcome.COMPLETE, seconds=time.perf_counter() - started)
    return result, parent
