"""Reading studies back: the storage's studies, one study, its best trial or Pareto front, a trial to replay.

Nothing here creates or changes a study (a SQLite file that does not exist is not made by reading it); each
trial is read through ``sweeper.records``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from pipelines.errors import UserError
from sweeper import records
from sweeper.objective import Objective
from sweeper.storage import make_storage, missing_sqlite_file, resolve_storage_url
from sweeper.urls import mask_url


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
        raise UserError(f"no study {name!r} in {mask_url(url)} (studies: {names})") from err


def record_synced_run_ids(storage_url: str | None, name: str, run_ids: Mapping[str, str]) -> None:
    """Remember which real MLflow run each pending id became (see ``records.run_id``)."""
    study = load_study(storage_url, name)
    known = dict(study.user_attrs.get(records.SYNCED_RUN_IDS, {}))
    study.set_user_attr(records.SYNCED_RUN_IDS, {**known, **run_ids})


def is_multi_objective(study: optuna.Study) -> bool:
    return len(study.directions) > 1


def best_trial(study: optuna.Study, number: int | None = None) -> FrozenTrial:
    """Trial ``number`` of the study (it must have a recorded config), else the best complete one."""
    if number is not None:
        matches = [t for t in study.trials if t.number == number]
        if not matches:
            raise UserError(f"study {study.study_name!r} has no trial {number}")
        trial = matches[0]
        if records.recorded_config(trial) is None:
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


def best_row(trial: FrozenTrial, study_attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The best trial of a single-objective study as `study best --json` shows it."""
    return {
        "trial": trial.number,
        "value": trial.value,
        "params": trial.params,
        "lr": trial.user_attrs.get(records.LR),
        "test_accuracy": trial.user_attrs.get(records.TEST_ACCURACY),
        "mlflow_run_id": records.run_id(trial, study_attrs),
    }


def pareto_rows(study: optuna.Study, objective: Objective) -> list[dict[str, Any]]:
    """A multi-objective study's Pareto front (Optuna's best_trials), by increasing cost (see pareto_row)."""
    front = sorted(study.best_trials, key=lambda t: records.cost(t, objective))
    return [pareto_row(t, objective, study.user_attrs) for t in front]


def pareto_row(trial: FrozenTrial, objective: Objective, study_attrs: Mapping[str, Any]) -> dict[str, Any]:
    """A trial of a multi-objective study as `study best --json` and pareto.json show it: number, values by
    key (e.g. val, train_seconds), params, epochs, lr, MLflow run id."""
    config = records.recorded_config(trial)
    return {
        "number": trial.number,
        "values": dict(zip(objective.keys, trial.values, strict=True)),
        "params": trial.params,
        "epochs": config.train.epochs if config else None,
        "lr": trial.user_attrs.get(records.LR),
        "mlflow_run_id": records.run_id(trial, study_attrs),
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
    return min(reaching, key=lambda t: (records.cost(t, objective), -t.values[0]))
