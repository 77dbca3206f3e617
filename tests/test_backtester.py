"""The event-driven backtester equals the environment rollout and records trades, costs and interventions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from trading_core.agents.training import PPOConfig, train_ppo
from trading_core.envs.fast import ActionSpec, FastStockTradingEnv
from trading_core.envs.spec import EnvSpec
from trading_core.evaluation.backtester import EventDrivenBacktester, buy_and_hold_record
from trading_core.features.batch import build_features
from trading_core.market.arrays import MarketArrays
from trading_core.market.costs import CostModel, NoImpact, ProportionalCommission
from trading_core.market.execution import ExecutionConfig
from trading_core.market.limits import RiskLimits
from trading_core.market.simulator import SimulationConfig


@pytest.fixture(scope="module")
def features(slice_bars) -> pd.DataFrame:
    frame = build_features(slice_bars)
    return frame[frame["date"] >= "2018-06-01"].reset_index(drop=True)


class ScriptedPolicy:
    """Deterministic actions that depend on the observation, so feedback through holdings matters."""

    def predict(self, observation, deterministic=True):
        observation = np.asarray(observation, dtype=np.float64)
        n = (observation.shape[-1] - 1) // 11  # 1 + 2N + 9N with FinRL's 8 indicators and turbulence
        closes = observation[..., 1 : 1 + n]
        return np.sin(closes * 7.0 + observation[..., :1] * 1e-4).astype(np.float32), None


# The scripted policy speaks FinRL's share actions.
SHARES = ActionSpec(mode="shares", hmax=200)


def env_rollout(
    features: pd.DataFrame, config: SimulationConfig, policy, action: ActionSpec = SHARES
) -> np.ndarray:
    env = FastStockTradingEnv(features, config, action)
    observation, _ = env.reset()
    done = False
    while not done:
        action, _ = policy.predict(observation, deterministic=True)
        observation, _, done, _, _ = env.step(action)
    return np.asarray(env.equity_memory)


CONFIGS = {
    "default_costs_and_risk": SimulationConfig(risk=RiskLimits(max_weight=0.3, var_limit=0.01)),
    "finrl_parity": SimulationConfig.finrl_parity(),
    "limit_orders": SimulationConfig(execution=ExecutionConfig(order_type="limit", limit_offset_bps=20.0)),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_backtest_equals_environment_rollout(features, name):
    config = CONFIGS[name]
    record = EventDrivenBacktester(features, config, SHARES).run(ScriptedPolicy())
    expected = env_rollout(features, config, ScriptedPolicy())
    np.testing.assert_array_equal(record.equity.to_numpy(), expected)


def test_backtest_of_a_trained_agent_equals_its_rollout(features):
    spec = EnvSpec(n_envs=2)
    model = train_ppo(features, spec, PPOConfig(total_timesteps=256, n_steps=128, batch_size=64), seed=1)
    record = EventDrivenBacktester(features, spec.simulation, spec.action).run(model)
    np.testing.assert_array_equal(
        record.equity.to_numpy(), env_rollout(features, spec.simulation, model, spec.action)
    )


def test_record_accounts_for_every_dollar(features):
    config = SimulationConfig(risk=None)
    record = EventDrivenBacktester(features, config, SHARES).run(ScriptedPolicy())
    market = MarketArrays.from_features(features)
    trades = record.trades
    assert len(trades) > 0
    costs = trades[["commission", "spread_cost", "impact_cost"]]
    assert (costs >= 0).all().all() and costs.sum().sum() > 0
    assert record.costs.sum() == pytest.approx(costs.sum().sum())
    # Final equity = initial cash - what was paid for shares - costs + value of what is held.
    cash_spent = (trades["shares"] * trades["price"]).sum() + trades["commission"].sum()
    held_value = (record.positions.iloc[-1].to_numpy() * market.close[-1]).sum()
    assert record.equity.iloc[-1] == pytest.approx(config.initial_amount - cash_spent + held_value, rel=1e-10)
    # Positions are the running sum of fills.
    filled = trades.pivot_table(index="date", columns="tic", values="shares", aggfunc="sum")
    filled = filled.reindex(index=record.positions.index, columns=record.positions.columns).fillna(0.0)
    pd.testing.assert_frame_equal(filled.cumsum(), record.positions, check_names=False)


def test_orders_fill_on_the_bar_after_the_decision(features):
    config = SimulationConfig(
        cost_model=CostModel(ProportionalCommission(0.0), NoImpact()), spread="none", risk=None
    )
    record = EventDrivenBacktester(features, config, SHARES).run(ScriptedPolicy())
    market = MarketArrays.from_features(features)
    day_of = {date: i for i, date in enumerate(market.dates)}
    for trade in record.trades.itertuples():
        day = day_of[trade.date]
        assert day >= 1
        assert trade.price == pytest.approx(market.open[day, market.tickers.index(trade.tic)])


def test_risk_interventions_are_recorded_with_reasons(features):
    config = SimulationConfig(risk=RiskLimits(max_weight=0.05, var_limit=0.002))
    record = EventDrivenBacktester(features, config, ActionSpec(mode="shares", hmax=500)).run(
        ScriptedPolicy()
    )
    assert not record.interventions.empty
    assert {"max_weight"} <= set(record.interventions["rule"])
    assert record.interventions["reason"].str.len().min() > 10
    weights = (record.positions * MarketArrays.from_features(features).close).div(record.equity, axis=0)
    # Weights drift with prices after the fill, but stay near the limit.
    assert weights.to_numpy().max() < 0.05 * 1.5


def test_buy_and_hold_benchmark_pays_the_same_costs(features):
    config = SimulationConfig()
    record = buy_and_hold_record(features, config)
    first_fill = record.trades["date"].min()
    assert (record.trades["date"] == first_fill).all()  # one purchase, then hold
    assert len(record.trades) == 4 and record.costs.sum() > 0
