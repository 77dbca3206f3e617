"""Seed sweeps: Ray fan-out equals the sequential run, and the distribution is computed per metric."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from trading_core.agents.zoo import AgentConfig
from trading_core.envs.spec import EnvSpec
from trading_core.evaluation.seed_sweep import (
    SeedTask,
    distribution,
    grid_tasks,
    run_seed_sweep,
    seed_table,
    train_and_evaluate,
)
from trading_core.features.batch import build_features
from trading_core.runtime.distributed import fan_out


def square(value: int) -> int:
    return value * value


@pytest.fixture(scope="module")
def tasks(slice_bars) -> list[SeedTask]:
    features = build_features(slice_bars)
    train = features[features["date"] < "2018-01-01"]
    validation = features[(features["date"] >= "2018-01-01") & (features["date"] < "2019-01-01")]
    test = features[features["date"] >= "2019-01-01"]
    config = AgentConfig(
        "ppo", total_timesteps=256, learning_rate=3e-4, hyperparameters={"n_steps": 128, "batch_size": 64}
    )
    return [SeedTask("ppo", seed, config, EnvSpec(n_envs=2), train, validation, test) for seed in (1, 2, 3)]


def test_fan_out_keeps_order_on_local_ray():
    assert fan_out(square, [3, 1, 2], use_ray=True, num_cpus=2) == [9, 1, 4]


def test_ray_sweep_equals_sequential_sweep(tasks):
    on_ray = seed_table(run_seed_sweep(tasks, use_ray=True))
    in_turn = seed_table(run_seed_sweep(tasks, use_ray=False))
    pd.testing.assert_frame_equal(on_ray, in_turn)
    assert on_ray["test_sharpe"].nunique() > 1  # seeds really differ


def test_distribution_per_metric():
    table = pd.DataFrame(
        {
            "algorithm": "ppo",
            "seed": [1, 2, 3, 4],
            "test_sharpe": [0.0, 1.0, 2.0, 3.0],
            "test_return": [0.1] * 4,
        }
    )
    stats = distribution(table)
    assert stats.loc["test_sharpe", "p25"] == pytest.approx(0.75)
    assert stats.loc["test_sharpe", "median"] == pytest.approx(1.5)
    assert stats.loc["test_return", "std"] == pytest.approx(0.0)


def test_agents_seeds_windows_grid_on_ray_equals_sequential_and_keeps_policies(tasks):
    train, validation, test = tasks[0].train, tasks[0].validation, tasks[0].test
    configs = {
        "a2c": AgentConfig("a2c", total_timesteps=128, learning_rate=7e-4, hyperparameters={"n_steps": 8}),
        "ppo": tasks[0].config,
    }
    periods = {"split": (train, validation, test), "late": (pd.concat([train, validation]), validation, test)}
    grid = grid_tasks(configs, [5, 6], periods, EnvSpec(n_envs=2), keep_policies=True)
    assert [(t.algorithm, t.seed, t.window) for t in grid][:3] == [
        ("a2c", 5, "split"),
        ("a2c", 5, "late"),
        ("a2c", 6, "split"),
    ]
    assert len(grid) == 8
    on_ray = run_seed_sweep(grid, use_ray=True)
    in_turn = run_seed_sweep(grid, use_ray=False)
    pd.testing.assert_frame_equal(seed_table(on_ray), seed_table(in_turn))
    # The policy that travelled back from a Ray worker predicts what the sequential one predicts.
    observation = np.zeros((1, *in_turn[0].policy().model.observation_space.shape), dtype=np.float32)
    assert np.array_equal(
        on_ray[0].policy().predict(observation)[0], in_turn[0].policy().predict(observation)[0]
    )
    assert on_ray[0].policy().algorithm == "a2c" and on_ray[-1].policy().seed == 6


def test_policy_is_kept_only_on_request(tasks):
    outcome = train_and_evaluate(tasks[0])
    with pytest.raises(ValueError, match="did not keep"):
        outcome.policy()


def test_zoo_walk_forward_periods_keep_validation_inside_training_and_before_test(slice_bars):
    from trading_assets.training import AgentZooReport, _walk_forward_periods
    from trading_core.evaluation.seed_sweep import SeedOutcome

    features = build_features(slice_bars)
    periods = _walk_forward_periods(features, n_windows=2, test_dates=60, validation_dates=40)
    assert list(periods) == ["window_1", "window_2"]
    for train, validation, test in periods.values():
        assert train.dates.max() < validation.dates.min()
        assert validation.n_steps == 40
        assert validation.dates.max() < test.dates.min()  # the purge/embargo gap lies between them
        assert test.n_steps == 60
        assert train.tickers == validation.tickers == test.tickers  # one universe for every part

    returns = pd.Series(dtype=float)
    nan_first = SeedOutcome("ppo", 1, float("nan"), 0.0, 0.0, 0.0, returns)
    scored = SeedOutcome("ppo", 2, 0.3, 0.0, 0.0, 0.0, returns)
    report = AgentZooReport(pd.DataFrame(), (nan_first, scored))
    assert report.best_by_validation()["ppo"].seed == 2  # a NaN validation Sharpe never wins
