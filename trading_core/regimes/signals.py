"""The market's daily signals the regime model reads: equal-weight return and its trailing volatility.

Batch (:func:`market_signals`) and streaming (:class:`MarketSignalStream`) share the two step functions below, so
the stream repeats the batch's arithmetic value for value (bit-equal on the same bars).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from trading_core.regimes.settings import RegimeConfig

SIGNAL_COLUMNS: tuple[str, ...] = ("market_return", "market_volatility")
_BAR_COLUMNS = ("date", "tic", "close")


def equal_weight_return(previous: np.ndarray, current: np.ndarray) -> float:
    """The mean close-to-close return of the tickers with a close on both dates (NaN marks a missing one).

    :param previous: closes of the previous date, in a fixed ticker order
    :param current: closes of this date, in the same order
    :return: the mean return, or NaN when no ticker has both closes
    """
    returns = current / previous - 1.0
    valid = returns[np.isfinite(returns)]
    return float(valid.mean()) if valid.size else float("nan")


def trailing_volatility(returns: np.ndarray) -> float:
    """The sample standard deviation of one window of market returns; NaN when one of them is missing.

    :param returns: the window's market returns, oldest first
    """
    if not np.isfinite(returns).all():
        return float("nan")
    return float(np.std(returns, ddof=1))


def _check_window(volatility_window: int) -> None:
    if volatility_window < 2:
        raise ValueError(f"volatility_window must be at least 2, got {volatility_window}")


def market_signals(
    bars: pd.DataFrame, volatility_window: int = RegimeConfig.volatility_window
) -> pd.DataFrame:
    """Per date, the equal-weight market return and its trailing volatility, from bars up to that date only.

    :param bars: long bars with columns ``date``, ``tic``, ``close`` (one row per date and ticker)
    :param volatility_window: dates of the trailing standard deviation, the date itself included; NaN until
        that many returns exist (the first date has no return)
    :return: frame indexed by ``date`` with columns ``market_return`` and ``market_volatility``
    """
    _check_window(volatility_window)
    missing = [c for c in _BAR_COLUMNS if c not in bars.columns]
    if missing:
        raise ValueError(f"bars lack columns {missing}")
    if bars.empty:
        raise ValueError("bars are empty")
    if bars.duplicated(["date", "tic"]).any():
        raise ValueError("bars hold more than one row for some (date, tic)")
    wide = bars.pivot(index="date", columns="tic", values="close").sort_index().sort_index(axis=1)
    closes = wide.to_numpy(dtype=np.float64)
    market_return = np.full(len(wide), np.nan)
    for row in range(1, len(wide)):
        market_return[row] = equal_weight_return(closes[row - 1], closes[row])
    volatility = np.full(len(wide), np.nan)
    for row in range(volatility_window, len(wide)):
        volatility[row] = trailing_volatility(market_return[row - volatility_window + 1 : row + 1])
    index = pd.DatetimeIndex(pd.to_datetime(wide.index), name="date")
    return pd.DataFrame({"market_return": market_return, "market_volatility": volatility}, index=index)


class MarketSignalStream:
    """:func:`market_signals` one date at a time, for the live loop.

    :param volatility_window: as in :func:`market_signals`
    """

    def __init__(self, volatility_window: int = RegimeConfig.volatility_window) -> None:
        _check_window(volatility_window)
        self.volatility_window = volatility_window
        self._previous: dict[str, float] | None = None
        self._returns: deque[float] = deque(maxlen=volatility_window)

    def update(self, closes: Mapping[str, float]) -> tuple[float, float]:
        """Consume one date's closes and return its ``(market_return, market_volatility)``.

        :param closes: the close of every ticker trading on the date
        """
        current = {str(tic): float(close) for tic, close in closes.items()}
        if self._previous is None:
            market_return = float("nan")
        else:
            # Sorted tickers: the batch's column order, so the mean adds the same numbers in the same order.
            tickers = sorted(set(current) | set(self._previous))
            market_return = equal_weight_return(
                np.array([self._previous.get(t, np.nan) for t in tickers]),
                np.array([current.get(t, np.nan) for t in tickers]),
            )
        self._previous = current
        self._returns.append(market_return)
        # The batch leaves the first window NaN because its first return is NaN; a full deque mirrors that.
        volatility = (
            trailing_volatility(np.array(self._returns))
            if len(self._returns) == self.volatility_window
            else float("nan")
        )
        return market_return, volatility

    def state(self) -> dict[str, Any]:
        """The stream's state as plain JSON values (see :meth:`from_state`)."""
        return {
            "volatility_window": self.volatility_window,
            "previous": None if self._previous is None else dict(self._previous),
            "returns": [float(r) for r in self._returns],
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> MarketSignalStream:
        """Rebuild a stream that continues where :meth:`state` was taken."""
        stream = cls(int(state["volatility_window"]))
        stream._previous = None if state["previous"] is None else dict(state["previous"])
        stream._returns.extend(float(r) for r in state["returns"])
        return stream
