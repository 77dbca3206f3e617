"""The live loop's watch over its bar feed: the trailing window of arrivals that the data-quality alert rules
(:mod:`trading_core.monitoring.alerts`) look at.

Per arrival it notes whether the bar was late (only where the feed stamped its receipt: a replay's arrivals carry
the loop's wall clock), repeated or out of order, how many expected bars went missing before it (on the
calendar's market minutes, on the bar length the window's shortest step within one day shows), and the oldest
quote at its end. Arrivals outside market hours are stored by the loop but not watched.

The watch holds nothing the store lacks: a resumed loop rebuilds it from the stored arrivals
(:meth:`FeedWatch.from_arrivals`) and watches as an uninterrupted one would.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import pandas as pd

from trading_core.data.calendar import EXCHANGE_TIMEZONE
from trading_core.monitoring.data_quality import (
    MARKET_CLOSED,
    PROCESSED,
    DataQualityConfig,
)


@dataclass(frozen=True)
class Arrival:
    """One bar event as it reached the loop.

    :param bar_time: the bar's end (UTC)
    :param received_at: when it arrived (UTC)
    :param source_clock: the feed stamped ``received_at`` itself (else the loop's wall clock did)
    :param symbols: symbols of the universe with a bar in the event
    :param expected_symbols: symbols of the universe
    :param max_quote_age_s: the oldest quote's age at the bar's end, ``None`` without quotes
    :param handling: what the loop did with it (:data:`~trading_core.monitoring.data_quality.ARRIVAL_HANDLINGS`)
    """

    bar_time: pd.Timestamp
    received_at: pd.Timestamp
    source_clock: bool
    symbols: int
    expected_symbols: int
    max_quote_age_s: float | None
    handling: str


@dataclass(frozen=True)
class FeedHealth:
    """What the trailing window shows (the data-quality fields of the alert snapshot).

    :param late_bar_share: share of late bars among the window's feed-stamped arrivals, ``None`` without any
    :param missing_bars: expected bars missing before the window's processed bars
    :param out_of_order_bars: the window's repeated or out-of-order bars
    :param stale_quote_age_s: the oldest quote at the newest bar's end, ``None`` without quotes
    :param window: arrivals in the window
    """

    late_bar_share: float | None = None
    missing_bars: int = 0
    out_of_order_bars: int = 0
    stale_quote_age_s: float | None = None
    window: int = 0


@dataclass(frozen=True)
class _Seen:
    late: bool | None
    missing: int
    out_of_order: bool
    step: pd.Timedelta | None  # from the processed bar before, within one exchange day


def _exchange_day(stamp: pd.Timestamp):
    # A bar ending at midnight closes the day before (as data_quality.exchange_dates).
    return (stamp.tz_convert(EXCHANGE_TIMEZONE) - pd.Timedelta(microseconds=1)).date()


class FeedWatch:
    """The trailing window of one feed's arrivals.

    :param config: the window's length and the late threshold
    :param calendar: an ``exchange_calendars`` calendar whose market minutes say which bars are expected
        (``None``: every step of the bar length within one exchange day is)
    """

    def __init__(self, config: DataQualityConfig, calendar=None) -> None:
        self.config, self.calendar = config, calendar
        self._window: deque[_Seen] = deque(maxlen=config.window_bars)
        self._newest: pd.Timestamp | None = None
        self._last_processed: pd.Timestamp | None = None
        self._quote_age: float | None = None

    @classmethod
    def from_arrivals(cls, rows: pd.DataFrame, config: DataQualityConfig, calendar=None) -> FeedWatch:
        """A watch that has seen ``rows`` (stored arrivals, oldest first; pass ``window_bars + 1`` of them, so the
        oldest one in the window knows the bar before it).

        :param rows: arrival records with the columns of :class:`Arrival`
        :param config: the window's length and the late threshold
        :param calendar: as for the constructor
        """
        watch = cls(config, calendar)
        for row in rows.itertuples(index=False):
            age = None if pd.isna(row.max_quote_age_s) else float(row.max_quote_age_s)
            watch.observe(
                Arrival(
                    pd.Timestamp(row.bar_time),
                    pd.Timestamp(row.received_at),
                    bool(row.source_clock),
                    int(row.symbols),
                    int(row.expected_symbols),
                    age,
                    str(row.handling),
                )
            )
        return watch

    def _missing_before(self, bar_time: pd.Timestamp, step: pd.Timedelta | None) -> int:
        """Expected bars between the last processed bar and ``bar_time``, on the bar length the window shows
        (its shortest step within one day; ``step`` is this bar's)."""
        steps = [seen.step for seen in self._window if seen.step is not None]
        if step is not None:
            steps.append(step)
        previous = self._last_processed
        if previous is None or not steps:
            return 0
        bar_length = min(steps)
        if self.calendar is None:
            return max(int(step // bar_length) - 1, 0) if step is not None else 0
        # Market minutes starting in [previous, bar_time): each bar of the grid ends in (previous, bar_time].
        minutes = len(self.calendar.minutes_in_range(previous, bar_time - pd.Timedelta(minutes=1)))
        return max(int(minutes * pd.Timedelta(minutes=1) // bar_length) - 1, 0)

    def observe(self, arrival: Arrival) -> None:
        """Note one arrival (one outside market hours is not watched).

        :param arrival: the bar event as it reached the loop
        """
        if arrival.handling == MARKET_CLOSED:
            return
        bar_time = arrival.bar_time
        out_of_order = self._newest is not None and bar_time <= self._newest
        missing, step = 0, None
        if arrival.handling == PROCESSED:
            previous = self._last_processed
            if previous is not None and _exchange_day(previous) == _exchange_day(bar_time):
                step = bar_time - previous
            missing = self._missing_before(bar_time, step)
            self._last_processed = bar_time
        late = None
        if arrival.source_clock:
            late = (arrival.received_at - bar_time).total_seconds() > self.config.late_after_s
        self._window.append(_Seen(late, missing, out_of_order, step))
        self._newest = bar_time if self._newest is None else max(self._newest, bar_time)
        if arrival.handling == PROCESSED:
            self._quote_age = arrival.max_quote_age_s

    def health(self) -> FeedHealth:
        """What the window shows now."""
        stamped = [seen.late for seen in self._window if seen.late is not None]
        return FeedHealth(
            late_bar_share=sum(stamped) / len(stamped) if stamped else None,
            missing_bars=sum(seen.missing for seen in self._window),
            out_of_order_bars=sum(seen.out_of_order for seen in self._window),
            stale_quote_age_s=self._quote_age,
            window=len(self._window),
        )


__all__ = ["Arrival", "FeedHealth", "FeedWatch"]
