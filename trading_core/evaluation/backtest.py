"""Out-of-sample evaluation of a policy on the test period, against equal-weight buy-and-hold."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from trading_core.envs.spec import EnvSpec, TradingEnvConfig, make_stock_trading_env
from trading_core.evaluation.backtester import BacktestRecord, EventDrivenBacktester, buy_and_hold_record
from trading_core.evaluation.metrics import PerformanceMetrics, compute_metrics


@dataclass(frozen=True)
class BacktestResult:
    """Equity curves and metrics of the agent and of the benchmark over the same dates."""

    equity: pd.Series
    benchmark_equity: pd.Series
    metrics: PerformanceMetrics
    benchmark_metrics: PerformanceMetrics
    actions: pd.DataFrame
    total_cost: float
    trades: int
    record: BacktestRecord | None = None


def rollout_policy(
    policy, features: pd.DataFrame, env_config: TradingEnvConfig
) -> tuple[pd.Series, pd.DataFrame, float, int]:
    """Step the environment with a policy's deterministic actions from the first to the last date.

    :param policy: anything with SB3's ``predict(obs, deterministic=True)``
    :return: portfolio value per date, shares traded per date and asset, total cost, number of trades
    """
    env = make_stock_trading_env(features, env_config)
    observation, _ = env.reset(seed=0)
    done = False
    while not done:
        action, _ = policy.predict(np.asarray(observation, dtype=np.float32), deterministic=True)
        observation, _, done, _, _ = env.step(action)
    equity = pd.Series(env.asset_memory, index=pd.DatetimeIndex(env.date_memory), name="portfolio_value")
    tickers = features.sort_values(["date", "tic"])["tic"].unique()
    actions = pd.DataFrame(env.actions_memory, index=pd.DatetimeIndex(env.date_memory[:-1]), columns=tickers)
    return equity, actions, float(env.cost), int(env.trades)


def equal_weight_buy_and_hold(features: pd.DataFrame, initial_amount: float, cost_pct: float) -> pd.Series:
    """Value of buying equal dollar amounts of every asset at the first close (paying ``cost_pct``) and holding."""
    closes = features.pivot(index="date", columns="tic", values="close").sort_index()
    budget = initial_amount / closes.shape[1] / (1.0 + cost_pct)
    shares = budget / closes.iloc[0]
    equity = (closes * shares).sum(axis=1)
    equity.iloc[0] = initial_amount
    return equity.rename("buy_and_hold_value")


def backtest_policy(policy, test_features: pd.DataFrame, env_config: TradingEnvConfig) -> BacktestResult:
    """Backtest a policy on the test period and the equal-weight buy-and-hold benchmark with the same costs."""
    equity, actions, cost, trades = rollout_policy(policy, test_features, env_config)
    benchmark = equal_weight_buy_and_hold(test_features, env_config.initial_amount, env_config.cost_pct)
    return BacktestResult(
        equity=equity,
        benchmark_equity=benchmark,
        metrics=compute_metrics(equity),
        benchmark_metrics=compute_metrics(benchmark),
        actions=actions,
        total_cost=cost,
        trades=trades,
    )


def run_backtest(policy, test_features: pd.DataFrame, env_spec: EnvSpec) -> BacktestResult:
    """Backtest a policy in the engine it trained in, against equal-weight buy-and-hold under the same costs.

    The fast engine replays the period through the event-driven backtester (next-bar fills, costs split into
    commission, spread and impact, risk interventions recorded); the FinRL engine rolls out FinRL's own env.
    """
    if env_spec.engine == "finrl":
        return backtest_policy(policy, test_features, env_spec.finrl_config())
    backtester = EventDrivenBacktester(test_features, env_spec.simulation, hmax=env_spec.hmax)
    record = backtester.run(policy)
    benchmark = buy_and_hold_record(backtester.market, env_spec.simulation)
    actions = record.positions.diff().fillna(0.0)
    return BacktestResult(
        equity=record.equity,
        benchmark_equity=benchmark.equity.rename("buy_and_hold_value"),
        metrics=compute_metrics(record.equity, record.traded_notional, record.costs),
        benchmark_metrics=compute_metrics(benchmark.equity, benchmark.traded_notional, benchmark.costs),
        actions=actions,
        total_cost=float(record.costs.sum()),
        trades=len(record.trades),
        record=record,
    )
