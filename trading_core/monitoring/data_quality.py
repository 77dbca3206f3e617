"""Data quality of bar feeds per feed and exchange day: completeness, gaps, latency, late, repeated and
out-of-order bars, stale quotes, and how fresh a live feed's newest bar is.

The input is a feed's arrival records in arrival order (what the live loop stores per bar event,
:meth:`trading_core.live.state.TradingStateStore.bar_arrivals`), or a historical intraday file
(:func:`file_day_quality`: completeness and gaps only, it has no arrival times).

What a day expects: every bar end of the exchange session on the feed's bar length (the ``XNYS`` calendar;
early closes are shorter), from the open to the close; on the feed's first day from its first bar only (a session
started at 11:00 did not miss the morning) and on its last day up to its last bar (the day may still be running;
a feed that stopped is what :func:`feed_freshness` catches). A feed whose bars are one per session (daily bars)
expects one bar per session. The bar length is the most common step between two bars of one session.

Latency is measured only where the feed stamped the arrival itself (``source_clock``): a replay's arrivals carry
the loop's wall clock, and a 2019 bar received today says nothing about the feed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from trading_core.data.calendar import EXCHANGE, exchange_dates, infer_bar_length
from trading_core.data.calendar import exchange_calendar as get_calendar

# What the loop did with an arrival: traded it, skipped it (a bar at or before the last traded one), or
# skipped it because the market was closed.
PROCESSED, SKIPPED, MARKET_CLOSED = "processed", "skipped", "closed"
ARRIVAL_HANDLINGS = (PROCESSED, SKIPPED, MARKET_CLOSED)
ARRIVAL_COLUMNS = (
    "session_id",
    "feed",
    "bar_time",
    "received_at",
    "source_clock",
    "symbols",
    "expected_symbols",
    "max_quote_age_s",
    "handling",
)
FEED_DAY_COLUMNS = (
    "feed",
    "date",
    "sessions",
    "bar_length_s",
    "expected_bars",
    "received_bars",
    "completeness",
    "symbol_completeness",
    "missing_bars",
    "gaps",
    "longest_gap_bars",
    "off_grid_bars",
    "arrivals",
    "latency_p50_s",
    "latency_p99_s",
    "latency_max_s",
    "late_bars",
    "duplicates",
    "out_of_order",
    "stale_quotes",
    "max_quote_age_s",
)


@dataclass(frozen=True)
class DataQualityConfig:
    """Thresholds of bar-feed quality, shared by the per-day measures, their asset checks and the live alerts.

    :param late_after_s: a bar received more than this long after its end is late; the day's latency p99 must
        not exceed it
    :param stale_quote_s: a quote older than this at its bar's end is stale
    :param min_completeness: least share of a day's expected bars a feed must deliver
    :param max_stale_session_minutes: a live feed is stale when more market minutes than this went by since
        its newest bar (weekends, holidays and nights do not count)
    :param window_bars: trailing arrivals the live alerts look at
    :param max_late_share: share of late bars in the trailing window that raises ``late_bars``
    :param calendar: exchange calendar of the expected sessions
    """

    late_after_s: float = 10.0
    stale_quote_s: float = 60.0
    min_completeness: float = 0.95
    max_stale_session_minutes: float = 15.0
    window_bars: int = 30
    max_late_share: float = 0.2
    calendar: str = EXCHANGE

    def __post_init__(self) -> None:
        for name in ("late_after_s", "stale_quote_s", "max_stale_session_minutes"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("min_completeness", "max_late_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.window_bars < 1:
            raise ValueError(f"window_bars must be at least 1, got {self.window_bars}")


def infer_feed_bar_length(bar_times: pd.Series) -> pd.Timedelta | None:
    """The most common step between two bars of one exchange day; ``None`` for one bar per day (daily bars).

    :param bar_times: the feed's bar ends (UTC), any order, repeats allowed
    """
    try:
        return infer_bar_length(pd.Series(pd.to_datetime(bar_times, utc=True)))
    except ValueError:  # no two bars inside one session
        return None


def flag_arrivals(arrivals: pd.DataFrame) -> pd.DataFrame:
    """The arrivals with ``latency_s``, ``duplicate`` and ``out_of_order`` (per session and feed, in arrival order).

    A duplicate repeats a bar end the feed delivered before; an out-of-order bar ends before the newest bar end
    it delivered before. Latency is bar end to receipt, only where the feed stamped the receipt.

    :param arrivals: arrival records (:data:`ARRIVAL_COLUMNS`) in arrival order
    """
    frame = arrivals.reset_index(drop=True).copy()
    frame["bar_time"] = pd.to_datetime(frame["bar_time"], utc=True)
    frame["received_at"] = pd.to_datetime(frame["received_at"], utc=True)
    latency = (frame["received_at"] - frame["bar_time"]).dt.total_seconds()
    frame["latency_s"] = latency.where(frame["source_clock"].astype(bool))
    keys = ["session_id", "feed"]
    frame["duplicate"] = frame.duplicated([*keys, "bar_time"])
    newest_before = frame.groupby(keys, sort=False)["bar_time"].transform(lambda s: s.cummax().shift())
    frame["out_of_order"] = (frame["bar_time"] < newest_before) & ~frame["duplicate"]
    return frame


def session_bar_ends(calendar, day: pd.Timestamp, bar_length: pd.Timedelta) -> pd.DatetimeIndex:
    """Every bar end (UTC) of the exchange session ``day`` on a grid of ``bar_length`` from the open.

    :param calendar: an ``exchange_calendars`` calendar
    :param day: a session date
    :param bar_length: the feed's bar length
    """
    open_, close = calendar.session_open(day), calendar.session_close(day)
    count = int((close - open_) // bar_length)
    return pd.DatetimeIndex(open_ + bar_length * np.arange(1, count + 1)).tz_convert("UTC")


def _runs(missing: np.ndarray) -> tuple[int, int]:
    """(number of runs of ``True``, length of the longest run)."""
    if not missing.any():
        return 0, 0
    padded = np.concatenate([[False], missing, [False]]).astype(np.int8)
    edges = np.diff(padded)
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return len(starts), int((stops - starts).max())


def _quantile(values: pd.Series, q: float) -> float:
    return float(values.quantile(q)) if len(values) else float("nan")


def _feed_days(feed: str, flagged: pd.DataFrame, config: DataQualityConfig, calendar) -> list[dict]:
    """One row per exchange session from the feed's first to its last bar (days without any bar included)."""
    bar_length = infer_feed_bar_length(flagged["bar_time"])
    flagged = flagged.assign(day=exchange_dates(flagged["bar_time"]))
    first, last = flagged["bar_time"].min(), flagged["bar_time"].max()
    sessions = calendar.sessions_in_range(flagged["day"].min(), flagged["day"].max())
    # A bar's symbol count: the most symbols any of its arrivals carried, as a share of the expected.
    coverage = (
        flagged["symbols"] / flagged["expected_symbols"].where(flagged["expected_symbols"] > 0)
    ).fillna(0.0)
    best = coverage.groupby(flagged["bar_time"]).max()
    rows = []
    for day in sessions:
        today = flagged[flagged["day"] == day]
        received = pd.DatetimeIndex(today["bar_time"].unique())
        if bar_length is None:  # one bar per session, wherever the feed stamps it
            got = np.array([len(received) > 0])
            covered = np.array([best[received].max() if len(received) else 0.0])
            off_grid = 0
        else:
            ends = session_bar_ends(calendar, day, bar_length)
            expected = ends[(ends >= first) & (ends <= last)] if len(today) else ends
            got = expected.isin(received)
            covered = best.reindex(expected).fillna(0.0).to_numpy()
            off_grid = int((~received.isin(ends)).sum())
        missing = ~np.asarray(got, dtype=bool)
        expected_bars = len(missing)
        gaps, longest = _runs(missing)
        latency = today["latency_s"].dropna()
        quote_age = today["max_quote_age_s"].dropna()
        rows.append(
            {
                "feed": feed,
                "date": pd.Timestamp(day),
                "sessions": int(today["session_id"].nunique()),
                "bar_length_s": bar_length.total_seconds() if bar_length is not None else float("nan"),
                "expected_bars": expected_bars,
                "received_bars": int((~missing).sum()),
                "completeness": float((~missing).mean()) if expected_bars else float("nan"),
                "symbol_completeness": float(covered.mean()) if expected_bars else float("nan"),
                "missing_bars": int(missing.sum()),
                "gaps": gaps,
                "longest_gap_bars": longest,
                "off_grid_bars": off_grid,
                "arrivals": len(today),
                "latency_p50_s": _quantile(latency, 0.5),
                "latency_p99_s": _quantile(latency, 0.99),
                "latency_max_s": float(latency.max()) if len(latency) else float("nan"),
                "late_bars": int((latency > config.late_after_s).sum()),
                "duplicates": int(today["duplicate"].sum()),
                "out_of_order": int(today["out_of_order"].sum()),
                "stale_quotes": int((quote_age > config.stale_quote_s).sum()),
                "max_quote_age_s": float(quote_age.max()) if len(quote_age) else float("nan"),
            }
        )
    return rows


