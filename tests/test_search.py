"""kdsearch.search: the Optuna study behind find — resume, duplicate configs, the budget as a constraint."""

import optuna
import pytest

from kdsearch.cost import count_params, parse_budget
from kdsearch.search import run_search
from kdsearch.spaces import candidate_id, load_space


@pytest.fixture(scope="module")
def space():
    return load_space("resnet_cifar_s1")


def params_evaluator(space, calls):
    def evaluate(config):
        calls.append(candidate_id(config))
        params = float(count_params(space.build(config, num_classes=10)))
        return {"params": params, "objective": -params}

    return evaluate


def configs_in(study):
    return [t.user_attrs["candidate_id"] for t in sorted(study.trials, key=lambda t: t.number)]


def test_resumed_search_draws_new_configs(space, tmp_path):
    storage, calls = f"sqlite:///{tmp_path / 's.db'}", []
    kwargs = dict(budget=parse_budget("0.2Mparams"), objective="objective", storage=storage, study_name="s", seed=0, sampler="random")
    first = configs_in(run_search(space, params_evaluator(space, calls), n_trials=8, **kwargs))
    resumed = configs_in(run_search(space, params_evaluator(space, calls), n_trials=16, **kwargs))
    assert resumed[:8] == first  # the first session's trials are kept as they were
    # a sampler reseeded with the same seed would replay the first 8 configs exactly
    assert resumed[8:] != first and len(set(resumed[8:]) - set(first)) >= 4
    again = run_search(space, params_evaluator(space, calls), n_trials=16, **kwargs)
    assert len(again.trials) == 16  # already complete: nothing more is run


def test_repeated_configs_are_served_from_the_study(space, tmp_path):
    calls = []
    study = run_search(
        space, params_evaluator(space, calls), budget=parse_budget("0.2Mparams"), objective="objective",
        storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s", n_trials=60, seed=1, sampler="random",
    )
    ids = configs_in(study)
    assert len(ids) == 60 and len(set(ids)) < 60  # 60 draws from 64 configs repeat some
    assert sorted(calls) == sorted(set(ids))  # each distinct config evaluated exactly once


def test_budget_is_the_studys_constraint(space, tmp_path):
    study = run_search(
        space, params_evaluator(space, []), budget=parse_budget("0.2Mparams"), objective="objective",
        storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s", n_trials=12, seed=0, sampler="random",
    )
    for trial in study.trials:
        assert trial.state == optuna.trial.TrialState.COMPLETE
        over = trial.user_attrs["params"] > 200_000
        assert (trial.user_attrs["budget_excess"] > 0) == over


def test_sqlite_study_uses_write_ahead_logging(space, tmp_path):
    import sqlite3

    run_search(
        space, params_evaluator(space, []), budget=parse_budget("0.2Mparams"), objective="objective",
        storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s", n_trials=2, seed=0, sampler="random",
    )
    with sqlite3.connect(tmp_path / "s.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # and the file stays a plain Optuna study for any other tool
    assert len(optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 's.db'}").trials) == 2
