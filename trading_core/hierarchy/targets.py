"""The slow layer: a daily allocator's target weights, decided at close ``d-1``, and what the daily engine knows
there (the decision close and its spread, volume and volatility estimates) for every intraday session ``d``.

The estimates are the daily engine's own (:class:`~trading_core.market.simulator.PortfolioSimulator` builds them
from the daily panel); they and the weights are causal, so row ``d-1`` reads daily bars up to ``d-1`` only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from trading_core.allocators.config import AllocatorConfig
from trading_core.allocators.schedule import allocation_schedule, is_rebalance_day
from trading_core.hierarchy.sessions import IntradaySessions, exchange_calendar
from trading_core.market.arrays import MarketArrays
from trading_core.market.simulator import PortfolioSimulator, SimulationConfig


@dataclass(frozen=True)
class DailyTargets:
    """Per intraday session ``d`` (row) and ticker (column), what is known at the close of ``d-1``.

    :param dates: the S session dates
    :param decision_dates: the S previous daily dates ``d-1`` the targets were decided at
    :param weights: ``[S, N]`` target weights of equity
    :param rebalance: ``[S]`` whether session ``d`` trades to the weights (else the shares are held)
    :param decision_close: ``[S, N]`` the close of ``d-1``: the decision (arrival) price, which also marks
        the books before the session
    :param half_spread: ``[S, N]`` the daily engine's half-spread estimate at ``d-1``
    :param adv: ``[S, N]`` its average daily volume at ``d-1``
    :param sigma: ``[S, N]`` its daily return volatility at ``d-1``
    """

    dates: pd.DatetimeIndex
    decision_dates: pd.DatetimeIndex
    tickers: tuple[str, ...]
    weights: np.ndarray
    rebalance: np.ndarray
    decision_close: np.ndarray
    half_spread: np.ndarray
    adv: np.ndarray
    sigma: np.ndarray


SPLIT_TOLERANCE = 0.02  # a daily/intraday price ratio this close to k or 1/k (k whole) is a split of k


def split_factors(daily_bars: pd.DataFrame, sessions: IntradaySessions) -> np.ndarray:
    """Per ticker, the split ratio ``k`` (or ``1/k``) between the daily file's price units and the intraday
    file's: a daily file split-adjusted for later splits (AAPL 4:1 in 2020, AMZN 20:1 in 2022) prices 2019 bars
    at a quarter and a twentieth of what they traded at.

    The ratio of the daily close to the intraday file's last close of the first session is snapped to a whole
    ``k`` or ``1/k``: a unit conversion, the same for every session, whose snapping leaves no trace of the price.

    :param daily_bars: daily bars with ``date`` as datetimes
    :param sessions: the intraday sessions
    :return: ``[N]`` factors: daily price = factor * intraday price
    :raises ValueError: a ticker has no daily bar on the first session, or its ratio is no split ratio
    """
    first = sessions.dates[0]
    closes = daily_bars[daily_bars["date"] == first].set_index("tic")["close"]
    present = sessions.present[0]
    factors = np.ones(len(sessions.tickers))
    for column, ticker in enumerate(sessions.tickers):
        bars = np.flatnonzero(present[:, column])
        if ticker not in closes.index or not len(bars):
            raise ValueError(
                f"daily_bars: ticker {ticker} has no bar on {first.date()} to match the intraday bars"
            )
        ratio = float(closes[ticker]) / float(sessions.close[0, bars[-1], column])
        whole = max(round(ratio), 1) if ratio >= 1.0 else 1.0 / max(round(1.0 / ratio), 1)
        if abs(ratio / whole - 1.0) > SPLIT_TOLERANCE:
            raise ValueError(
                f"daily_bars: ticker {ticker} prices {ratio:.4f} x the intraday bars, no split ratio"
            )
        factors[column] = whole
    return factors


def in_intraday_units(daily_bars: pd.DataFrame, tickers: Sequence[str], factors: np.ndarray) -> pd.DataFrame:
    """Daily bars of ``tickers`` in the intraday file's units: prices divided and volumes multiplied by the
    ticker's split factor (returns, spreads and volatilities are unchanged)."""
    frame = daily_bars[daily_bars["tic"].isin(tickers)].copy()
    factor = frame["tic"].map(dict(zip(tickers, factors, strict=True))).to_numpy()
    for column in ("open", "high", "low", "close"):
        frame[column] = frame[column] / factor
    frame["volume"] = frame["volume"] * factor
    return frame


