"""Bar sources for the live loop: a replay of recorded bars (the default) or Alpaca's live bar stream.

Every source yields :class:`BarEvent` s in time order, one per bar timestamp, holding the bars of every symbol
that traded in it. Timestamps are UTC and label the bar's END (Alpaca labels bars by their start; the stream
adapter adds the bar length), so a decision taken on a bar only ever uses prices up to its timestamp. Where the
source has quotes, each event carries every symbol's last quote at or before the bar's end, never a later one.
"""

from __future__ import annotations

import bisect
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trading_core.broker.base import Bar, Quote
from trading_core.data.calendar import (
    EXCHANGE_TIMEZONE,
    INTRADAY_TIMEFRAMES,
    MINUTE,
)

DAILY_CLOSE = pd.Timedelta(hours=16)
BAR_COLUMNS = ("timestamp", "tic", "open", "high", "low", "close", "volume")
QUOTE_COLUMNS = ("timestamp", "tic", "bid", "ask", "bid_size", "ask_size")


class BarSourceError(RuntimeError):
    """A bar source failed for good (a live stream that died); the message says why in one line."""


@dataclass(frozen=True)
class BarEvent:
    """The bars of one timestamp (bar end, UTC) by symbol.

    :param timestamp: the bars' end (UTC): the event's key, decided at most once
    :param bars: each symbol's bar
    :param quotes: each symbol's last quote at or before ``timestamp``, where the source has quotes
    :param received_at: when the event reached this process (UTC), where the source tells
    """

    timestamp: pd.Timestamp
    bars: dict[str, Bar]
    quotes: dict[str, Quote] = field(default_factory=dict)
    received_at: pd.Timestamp | None = None


def read_bars(
    path: str | Path, tickers: Sequence[str] | None = None, *, validate: bool = True
) -> pd.DataFrame:
    """Recorded bars as ``timestamp (UTC bar end), tic, open, high, low, close, volume``.

    Reads the intraday layout (``datetime`` in exchange time, labelled at bar end) and the daily layout
    (``date``; the bar ends at the 16:00 close), as they are in the file (no dividend adjustment).

    :param path: CSV file (optionally gzipped) or Parquet file
    :param tickers: keep only these symbols
    :param validate: run the project's validation rules on the whole file first (the time column as ``date``)
    :raises BarsFileError: the file is missing, empty, not a bars file, or has no time column
    :raises DataValidationError: the bars break a blocking rule; it names the file, rule, column and rows
    :raises ValueError: a symbol of ``tickers`` has no bars in the file; without ``validate``, a price or volume
        column is missing or holds a value that is not a number (naming the lines)
    """
    from trading_core.data.files import BarsFileError, read_bars_file

    try:
        frame = read_bars_file(path, use_adjusted_close=False)
    except BarsFileError:
        raise
    except (
        UnicodeError,
        ValueError,
        OSError,
        EOFError,
    ) as error:  # binary, truncated, not comma-separated...
        raise BarsFileError(f"{path} is not a readable bars file ({type(error).__name__})") from None
    time_column = next((c for c in ("datetime", "date") if c in frame.columns), None)
    if time_column is None:
        columns = ", ".join(map(str, frame.columns))
        raise BarsFileError(
            f"{path}: needs a 'datetime' (intraday) or 'date' (daily) column; it has {columns}"
        )
    if validate:
        from trading_core.data.validation import require_valid_bars

        require_valid_bars(frame.rename(columns={time_column: "date"}), str(path))
    else:
        # Unchecked files still fail in one line naming the rows, not with a type error deep in a feature.
        frame = require_numbers(frame, BAR_COLUMNS[2:], path)
    local = pd.to_datetime(frame.pop(time_column), errors="coerce")
    if time_column == "date":
        local = local + DAILY_CLOSE
    bad = local.isna()
    if bad.any():
        rows = ", ".join(str(i + 2) for i in bad[bad].index[:5])  # +2: header line and 1-based lines
        raise ValueError(f"{path}: unparseable timestamps on line(s) {rows}")
    frame["timestamp"] = local.dt.tz_localize(EXCHANGE_TIMEZONE).dt.tz_convert("UTC")
    if tickers is not None:
        missing = sorted(set(tickers) - set(frame["tic"].unique()))
        if missing:
            held = ", ".join(sorted(map(str, frame["tic"].unique())))
            raise ValueError(f"{path}: no bars for {', '.join(missing)}; it holds {held}")
        frame = frame[frame["tic"].isin(tickers)]
    columns = ["timestamp", "tic", "open", "high", "low", "close", "volume"]
    return frame[columns].sort_values(["timestamp", "tic"], ignore_index=True)


