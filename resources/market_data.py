"""Market-data resource with three sources: shipped sample data, a local file, and Alpaca's historical API.

Daily bars come from any of them; intraday bars (1, 5 or 15 minutes) and quotes (NBBO) from Alpaca or from files
(``intraday_path``, ``quotes_path``): the sample package has none. Its settings are checked when it is built
(dates, required settings, file formats, URL, timeframe); :func:`market_data_problems` also checks what the source
holds (the files are there and readable with the right columns, the tickers exist, the window has bars), so a run
can be refused before any work.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlparse

import dagster as dg
import pandas as pd
from pydantic import Field, model_validator

from trading_core.data.calendar import (
    EXCHANGE_TIMEZONE,
    INTRADAY_TIMEFRAMES,
    MINUTE,
    exchange_calendar,
    infer_bar_length,
)
from trading_core.data.files import BARS_FILE_FORMATS, bars_file_format, read_bars_file
from trading_core.data.sample import SAMPLE_SOURCE, SAMPLE_TICKERS, load_sample_daily_bars
from trading_core.data.schema import REQUIRED_COLUMNS, select_window
from trading_core.live.sources import (
    QUOTE_COLUMNS,
    read_bars,
    read_quotes,
    resample_bars,
    session_dates,
    timeframe_length,
)

ALPACA_KEY_ENV = ("ALPACA_API_KEY", "APCA_API_KEY_ID")
ALPACA_SECRET_ENV = ("ALPACA_SECRET_KEY", "APCA_API_SECRET_KEY")
RETRYABLE_STATUS = {429, 500, 502, 503, 504}
VIX_COLUMNS = ("date", "close")
MAX_TICKERS_SHOWN = 40
#: the shared intraday layout: exchange-time naive ``datetime`` labelled at the bar's end
INTRADAY_COLUMNS = ("datetime", "tic", "open", "high", "low", "close", "volume")
DEFAULT_INTRADAY_TIMEFRAME = "1Min"
INTRADAY_FILE = f"{BARS_FILE_FORMATS} intraday bars file"
QUOTES_FILE = f"{BARS_FILE_FORMATS} quotes file"
T = TypeVar("T")


@dataclass(frozen=True)
class SettingProblem:
    """A market-data setting that cannot work: the field, the value given (``None``: not set), what is expected."""

    field: str
    value: object
    expected: str

    def line(self, name: str | None = None) -> str:
        """One line naming the setting (``name``, e.g. the environment variable it came from, else the field)."""
        label = name or self.field
        if self.value is None:
            return f"{label} is not set: expected {self.expected}"
        value = ",".join(self.value) if isinstance(self.value, list | tuple) else self.value
        return f"{label}={str(value)!r}: expected {self.expected}"


def _iso_date(value: str | None) -> date | None:
    try:
        return datetime.strptime(value, "%Y-%m-%d").date() if value else None
    except (TypeError, ValueError):
        return None


def _static_problems(settings: Mapping[str, Any]) -> list[SettingProblem]:
    """Problems visible in the settings alone, without reading any file or calling any API."""
    problems = []
    source = settings.get("source", "sample")
    start, end = settings.get("start_date"), settings.get("end_date")
    for name, value in (("start_date", start), ("end_date", end)):
        if value and _iso_date(value) is None:
            problems.append(SettingProblem(name, value, "a date YYYY-MM-DD"))
    if _iso_date(start) and _iso_date(end) and _iso_date(start) >= _iso_date(end):
        problems.append(SettingProblem("end_date", end, f"a date after the start date {start}"))
    tickers = settings.get("tickers") or []
    bad = [t for t in tickers if not t or t != t.strip() or " " in t]
    if bad:
        problems.append(
            SettingProblem("tickers", tickers, "comma-separated tickers without spaces, e.g. AAPL,MSFT")
        )
    path = settings.get("path")
    if source == "csv" and not path:
        problems.append(SettingProblem("path", None, f"the path of a {BARS_FILE_FORMATS} bars file"))
    if source == "csv" and path and bars_file_format(path) is None:
        problems.append(SettingProblem("path", path, f"a {BARS_FILE_FORMATS} bars file"))
    vix_path = settings.get("vix_path")
    if vix_path and ".csv" not in "".join(Path(vix_path).suffixes).lower():
        problems.append(
            SettingProblem("vix_path", vix_path, "a .csv or .csv.gz file of daily VIX (date, close)")
        )
    timeframe = settings.get("intraday_timeframe", DEFAULT_INTRADAY_TIMEFRAME)
    if timeframe not in INTRADAY_TIMEFRAMES:
        problems.append(
            SettingProblem("intraday_timeframe", timeframe, f"one of {', '.join(INTRADAY_TIMEFRAMES)}")
        )
    for name, what in (("intraday_path", INTRADAY_FILE), ("quotes_path", QUOTES_FILE)):
        value = settings.get(name)
        if value and bars_file_format(value) is None:
            problems.append(SettingProblem(name, value, f"a {what}"))
    if source == "alpaca":
        if not tickers:
            problems.append(
                SettingProblem("tickers", None, "the tickers Alpaca is asked for, e.g. AAPL,MSFT")
            )
        if not start:
            problems.append(
                SettingProblem("start_date", None, "the first date Alpaca is asked for, YYYY-MM-DD")
            )
        url = settings.get("alpaca_url_override")
        parsed = urlparse(url) if url else None
        if parsed is not None and (parsed.scheme not in ("http", "https") or not parsed.netloc):
            problems.append(SettingProblem("alpaca_url_override", url, "an http(s)://host[:port] URL"))
    return problems


def _file_problems(
    field: str, path: str, columns: tuple[str, ...], what: str, one_of: tuple[str, ...] = ()
) -> list[SettingProblem]:
    """Whether ``path`` is a readable file whose header holds ``columns`` and, if given, one of ``one_of``."""
    file = Path(path)
    if not file.exists():
        return [SettingProblem(field, path, f"an existing {what} (no such file)")]
    if not file.is_file():
        return [SettingProblem(field, path, f"a {what}, not a directory")]
    if not os.access(file, os.R_OK):
        return [SettingProblem(field, path, f"a readable {what} (permission denied)")]
    try:
        if bars_file_format(path) == "parquet":
            import pyarrow.parquet as pq

            header = list(pq.read_schema(file).names)
        else:
            header = list(pd.read_csv(file, nrows=0).columns)
    except Exception as error:  # noqa: BLE001 - any reader error means the same: the file cannot be used
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        return [SettingProblem(field, path, f"a readable {what} ({reason})")]
    missing = [c for c in columns if c not in header]
    if one_of and not set(one_of) & set(header):
        missing.append(" or ".join(one_of))
        columns = (*columns, " or ".join(one_of))
    if missing:
        return [
            SettingProblem(
                field,
                path,
                f"a {what} with columns {', '.join(columns)}; missing column(s) {', '.join(missing)}",
            )
        ]
    return []


def sample_tickers() -> tuple[str, ...]:
    """Every ticker the ``bokeh-sampledata`` stocks module ships."""
    from bokeh_sampledata import stocks

    return tuple(sorted(n for n, v in vars(stocks).items() if isinstance(v, dict) and "close" in v))


@lru_cache(maxsize=4)
def _read_catalog(source: str, path: str | None, modified_ns: int) -> tuple[str, pd.DataFrame]:
    del modified_ns  # part of the cache key only: a rewritten file is read again
    if source == "sample":
        frame, name = load_sample_daily_bars(sample_tickers())[["tic", "date"]], "bokeh-sampledata stocks"
    elif bars_file_format(path) == "parquet":
        frame, name = pd.read_parquet(path, columns=["tic", "date"]), str(path)
    else:
        frame, name = pd.read_csv(path, usecols=["tic", "date"], dtype={"tic": str, "date": str}), str(path)
    frame = frame.assign(date=pd.to_datetime(frame["date"], errors="coerce", format="mixed")).dropna()
    return name, frame.groupby("tic")["date"].agg(first="min", last="max").reset_index()


def _catalog(settings: Mapping[str, Any]) -> tuple[str, pd.DataFrame]:
    """The source's name and each of its tickers' first and last bar date (``tic``, ``first``, ``last``)."""
    source, path = settings.get("source", "sample"), settings.get("path")
    modified = Path(path).stat().st_mtime_ns if source == "csv" else 0
    return _read_catalog(source, path if source == "csv" else None, modified)


def _selected(settings: Mapping[str, Any], catalog: pd.DataFrame) -> pd.DataFrame:
    tickers = settings.get("tickers") or []
    return catalog[catalog["tic"].isin(tickers)] if tickers else catalog


def _source_problems(settings: Mapping[str, Any]) -> list[SettingProblem]:
    """What the sample package or the file holds against the settings: tickers known, bars in the window."""
    name, catalog = _catalog(settings)
    tickers = list(settings.get("tickers") or [])
    known = set(catalog["tic"])
    unknown = [t for t in tickers if t not in known]
    problems = []
    if unknown:
        shown = sorted(known)[:MAX_TICKERS_SHOWN]
        more = f" and {len(known) - len(shown)} more" if len(known) > len(shown) else ""
        problems.append(
            SettingProblem(
                "tickers",
                tickers,
                f"tickers of {name}; unknown: {', '.join(unknown)}; available: {', '.join(shown)}{more}",
            )
        )
    held = _selected(settings, catalog)
    if held.empty:
        return problems or [
            SettingProblem("path", settings.get("path"), f"bars with parseable dates in {name}")
        ]
    first, last = held["first"].min(), held["last"].max()
    start, end = _iso_date(settings.get("start_date")), _iso_date(settings.get("end_date"))
    if start and pd.Timestamp(start) > last:
        problems.append(
            SettingProblem(
                "start_date", settings["start_date"], f"a date on or before the last bar, {last.date()}"
            )
        )
    if end and pd.Timestamp(end) < first:
        problems.append(
            SettingProblem(
                "end_date", settings["end_date"], f"a date on or after the first bar, {first.date()}"
            )
        )
    return problems


def source_window(settings: Mapping[str, Any]) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    """First and last date of the bars the settings select from the sample package or file, clipped to
    ``start_date``/``end_date``; ``None`` for Alpaca or settings :func:`market_data_problems` refuses."""
    if settings.get("source", "sample") not in ("sample", "csv") or market_data_problems(settings):
        return None
    held = _selected(settings, _catalog(settings)[1])
    start, end = _iso_date(settings.get("start_date")), _iso_date(settings.get("end_date"))
    first = max(held["first"].min(), pd.Timestamp(start)) if start else held["first"].min()
    last = min(held["last"].max(), pd.Timestamp(end)) if end else held["last"].max()
    return first, last


def market_data_problems(settings: Mapping[str, Any], check_sources: bool = True) -> list[SettingProblem]:
    """Every problem of market-data settings (the fields of :class:`MarketDataResource`), one per setting.

    :param settings: field values; missing ones take the resource's defaults
    :param check_sources: also read what the file or sample package holds (header, tickers, dates) and whether the
        VIX file is readable; Alpaca's tickers are not listed here (they surface as missing bars when loading)
    """
    problems = _static_problems(settings)
    if not check_sources:
        return problems
    source = settings.get("source", "sample")
    path, vix_path = settings.get("path"), settings.get("vix_path")
    # Alpaca gives intraday bars and quotes itself: the files are read only by the other sources.
    from_file = source != "alpaca"
    for field, file, columns, what, one_of in (
        ("path", path if source == "csv" else None, REQUIRED_COLUMNS, f"{BARS_FILE_FORMATS} bars file", ()),
        ("vix_path", vix_path, VIX_COLUMNS, "CSV file of daily VIX", ()),
        (
            "intraday_path",
            settings.get("intraday_path") if from_file else None,
            INTRADAY_COLUMNS,
            INTRADAY_FILE,
            (),
        ),
        (
            "quotes_path",
            settings.get("quotes_path") if from_file else None,
            QUOTE_COLUMNS[1:],
            QUOTES_FILE,
            ("timestamp", "datetime"),
        ),
    ):
        if not file:
            continue
        found = _file_problems(field, file, columns, what, one_of)
        if found and not Path(file).is_file():
            # A missing file or a directory says more than its name's suffix does.
            problems = [p for p in problems if p.field != field]
        problems += found if not any(p.field == field for p in problems) else []
    blocked = {p.field for p in problems} & {"path", "tickers"}
    if source in ("sample", "csv") and not blocked:
        problems += [p for p in _source_problems(settings) if p.field not in {q.field for q in problems}]
    return problems


@dataclass(frozen=True)
class RawBars:
    """Bars as a source delivered them, with a description of where they came from."""

    frame: pd.DataFrame
    source: str
    location: str


def _first_env(names: tuple[str, ...]) -> str | None:
    return next((os.environ[n] for n in names if os.environ.get(n)), None)


def _session_date(name: str, value: str | None) -> date | None:
    """A session date argument (``YYYY-MM-DD``) as a date; ``None`` stays ``None``."""
    if value is None:
        return None
    parsed = _iso_date(value)
    if parsed is None:
        raise ValueError(f"{name}={value!r}: expected a session date YYYY-MM-DD")
    return parsed


def _in_window(days: pd.Series, first: date | None, last: date | None) -> pd.Series:
    """Which exchange dates (naive midnights) lie within ``first .. last`` (inclusive; ``None`` is open)."""
    keep = pd.Series(True, index=days.index)
    if first is not None:
        keep &= days >= pd.Timestamp(first)
    if last is not None:
        keep &= days <= pd.Timestamp(last)
    return keep


def _exchange_midnight(day: date) -> datetime:
    """The start of ``day`` in exchange time, as an aware datetime (what Alpaca's requests take)."""
    return pd.Timestamp(day).tz_localize(EXCHANGE_TIMEZONE).to_pydatetime()


def _regular_session(timestamps: pd.Series, bar_length: pd.Timedelta) -> pd.Series:
    """Which bars (UTC ends) lie inside their day's regular session, from the exchange calendar (half days
    close early; a day that is no session has none)."""
    schedule = exchange_calendar().schedule
    days = session_dates(timestamps, bar_length).to_numpy()
    # Naive UTC datetime64 arrays: NaT (no session that day) compares False both ways, so such bars are dropped.
    opens = schedule["open"].dt.tz_convert(None).reindex(days).to_numpy()
    closes = schedule["close"].dt.tz_convert(None).reindex(days).to_numpy()
    ends = timestamps.dt.tz_convert("UTC").dt.tz_convert(None)
    starts = (ends - bar_length).to_numpy()
    return pd.Series((starts >= opens) & (ends.to_numpy() <= closes), index=timestamps.index)


def _timeframe_name(length: pd.Timedelta) -> str:
    """``15Min`` for 15 minutes: Alpaca's name of a bar length."""
    return f"{length // MINUTE}Min" if length % MINUTE == pd.Timedelta(0) else str(length)


class MarketDataResource(dg.ConfigurableResource):
    """Daily OHLCV bars in the long format ``date, tic, open, high, low, close, volume``.

    ``sample`` (default) reads real daily bars shipped in the ``bokeh-sampledata`` package; ``csv`` reads a CSV
    or Parquet file; ``alpaca`` calls Alpaca's historical bars API with keys from ``ALPACA_API_KEY`` and
    ``ALPACA_SECRET_KEY``. :meth:`load_intraday_bars` and :meth:`load_quotes` give intraday bars and quotes from
    Alpaca, or from ``intraday_path`` / ``quotes_path`` for the other sources.
    """

    source: Literal["sample", "csv", "alpaca"] = Field(default="sample", description="where bars come from")
    path: str | None = Field(default=None, description="CSV or Parquet file for source=csv")
    tickers: list[str] = Field(
        default_factory=list, description="tickers to keep; empty means the source's set"
    )
    start_date: str | None = Field(default=None, description="first date (inclusive), YYYY-MM-DD")
    end_date: str | None = Field(default=None, description="last date (inclusive), YYYY-MM-DD")
    alpaca_url_override: str | None = Field(
        default=None, description="base URL of an Alpaca-compatible data API"
    )
    alpaca_feed: str = Field(default="iex", description="Alpaca data feed (iex or sip)")
    vix_path: str | None = Field(
        default=None, description="optional CSV of daily VIX (date, close) joined as a feature"
    )
    max_retries: int = Field(default=4, ge=0, description="retries of a failed Alpaca request (each page)")
    retry_wait_seconds: float = Field(
        default=1.0, ge=0, description="first wait between retries; doubles each time"
    )
    intraday_path: str | None = Field(
        default=None,
        description="CSV or Parquet intraday bars (datetime,tic,open,high,low,close,volume; exchange time, "
        "labelled at the bar's end) for the sample and csv sources",
    )
    intraday_timeframe: str = Field(
        default=DEFAULT_INTRADAY_TIMEFRAME,
        description=f"the intraday bar length loaded by default: {', '.join(INTRADAY_TIMEFRAMES)}",
    )
    intraday_adjustment: Literal["raw", "split", "dividend", "all"] = Field(
        default="split",
        description="Alpaca's price adjustment of intraday bars: split keeps days comparable across a split "
        "and equals the live stream's raw prices since the last one",
    )
    regular_session_only: bool = Field(
        default=True,
        description="keep only Alpaca's intraday bars inside the exchange's regular session (its calendar's "
        "open to close, half days included), as the intraday files hold",
    )
    quotes_path: str | None = Field(
        default=None,
        description="CSV or Parquet quotes (timestamp UTC or datetime exchange time, tic, bid, ask, bid_size, "
        "ask_size) for the sample and csv sources",
    )

    @model_validator(mode="after")
    def _settings_can_work(self) -> MarketDataResource:
        problems = _static_problems(self.settings())
        if problems:
            raise ValueError("; ".join(p.line() for p in problems))
        return self

    def settings(self) -> dict[str, Any]:
        """The fields :func:`market_data_problems` checks."""
        names = (
            "source",
            "path",
            "tickers",
            "start_date",
            "end_date",
            "vix_path",
            "alpaca_url_override",
            "intraday_path",
            "intraday_timeframe",
            "quotes_path",
        )
        return {name: getattr(self, name) for name in names}

    def load_daily_bars(self) -> RawBars:
        """Fetch bars from the configured source, filtered to the configured tickers and dates."""
        if self.source == "sample":
            tickers = self.tickers or list(SAMPLE_TICKERS)
            frame = select_window(load_sample_daily_bars(tickers), tickers, self.start_date, self.end_date)
            return RawBars(frame, SAMPLE_SOURCE, "bokeh_sampledata.stocks")
        if self.source == "csv":
            if not self.path:
                raise ValueError("market data source 'csv' needs a path")
            frame = select_window(read_bars_file(self.path), self.tickers, self.start_date, self.end_date)
            return RawBars(frame, f"file {self.path}", str(self.path))
        return self._load_from_alpaca()

    def latest_bar_date(self) -> pd.Timestamp | None:
        """Date of the newest bar the source holds now (what the new-data sensor watches)."""
        dates = pd.to_datetime(self.load_daily_bars().frame["date"], errors="coerce").dropna()
        return None if dates.empty else pd.Timestamp(dates.max()).normalize()

    def load_vix(self) -> pd.Series | None:
        """Daily VIX close indexed by date when ``vix_path`` is set, else ``None``."""
        if not self.vix_path:
            return None
        vix = pd.read_csv(self.vix_path, usecols=["date", "close"], parse_dates=["date"])
        return vix.dropna().set_index("date")["close"].sort_index()

    def load_intraday_bars(
        self, start: str | None = None, end: str | None = None, timeframe: str | None = None
    ) -> RawBars:
        """Intraday bars ``timestamp`` (UTC, the bar's END), ``tic``, ``open``, ``high``, ``low``, ``close``,
        ``volume`` (and ``trade_count``, ``vwap`` where Alpaca gives them) of the sessions ``start .. end``.

        Alpaca's bars (stamped by their start) come at the asked timeframe, adjusted by ``intraday_adjustment``,
        inside the regular session when ``regular_session_only``. A file gives its own bar length or a coarser
        multiple of it, resampled within each session (open first, high max, low min, close last, volume summed).

        :param start: first session (exchange date) YYYY-MM-DD, inclusive; default ``start_date``
        :param end: last session, inclusive; default ``end_date`` (none: up to the newest bar)
        :param timeframe: ``1Min``, ``5Min`` or ``15Min``; default ``intraday_timeframe``
        :raises ValueError: one line: a bad date or timeframe, no intraday source, a file at a coarser or
            incompatible bar, tickers without bars, missing keys
        """
        timeframe = timeframe or self.intraday_timeframe
        length = timeframe_length(timeframe)
        first = _session_date("start", start or self.start_date)
        last = _session_date("end", end or self.end_date)
        if first is not None and last is not None and last < first:
            raise ValueError(
                f"end={last.isoformat()!r}: expected a session on or after start {first.isoformat()}"
            )
        if self.source == "alpaca":
            return self._load_intraday_from_alpaca(first, last, timeframe)
        if not self.intraday_path:
            raise ValueError(
                f"market data source {self.source!r} has no intraday bars: set intraday_path to an intraday file "
                f"({','.join(INTRADAY_COLUMNS)}) or use source 'alpaca'"
            )
        path = self.intraday_path
        frame = read_bars(path, self.tickers or None, validate=False)
        try:
            native = infer_bar_length(frame["timestamp"])
        except ValueError:
            raise ValueError(
                f"intraday_path={path!r}: needs two bars inside one session to tell its bar length"
            ) from None
        if length < native or length % native != pd.Timedelta(0):
            raise ValueError(
                f"intraday_path={path!r} holds {_timeframe_name(native)} bars: it cannot give {timeframe} bars "
                f"(only {_timeframe_name(native)} or a multiple of it)"
            )
        frame = frame[_in_window(session_dates(frame["timestamp"], native), first, last)]
        source = f"file {path}"
        if length != native:
            frame = resample_bars(frame, length)
            source += f" ({_timeframe_name(native)} bars resampled to {timeframe})"
        return RawBars(frame.reset_index(drop=True), source, str(path))

    def load_quotes(self, start: str | None = None, end: str | None = None) -> pd.DataFrame:
        """Quotes (NBBO) ``timestamp`` (UTC), ``tic``, ``bid``, ``ask``, ``bid_size``, ``ask_size`` of the sessions
        ``start .. end`` (by the quote's exchange date, extended hours included), sorted by time.

        Alpaca's historical quotes for ``tickers``, or the ``quotes_path`` file for the other sources. Quotes
        are as the source gave them: :func:`trading_core.live.sources.usable_quotes` tells which are a usable NBBO.

        :param start: first session YYYY-MM-DD, inclusive; default ``start_date``
        :param end: last session, inclusive; default ``end_date`` (none: up to the newest quote)
        :raises ValueError: one line: a bad date, no quotes source, an unreadable file, missing keys
        """
        first = _session_date("start", start or self.start_date)
        last = _session_date("end", end or self.end_date)
        if self.source == "alpaca":
            frame = self._load_quotes_from_alpaca(first, last)
        elif not self.quotes_path:
            raise ValueError(
                f"market data source {self.source!r} has no quotes: set quotes_path to a quotes file "
                f"(timestamp or datetime,{','.join(QUOTE_COLUMNS[1:])}) or use source 'alpaca'"
            )
        else:
            frame = read_quotes(self.quotes_path, self.tickers or None)
        days = session_dates(frame["timestamp"], pd.Timedelta(0))
        return frame[_in_window(days, first, last)].reset_index(drop=True)

    # ---------------------------------------------------------------------------------------------- Alpaca

    def _with_retries(self, request: Callable[[], T]) -> T:
        """``request()``, retried on throttling (429), server errors and dropped connections, ``max_retries``
        times with waits doubling from ``retry_wait_seconds``; other errors (a bad request, bad keys) at once."""
        from alpaca.common.exceptions import APIError
        from requests.exceptions import ConnectionError as RequestsConnectionError
        from requests.exceptions import Timeout

        wait = self.retry_wait_seconds
        for attempt in range(self.max_retries + 1):
            try:
                return request()
            except (APIError, RequestsConnectionError, Timeout) as error:
                status = getattr(error, "status_code", None)
                retryable = status in RETRYABLE_STATUS or not isinstance(error, APIError)
                if not retryable or attempt == self.max_retries:
                    raise
                time.sleep(wait)
                wait *= 2
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _alpaca_client(self):
        """alpaca-py's historical client with this resource's retry policy on every page it fetches."""
        from alpaca.data.historical import StockHistoricalDataClient

        api_key, secret_key = _first_env(ALPACA_KEY_ENV), _first_env(ALPACA_SECRET_ENV)
        if not api_key or not secret_key:
            raise ValueError(
                f"market data source 'alpaca' needs {ALPACA_KEY_ENV[0]} and {ALPACA_SECRET_ENV[0]} in the environment"
            )
        client = StockHistoricalDataClient(api_key, secret_key, url_override=self.alpaca_url_override)
        # alpaca-py retries 429 itself, sleeping a fixed 3 s; this resource owns the retry policy instead.
        client._retry = 0
        fetch_page = client.get
        # alpaca-py follows next_page_token through client.get: retried there, a throttled page 40 is fetched
        # again on its own instead of the 39 before it.
        client.get = lambda *args, **kwargs: self._with_retries(lambda: fetch_page(*args, **kwargs))
        return client

    def _require_alpaca_symbols(self, frame: pd.DataFrame, first: object) -> None:
        missing = sorted(set(self.tickers) - set(frame.get("symbol", ())))
        if missing:
            raise ValueError(
                f"Alpaca returned no bars for {', '.join(missing)} from {first}: unknown ticker(s), or "
                "none traded in the window"
            )

    def _load_from_alpaca(self) -> RawBars:
        from alpaca.data.enums import Adjustment, DataFeed
        from alpaca.data.requests import StockBarsRequest
        from alpaca.data.timeframe import TimeFrame

        if not self.tickers or not self.start_date:
            raise ValueError("market data source 'alpaca' needs tickers and a start_date")
        client = self._alpaca_client()
        request = StockBarsRequest(
            symbol_or_symbols=list(self.tickers),
            timeframe=TimeFrame.Day,
            start=datetime.strptime(self.start_date, "%Y-%m-%d"),
            end=datetime.strptime(self.end_date, "%Y-%m-%d") if self.end_date else None,
            adjustment=Adjustment.ALL,
            feed=DataFeed(self.alpaca_feed),
        )
        frame = client.get_stock_bars(request).df.reset_index()  # pages through next_page_token itself
        self._require_alpaca_symbols(frame, self.start_date)
        frame = pd.DataFrame(
            {
                "date": pd.to_datetime(frame["timestamp"])
                .dt.tz_convert("America/New_York")
                .dt.tz_localize(None)
                .dt.normalize(),
                "tic": frame["symbol"].astype(str),
                "open": frame["open"].astype(float),
                "high": frame["high"].astype(float),
                "low": frame["low"].astype(float),
                "close": frame["close"].astype(float),
                "volume": frame["volume"].astype(float),
            }
        ).sort_values(["date", "tic"], ignore_index=True)
        url = self.alpaca_url_override or "Alpaca market data API"
        return RawBars(frame, f"Alpaca daily bars ({self.alpaca_feed} feed, all adjustments)", url)

    def _alpaca_window(self, first: date | None, last: date | None) -> dict[str, datetime | None]:
        """``start`` and ``end`` of a request for the sessions ``first .. last`` (whole exchange days)."""
        if not self.tickers or first is None:
            raise ValueError(
                "market data source 'alpaca' needs tickers and a start date (start or start_date)"
            )
        end = _exchange_midnight(last + timedelta(days=1)) - timedelta(microseconds=1) if last else None
        return {"start": _exchange_midnight(first), "end": end}

    def _load_intraday_from_alpaca(self, first: date | None, last: date | None, timeframe: str) -> RawBars:
        from alpaca.data.enums import Adjustment, DataFeed
        from alpaca.data.requests import StockBarsRequest
        from alpaca.data.timeframe import TimeFrame, TimeFrameUnit

        length = timeframe_length(timeframe)
        window = self._alpaca_window(first, last)
        request = StockBarsRequest(
            symbol_or_symbols=list(self.tickers),
            timeframe=TimeFrame(length // MINUTE, TimeFrameUnit.Minute),
            adjustment=Adjustment(self.intraday_adjustment),
            feed=DataFeed(self.alpaca_feed),
            **window,
        )
        raw = self._alpaca_client().get_stock_bars(request).df.reset_index()
        self._require_alpaca_symbols(raw, first)
        # Alpaca stamps a bar with its start; the project labels bars by their end.
        columns = {
            "timestamp": pd.to_datetime(raw["timestamp"], utc=True) + length,
            "tic": raw["symbol"].astype(str),
        }
        for name in ("open", "high", "low", "close", "volume", "trade_count", "vwap"):
            if name in raw.columns:  # alpaca-py drops the columns Alpaca left null (trade_count, vwap)
                columns[name] = raw[name].astype(float)
        frame = pd.DataFrame(columns)
        keep = _in_window(session_dates(frame["timestamp"], length), first, last)
        if self.regular_session_only:
            keep &= _regular_session(frame["timestamp"], length)
        frame = frame[keep].sort_values(["timestamp", "tic"], ignore_index=True)
        url = self.alpaca_url_override or "Alpaca market data API"
        description = (
            f"Alpaca {timeframe} bars ({self.alpaca_feed} feed, {self.intraday_adjustment} adjustment)"
        )
        return RawBars(frame, description, url)

    def _load_quotes_from_alpaca(self, first: date | None, last: date | None) -> pd.DataFrame:
        from alpaca.data.enums import DataFeed
        from alpaca.data.requests import StockQuotesRequest

        request = StockQuotesRequest(
            symbol_or_symbols=list(self.tickers),
            feed=DataFeed(self.alpaca_feed),
            **self._alpaca_window(first, last),
        )
        raw = self._alpaca_client().get_stock_quotes(request).df.reset_index()
        if raw.empty:
            return pd.DataFrame({c: pd.Series(dtype=float) for c in QUOTE_COLUMNS}).astype(
                {"timestamp": "datetime64[ns, UTC]", "tic": str}
            )
        frame = pd.DataFrame(
            {
                "timestamp": pd.to_datetime(raw["timestamp"], utc=True),
                "tic": raw["symbol"].astype(str),
                "bid": raw["bid_price"].astype(float),
                "ask": raw["ask_price"].astype(float),
                "bid_size": raw["bid_size"].astype(float),
                "ask_size": raw["ask_size"].astype(float),
            }
        )
        return frame.sort_values(["timestamp", "tic"], kind="stable", ignore_index=True)
