"""Bar sources for the live loop: a replay of recorded bars (the default) or Alpaca's live bar stream.

Every source yields :class:`BarEvent` s in time order, one per bar timestamp, holding the bars of every symbol
that traded in it. Timestamps are UTC and label the bar's END (Alpaca labels bars by their start; the stream
adapter adds the bar length), so a decision taken on a bar only ever uses prices up to its timestamp.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from trading_core.broker.base import Bar, Quote

EXCHANGE_TIMEZONE = "America/New_York"
DAILY_CLOSE = pd.Timedelta(hours=16)
MINUTE = pd.Timedelta(minutes=1)


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
    :raises ValueError: a symbol of ``tickers`` has no bars in the file
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


def replay(frame: pd.DataFrame, start: pd.Timestamp | None = None) -> Iterator[BarEvent]:
    """Replay recorded bars (from :func:`read_bars`) in time order, from ``start`` on.

    :param frame: recorded bars
    :param start: first bar end to replay (UTC); earlier bars are skipped
    """
    if start is not None:
        frame = frame[frame["timestamp"] >= start]
    for timestamp, group in frame.groupby("timestamp", sort=True):
        yield BarEvent(
            pd.Timestamp(timestamp),
            {
                row.tic: Bar(row.open, row.high, row.low, row.close, row.volume)
                for row in group.itertuples(index=False)
            },
        )


class AlpacaBarStream:
    """Alpaca's live minute bars (alpaca-py ``StockDataStream``) as :class:`BarEvent` s.

    The stream runs in a thread; bars are grouped by timestamp and a timestamp's event is released when a bar
    of a later minute arrives or every symbol has reported. alpaca-py reconnects a dropped connection itself; a
    stream that ends without :meth:`stop` (a refused subscription, an error it gave up on) ends the iteration
    with :class:`BarSourceError`.

    :param api_key: Alpaca key id
    :param secret_key: Alpaca secret
    :param symbols: symbols to subscribe to
    :param url_override: websocket URL (a local fake in tests)
    :param bar_length: the bar's duration; Alpaca stamps a bar with its start
    """

    def __init__(
        self,
        api_key: str,
        secret_key: str,
        symbols: Sequence[str],
        url_override: str | None = None,
        bar_length: pd.Timedelta = MINUTE,
    ) -> None:
        from alpaca.data.live import StockDataStream

        self.symbols = tuple(symbols)
        self.bar_length = bar_length
        self._queue: queue.Queue[object] = queue.Queue()
        self._stopped = threading.Event()
        self._secrets = (api_key, secret_key)
        self._stream = StockDataStream(api_key, secret_key, url_override=url_override)
        self._stream.subscribe_bars(self._on_bar, *self.symbols)
        self._thread = threading.Thread(target=self._run, name="alpaca-bars", daemon=True)

    def __repr__(self) -> str:
        return f"AlpacaBarStream(symbols={list(self.symbols)})"  # never the keys

    async def _on_bar(self, bar) -> None:
        self._queue.put(bar)

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

    def __iter__(self) -> Iterator[BarEvent]:
        self._thread.start()
        pending: dict[pd.Timestamp, dict[str, Bar]] = {}
        while True:
            item = self._queue.get()
            if item is None:
                break
            if isinstance(item, BarSourceError):
                raise item
            end = pd.Timestamp(item.timestamp).tz_convert("UTC") + self.bar_length
            pending.setdefault(end, {})[item.symbol] = Bar(
                item.open, item.high, item.low, item.close, item.volume
            )
            for timestamp in sorted(pending):
                if timestamp < end or len(pending[timestamp]) == len(self.symbols):
                    yield BarEvent(timestamp, pending.pop(timestamp))
        for timestamp in sorted(pending):
            yield BarEvent(timestamp, pending.pop(timestamp))


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
    for field in ("open", "high", "low"):
        filled[field] = wide[field].where(wide[field].notna(), close)
    filled["close"] = close
    filled["volume"] = wide["volume"].fillna(0.0)
    long = pd.concat({k: v[started] for k, v in filled.items()}, axis=1).stack(level=1, future_stack=True)
    long = long.reset_index().rename(columns={"level_1": "tic"})
    return long[["timestamp", "tic", "open", "high", "low", "close", "volume"]].sort_values(
        ["timestamp", "tic"], ignore_index=True
    )
