"""Intraday bars as one dense grid per trading session: ``[S, M, N]`` arrays, bar ``m`` of session ``s``.

The grid of a session runs from its exchange open to its close (``exchange_calendars``: half days are shorter) in
steps of the file's bar length; bars are labelled at their END, as :func:`trading_core.live.sources.read_bars`
gives them, so grid bar ``m`` ends at ``open + (m + 1) * bar_length``. A grid cell without a bar in the file is
not ``present``: it has no volume, its prices carry the session's last close (NaN before its first bar), and
nothing can trade on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from trading_core.data.calendar import EXCHANGE, exchange_calendar, infer_bar_length

PRICE_FIELDS = ("open", "high", "low", "close")


@dataclass(frozen=True)
class IntradaySessions:
    """Intraday bars of S sessions on a grid of M bars per session and N tickers.

    :param dates: the S session dates (exchange dates, tz-naive midnight)
    :param tickers: the N tickers, in column order
    :param bar_length: the length of one bar
    :param bar_ends: ``[S, M]`` UTC bar-end timestamps (NaT past a short session's close)
    :param present: ``[S, M, N]`` whether the file has the bar
    """

    dates: pd.DatetimeIndex
    tickers: tuple[str, ...]
    bar_length: pd.Timedelta
    bar_ends: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    present: np.ndarray

    @property
    def n_sessions(self) -> int:
        return len(self.dates)

    @property
    def n_bars(self) -> int:
        """Grid bars per (full) session."""
        return self.present.shape[1]

    def upto(self, session: int) -> IntradaySessions:
        """Sessions ``0 .. session`` (inclusive), as views: what is known at the end of session ``session``."""
        stop = session + 1
        return IntradaySessions(
            self.dates[:stop],
            self.tickers,
            self.bar_length,
            self.bar_ends[:stop],
            *(getattr(self, name)[:stop] for name in (*PRICE_FIELDS, "volume", "present")),
        )


def intraday_sessions(bars: pd.DataFrame, tickers: Sequence[str] | None = None) -> IntradaySessions:
    """Grid intraday bars (from :func:`~trading_core.live.sources.read_bars`: UTC bar-end ``timestamp``, ``tic``,
    ``open``, ``high``, ``low``, ``close``, ``volume``) by exchange session.

    :param bars: the intraday bars
    :param tickers: the universe, in column order (default: the frame's tickers, sorted)
    :raises ValueError: a column or ticker is missing, or a bar lies outside every regular session
    """
    missing = sorted({"timestamp", "tic", *PRICE_FIELDS, "volume"} - set(bars.columns))
    if missing:
        raise ValueError(f"bars: missing column(s) {', '.join(missing)}")
    universe = tuple(sorted(bars["tic"].unique())) if tickers is None else tuple(tickers)
    absent = sorted(set(universe) - set(bars["tic"].unique()))
    if absent:
        raise ValueError(f"bars: no bars for ticker(s) {', '.join(absent)}")
    frame = bars[bars["tic"].isin(universe)]
    bar_length = infer_bar_length(frame["timestamp"])

    local_day = frame["timestamp"].dt.tz_convert("America/New_York").dt.tz_localize(None).dt.normalize()
    # A bar ending at 16:00 belongs to that day's session; one ending at the open would not, and cannot exist.
    dates = pd.DatetimeIndex(np.sort(local_day.unique()))
    calendar = exchange_calendar()
    not_sessions = [d.date().isoformat() for d in dates if not calendar.is_session(d)]
    if not_sessions:
        raise ValueError(f"bars: {', '.join(not_sessions)} are not {EXCHANGE} sessions")
    schedule = calendar.schedule.loc[dates]
    opens = pd.DatetimeIndex(schedule["open"]).tz_convert("UTC").tz_localize(None).to_numpy()
    closes = pd.DatetimeIndex(schedule["close"]).tz_convert("UTC").tz_localize(None).to_numpy()
    lengths = ((closes - opens) // bar_length.to_timedelta64()).astype(np.int64)
    n_bars = int(lengths.max())

    session = dates.get_indexer(local_day)
    ends = frame["timestamp"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()
    offset = (ends - opens[session]) / bar_length.to_timedelta64()
    bar = np.rint(offset).astype(np.int64) - 1
    outside = (bar < 0) | (bar >= lengths[session]) | ~np.isclose(offset, bar + 1)
    if outside.any():
        first = frame["timestamp"].iloc[int(np.flatnonzero(outside)[0])]
        raise ValueError(f"bars: bar ending {first} is not on the regular-session {bar_length} grid")
    if frame.duplicated(["timestamp", "tic"]).any():
        raise ValueError("bars: more than one bar for some (timestamp, tic)")
    column = pd.Index(universe).get_indexer(frame["tic"])

    shape = (len(dates), n_bars, len(universe))
    present = np.zeros(shape, dtype=bool)
    present[session, bar, column] = True
    grids = {}
    for name in (*PRICE_FIELDS, "volume"):
        grid = np.full(shape, np.nan)
        grid[session, bar, column] = frame[name].to_numpy(dtype=np.float64)
        grids[name] = grid
    # Within a session only: a missing bar carries the last close, never a later one and never yesterday's.
    carried = np.stack(
        [
            pd.DataFrame(grids["close"][s]).ffill().to_numpy()  # bars down axis 0, tickers across
            for s in range(len(dates))
        ]
    )
    for name in PRICE_FIELDS:
        grids[name] = np.where(present, grids[name], carried)
    grids["volume"] = np.where(present, grids["volume"], 0.0)
    steps = np.arange(1, n_bars + 1) * bar_length.to_timedelta64()
    bar_ends = opens[:, None] + steps[None, :]
    bar_ends = np.where(np.arange(n_bars)[None, :] < lengths[:, None], bar_ends, np.datetime64("NaT"))
    return IntradaySessions(dates, universe, bar_length, bar_ends, present=present, **grids)


__all__ = ["EXCHANGE", "IntradaySessions", "exchange_calendar", "infer_bar_length", "intraday_sessions"]