def _empty_days() -> pd.DataFrame:
    return pd.DataFrame({column: pd.Series(dtype=object) for column in FEED_DAY_COLUMNS})


def feed_day_quality(arrivals: pd.DataFrame, config: DataQualityConfig | None = None) -> pd.DataFrame:
    """Per feed and exchange day: completeness, gaps, latency p50/p99/max, late, repeated and out-of-order bars,
    stale quotes (:data:`FEED_DAY_COLUMNS`), ordered by feed and day. No arrivals give an empty table.

    Several sessions on one feed share its days: a bar counts as received when any session received it, and
    repeats and order are judged within each session.

    :param arrivals: arrival records (:data:`ARRIVAL_COLUMNS`) in arrival order
    :param config: thresholds (late bars, stale quotes) and the calendar
    """
    config = config or DataQualityConfig()
    if arrivals.empty:
        return _empty_days()
    calendar = get_calendar(config.calendar)
    flagged = flag_arrivals(arrivals)
    rows = [
        row
        for feed, group in flagged.groupby("feed")
        for row in _feed_days(str(feed), group, config, calendar)
    ]
    return pd.DataFrame(rows, columns=list(FEED_DAY_COLUMNS))


def file_arrivals(bars: pd.DataFrame, feed: str) -> pd.DataFrame:
    """A historical bars file as arrival records: one per bar end, in time order, without arrival times.

    :param bars: bars with UTC bar-end ``timestamp`` and ``tic`` (:func:`trading_core.live.sources.read_bars`)
    :param feed: the name its rows carry, e.g. ``file:intraday_1min.csv.gz``
    """
    counts = bars.groupby("timestamp")["tic"].nunique().sort_index()
    return pd.DataFrame(
        {
            "session_id": feed,
            "feed": feed,
            "bar_time": counts.index,
            "received_at": counts.index,
            "source_clock": False,
            "symbols": counts.to_numpy(),
            "expected_symbols": bars["tic"].nunique(),
            "max_quote_age_s": np.nan,
            "handling": PROCESSED,
        }
    )


