"""The hyperparameter search: seeded, the same on Ray as in turn, scored on validation only."""

from __future__ import annotations

import optuna
import pandas as pd
import pytest

from trading_core.agents.zoo import DEFAULT_CONFIGS
from trading_core.envs.spec import EnvSpec
from trading_core.evaluation.tuning import search_hyperparameters, suggest_config
from trading_core.features.batch import build_features


@pytest.fixture(scope="module")
def periods(slice_bars):
    features = build_features(slice_bars)
    return features[features["date"] < "2018-01-01"], features[
        features["date"].between("2018-01-01", "2018-12-31")
    ]


def test_search_is_seeded_and_ray_equals_in_turn(periods):
    train, validation = periods
    settings = dict(n_trials=3, timesteps=128, seed=3, batch_size=2)
    seen: list[int] = []
    on_ray = search_hyperparameters(
        "a2c",
        train,
        validation,
        EnvSpec(n_envs=2),
        use_ray=True,
        on_trial=lambda n, p, s: seen.append(n),
        **settings,
    )
    in_turn = search_hyperparameters("a2c", train, validation, EnvSpec(n_envs=2), use_ray=False, **settings)
    pd.testing.assert_frame_equal(on_ray.trials, in_turn.trials)
    assert seen == [0, 1, 2]
    assert on_ray.best_validation_sharpe == on_ray.trials["validation_sharpe"].max()
    assert on_ray.best_config.learning_rate == pytest.approx(on_ray.best_params["learning_rate"])
    assert on_ray.trials["learning_rate"].nunique() == 3


def test_suggested_configs_fit_each_algorithm():
    ppo = suggest_config(
        optuna.trial.FixedTrial({"learning_rate": 1e-4, "gamma": 0.97, "ent_coef": 0.01, "n_steps": 512}),
        DEFAULT_CONFIGS["ppo"],
    )
    assert ppo.params["n_steps"] == 512 and ppo.gamma == 0.97
    sac = suggest_config(
        optuna.trial.FixedTrial({"learning_rate": 1e-4, "gamma": 0.97, "batch_size": 64}),
        DEFAULT_CONFIGS["sac"],
    )
    assert sac.params["batch_size"] == 64 and "ent_coef" in sac.params  # SAC keeps its own entropy setting


def test_bad_budget_is_refused(periods):
    with pytest.raises(ValueError, match="n_trials >= 1"):
        search_hyperparameters("ppo", *periods, EnvSpec(), n_trials=0, timesteps=10)
