"""The exchange's calendar and the length of intraday bars: one home for every layer that reads session times.

Bars are labelled at their END (UTC), as :func:`trading_core.live.sources.read_bars` gives them.
"""

from __future__ import annotations

import pandas as pd

EXCHANGE = "XNYS"
EXCHANGE_TIMEZONE = "America/New_York"
MINUTE = pd.Timedelta(minutes=1)
#: the intraday bar lengths the project reads, fetches and resamples to (Alpaca's names)
INTRADAY_TIMEFRAMES: dict[str, pd.Timedelta] = {
    "1Min": MINUTE,
    "5Min": 5 * MINUTE,
    "15Min": 15 * MINUTE,
}


def exchange_calendar(name: str = EXCHANGE):
    """An exchange's calendar (``exchange_calendars`` builds it once per process and caches it).

    :param name: an ``exchange_calendars`` code, e.g. ``XNYS``
    """
    import exchange_calendars as xcals

    return xcals.get_calendar(name)


def exchange_dates(timestamps: pd.Series) -> pd.Series:
    """The exchange date (tz-naive midnight) of each UTC bar end; a bar ending at 16:00 belongs to its day.

    :param timestamps: tz-aware bar ends
    """
    local = pd.to_datetime(timestamps, utc=True).dt.tz_convert(EXCHANGE_TIMEZONE)
    # A bar ending exactly at midnight closes the day before.
    return (local - pd.Timedelta(microseconds=1)).dt.tz_localize(None).dt.normalize()


def infer_bar_length(timestamps: pd.Series) -> pd.Timedelta:
    """The most common step between consecutive bar ends of one session: the bars' length.

    :param timestamps: UTC bar-end timestamps of any tickers
    :raises ValueError: no two bars inside one session
    """
    ends = pd.Series(pd.DatetimeIndex(timestamps.unique()).sort_values())
    steps = ends.diff()
    same_day = ends.dt.tz_convert(EXCHANGE_TIMEZONE).dt.date.diff().eq(pd.Timedelta(0))
    steps = steps[same_day & steps.gt(pd.Timedelta(0))]
    if steps.empty:
        raise ValueError("timestamps: need two bars inside one session to infer the bar length")
    return pd.Timedelta(steps.mode().iloc[0])
