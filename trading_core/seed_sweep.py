"""Seed variance as a first-class result: the same training recipe under several seeds, each evaluated out of
sample, and the distribution of every metric across seeds."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from trading_core.agents.zoo import AgentConfig, train_agent
from trading_core.backtest import run_backtest
from trading_core.distributed import fan_out, single_torch_thread
from trading_core.environment import EnvSpec
from trading_core.metrics import PERIODS_PER_YEAR, daily_returns


@dataclass(frozen=True)
class SeedTask:
    """One training run of the sweep."""

    algorithm: str
    seed: int
    config: AgentConfig
    env_spec: EnvSpec
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame


@dataclass(frozen=True)
class SeedOutcome:
    """Validation and test results of one seed."""

    algorithm: str
    seed: int
    validation_sharpe: float
    test_sharpe: float
    test_return: float
    test_max_drawdown: float
    test_returns: pd.Series


def train_and_evaluate(task: SeedTask) -> SeedOutcome:
    """Train one seed and backtest it on validation and test (module level so Ray can ship it)."""
    with single_torch_thread():
        policy = train_agent(task.algorithm, task.train, task.env_spec, task.config, seed=task.seed)
        validation = run_backtest(policy, task.validation, task.env_spec)
        test = run_backtest(policy, task.test, task.env_spec)
    return SeedOutcome(
        algorithm=task.algorithm,
        seed=task.seed,
        validation_sharpe=validation.metrics.sharpe,
        test_sharpe=test.metrics.sharpe,
        test_return=test.metrics.total_return,
        test_max_drawdown=test.metrics.max_drawdown,
        test_returns=daily_returns(test.equity),
    )


def run_seed_sweep(tasks: list[SeedTask], use_ray: bool = True) -> list[SeedOutcome]:
    """Every task of the sweep, fanned out over Ray (or run in turn)."""
    return fan_out(train_and_evaluate, tasks, use_ray=use_ray)


def seed_table(outcomes: list[SeedOutcome]) -> pd.DataFrame:
    """One row per seed."""
    return pd.DataFrame(
        [
            {
                "algorithm": o.algorithm,
                "seed": o.seed,
                "validation_sharpe": o.validation_sharpe,
                "test_sharpe": o.test_sharpe,
                "test_return": o.test_return,
                "test_max_drawdown": o.test_max_drawdown,
            }
            for o in outcomes
        ]
    )


def distribution(table: pd.DataFrame) -> pd.DataFrame:
    """Min, 25th percentile, median, mean, std and max of every metric across seeds."""
    metrics = table.drop(columns=["algorithm", "seed"])
    return pd.DataFrame(
        {
            "min": metrics.min(),
            "p25": metrics.quantile(0.25),
            "median": metrics.median(),
            "mean": metrics.mean(),
            "std": metrics.std(ddof=1) if len(metrics) > 1 else 0.0,
            "max": metrics.max(),
        }
    )


def per_period_sharpe_variance(outcomes: list[SeedOutcome]) -> float:
    """Variance across seeds of the per-period (daily) test Sharpe, the V of the deflated Sharpe ratio."""
    annual = np.array([o.test_sharpe for o in outcomes])
    return float(np.var(annual / np.sqrt(PERIODS_PER_YEAR), ddof=1)) if len(annual) > 1 else 0.0
