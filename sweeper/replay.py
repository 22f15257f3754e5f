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
from pipelines.errors import one_line
from pipelines.result import Result
from pipelines.reuse import RunCache
from pipelines.train import check_trainable, run
from sweeper import outcome
from sweeper.interrupts import InterruptCheck
from sweeper.outcome import Outcome
from sweeper.overrides import resolve_config
from sweeper.space import optim_params
from sweeper.study import best_trial, load_study
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


def replay_source(
    *,
    study: str | None = None,
    trial: int | None = None,
    config_file: Path | None = None,
    storage: str | None = None,
    tokens: Iterable[str] = (),
    extra: Mapping[str, Any] | None = None,
) -> tuple[Config, ReplaySource]:
    """The config to replay and where it came from: trial ``trial`` (default: the best) of ``study``, or a YAML
    file; ``extra`` and then the ``key=value`` ``tokens`` override it."""
    if study is not None:
        st = load_study(storage, study)
        chosen = best_trial(st, trial)
        base = Config.from_yaml(chosen.user_attrs["config"], source=f"trial {chosen.number} of {study}")
        source = ReplaySource(
            label=f"{study}-trial-{chosen.number}",
            study=study,
            trial_number=chosen.number,
            trial_run_id=outcome.run_id(chosen, st.user_attrs),
            parent_run_id=st.user_attrs.get("mlflow_parent_run_id"),
        )
        return resolve_config(None, tokens, extra=extra, base=base), source
    assert config_file is not None, "replay_source needs a study or a config file"
    return resolve_config(config_file, tokens, extra=extra), ReplaySource(label=config_file.stem)


def check_replay(config: Config, *, runs_dir: Path) -> Splits:
    """Load the data and check that ``config`` can be replayed (before any run is recorded); the data."""
    first = replay_config(config, seed=config.train.seed, out_dir=runs_dir)
    splits = load_splits(first.data)
    check_trainable(first, splits)
    return splits


def replay_config(config: Config, *, seed: int, out_dir: Path) -> Config:
    """The trial's config on the full training set (no validation hold-out), with this seed and folder."""
    return config.with_overrides({"data.val_size": 0, "train.seed": seed, "train.out_dir": str(out_dir)})


def replay(
    config: Config,
    *,
    source: ReplaySource,
    seeds: int,
    tracker: Tracker,
    runs_dir: Path = Path("runs"),
    progress: Callable[[int], Sequence[Callback]] | None = None,
    splits: Splits | None = None,
) -> ReplayResult:
    """Train ``config`` once per seed (train.seed, +1, ...), each an MLflow run tagged sweeper.role=replay."""
    cache = RunCache(compile_on_cuda=True)  # the seeds share one compile
    first = replay_config(config, seed=config.train.seed, out_dir=runs_dir)
    splits = splits or load_splits(first.data)  # once for all seeds, and checked before any run is created
    check_trainable(first, splits)
    accuracies: list[float] = []
    results: list[Result] = []
    run_ids: list[str] = []
    base_seed = config.train.seed
    for k in range(seeds):
        seed = base_seed + k
        cfg = replay_config(config, seed=seed, out_dir=runs_dir / "replay" / source.label / f"seed-{seed}")
        tags = {"sweeper.replay_seed": str(seed), "sweeper.replay_of": source.label}
        if source.trial_number is not None:
            tags["sweeper.source_trial"] = str(source.trial_number)
        if source.trial_run_id:
            tags["sweeper.source_run_id"] = source.trial_run_id
        params = {**optim_params(cfg), "seed": seed}
        tracked = tracker.trial_run(
            source.parent_run_id or "",
            study=source.experiment,
            number=source.trial_number if source.trial_number is not None else -1,
            params=params,
            tags=tags,
            role="replay",
            run_name=f"replay-{source.label}-seed-{seed}",
        )
        tracked.keep_weights = True
        callbacks = [tracked, InterruptCheck(), *(progress(k) if progress else ())]
        try:
            result = run(cfg, callbacks=callbacks, cache=cache, splits=splits)
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
    summary = {"replay.test_accuracy_mean": f"{out.mean:.6f}", "replay.test_accuracy_std": f"{out.std:.6f}"}
    for run_id in run_ids:
        tracker.set_tags(run_id, summary)
    if source.parent_run_id:
        tracker.set_tags(source.parent_run_id, summary)
    tracker.flush()
    return out
