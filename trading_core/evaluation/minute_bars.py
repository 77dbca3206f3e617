"""An agent on minute bars: its training budget, the intraday annualisation, its backtest after costs against
equal-weight buy-and-hold, and its leaderboard rows.

Everything runs on the daily pipeline's machinery (the fast environment, PPO recipe, event-driven backtester,
costs, fills and risk manager): a step is a bar, so only the annualisation changes. A year holds 252 sessions of
390 regular minutes, i.e. ``252 * 390 / bar_minutes`` bars (6,552 fifteen-minute bars); VaR stays per bar.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pandas as pd

from trading_core.agents.training import CANDIDATE_SEED, PPOConfig
from trading_core.envs.spec import EnvSpec
from trading_core.evaluation.backtester import (
    BacktestRecord,
    BacktestResult,
    EventDrivenBacktester,
    buy_and_hold_record,
)
from trading_core.evaluation.leaderboard import BENCHMARK
from trading_core.evaluation.metrics import PerformanceMetrics, compute_metrics
from trading_core.market.arrays import MarketArrays, as_market
from trading_core.market.measures import PERIODS_PER_YEAR

REGULAR_SESSION_MINUTES = 390  # 09:30 to 16:00 exchange time
MINUTE_CANDIDATE = "ppo_minute_bars"
LEADERBOARD_COLUMNS: tuple[str, ...] = (
    "candidate",
    "kind",
    "bar_minutes",
    "periods_per_year",
    "validation_sharpe",
    "test_sharpe",
    "test_return",
    "test_max_drawdown",
    "test_turnover",
    "test_cost_drag",
    "test_var_95",
    "test_bars",
    "sharpe_vs_buy_and_hold",
    "return_vs_buy_and_hold",
)


@dataclass(frozen=True)
class MinuteRecipe:
    """The minute agent's PPO budget: the pipeline's PPO recipe with a small, seeded budget (about a minute on two
    cores for the shared 15-minute file).

    :param total_timesteps: environment steps trained
    :param n_steps: rollout length per environment
    :param batch_size: PPO minibatch size
    :param seed: seeds Python, NumPy, torch and the environments
    """

    total_timesteps: int = 4096
    n_steps: int = 256
    batch_size: int = 128
    seed: int = CANDIDATE_SEED

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError(f"MinuteRecipe.seed must be at least 0, got {self.seed}")
        self.ppo_config()  # PPOConfig checks the budget

    def ppo_config(self) -> PPOConfig:
        """The pipeline's PPO recipe under this budget."""
        return replace(
            PPOConfig(),
            total_timesteps=self.total_timesteps,
            n_steps=self.n_steps,
            batch_size=self.batch_size,
        )


def bars_per_session(bar_length: pd.Timedelta) -> int:
    """Bars of a full regular session (390 minutes) at ``bar_length``.

    :raises ValueError: a bar length that does not divide the session
    """
    minutes = bar_length / pd.Timedelta(minutes=1)
    count = REGULAR_SESSION_MINUTES / minutes
    if minutes <= 0 or count != int(count):
        raise ValueError(
            f"bar length {bar_length} does not divide a {REGULAR_SESSION_MINUTES}-minute session"
        )
    return int(count)


def intraday_periods_per_year(bar_length: pd.Timedelta) -> int:
    """Bars a year at ``bar_length``: 252 sessions times :func:`bars_per_session`."""
    return PERIODS_PER_YEAR * bars_per_session(bar_length)


def _metrics(record: BacktestRecord, periods_per_year: float) -> PerformanceMetrics:
    return compute_metrics(
        record.equity, record.traded_notional, record.costs, periods_per_year=periods_per_year
    )


def intraday_backtest(
    policy, market: pd.DataFrame | MarketArrays, env_spec: EnvSpec, periods_per_year: float
) -> BacktestResult:
    """Backtest a policy on intraday bars in the fast engine against equal-weight buy-and-hold under the same costs
    (:func:`~trading_core.evaluation.backtester.run_backtest`'s replay), annualised over ``periods_per_year`` bars.

    :param policy: anything with SB3's ``predict``
    :param market: the test period (features frame or arrays)
    :param env_spec: the environment the policy trained in (the fast engine)
    :param periods_per_year: bars a year (:func:`intraday_periods_per_year`)
    :raises ValueError: the FinRL engine, which has no intraday replay
    """
    if env_spec.engine != "fast":
        raise ValueError(
            "intraday backtests run in the fast engine; FinRL's environment steps daily bars only"
        )
    backtester = EventDrivenBacktester(as_market(market), env_spec.simulation, env_spec.engine_action)
    record = backtester.run(policy)
    benchmark = buy_and_hold_record(backtester.market, env_spec.simulation)
    return BacktestResult(
        equity=record.equity,
        benchmark_equity=benchmark.equity.rename("buy_and_hold_value"),
        metrics=_metrics(record, periods_per_year),
        benchmark_metrics=_metrics(benchmark, periods_per_year),
        actions=record.positions.diff().fillna(0.0),
        total_cost=float(record.costs.sum()),
        trades=len(record.trades),
        record=record,
    )


def leaderboard_rows(
    test: BacktestResult,
    validation: BacktestResult,
    bar_length: pd.Timedelta,
    candidate: str = MINUTE_CANDIDATE,
) -> pd.DataFrame:
    """The agent's and buy-and-hold's figures after costs, one row each, agent first: validation Sharpe (what
    would choose), test figures (what is reported).

    :param test: the agent's :func:`intraday_backtest` over the test sessions
    :param validation: the same over the validation sessions
    :param bar_length: the bars' length
    :param candidate: the agent's name on the board
    """
    periods = intraday_periods_per_year(bar_length)
    agent, benchmark = test.metrics, test.benchmark_metrics

    def row(name: str, kind: str, metrics: PerformanceMetrics, validation: float) -> dict[str, object]:
        return {
            "candidate": name,
            "kind": kind,
            "bar_minutes": int(bar_length / pd.Timedelta(minutes=1)),
            "periods_per_year": periods,
            "validation_sharpe": float(validation),
            "test_sharpe": metrics.sharpe,
            "test_return": metrics.total_return,
            "test_max_drawdown": metrics.max_drawdown + 0.0,
            "test_turnover": metrics.turnover,
            "test_cost_drag": metrics.cost_drag,
            "test_var_95": metrics.var_95,
            "test_bars": metrics.days,
            "sharpe_vs_buy_and_hold": metrics.sharpe - benchmark.sharpe,
            "return_vs_buy_and_hold": metrics.total_return - benchmark.total_return,
        }

    rows = [
        row(candidate, "agent", agent, validation.metrics.sharpe),
        row(BENCHMARK, "benchmark", benchmark, validation.benchmark_metrics.sharpe),
    ]
    return pd.DataFrame(rows, columns=list(LEADERBOARD_COLUMNS))


__all__ = [
    "LEADERBOARD_COLUMNS",
    "MINUTE_CANDIDATE",
    "REGULAR_SESSION_MINUTES",
    "MinuteRecipe",
    "bars_per_session",
    "intraday_backtest",
    "intraday_periods_per_year",
    "leaderboard_rows",
]
