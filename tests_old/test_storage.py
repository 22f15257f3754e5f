"""The Optuna storage on a server database: calls whose connection is cut are retried on a fresh one."""

from __future__ import annotations

import optuna
import sqlalchemy
from optuna.trial import TrialState

from sweeper.storage import ResilientStorage, make_storage


def cut() -> sqlalchemy.exc.OperationalError:
    return sqlalchemy.exc.OperationalError("SELECT", {}, Exception("server closed the connection unexpectedly"))


def test_storage_calls_retry_once_the_connection_is_cut(pg_url, monkeypatch):
    storage = make_storage(pg_url, heartbeat=False)
    study = optuna.create_study(study_name="retry", storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    real = optuna.storages.RDBStorage._get_trials
    cuts = {"left": 1}

    def flaky(self, *args, **kwargs):
        if cuts["left"]:
            cuts["left"] -= 1
            raise cut()
        return real(self, *args, **kwargs)

    monkeypatch.setattr(optuna.storages.RDBStorage, "_get_trials", flaky)
    fresh = optuna.load_study(study_name="retry", storage=make_storage(pg_url, heartbeat=False))
    assert len(fresh.trials) == 2 and cuts["left"] == 0


def test_a_state_change_committed_just_before_the_cut_is_not_an_error(pg_url, monkeypatch):
    storage = make_storage(pg_url, heartbeat=False)
    assert isinstance(storage, ResilientStorage)
    study = optuna.create_study(study_name="commit", storage=storage, direction="maximize")
    trial = study.ask()
    real = optuna.storages.RDBStorage.set_trial_state_values
    cuts = {"left": 1}

    def committed_then_cut(self, *args, **kwargs):
        done = real(self, *args, **kwargs)
        if cuts["left"]:
            cuts["left"] -= 1
            raise cut()  # the commit landed, the reply was lost
        return done

    monkeypatch.setattr(optuna.storages.RDBStorage, "set_trial_state_values", committed_then_cut)
    study.tell(trial, 0.5)
    monkeypatch.undo()
    (done,) = optuna.load_study(study_name="commit", storage=pg_url).trials
    assert cuts["left"] == 0 and done.state == TrialState.COMPLETE and done.value == 0.5


def test_sqlite_storage_is_left_as_optuna_opens_it(tmp_path):
    storage = make_storage(f"sqlite:///{tmp_path / 'x.db'}", heartbeat=False)
    assert isinstance(storage, optuna.storages.RDBStorage)


def test_a_bare_postgresql_url_opens_with_the_driver_sqlalchemy_picks(pg_url):
    bare = pg_url.replace("postgresql+psycopg2://", "postgresql://")  # as Optuna's and SQLAlchemy's docs write it
    study = optuna.create_study(study_name="bare", storage=make_storage(bare, heartbeat=False))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert len(optuna.load_study(study_name="bare", storage=pg_url).trials) == 2


def test_connection_errors_are_told_from_rejected_statements_and_bad_credentials():
    from sweeper.storage import is_connection_error

    def wrapped(message: str, kind: type = sqlalchemy.exc.OperationalError) -> Exception:
        err = optuna.exceptions.StorageInternalError("An exception is raised during the commit.")
        err.__cause__ = kind("SELECT 1", {}, Exception(message))  # how Optuna wraps a failed commit
        return err

    assert is_connection_error(wrapped("server closed the connection unexpectedly"))
    assert is_connection_error(wrapped('database "x" is not currently accepting connections'))
    assert is_connection_error(wrapped("connection to server at 127.0.0.1 failed: Connection refused"))
    assert is_connection_error(wrapped("connection already closed", sqlalchemy.exc.InterfaceError))
    assert not is_connection_error(wrapped('password authentication failed for user "u"'))
    assert not is_connection_error(wrapped('relation "trials" does not exist', sqlalchemy.exc.ProgrammingError))
    assert not is_connection_error(ValueError("no database involved"))