def daily_market(daily_bars: pd.DataFrame, tickers: Sequence[str]) -> MarketArrays:
    """The daily panel of ``tickers`` from long daily bars (``date`` as datetimes, OHLCV).

    :raises ValueError: a ticker has no daily bars
    """
    absent = sorted(set(tickers) - set(daily_bars["tic"].unique()))
    if absent:
        raise ValueError(f"daily_bars: no bars for ticker(s) {', '.join(absent)}")
    return MarketArrays.from_features(daily_bars, feature_names=[], tickers=tickers)


def previous_sessions(session_dates: pd.DatetimeIndex) -> pd.DatetimeIndex:
    """The exchange session before each of ``session_dates``: the close its targets are decided at."""
    calendar = exchange_calendar()
    return pd.DatetimeIndex([calendar.previous_session(d) for d in session_dates])


def daily_targets(
    market: MarketArrays,
    session_dates: pd.DatetimeIndex,
    allocator: AllocatorConfig,
    simulation: SimulationConfig,
) -> DailyTargets:
    """The slow layer's targets for every session of ``session_dates``, decided at the exchange close before it.

    :param market: the daily panel; it must hold the session before every session date (later dates are never
        read: the fits and estimates stop at the last decision)
    :param session_dates: the intraday sessions to execute
    :param allocator: the classical allocator and its refit interval (refits count from the first session)
    :param simulation: the daily engine's spread source and estimate windows
    :raises ValueError: the daily panel lacks the session before a session date
    """
    session_dates = pd.DatetimeIndex(session_dates)
    decisions = previous_sessions(session_dates)
    decision_rows = market.dates.get_indexer(decisions)
    missing = [d.date().isoformat() for d, r in zip(decisions, decision_rows, strict=True) if r < 0]
    if missing:
        raise ValueError(f"market: no daily bar on {', '.join(missing)}, the close(s) the sessions decide at")
    # The panel up to the last decision only: nothing after a decision can reach it.
    history = market.between(market.dates[0], market.dates[decision_rows.max()])
    schedule = allocation_schedule(history, allocator, start=decisions[0])
    weights = schedule.frame().reindex(decisions).to_numpy()
    offsets = decision_rows - decision_rows.min()
    engine = PortfolioSimulator(history, simulation)
    return DailyTargets(
        dates=session_dates,
        decision_dates=decisions,
        tickers=market.tickers,
        weights=weights,
        rebalance=np.array([is_rebalance_day(int(o), allocator) for o in offsets]),
        decision_close=market.close[decision_rows],
        half_spread=engine.half_spread[decision_rows],
        adv=engine.adv[decision_rows],
        sigma=engine.sigma[decision_rows],
    )


def target_shares(weights: np.ndarray, equity: np.ndarray, price: np.ndarray) -> np.ndarray:
    """Whole target shares ``floor(weights * equity / price)``, as the daily allocator backtest sizes them.

    :param weights: ``[N]`` target weights
    :param equity: ``[B]`` equity of each book at the decision close
    :param price: ``[N]`` the decision close
    :return: ``[B, N]`` target shares (0 where the price is unusable)
    """
    budget = weights[None, :] * equity[:, None]
    priced = np.isfinite(price) & (price > 0.0)
    shares = np.divide(budget, price[None, :], out=np.zeros_like(budget), where=priced[None, :])
    return np.floor(shares)


__all__ = [
    "DailyTargets",
    "daily_market",
    "daily_targets",
    "in_intraday_units",
    "previous_sessions",
    "split_factors",
    "target_shares",
]
