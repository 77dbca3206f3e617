"""Classical allocators backtested as candidates, through the same backtester, costs and risk manager as the
agents.

:func:`allocator_targets` turns a weight schedule into the backtester's decision function: on a rebalance date
the weights become target shares at the close (whole shares unless the simulation trades fractional ones), in
between the shares are held, so an allocator only trades on its rebalance dates. :func:`backtest_allocators`
fits each allocator on the full history up to each date and backtests it on one period; ``sector_momentum``
reads the market's sector labels (:attr:`MarketArrays.sectors`, or the ``sectors`` given here) and without them
holds plain momentum, saying so in each fit's fallback.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from trading_core.allocators.config import ALLOCATORS, AllocatorConfig, AllocatorMethod
from trading_core.allocators.schedule import AllocationSchedule, allocation_schedule, is_rebalance_day
from trading_core.envs.spec import EnvSpec
from trading_core.evaluation.backtester import BacktestRecord, Decide, EventDrivenBacktester
from trading_core.evaluation.metrics import PerformanceMetrics, compute_metrics
from trading_core.market.arrays import MarketArrays, as_market
from trading_core.market.simulator import PortfolioSimulator, SimulationConfig
from trading_core.sectors.classification import with_sectors


def allocator_targets(schedule: np.ndarray, config: AllocatorConfig) -> Decide:
    """The decision function of a weight schedule ``[T, N]`` aligned with the backtest's dates: target shares
    ``weights * equity / close`` on rebalance dates (every portfolio of the batch alike), the current holdings
    on every other date."""

    def decide(day: int, simulator: PortfolioSimulator) -> np.ndarray:
        if not is_rebalance_day(day, config):
            return simulator.holdings.copy()
        prices = simulator.prices
        budget = schedule[day] * simulator.equity()[:, None]
        priced = np.isfinite(prices) & (prices > 0.0)
        shares = np.divide(budget, prices, out=np.zeros_like(budget), where=priced)
        return np.floor(shares) if simulator.config.execution.whole_shares else shares

    return decide


@dataclass(frozen=True)
class AllocatorBacktest:
    """One allocator on one period: its weights, backtest record and metrics, and what it took.

    :param fit_seconds: wall time of the weight schedule (the fits)
    :param backtest_seconds: wall time of the event-driven backtest
    """

    method: AllocatorMethod
    schedule: AllocationSchedule
    record: BacktestRecord
    metrics: PerformanceMetrics
    fit_seconds: float
    backtest_seconds: float


def simulation_of(env_spec: EnvSpec) -> SimulationConfig:
    """The simulation the agents of ``env_spec`` are backtested under (FinRL's engine: its costs, same-close
    fills and no risk manager, as its benchmark)."""
    if env_spec.engine == "fast":
        return env_spec.simulation
    return SimulationConfig.finrl_parity(env_spec.initial_amount, env_spec.finrl_cost_pct)


def backtest_allocator(
    market: pd.DataFrame | MarketArrays,
    start: pd.Timestamp | str,
    end: pd.Timestamp | str,
    simulation: SimulationConfig,
    config: AllocatorConfig,
    sectors: Mapping[str, str] | pd.DataFrame | None = None,
) -> AllocatorBacktest:
    """Backtest one allocator on the dates from ``start`` to ``end`` of the full panel ``market``; its fits read
    the history before ``start`` and never a bar after their own close.

    :param sectors: ticker -> sector (or a sector map frame) to label the market with; default the market's own
        :attr:`~MarketArrays.sectors`
    """
    market = as_market(market)
    if sectors is not None:
        market = with_sectors(market, sectors)
    history = market.between(market.dates[0], end)
    began = time.perf_counter()
    schedule = allocation_schedule(history, config, start=start)
    fitted = time.perf_counter()
    record = EventDrivenBacktester(history.between(start, end), simulation).run_targets(
        allocator_targets(schedule.weights, config)
    )
    done = time.perf_counter()
    return AllocatorBacktest(
        method=config.method,
        schedule=schedule,
        record=record,
        metrics=compute_metrics(record.equity, record.traded_notional, record.costs),
        fit_seconds=fitted - began,
        backtest_seconds=done - fitted,
    )


def backtest_allocators(
    market: pd.DataFrame | MarketArrays,
    start: pd.Timestamp | str,
    end: pd.Timestamp | str,
    env_spec: EnvSpec,
    config: AllocatorConfig | None = None,
    methods: Sequence[AllocatorMethod] = ALLOCATORS,
    sectors: Mapping[str, str] | pd.DataFrame | None = None,
) -> dict[AllocatorMethod, AllocatorBacktest]:
    """:func:`backtest_allocator` for every method on one period, under the simulation the agents of
    ``env_spec`` are backtested in; ``config`` gives every other setting (default :class:`AllocatorConfig`).

    :param sectors: ticker -> sector (or a :func:`~trading_core.sectors.sector_map` frame) for
        ``sector_momentum``; default the market's own :attr:`~MarketArrays.sectors`
    """
    market, base = as_market(market), config if config is not None else AllocatorConfig()
    if sectors is not None:
        market = with_sectors(market, sectors)
    simulation = simulation_of(env_spec)
    return {
        method: backtest_allocator(market, start, end, simulation, replace(base, method=method))
        for method in methods
    }


__all__ = [
    "AllocatorBacktest",
    "allocator_targets",
    "backtest_allocator",
    "backtest_allocators",
    "simulation_of",
]