def timeframe_length(timeframe: str) -> pd.Timedelta:
    """The bar length of an intraday timeframe name (``1Min``, ``5Min``, ``15Min``).

    :param timeframe: one of :data:`INTRADAY_TIMEFRAMES`
    :raises ValueError: an unknown name
    """
    if timeframe not in INTRADAY_TIMEFRAMES:
        raise ValueError(f"timeframe={timeframe!r}: expected one of {', '.join(INTRADAY_TIMEFRAMES)}")
    return INTRADAY_TIMEFRAMES[timeframe]


def session_dates(timestamps: pd.Series, bar_length: pd.Timedelta) -> pd.Series:
    """The exchange date (naive midnight) of the session each bar belongs to: the date its START falls on, so a
    bar ending at 16:00 stays on its day (with ``bar_length`` 0, the date of a quote's own time).

    :param timestamps: UTC bar ends
    :param bar_length: the bars' length
    """
    starts = timestamps - bar_length
    return starts.dt.tz_convert(EXCHANGE_TIMEZONE).dt.tz_localize(None).dt.normalize()


def resample_bars(frame: pd.DataFrame, bar_length: pd.Timedelta) -> pd.DataFrame:
    """Coarser bars from finer ones labelled at their end: open first, high max, low min, close last, volume (and
    ``trade_count``) summed, ``vwap`` volume-weighted; each labelled at the end of its interval.

    Intervals are whole multiples of ``bar_length`` on the clock (09:30-09:45, ...), so bars of two sessions,
    hours apart, never share one, and for 5 and 15 minutes the first starts at the 09:30 open (and the last ends
    at the 16:00 or 13:00 close). A coarse bar exists where at least one fine bar does: a fine bar missing inside
    it is simply not there.

    :param frame: bars with ``timestamp`` (UTC bar end), ``tic``, ``open``, ``high``, ``low``, ``close``,
        ``volume``, optionally ``trade_count`` and ``vwap``
    :param bar_length: the coarser length; it must divide one hour
    :raises ValueError: ``bar_length`` does not divide one hour
    """
    if bar_length <= pd.Timedelta(0) or pd.Timedelta(hours=1) % bar_length != pd.Timedelta(0):
        raise ValueError(f"bar_length={bar_length}: expected a length that divides one hour")
    ordered = frame.sort_values(["tic", "timestamp"], kind="stable")
    # A bar ending exactly on a boundary closes that interval; one ending a minute later opens the next.
    keys = [ordered["tic"], ordered["timestamp"].dt.ceil(bar_length).rename("timestamp")]
    rules: dict[str, Any] = {"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum"}
    if "trade_count" in ordered.columns:
        rules["trade_count"] = "sum"
    grouped = ordered.groupby(keys, sort=True)
    result = grouped.agg(rules)
    if "vwap" in ordered.columns:
        traded = (ordered["vwap"] * ordered["volume"]).groupby(keys, sort=True).sum(min_count=1)
        result["vwap"] = traded / result["volume"].where(result["volume"] > 0)
    columns = [*BAR_COLUMNS, *(c for c in ("trade_count", "vwap") if c in result.columns)]
    return result.reset_index()[columns].sort_values(["timestamp", "tic"], ignore_index=True)


def require_numbers(frame: pd.DataFrame, columns: Sequence[str], path: str | Path) -> pd.DataFrame:
    """``frame`` with ``columns`` as numbers; a value that is not one is an error naming the column and lines.

    :param frame: as read from the file (its index the file's rows, so the lines named are the file's)
    :param columns: the columns that must hold numbers
    :param path: the file, for the message
    """
    absent = [c for c in columns if c not in frame.columns]
    if absent:
        raise ValueError(f"{path}: missing column(s) {', '.join(absent)}")
    for column in columns:
        numbers = pd.to_numeric(frame[column], errors="coerce")
        bad = numbers.isna()  # text, and empty cells too: a quote without a price is no quote
        if bad.any():
            rows = ", ".join(str(i + 2) for i in frame.index[bad][:5])  # +2: header line and 1-based lines
            raise ValueError(f"{path}: column {column!r} is not a number on line(s) {rows}")
        frame[column] = numbers
    return frame


