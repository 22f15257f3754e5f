"""`sweeper study show`, `list` and `best`: a study's record read back, its Pareto front, the cheapest trial on it."""

from __future__ import annotations

import json

import optuna

from conftest import invoke


def test_min_accuracy_answers_in_one_line_when_no_trial_reaches_it():
    """A front with known values (tiny data reaches 100 % too easily to test this with training)."""
    storage = "sqlite:///known.db"
    study = optuna.create_study(study_name="known", storage=storage, directions=["maximize", "minimize"])
    study.set_user_attr("objective", "val,train_seconds")
    for accuracy, seconds in ((0.80, 10.0), (0.90, 30.0), (0.85, 40.0)):
        study.add_trial(optuna.trial.create_trial(values=[accuracy, seconds], params={}, distributions={}))
    picked = invoke("study", "best", "known", "--storage", storage, "--min-accuracy", 0.85, "--json")
    assert picked.exit_code == 0 and json.loads(picked.stdout)["number"] == 1  # 30 s beats 40 s at >= 85 %
    none = invoke("study", "best", "known", "--storage", storage, "--min-accuracy", 0.95)
    assert none.exit_code == 2 and len(none.stderr.strip().splitlines()) == 1
    assert "no trial of 'known' reaches val accuracy 0.95 (the best reached 0.9)" in none.stderr
    percent = invoke("study", "best", "known", "--storage", storage, "--min-accuracy", 60)
    assert percent.exit_code == 2 and "for 60 % write 0.6" in percent.stderr  # a percentage: the fraction named
    listed = json.loads(invoke("study", "list", "--storage", storage, "--json").stdout)
    assert listed == [{**listed[0], "name": "known", "best_value": None, "best_trial": None, "pareto_trials": 2}]
