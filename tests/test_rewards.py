"""Every reward kind computes what it claims on hand-worked numbers, and both environments use it."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from trading_core.envs.fast import ActionSpec, FastStockTradingEnv, StockTradingVecEnv
from trading_core.envs.rewards import PortfolioReward, RewardConfig
from trading_core.features.batch import build_features
from trading_core.market.simulator import SimulationConfig


def reward_of(config: RewardConfig, start: float = 100.0, n_envs: int = 1) -> PortfolioReward:
    reward = PortfolioReward(config, n_envs)
    reward.reset(np.full(n_envs, start))
    return reward


def test_log_return_is_the_log_of_the_equity_ratio():
    reward = reward_of(RewardConfig(), n_envs=2)
    rewards = reward(np.array([100.0, 100.0]), np.array([110.0, 95.0]), np.zeros(2))
    np.testing.assert_allclose(rewards, [math.log(1.1), math.log(0.95)], rtol=1e-15)
    scaled = reward_of(RewardConfig(scale=100.0))(np.array([100.0]), np.array([110.0]), np.zeros(1))
    assert scaled[0] == pytest.approx(100 * math.log(1.1), rel=1e-15)


def test_turnover_and_drawdown_penalties():
    config = RewardConfig(turnover_penalty=0.1, drawdown_penalty=0.5)
    reward = reward_of(config)
    # Up to a new peak of 110 while trading 50 (half the equity before): no drawdown, turnover 0.5.
    first = reward(np.array([100.0]), np.array([110.0]), np.array([50.0]))
    assert first[0] == pytest.approx(math.log(1.1) - 0.1 * 0.5, rel=1e-14)
    # Down to 99 without trading: drawdown 1 - 99/110 = 0.1 from the peak.
    second = reward(np.array([110.0]), np.array([99.0]), np.array([0.0]))
    assert second[0] == pytest.approx(math.log(0.9) - 0.5 * 0.1, rel=1e-14)
    # reset() forgets the peak.
    reward.reset(np.array([99.0]))
    assert reward(np.array([99.0]), np.array([99.0]), np.array([0.0]))[0] == 0.0


def test_value_change_is_finrls_scaled_change_in_value():
    reward = reward_of(RewardConfig(kind="value_change"))
    assert reward(np.array([100_000.0]), np.array([100_250.0]), np.array([9_000.0]))[0] == pytest.approx(
        250.0 * 1e-4, rel=1e-15
    )
    penalised = reward_of(RewardConfig(kind="value_change", value_scaling=1e-3, turnover_penalty=0.01))
    value = penalised(np.array([1_000.0]), np.array([1_010.0]), np.array([500.0]))[0]
    # The penalty is in dollars: 0.01 * 500 / 1000 of the equity before.
    assert value == pytest.approx((10.0 - 1_000.0 * 0.01 * 0.5) * 1e-3, rel=1e-14)


def test_differential_sharpe_follows_moody_and_saffell():
    eta = 0.1
    reward = reward_of(RewardConfig(kind="differential_sharpe", sharpe_eta=eta))
    equity = [100.0, 101.0, 99.0, 102.0]
    returns = [math.log(b / a) for a, b in zip(equity, equity[1:], strict=False)]
    rewards = [
        reward(np.array([a]), np.array([b]), np.zeros(1))[0] for a, b in zip(equity, equity[1:], strict=False)
    ]
    # By hand: A_0 = B_0 = 0 has no variance, so D_1 = 0.
    a, b = 0.0, 0.0
    expected = []
    for r in returns:
        variance = b - a * a
        d = 0.0 if variance <= 0 else (b * (r - a) - 0.5 * a * (r * r - b)) / variance**1.5
        expected.append(d)
        a, b = a + eta * (r - a), b + eta * (r * r - b)
    assert expected[0] == 0.0 and expected[1] < 0 < expected[2]  # a loss lowers the Sharpe, a gain raises it
    np.testing.assert_allclose(rewards, expected, rtol=1e-12)
    # The second step by hand: A_1 = 0.1 r1, B_1 = 0.1 r1^2.
    r1, r2 = returns[0], returns[1]
    a1, b1 = eta * r1, eta * r1 * r1
    by_hand = (b1 * (r2 - a1) - 0.5 * a1 * (r2 * r2 - b1)) / (b1 - a1 * a1) ** 1.5
    assert rewards[1] == pytest.approx(by_hand, rel=1e-12)


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError, match="reward kind"):
        RewardConfig(kind="sortino")
    with pytest.raises(ValueError, match="eta"):
        RewardConfig(sharpe_eta=0.0)
    with pytest.raises(ValueError, match="non-negative"):
        RewardConfig(turnover_penalty=-1.0)


@pytest.fixture(scope="module")
def features(slice_bars) -> pd.DataFrame:
    frame = build_features(slice_bars)
    return frame[frame["date"] >= "2019-06-01"].reset_index(drop=True)


@pytest.mark.parametrize(
    "action",
    [
        ActionSpec(),
        ActionSpec(reward=RewardConfig(kind="differential_sharpe", turnover_penalty=0.01)),
        ActionSpec.finrl(),
    ],
    ids=["log_return", "differential_sharpe", "finrl_value_change"],
)
def test_both_environments_reward_through_the_config(features, action):
    config = SimulationConfig()
    steps = features["date"].nunique() - 1
    size = action.action_size(4)
    actions = np.random.default_rng(3).uniform(-1, 1, size=(steps, 2, size)).astype(np.float32)
    vec = StockTradingVecEnv(features, config, n_envs=2, action=action)
    vec.reset()
    single = FastStockTradingEnv(features, config, action=action)
    single.reset()
    reference = PortfolioReward(action.reward, 1)
    reference.reset(np.array([config.initial_amount]))
    for step in range(steps):
        _, vec_rewards, _, _ = vec.step(actions[step])
        _, reward, _, _, _ = single.step(actions[step, 0])
        outcome = single.last_outcome
        assert reward == pytest.approx(float(reference.step(outcome)[0]), rel=1e-12, abs=1e-15)
        assert vec_rewards[0] == pytest.approx(reward, rel=1e-6, abs=1e-9)
        if action.reward.kind == "log_return":
            assert reward == pytest.approx(
                math.log(outcome.equity_after[0] / outcome.equity_before[0]), rel=1e-12
            )