def file_day_quality(bars: pd.DataFrame, feed: str, config: DataQualityConfig | None = None) -> pd.DataFrame:
    """Completeness and gaps per day of a historical intraday file (:func:`feed_day_quality`'s table; a file
    has no arrival times, so its latency columns are NaN and it has no late bars).

    :param bars: bars with UTC bar-end ``timestamp`` and ``tic``
    :param feed: the name the rows carry
    :param config: the calendar
    """
    return feed_day_quality(file_arrivals(bars, feed), config)


def session_minutes_between(calendar, start: pd.Timestamp, end: pd.Timestamp) -> float:
    """Market minutes from ``start`` to ``end`` (nights, weekends and holidays do not count).

    :param calendar: an ``exchange_calendars`` calendar
    :param start: the earlier instant (UTC)
    :param end: the later instant (UTC)
    """
    start, end = pd.Timestamp(start).tz_convert("UTC"), pd.Timestamp(end).tz_convert("UTC")
    if end <= start:
        return 0.0
    first, last = start.ceil("min"), end.floor("min") - pd.Timedelta(minutes=1)
    return float(len(calendar.minutes_in_range(first, last))) if last >= first else 0.0


def feed_freshness(
    arrivals: pd.DataFrame, now: pd.Timestamp, config: DataQualityConfig | None = None
) -> pd.DataFrame:
    """How fresh each live feed's newest bar is at ``now``: ``feed, newest_bar, session_minutes_since, fresh``.

    Only live feeds (arrivals the feed stamped itself) are judged: a replay's newest bar is as old as its file.

    :param arrivals: arrival records (:data:`ARRIVAL_COLUMNS`)
    :param now: when the freshness is judged (UTC)
    :param config: the staleness limit in market minutes and the calendar
    """
    config = config or DataQualityConfig()
    columns = ["feed", "newest_bar", "session_minutes_since", "fresh"]
    live = arrivals[arrivals["source_clock"].astype(bool)] if len(arrivals) else arrivals
    if live.empty:
        return pd.DataFrame(columns=columns)
    calendar = get_calendar(config.calendar)
    newest = pd.to_datetime(live["bar_time"], utc=True).groupby(live["feed"]).max()
    since = [session_minutes_between(calendar, stamp, now) for stamp in newest]
    frame = pd.DataFrame(
        {"feed": newest.index, "newest_bar": newest.to_numpy(), "session_minutes_since": since}
    )
    frame["fresh"] = frame["session_minutes_since"] <= config.max_stale_session_minutes
    return frame[columns].reset_index(drop=True)


__all__ = [
    "ARRIVAL_COLUMNS",
    "ARRIVAL_HANDLINGS",
    "FEED_DAY_COLUMNS",
    "MARKET_CLOSED",
    "PROCESSED",
    "SKIPPED",
    "DataQualityConfig",
    "exchange_dates",
    "feed_day_quality",
    "feed_freshness",
    "file_arrivals",
    "file_day_quality",
    "flag_arrivals",
    "get_calendar",
    "infer_feed_bar_length",
    "session_bar_ends",
    "session_minutes_between",
]