def read_quotes(path: str | Path, tickers: Sequence[str] | None = None) -> pd.DataFrame:
    """Recorded quotes (NBBO) as ``timestamp (UTC), tic, bid, ask, bid_size, ask_size``, sorted by time.

    The time column is ``timestamp`` (UTC; naive values are read as UTC) or ``datetime`` (exchange time when
    naive). Quotes that are no usable NBBO (a side missing, crossed) are kept: :func:`replay` skips them.

    :param path: CSV file (optionally gzipped) or Parquet file
    :param tickers: keep only these symbols
    :raises ValueError: the file is missing or not a quotes file, a column is missing, a timestamp or number does
        not parse (naming the lines), or a symbol of ``tickers`` has no quotes
    """
    from trading_core.data.files import bars_file_format

    file_format = bars_file_format(path)
    if not Path(path).is_file():
        raise ValueError(f"quotes file {path} does not exist")
    if file_format is None:
        raise ValueError(f"quotes file {path} must be .csv, .csv.gz or .parquet")
    try:
        frame = pd.read_parquet(path) if file_format == "parquet" else pd.read_csv(path, dtype={"tic": str})
    except (UnicodeError, ValueError, OSError, EOFError) as error:
        raise ValueError(f"{path} is not a readable quotes file ({type(error).__name__})") from None
    time_column = next((c for c in ("timestamp", "datetime") if c in frame.columns), None)
    missing = [c for c in QUOTE_COLUMNS[1:] if c not in frame.columns] + (
        [] if time_column else ["timestamp"]
    )
    if missing:
        raise ValueError(f"{path}: a quotes file needs column(s) {', '.join(missing)}")
    stamps = pd.to_datetime(frame[time_column], errors="coerce", utc=False, format="mixed")
    bad = stamps.isna()
    if bad.any():
        rows = ", ".join(str(i + 2) for i in frame.index[bad][:5])
        raise ValueError(f"{path}: unparseable {time_column} on line(s) {rows}")
    if stamps.dt.tz is None:
        stamps = stamps.dt.tz_localize("UTC" if time_column == "timestamp" else EXCHANGE_TIMEZONE)
    frame = require_numbers(frame.assign(timestamp=stamps.dt.tz_convert("UTC")), QUOTE_COLUMNS[2:], path)
    if tickers is not None:
        absent = sorted(set(tickers) - set(frame["tic"].unique()))
        if absent:
            held = ", ".join(sorted(map(str, frame["tic"].unique())))
            raise ValueError(f"{path}: no quotes for {', '.join(absent)}; it holds {held}")
        frame = frame[frame["tic"].isin(tickers)]
    return frame[list(QUOTE_COLUMNS)].sort_values(["timestamp", "tic"], kind="stable", ignore_index=True)


def usable_quotes(quotes: pd.DataFrame) -> pd.Series:
    """Which quotes are a usable NBBO (what :class:`Quote` accepts): ``0 < bid <= ask``, sizes ``>= 0``.

    :param quotes: ``bid``, ``ask``, ``bid_size``, ``ask_size`` columns
    """
    prices = quotes[["bid", "ask"]].to_numpy(dtype=np.float64)
    sizes = quotes[["bid_size", "ask_size"]].to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(prices).all(axis=1) & (prices[:, 0] > 0) & (prices[:, 0] <= prices[:, 1])
        ok &= np.isfinite(sizes).all(axis=1) & (sizes >= 0).all(axis=1)
    return pd.Series(ok, index=quotes.index)


def _quotes_at_bar_ends(frame: pd.DataFrame, quotes: pd.DataFrame) -> list[Quote | None]:
    """For each row of ``frame`` (sorted by time), its symbol's last usable quote stamped at or before the row's
    bar end, ``None`` when it has none: a quote stamped after the bar's end is never one of them."""
    book = quotes[usable_quotes(quotes)]
    book = book.assign(quote_time=book["timestamp"].dt.tz_convert("UTC").dt.as_unit("ns"))
    book = book.drop(columns="timestamp").sort_values("quote_time", kind="stable")
    bars = pd.DataFrame(
        {
            "row": np.arange(len(frame)),
            "timestamp": frame["timestamp"].dt.tz_convert("UTC").dt.as_unit("ns").to_numpy(),
            "tic": frame["tic"].to_numpy(),
        }
    ).sort_values("timestamp", kind="stable")
    joined = pd.merge_asof(
        bars,
        book[["quote_time", "tic", *QUOTE_COLUMNS[2:]]],
        left_on="timestamp",
        right_on="quote_time",
        by="tic",
        direction="backward",
        allow_exact_matches=True,
    ).sort_values("row")
    found: list[Quote | None] = [None] * len(frame)
    has = joined["quote_time"].notna().to_numpy()
    columns = (joined[c].to_numpy() for c in ("row", *QUOTE_COLUMNS[2:], "quote_time"))
    for row, bid, ask, bid_size, ask_size, when, present in zip(*columns, has, strict=True):
        if present:
            found[row] = Quote(bid, ask, bid_size, ask_size, pd.Timestamp(when))
    return found


