"""A seeded SYNTHETIC NBBO quote stream around real bars, for tests and demos (never real market data).

The project's shared data has bars only. Tests of quote-based features and of the quoted-spread cost path need
quotes that are consistent with those bars, so this invents them: several quotes inside each bar, mids that walk
from the bar's open towards its close within its high-low range, spreads drawn around a chosen median and widened
to whole ticks, and lot-sized depths. Every number here is made up; only the bars it is built around are real.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

SYNTHETIC_QUOTE_COLUMNS: tuple[str, ...] = ("timestamp", "tic", "bid", "ask", "bid_size", "ask_size")


@dataclass(frozen=True)
class SyntheticQuoteConfig:
    """Shape of the synthetic quotes.

    :param quotes_per_bar: quotes stamped strictly inside each bar, at distinct times
    :param median_spread_bps: median FULL quoted spread in basis points of the mid, before rounding to ticks
    :param spread_dispersion: standard deviation of the log spread (lognormal spreads)
    :param mid_noise: standard deviation of a quote mid around the open-to-close path, as a fraction of the
        bar's high-low range
    :param tick: price increment; bids round down and asks up to it, so a quote is at least one tick wide
    :param lot: shares per lot of the quoted depth
    :param max_lots: largest depth on a side, in lots (at least one lot)
    """

    quotes_per_bar: int = 4
    median_spread_bps: float = 2.0
    spread_dispersion: float = 0.5
    mid_noise: float = 0.25
    tick: float = 0.01
    lot: float = 100.0
    max_lots: int = 20

    def __post_init__(self) -> None:
        if self.quotes_per_bar < 1 or self.max_lots < 1:
            raise ValueError("quotes_per_bar and max_lots must be at least 1")
        values = (self.median_spread_bps, self.tick, self.lot)
        if not all(math.isfinite(v) and v > 0 for v in values):
            raise ValueError(f"median_spread_bps, tick and lot must be positive, got {values}")
        if not (self.spread_dispersion >= 0 and self.mid_noise >= 0):
            raise ValueError("spread_dispersion and mid_noise must be non-negative")


def _utc_ns(stamps: pd.Series) -> np.ndarray:
    times = pd.to_datetime(stamps)
    if times.dt.tz is None:
        raise ValueError("bar timestamps have no timezone; localize them first")
    return pd.DatetimeIndex(times).tz_convert("UTC").as_unit("ns").asi8


def _bar_length_ns(ends_ns: np.ndarray) -> int:
    """The shortest gap between consecutive distinct bar ends: one bar's duration."""
    gaps = np.diff(np.unique(ends_ns))
    if len(gaps) == 0:
        raise ValueError("one bar time only: pass bar_length")
    return int(gaps.min())


def synthetic_quotes(
    bars: pd.DataFrame,
    seed: int,
    config: SyntheticQuoteConfig = SyntheticQuoteConfig(),
    bar_length: pd.Timedelta | None = None,
) -> pd.DataFrame:
    """SYNTHETIC NBBO quotes for every bar: ``quotes_per_bar`` quotes stamped strictly inside it.

    The bar ending at ``t`` gets quotes stamped in ``(t - bar_length, t)`` at distinct, increasing times, so the
    quote in force at the bar's end is its own last quote. Mids follow the open-to-close path with noise,
    clipped to ``[low, high]``; ``bid < ask`` always (at least one tick apart), and ``bid > 0``.

    :param bars: long bars ``timestamp`` (bar end, timezone-aware), ``tic, open, high, low, close``
    :param seed: seed of every random draw: the same bars and seed give the same quotes
    :param config: number of quotes, spreads, ticks and depths
    :param bar_length: a bar's duration; default the shortest gap between bar ends in ``bars``
    :return: ``timestamp, tic, bid, ask, bid_size, ask_size`` sorted by time then ticker
    """
    if "timestamp" not in bars.columns:
        raise ValueError("synthetic quotes need bars with a 'timestamp' column (the bar end)")
    ends = _utc_ns(bars["timestamp"])
    length = _bar_length_ns(ends) if bar_length is None else pd.Timedelta(bar_length).value
    if length <= 0:
        raise ValueError(f"bar_length must be positive, got {bar_length}")
    rng = np.random.default_rng(seed)
    k = config.quotes_per_bar
    n = len(bars)
    # Slot j of k+1 equal slots, jittered by less than half a slot: distinct and strictly inside the bar.
    position = np.arange(1, k + 1) + rng.uniform(-0.45, 0.45, size=(n, k))
    fraction = position / (k + 1)
    stamps = ends[:, None] - length + np.floor(fraction * length).astype(np.int64)

    def column(name: str) -> np.ndarray:
        return bars[name].to_numpy(dtype=np.float64)[:, None]

    open_, high, low, close = (column(name) for name in ("open", "high", "low", "close"))
    path = open_ + (close - open_) * fraction
    mid = np.clip(path + rng.normal(0.0, config.mid_noise, size=(n, k)) * (high - low), low, high)
    spread = mid * config.median_spread_bps * 1e-4 * rng.lognormal(0.0, config.spread_dispersion, size=(n, k))
    tick = config.tick
    bid = np.floor((mid - 0.5 * spread) / tick) * tick
    ask = np.ceil((mid + 0.5 * spread) / tick) * tick
    # Rounding can meet in the middle (a mid on a tick with a sub-tick spread): keep one tick between them.
    ask = np.where(ask - bid < tick * (1 - 1e-9), bid + tick, ask)
    bid = np.where(bid > 0, bid, tick)
    ask = np.maximum(ask, bid + tick)
    lots = rng.integers(1, config.max_lots + 1, size=(2, n, k)) * config.lot
    quotes = pd.DataFrame(
        {
            "timestamp": pd.to_datetime(stamps.reshape(-1), unit="ns", utc=True),
            "tic": np.repeat(bars["tic"].to_numpy(dtype=object), k),
            "bid": np.round(bid.reshape(-1), 10),
            "ask": np.round(ask.reshape(-1), 10),
            "bid_size": lots[0].reshape(-1),
            "ask_size": lots[1].reshape(-1),
        }
    )
    return quotes.sort_values(["timestamp", "tic"], kind="stable").reset_index(drop=True)
