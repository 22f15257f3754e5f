"""Final-config replay: train a study's chosen config on the full training set for K seeds, tracked in MLflow."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.callbacks import Callback
from pipelines.config import Config
from pipelines.data import Splits, load_splits
from pipelines.errors import UserError, one_line
from pipelines.paths import check_name
from pipelines.result import Result
from pipelines.reuse import RunCache
from pipelines.train import check_data, check_outputs, run
from sweeper import outcome, records
from sweeper.interrupts import InterruptCheck
from sweeper.outcome import Outcome
from sweeper.overrides import resolve_config
from sweeper.queries import best_trial, load_study
from sweeper.space import run_params
from sweeper.tracking import Tracker


@dataclass(frozen=True)
class ReplaySource:
    """Where the config came from: a study's trial (number and MLflow run) or a YAML file."""

    label: str  # e.g. "smoke-trial-3" or "best"
    study: str | None = None
    trial_number: int | None = None
    trial_run_id: str | None = None
    parent_run_id: str | None = None

    @property
    def experiment(self) -> str:
        """The MLflow experiment the replay runs go to: the study's, else "replay"."""
        return self.study or "replay"


@dataclass(frozen=True)
class ReplayResult:
    accuracies: tuple[float, ...]
    results: tuple[Result, ...]
    run_ids: tuple[str, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies) if self.accuracies else float("nan")

    @property
    def std(self) -> float:
        return statistics.stdev(self.accuracies) if len(self.accuracies) > 1 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "test_accuracy_mean": self.mean,
            "test_accuracy_std": self.std,
            "test_accuracies": list(self.accuracies),
            "seeds": len(self.accuracies),
            "runs": [
                {"mlflow_run_id": rid, "out_dir": str(r.out_dir), "status": r.status, "test_accuracy": r.test_accuracy}
                for rid, r in zip(self.run_ids, self.results, strict=True)
            ],
        }


@dataclass(frozen=True)
class ReplayPlan:
    """What a replay trains, checked: the config (before each seed's overrides), where it came from, the data."""

    config: Config
    source: ReplaySource
    splits: Splits


def plan_replay(
    *,
    study: str | None = None,
    trial: int | None = None,
    config_file: Path | None = None,
    storage: str | None = None,
    tokens: Iterable[str] = (),
    extra: Mapping[str, Any] | None = None,
    runs_dir: Path = Path("runs"),
) -> ReplayPlan:
    """The config to replay and where it came from: trial ``trial`` (default: the best) of ``study``, or a YAML
    file; ``extra`` and then the ``key=value`` ``tokens`` override it. The data is loaded and the config checked
    against it (once, for all seeds) before anything is recorded."""
    config, source = _source(study=study, trial=trial, config_file=config_file, storage=storage, tokens=tokens,
                             extra=extra)  # fmt: skip
    first = replay_config(config, seed=config.train.seed, out_dir=runs_dir)
    check_outputs(first)
    splits = load_splits(first.data)
    check_data(first, splits)
    return ReplayPlan(config, source, splits)


def _source(
    *,
    study: str | None,
    trial: int | None,
    config_file: Path | None,
    storage: str | None,
    tokens: Iterable[str],
    extra: Mapping[str, Any] | None,
) -> tuple[Config, ReplaySource]:
    if study is not None:
        st = load_study(storage, study)
        chosen = best_trial(st, trial)
        base = records.recorded_config(chosen)
        assert base is not None  # best_trial refuses a trial without one
        source = ReplaySource(
            label=_label(f"{study}-trial-{chosen.number}", fallback=f"trial-{chosen.number}"),
            study=study,
            trial_number=chosen.number,
            trial_run_id=records.run_id(chosen, st.user_attrs),
            parent_run_id=st.user_attrs.get(records.PARENT_RUN_ID),
        )
        return resolve_config(None, tokens, extra=extra, base=base), source
    assert config_file is not None, "a replay needs a study or a config file"
    source = ReplaySource(label=_label(config_file.stem, fallback="config"))
    return resolve_config(config_file, tokens, extra=extra), source


def _label(name: str, *, fallback: str) -> str:
    """The replay's name (its runs' folder and MLflow run names): ``name`` (a config file's stem, or the study's
    trial), unless it could not be one folder of runs/replay/ (``...yaml``'s stem is ``..``; a study made outside
    sweeper may be called anything); then ``fallback``."""
    try:
        return check_name(name, what="replay")
    except UserError:
        return fallback


def replay_config(config: Config, *, seed: int, out_dir: Path) -> Config:
    """The trial's config on the full training set (no validation hold-out), with this seed and folder."""
    return config.with_overrides({"data.val_size": 0, "train.seed": seed, "train.out_dir": str(out_dir)})


def replay(
    plan: ReplayPlan,
    *,
    seeds: int,
    tracker: Tracker,
    runs_dir: Path = Path("runs"),
    progress: Callable[[int], Sequence[Callback]] | None = None,
) -> ReplayResult:
    """Train the plan's config once per seed (train.seed, +1, ...), each an MLflow run tagged sweeper.role=replay."""
    cache = RunCache(compile_on_cuda=True)  # the seeds share one compile
    source = plan.source
    accuracies: list[float] = []
    results: list[Result] = []
    run_ids: list[str] = []
    for k in range(seeds):
        seed = plan.config.train.seed + k
        cfg = replay_config(plan.config, seed=seed, out_dir=runs_dir / "replay" / source.label / f"seed-{seed}")
        tracked = tracker.trial_run(
            source.parent_run_id or "",
            study=source.experiment,
            number=source.trial_number if source.trial_number is not None else -1,
            params={**run_params(cfg), "seed": seed},
            tags=_tags(source, seed),
            role=records.ROLE_REPLAY,
            run_name=f"replay-{source.label}-seed-{seed}",
        )
        tracked.keep_weights = True
        callbacks = [tracked, InterruptCheck(), *(progress(k) if progress else ())]
        try:
            result = run(cfg, callbacks=callbacks, cache=cache, splits=plan.splits, checked=True)
        except KeyboardInterrupt:
            tracked.finish(Outcome.INTERRUPTED, reason=Outcome.INTERRUPTED.value)
            raise
        except Exception as err:
            tracked.finish(Outcome.FAILED, reason=one_line(err, with_type=True))
            raise
        tracked.log_compile(result.compile_seconds)  # the first seed on CUDA
        tracked.finish(outcome.of_result(result), reason=result.reason, trial_seconds=result.total_seconds)
        results.append(result)
        run_ids.append(tracked.run_id)
        if result.test_accuracy is not None:
            accuracies.append(result.test_accuracy)
    out = ReplayResult(tuple(accuracies), tuple(results), tuple(run_ids))
    summary = {records.REPLAY_MEAN_TAG: f"{out.mean:.6f}", records.REPLAY_STD_TAG: f"{out.std:.6f}"}
    for run_id in (*run_ids, *([source.parent_run_id] if source.parent_run_id else [])):
        tracker.set_tags(run_id, summary)
    tracker.flush()
    return out


def _tags(source: ReplaySource, seed: int) -> dict[str, str]:
    tags = {records.REPLAY_SEED_TAG: str(seed), records.REPLAY_OF_TAG: source.label}
    if source.trial_number is not None:
        tags[records.SOURCE_TRIAL_TAG] = str(source.trial_number)
    if source.trial_run_id:
        tags[records.SOURCE_RUN_TAG] = source.trial_run_id
    return tags