def replay(
    frame: pd.DataFrame, start: pd.Timestamp | None = None, quotes: pd.DataFrame | None = None
) -> Iterator[BarEvent]:
    """Replay recorded bars (from :func:`read_bars`) in time order, from ``start`` on.

    :param frame: recorded bars
    :param start: first bar end to replay (UTC); earlier bars are skipped
    :param quotes: recorded quotes (from :func:`read_quotes`); each bar's event gets its symbol's last usable
        quote stamped at or before the bar's end (a symbol without one gets none)
    """
    if start is not None:
        frame = frame[frame["timestamp"] >= start]
    frame = frame.sort_values("timestamp", kind="stable", ignore_index=True)
    if frame.empty:
        return
    at_end = _quotes_at_bar_ends(frame, quotes) if quotes is not None else [None] * len(frame)
    times = frame["timestamp"].to_numpy()
    # One slice per timestamp, without a pandas group per bar: the replay runs once per live decision.
    bounds = [0, *(np.flatnonzero(times[1:] != times[:-1]) + 1).tolist(), len(frame)]
    stamps = list(frame["timestamp"])
    rows = list(zip(*(frame[c].tolist() for c in BAR_COLUMNS[1:]), at_end, strict=True))
    for first, stop in zip(bounds[:-1], bounds[1:], strict=True):
        group = rows[first:stop]
        yield BarEvent(
            pd.Timestamp(stamps[first]),
            {tic: Bar(o, h, low, c, v) for tic, o, h, low, c, v, _ in group},
            {tic: quote for tic, *_, quote in group if quote is not None},
        )


class QuoteBook:
    """Each symbol's recent usable quotes, to find the last one at or before a bar's end.

    Quotes may arrive before the bar they precede is released, and slightly out of order: they are kept sorted
    by their own timestamp, and :meth:`at` never returns one stamped after the time asked for.
    """

    def __init__(self) -> None:
        self._times: dict[str, list[pd.Timestamp]] = {}
        self._quotes: dict[str, list[Quote]] = {}

    def add(self, symbol: str, quote: Quote) -> None:
        """Keep ``quote`` (it needs a timestamp) of ``symbol``."""
        times = self._times.setdefault(symbol, [])
        place = bisect.bisect_right(times, quote.timestamp)
        times.insert(place, quote.timestamp)
        self._quotes.setdefault(symbol, []).insert(place, quote)

    def at(self, symbol: str, when: pd.Timestamp) -> Quote | None:
        """The last quote of ``symbol`` stamped at or before ``when``; ``None`` when it has none."""
        place = bisect.bisect_right(self._times.get(symbol, []), when)
        return self._quotes[symbol][place - 1] if place else None

    def forget_before(self, when: pd.Timestamp) -> None:
        """Drop every quote older than each symbol's last one at or before ``when`` (events up to ``when`` are
        out; a later event can only want that quote or a newer one)."""
        for symbol, times in self._times.items():
            keep = max(bisect.bisect_right(times, when) - 1, 0)
            del times[:keep]
            del self._quotes[symbol][:keep]


