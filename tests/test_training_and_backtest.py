"""Training is reproducible; the backtest and buy-and-hold benchmark compute what they claim."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from trading_core.agents.training import PPOConfig, policy_actions, train_ppo
from trading_core.data.splits import apply_split, make_date_split
from trading_core.envs.finrl import TradingEnvConfig, make_stock_trading_env, rollout_policy
from trading_core.envs.spec import EnvSpec
from trading_core.evaluation.backtester import equal_weight_buy_and_hold, run_backtest
from trading_core.features.batch import build_features

TINY = PPOConfig(total_timesteps=256, n_steps=128, batch_size=64)


@pytest.fixture(scope="module")
def parts(slice_bars) -> dict[str, pd.DataFrame]:
    features = build_features(slice_bars)
    return apply_split(features, make_date_split(features["date"]))


class HoldEverything:
    """A policy that buys the maximum every day (action +1 for every asset)."""

    def predict(self, observation, deterministic=True):
        return np.ones(4, dtype=np.float32), None


@pytest.mark.parametrize("engine", ["fast", "finrl"])
def test_same_seed_same_policy_different_seed_differs(parts, engine):
    env_spec = EnvSpec(engine=engine)
    first = train_ppo(parts["train"], env_spec, TINY, seed=3)
    second = train_ppo(parts["train"], env_spec, TINY, seed=3)
    other = train_ppo(parts["train"], env_spec, TINY, seed=4)
    env = make_stock_trading_env(parts["validation"], env_spec.finrl_config())
    observation, _ = env.reset(seed=0)
    batch = np.stack([observation] * 2)
    assert np.array_equal(policy_actions(first, batch), policy_actions(second, batch))
    for a, b in zip(first.model.policy.parameters(), second.model.policy.parameters(), strict=True):
        assert np.array_equal(a.detach().numpy(), b.detach().numpy())
    assert any(
        not np.array_equal(a.detach().numpy(), b.detach().numpy())
        for a, b in zip(first.model.policy.parameters(), other.model.policy.parameters(), strict=True)
    )
    result_a = run_backtest(first, parts["test"], env_spec)
    result_b = run_backtest(second, parts["test"], env_spec)
    assert result_a.metrics == result_b.metrics
    pd.testing.assert_series_equal(result_a.equity, result_b.equity)


def test_rollout_accounts_cash_shares_and_costs(parts):
    config = TradingEnvConfig(initial_amount=1_000_000, hmax=10, cost_pct=0.001)
    test = parts["test"]
    equity, actions, cost, trades = rollout_policy(HoldEverything(), test, config)
    closes = test.pivot(index="date", columns="tic", values="close").sort_index()
    assert equity.index.equals(pd.DatetimeIndex(closes.index))
    assert (actions.to_numpy() == 10).all()  # always affordable with this much cash
    shares = actions.cumsum()
    spent = (actions * closes.iloc[: len(actions)].to_numpy()).sum(axis=1).cumsum() * (1 + config.cost_pct)
    expected = (
        config.initial_amount - spent + (shares * closes.iloc[1 : len(actions) + 1].to_numpy()).sum(axis=1)
    )
    np.testing.assert_allclose(equity.iloc[1:].to_numpy(), expected.to_numpy(), rtol=1e-12)
    assert cost == pytest.approx(
        (actions * closes.iloc[: len(actions)].to_numpy()).to_numpy().sum() * config.cost_pct
    )
    assert trades == actions.size


def test_buy_and_hold_matches_hand_computation(parts):
    test = parts["test"]
    equity = equal_weight_buy_and_hold(test, 100_000, 0.001)
    closes = test.pivot(index="date", columns="tic", values="close").sort_index()
    per_asset = 100_000 / 4 / 1.001
    expected_last = (per_asset / closes.iloc[0] * closes.iloc[-1]).sum()
    assert equity.iloc[0] == 100_000
    assert equity.iloc[-1] == pytest.approx(expected_last, rel=1e-12)


def test_environment_rejects_ragged_panels(parts):
    ragged = parts["test"].drop(index=parts["test"].index[1])
    with pytest.raises(ValueError, match="every ticker on every date"):
        make_stock_trading_env(ragged, TradingEnvConfig())
