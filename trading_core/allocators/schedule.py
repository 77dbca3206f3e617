"""Target weights of a classical allocator through time, each fit only on returns up to its own close.

At a close ``t`` an allocator sees the trailing window of close-to-close returns ending at ``t`` (never a later
bar), keeps the assets that are tradable at ``t`` and have enough returns in the window, fits on the window's
complete rows (``sector_momentum`` also reads :attr:`MarketArrays.sectors`) and invests
:attr:`~AllocatorConfig.invest` of equity under the weight cap. It refits every
``rebalance_every`` bars from the period's first date and holds its weights in between. Non-tradable assets
(``market.tradable`` where the panel has it, or a missing price) get weight 0 and are left out of the fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from trading_core.allocators.config import AllocatorConfig
from trading_core.allocators.methods import cap_weights, fit_weights
from trading_core.market.arrays import MarketArrays


@dataclass(frozen=True)
class Allocation:
    """One fit: weights ``[N]`` of equity per asset (summing to at most ``invest``), and why the fit fell back to
    equal weights (``None`` when it did not)."""

    weights: np.ndarray
    fallback: str | None = None


@dataclass(frozen=True)
class AllocationSchedule:
    """Target weights ``[T, N]`` of a period, one row per date, and the optimiser failures on its refit dates."""

    dates: pd.DatetimeIndex
    tickers: tuple[str, ...]
    weights: np.ndarray
    fallbacks: tuple[tuple[pd.Timestamp, str], ...] = ()

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.weights, index=self.dates, columns=list(self.tickers))


@dataclass(frozen=True)
class ReturnsPanel:
    """Returns ``[T, N]`` (row r: close r-1 to close r, 0 where unusable), where they are usable (priced and
    tradable on both closes), where assets trade, and the assets' sectors (``None`` when the market carries
    none)."""

    returns: np.ndarray
    valid: np.ndarray
    live: np.ndarray
    sectors: np.ndarray | None = None


def returns_panel(market: MarketArrays) -> ReturnsPanel:
    """The close-to-close returns every trailing-window fit reads (allocators, the sizing layer)."""
    close = market.close
    live = np.isfinite(close) & (close > 0.0)
    tradable = getattr(market, "tradable", None)
    if tradable is not None:
        live &= np.asarray(tradable, dtype=bool)
    returns = np.zeros_like(close)
    with np.errstate(divide="ignore", invalid="ignore"):
        returns[1:] = close[1:] / close[:-1] - 1.0
    valid = np.zeros_like(live)
    valid[1:] = live[1:] & live[:-1]
    sectors = None if market.sectors is None else np.asarray(market.sectors, dtype=object)
    return ReturnsPanel(np.where(valid, returns, 0.0), valid, live, sectors)


def is_rebalance_day(day: int, config: AllocatorConfig) -> bool:
    """Whether bar ``day`` of a period (0 = its first date) refits and trades to the weights."""
    return day % config.rebalance_every == 0


def _allocate(panel: ReturnsPanel, day: int, config: AllocatorConfig) -> Allocation:
    """The fit at close ``day``: reads rows ``<= day`` of the panel only."""
    live = panel.live[day]
    rows = slice(max(1, day - config.window + 1), day + 1)
    valid = panel.valid[rows]
    eligible = live & (valid.sum(axis=0) >= config.history_needed)
    weights, fallback = np.zeros(len(live)), None
    # Warm-up (and equal weight itself): every tradable asset alike, no history needed.
    if config.method == "equal_weight" or eligible.sum() < 2:
        weights[live] = cap_weights(np.ones(live.sum()), config.cap)
        return Allocation(weights * config.invest)
    complete = valid[:, eligible].all(axis=1)
    if complete.sum() < config.history_needed:
        fitted = np.full(eligible.sum(), 1.0 / eligible.sum())
        fallback = f"only {complete.sum()} bars where all {eligible.sum()} eligible assets have returns"
    else:
        sectors = None if panel.sectors is None else panel.sectors[eligible]
        fitted, fallback = fit_weights(panel.returns[rows][complete][:, eligible], config, sectors)
    weights[eligible] = cap_weights(fitted, config.cap)
    return Allocation(weights * config.invest, fallback)


def _day_index(market: MarketArrays, day: int) -> int:
    if not -market.n_steps <= day < market.n_steps:
        raise IndexError(f"day {day} outside the panel's {market.n_steps} dates")
    return day % market.n_steps


def allocation_at(market: MarketArrays, day: int, config: AllocatorConfig) -> Allocation:
    """One fit at the close of bar ``day`` (negative counts from the end: ``-1`` is the latest close)."""
    return _allocate(returns_panel(market), _day_index(market, day), config)


def weights_at(market: MarketArrays, day: int, config: AllocatorConfig) -> np.ndarray:
    """The target weights ``[N]`` one fit at the close of bar ``day`` gives (see :func:`allocation_at`): a prior
    for a policy, or the live loop's target from its price history."""
    return allocation_at(market, day, config).weights


def allocation_schedule(
    market: MarketArrays,
    config: AllocatorConfig,
    start: pd.Timestamp | str | None = None,
    end: pd.Timestamp | str | None = None,
) -> AllocationSchedule:
    """Target weights of every date from ``start`` to ``end`` (inclusive; default the whole panel), refitted on
    the period's bars ``0, rebalance_every, ...`` and held in between (an asset that stops trading drops to 0).

    Pass the full panel: fits read the history before ``start`` too, never a bar after their own close.
    """
    dates = market.dates
    first = 0 if start is None else int(dates.searchsorted(pd.Timestamp(start)))
    stop = len(dates) if end is None else int(dates.searchsorted(pd.Timestamp(end), "right"))
    panel = returns_panel(market)
    weights = np.zeros((max(stop - first, 0), market.n_assets))
    fallbacks: list[tuple[pd.Timestamp, str]] = []
    current = np.zeros(market.n_assets)
    for offset, day in enumerate(range(first, stop)):
        if is_rebalance_day(offset, config):
            allocation = _allocate(panel, day, config)
            current = allocation.weights
            if allocation.fallback is not None:
                fallbacks.append((dates[day], allocation.fallback))
        weights[offset] = np.where(panel.live[day], current, 0.0)
    return AllocationSchedule(dates[first:stop], market.tickers, weights, tuple(fallbacks))


def weight_schedule(
    market: MarketArrays,
    config: AllocatorConfig,
    start: pd.Timestamp | str | None = None,
    end: pd.Timestamp | str | None = None,
) -> np.ndarray:
    """The weights ``[T, N]`` of :func:`allocation_schedule`, one row per date of ``market.between(start, end)``."""
    return allocation_schedule(market, config, start, end).weights


__all__ = [
    "Allocation",
    "AllocationSchedule",
    "allocation_at",
    "allocation_schedule",
    "ReturnsPanel",
    "is_rebalance_day",
    "returns_panel",
    "weight_schedule",
    "weights_at",
]