class AlpacaBarStream:
    """Alpaca's live minute bars (alpaca-py ``StockDataStream``) as :class:`BarEvent` s.

    The stream runs in a thread; bars are grouped by timestamp and a timestamp's event is released when a bar
    of a later minute arrives or every symbol has reported. Each event's ``received_at`` is the wall clock (UTC)
    when the last of its bars arrived. With ``with_quotes`` it also subscribes to the symbols' quotes and gives
    each bar's symbol its last usable quote stamped at or before the bar's end (never a later one, even one that
    arrived first). alpaca-py reconnects a dropped connection itself; a stream that ends without :meth:`stop` (a
    refused subscription, an error it gave up on) ends the iteration with :class:`BarSourceError`.

    :param api_key: Alpaca key id
    :param secret_key: Alpaca secret
    :param symbols: symbols to subscribe to
    :param url_override: websocket URL (a local fake in tests)
    :param bar_length: the bar's duration; Alpaca stamps a bar with its start
    :param with_quotes: subscribe to quotes (NBBO) too and attach them to the events
    """

    def __init__(
        self,
        api_key: str,
        secret_key: str,
        symbols: Sequence[str],
        url_override: str | None = None,
        bar_length: pd.Timedelta = MINUTE,
        with_quotes: bool = False,
    ) -> None:
        from alpaca.data.live import StockDataStream

        self.symbols = tuple(symbols)
        self.bar_length = bar_length
        self.with_quotes = with_quotes
        self._queue: queue.Queue[object] = queue.Queue()
        self._stopped = threading.Event()
        self._secrets = (api_key, secret_key)
        self._stream = StockDataStream(api_key, secret_key, url_override=url_override)
        self._stream.subscribe_bars(self._on_bar, *self.symbols)
        if with_quotes:
            self._stream.subscribe_quotes(self._on_quote, *self.symbols)
        self._thread = threading.Thread(target=self._run, name="alpaca-bars", daemon=True)

    def __repr__(self) -> str:
        return (
            f"AlpacaBarStream(symbols={list(self.symbols)}, with_quotes={self.with_quotes})"  # never the keys
        )

    async def _on_bar(self, bar) -> None:
        # Stamped here, on the stream's thread: the iterator may be busy deciding on the previous bar.
        self._queue.put((bar, pd.Timestamp.now(tz="UTC")))

    async def _on_quote(self, quote) -> None:
        self._queue.put(quote)

    def _run(self) -> None:
        """The stream's thread: a stream that ends unasked is handed to the iterator as an error."""
        try:
            self._stream.run()
        except Exception as error:  # noqa: BLE001 - reported to the iterator, which raises it
            reason = f"{type(error).__name__}: {error}"
            for secret in self._secrets:
                reason = reason.replace(secret, "***")
            self._queue.put(BarSourceError(f"the Alpaca bar stream failed: {reason}"))
            return
        if not self._stopped.is_set():
            self._queue.put(BarSourceError("the Alpaca bar stream ended by itself (subscription refused?)"))

    def stop(self) -> None:
        self._stopped.set()
        self._stream.stop()
        self._queue.put(None)

    @staticmethod
    def _book_quote(book: QuoteBook, quote: Any) -> None:
        try:
            usable = Quote(
                float(quote.bid_price),
                float(quote.ask_price),
                float(quote.bid_size),
                float(quote.ask_size),
                pd.Timestamp(quote.timestamp).tz_convert("UTC"),
            )
        except ValueError:
            return  # one side empty or crossed: the symbol's last usable quote stays its quote
        book.add(quote.symbol, usable)

    def __iter__(self) -> Iterator[BarEvent]:
        self._thread.start()
        pending: dict[pd.Timestamp, dict[str, Bar]] = {}
        arrived: dict[pd.Timestamp, pd.Timestamp] = {}
        book = QuoteBook()

        def event(timestamp: pd.Timestamp) -> BarEvent:
            bars = pending.pop(timestamp)
            quotes = {s: q for s in bars if (q := book.at(s, timestamp)) is not None}
            book.forget_before(timestamp)
            return BarEvent(timestamp, bars, quotes, arrived.pop(timestamp))

        while True:
            item = self._queue.get()
            if item is None:
                break
            if isinstance(item, BarSourceError):
                raise item
            if not isinstance(item, tuple):
                self._book_quote(book, item)
                continue
            bar, received = item
            end = pd.Timestamp(bar.timestamp).tz_convert("UTC") + self.bar_length
            pending.setdefault(end, {})[bar.symbol] = Bar(bar.open, bar.high, bar.low, bar.close, bar.volume)
            arrived[end] = received
            for timestamp in sorted(pending):
                if timestamp < end or len(pending[timestamp]) == len(self.symbols):
                    yield event(timestamp)
        for timestamp in sorted(pending):
            yield event(timestamp)


def fill_missing_bars(frame: pd.DataFrame) -> pd.DataFrame:
    """Give every symbol a bar at every timestamp once it has traded: a minute without trades becomes a flat bar
    at the last close with zero volume (what a consolidated minute feed reports for no trades).

    Timestamps before every symbol has traded once are dropped. Only past closes fill a gap, never later ones.

    :param frame: recorded bars from :func:`read_bars`
    """
    wide = frame.pivot(index="timestamp", columns="tic", values=["open", "high", "low", "close", "volume"])
    close = wide["close"].ffill()
    started = close.notna().all(axis=1)
    filled = {}
    for price in ("open", "high", "low"):
        filled[price] = wide[price].where(wide[price].notna(), close)
    filled["close"] = close
    filled["volume"] = wide["volume"].fillna(0.0)
    long = pd.concat({k: v[started] for k, v in filled.items()}, axis=1).stack(level=1, future_stack=True)
    long = long.reset_index().rename(columns={"level_1": "tic"})
    return long[["timestamp", "tic", "open", "high", "low", "close", "volume"]].sort_values(
        ["timestamp", "tic"], ignore_index=True
    )
