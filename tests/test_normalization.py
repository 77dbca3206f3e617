"""The observation normaliser: fit on training rows only, scale-free portfolio part, JSON round trip, applied
inside the trained policy and the registry's pyfunc so every caller feeds raw observations."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from trading_core.agents.zoo import DEFAULT_CONFIGS, load_policy, train_agent
from trading_core.envs.fast import StockTradingVecEnv, observation_from
from trading_core.envs.normalization import NormalizationConfig, NormalizedObservations, ObservationNormalizer
from trading_core.envs.spec import EnvSpec
from trading_core.features.batch import build_features
from trading_core.market.arrays import MarketArrays

ENV_SPEC = EnvSpec(n_envs=2)
TRAIN_END = pd.Timestamp("2018-06-30")


@pytest.fixture(scope="module")
def features(slice_bars) -> pd.DataFrame:
    return build_features(slice_bars)


@pytest.fixture(scope="module")
def train(features) -> pd.DataFrame:
    return features[features["date"] <= TRAIN_END].reset_index(drop=True)


@pytest.fixture(scope="module")
def normalizer(train) -> ObservationNormalizer:
    return ObservationNormalizer.fit(train)


@pytest.fixture(scope="module")
def raw(features) -> np.ndarray:
    """Raw observations after the training period, with varied cash and holdings."""
    env = StockTradingVecEnv(features[features["date"] > TRAIN_END], n_envs=3)
    rng = np.random.default_rng(0)
    batch = [env.reset()]
    for _ in range(5):
        batch.append(env.step(rng.uniform(-1, 1, size=(3, env.action_space.shape[0])))[0])
    return np.concatenate(batch)


@pytest.fixture(scope="module")
def policy(train):
    config = replace(DEFAULT_CONFIGS["ppo"], total_timesteps=256).with_hyperparameters(
        n_steps=128, batch_size=64
    )
    return train_agent("ppo", train, ENV_SPEC, config, seed=5, report=print)


def test_statistics_come_from_the_training_rows_only(features, train, normalizer):
    """Truncate and compare: the fit on the whole frame's training rows equals the fit on the truncated frame,
    and rewriting every later row changes nothing."""
    future = features.copy()
    later = future["date"] > TRAIN_END
    future.loc[later, ["open", "high", "low", "close", "macd", "rsi_30"]] *= 3.0
    refit = ObservationNormalizer.fit(future[future["date"] <= TRAIN_END])
    assert refit == normalizer
    assert ObservationNormalizer.fit(MarketArrays.from_features(train)) == normalizer
    assert ObservationNormalizer.fit(features) != normalizer  # the later rows would have moved the statistics


def test_the_trained_policy_carries_the_training_fit(policy, normalizer):
    assert policy.normalizer == normalizer


def test_portfolio_part_is_scale_free_and_market_part_standardised(normalizer, raw):
    n = normalizer.n_assets
    out = normalizer(raw)
    assert out.shape == raw.shape and out.dtype == np.float32
    closes, holdings = raw[:, 1 : 1 + n].astype(np.float64), raw[:, 1 + n : 1 + 2 * n].astype(np.float64)
    equity = raw[:, 0] + (holdings * closes).sum(axis=1)
    np.testing.assert_allclose(out[:, 0], raw[:, 0] / equity, rtol=1e-6)
    np.testing.assert_allclose(
        out[:, 1 + n : 1 + 2 * n], holdings * closes / equity[:, None], rtol=1e-5, atol=1e-7
    )
    assert np.isclose(out[:, 0] + out[:, 1 + n : 1 + 2 * n].sum(axis=1), 1.0, atol=1e-5).all()
    # The same portfolio ten times larger reads the same.
    scaled = raw.copy()
    scaled[:, 0] *= 10
    scaled[:, 1 + n : 1 + 2 * n] *= 10
    np.testing.assert_allclose(normalizer(scaled), out, rtol=1e-5, atol=1e-6)
    assert np.abs(out).max() <= normalizer.clip
    # Closes z-score as log prices with the training statistics.
    expected = (np.log(closes) - normalizer.mean[:n]) / normalizer.std[:n]
    np.testing.assert_allclose(out[:, 1 : 1 + n], np.clip(expected, -5, 5), rtol=1e-5, atol=1e-5)


def test_price_unit_features_are_divided_by_the_close(normalizer, raw):
    names = normalizer.feature_names
    assert [name for name, flag in zip(names, normalizer.price_unit, strict=True) if flag] == [
        "macd",
        "boll_ub",
        "boll_lb",
        "close_30_sma",
        "close_60_sma",
    ]
    n = normalizer.n_assets
    values = normalizer.market_values(raw)
    sma = names.index("close_30_sma")
    closes = raw[:, 1 : 1 + n].astype(np.float64)
    raw_sma = raw[:, 1 + 2 * n + sma * n : 1 + 2 * n + (sma + 1) * n]
    np.testing.assert_allclose(values[:, n + sma * n : n + (sma + 1) * n], raw_sma / closes, rtol=1e-12)
    # A moving average near its close stays near 1 whatever the price level.
    assert np.abs(values[:, n + sma * n : n + (sma + 1) * n] - 1.0).max() < 0.3


def test_constant_features_and_untradable_assets_stay_finite():
    dates = pd.bdate_range("2020-01-01", periods=30)
    rows = [
        {
            "date": d,
            "tic": tic,
            "open": 10.0 + i,
            "high": 11.0 + i,
            "low": 9.0 + i,
            "close": 10.0 + i + k,
            "volume": 1e6,
            "flat": 3.0,
            "boll_ub": 12.0 + i,
        }
        for i, d in enumerate(dates)
        for k, tic in enumerate(["A", "B"])
    ]
    market = MarketArrays.from_features(pd.DataFrame(rows))
    fitted = ObservationNormalizer.fit(market, NormalizationConfig(clip=3.0))
    flat = 2 + 0 * 2  # the first feature's dimensions follow the two closes
    np.testing.assert_array_equal(fitted.std[flat : flat + 2], 1.0)  # no spread: only centred
    observation = observation_from(
        np.array([1_000.0]),
        np.array([0.0, 15.0]),
        np.array([[5.0, 2.0]]),
        np.array([[3.0, 3.0], [1.0, 17.0]]),
    )
    out = fitted(observation)
    assert np.isfinite(out).all() and np.abs(out).max() <= 3.0
    # Asset A has no close: weight 0, every market dimension 0; B's weight is its value over the equity.
    assert out[0, 1] == 0.0 and out[0, 3] == 0.0 and out[0, 5] == 0.0 and out[0, 7] == 0.0
    assert out[0, 4] == pytest.approx(30.0 / 1_030.0)
    with pytest.raises(ValueError, match="expects"):
        fitted(np.zeros((1, 5), dtype=np.float32))


def test_json_round_trip_is_exact(normalizer, raw):
    text = normalizer.to_json()
    json.loads(text)  # plain JSON, no pickle
    restored = ObservationNormalizer.from_json(text)
    assert restored == normalizer
    np.testing.assert_array_equal(restored(raw), normalizer(raw))
    np.testing.assert_array_equal(restored.mean, normalizer.mean)
    with pytest.raises(ValueError, match="format"):
        ObservationNormalizer.from_dict({**normalizer.to_dict(), "format": 99})


def test_the_wrapper_feeds_the_agent_normalised_observations(train, normalizer):
    raw_env = StockTradingVecEnv(train, n_envs=2)
    wrapped = NormalizedObservations(StockTradingVecEnv(train, n_envs=2), normalizer)
    assert wrapped.observation_space.shape == raw_env.observation_space.shape
    np.testing.assert_array_equal(wrapped.reset(), normalizer(raw_env.reset()))
    actions = np.random.default_rng(1).uniform(-1, 1, size=(2, raw_env.action_space.shape[0]))
    wrapped_step, raw_step = wrapped.step(actions), raw_env.step(actions)
    np.testing.assert_array_equal(wrapped_step[0], normalizer(raw_step[0]))
    np.testing.assert_array_equal(wrapped_step[1], raw_step[1])


def test_predict_on_raw_observations_is_the_model_on_normalised_ones(policy, raw, tmp_path):
    actions, _ = policy.predict(raw, deterministic=True)
    direct, _ = policy.model.predict(policy.normalizer(raw), deterministic=True)
    np.testing.assert_array_equal(actions, direct)
    single, _ = policy.predict(raw[0], deterministic=True)
    np.testing.assert_array_equal(
        single, policy.model.predict(policy.normalizer(raw[0]), deterministic=True)[0]
    )
    assert single.shape == actions[0].shape
    restored = load_policy("ppo", policy.save(tmp_path / "agent"))
    assert restored.normalizer == policy.normalizer
    np.testing.assert_array_equal(restored.predict(raw, deterministic=True)[0], actions)


def test_pyfunc_round_trip_gives_the_same_actions(policy, raw, tmp_path):
    import mlflow

    from trading_core.agents.pyfunc import log_agent_model

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        experiment = mlflow.create_experiment("norm", artifact_location=(tmp_path / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment):
            info = log_agent_model(policy, "ppo")
        loaded = mlflow.pyfunc.load_model(info.model_uri)
    finally:
        mlflow.set_tracking_uri(previous)
    assert loaded.unwrap_python_model().model.normalizer == policy.normalizer
    np.testing.assert_array_equal(
        loaded.predict(pd.DataFrame(raw)), policy.predict(raw, deterministic=True)[0]
    )
