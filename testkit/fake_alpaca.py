"""A local fake of Alpaca: the trading REST API, the historical bars and quotes API and the bar and quote stream.

Tests point the real alpaca-py clients at it (``TradingClient``, ``StockHistoricalDataClient`` and
``StockDataStream`` all take ``url_override``), and a local paper session can run against it in the foreground:

    python -m testkit.fake_alpaca --bars ../shared/data/intraday_1min_us_equities_2019.csv.gz \\
        --port 8765 --stream-port 8766 [--replay-speed 60] [--quotes recorded_quotes.csv]

It prints the REST URL (trading and market data) and the stream URL; the keys are ``ALPACA_API_KEY`` /
``ALPACA_SECRET_KEY`` from the environment, else ``test-key`` / ``test-secret``. With ``--replay-speed`` the
bars are streamed in time order once a client subscribes (60 plays a minute of market time per second).

The historical bars API serves the bars it was given at any coarser timeframe Alpaca names (``5Min``, ``15Min``,
``1Day``...), aggregated as Alpaca does, and stamps every bar with its START as Alpaca does: intraday bars given
to the fake are labelled at their end, as in the project's files (naive exchange time), daily bars by their date.

Orders fill like the project's simulator, on the next bar: a market order fills at the open of the next bar
published for its symbol, a limit order when a later bar trades through its limit. Faults are injected per
route (:meth:`FakeAlpacaDataServer.inject`): error statuses, timeouts and dropped connections, for N requests
or N seconds, with a seeded probability, chained after another fault, and the nasty case of a request the
server processed but never answered. With ``state_path`` the account (cash, positions, orders, fills, the
market it has seen) is journaled before every reply, so a server started again on the same file carries on
where a killed one stopped. Naive timestamps are New York exchange time, as in the project's bar files.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlparse

import msgpack
import pandas as pd
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from resources.market_data import ALPACA_KEY_ENV, ALPACA_SECRET_ENV

DEFAULT_API_KEY = "test-key"
DEFAULT_SECRET = "test-secret"
MARKET_TIMEZONE = "America/New_York"
BARS_ROUTE = "/v2/stocks/bars"
QUOTES_ROUTE = "/v2/stocks/quotes"
FAKE_BARS_ROUTE = "/_fake/bars"  # not Alpaca's: lets a replaying process advance the fake market
STREAM_CHANNELS = (
    "trades",
    "quotes",
    "bars",
    "updatedBars",
    "dailyBars",
    "statuses",
    "lulds",
    "corrections",
    "cancelErrors",
)
OPEN_STATUSES = frozenset({"new", "accepted", "partially_filled", "pending_new"})
AUTH_TIMEOUT_S = 10.0
JOURNAL_FORMAT = 1
# Alpaca's error codes for the answers the fake gives.
_INVALID = 40010001
_FORBIDDEN = 40310000
_NOT_FOUND = 40410000
_UNPROCESSABLE = 42210000  # the market-data API's code for a query it cannot answer (an unknown timeframe...)
QUOTE_FIELDS = ("tic", "bid", "ask", "bid_size", "ask_size")
TIMEFRAME_UNITS = {"Min": pd.Timedelta(minutes=1), "Hour": pd.Timedelta(hours=1), "Day": pd.Timedelta(days=1)}
DAY = pd.Timedelta(days=1)


# ----------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------


def market_time(value: pd.Timestamp | str) -> pd.Timestamp:
    """A timestamp in UTC; naive ones are New York exchange time, as in the project's bar files.

    :param value: timestamp or ISO string
    """
    timestamp = pd.Timestamp(value)
    if timestamp.tzinfo is None:
        timestamp = timestamp.tz_localize(MARKET_TIMEZONE)
    return timestamp.tz_convert("UTC")


def normalise_bars(bars: pd.DataFrame | None) -> pd.DataFrame:
    """Long-format bars with a naive exchange-time ``date`` column, whatever the input called its time column.

    :param bars: columns ``date`` or ``datetime``, ``tic``, ``open``, ``high``, ``low``, ``close``, ``volume``
    """
    columns = ["date", "tic", "open", "high", "low", "close", "volume"]
    if bars is None:
        return pd.DataFrame(columns=columns)
    frame = bars.rename(columns={"datetime": "date"}) if "date" not in bars.columns else bars
    frame = frame[columns].copy()
    dates = pd.to_datetime(frame["date"])
    if dates.dt.tz is not None:
        dates = dates.dt.tz_convert(MARKET_TIMEZONE).dt.tz_localize(None)
    frame["date"] = dates
    return frame.sort_values(["tic", "date"]).reset_index(drop=True)


def normalise_quotes(quotes: pd.DataFrame | None) -> pd.DataFrame:
    """Quotes with a UTC ``timestamp``, sorted by symbol and time, whatever the input called its time column.

    :param quotes: columns ``timestamp`` (UTC when naive) or ``datetime`` (exchange time when naive), ``tic``,
        ``bid``, ``ask``, ``bid_size``, ``ask_size``
    """
    columns = ["timestamp", *QUOTE_FIELDS]
    if quotes is None:
        return pd.DataFrame(columns=columns)
    time_column = "timestamp" if "timestamp" in quotes.columns else "datetime"
    stamps = pd.to_datetime(quotes[time_column])
    if stamps.dt.tz is None:
        stamps = stamps.dt.tz_localize("UTC" if time_column == "timestamp" else MARKET_TIMEZONE)
    frame = quotes[list(QUOTE_FIELDS)].assign(timestamp=stamps.dt.tz_convert("UTC"))[columns]
    return frame.sort_values(["tic", "timestamp"], kind="stable", ignore_index=True)


def parse_timeframe(timeframe: str) -> pd.Timedelta | None:
    """The length Alpaca's timeframe name means (``15Min``, ``1Hour``, ``1Day``); ``None`` for one the fake
    does not know (weeks, months) or Alpaca refuses (``60Min``, ``2Day``)."""
    match = re.fullmatch(r"([1-9][0-9]*)(Min|Hour|Day)", timeframe)
    if match is None:
        return None
    amount, unit = int(match[1]), match[2]
    # Alpaca's own limits: minutes 1-59, hours 1-23, one day.
    if amount > {"Min": 59, "Hour": 23, "Day": 1}[unit]:
        return None
    return amount * TIMEFRAME_UNITS[unit]


def bars_at(bars: pd.DataFrame, timeframe: str) -> pd.DataFrame | str:
    """``bars`` (from :func:`normalise_bars`) as Alpaca serves them at ``timeframe``: ``tic``, ``start`` (UTC, the
    bar's start, as Alpaca stamps bars), ``day`` (naive exchange date of the session) and OHLCV, sorted by
    symbol and time; or why the fake cannot serve that timeframe.

    Daily bars (every time a midnight) are labelled by their date; intraday ones at their end, as in the
    project's files. Coarser bars are aggregated as Alpaca does: open first, high max, low min, close last,
    volume summed, minute intervals on the clock and days by session.

    :param bars: the fake's bars
    :param timeframe: Alpaca's timeframe name, e.g. ``1Min``, ``15Min``, ``1Day``
    """
    from trading_core.data.calendar import infer_bar_length
    from trading_core.live.sources import resample_bars, session_dates

    columns = ["tic", "start", "day", "open", "high", "low", "close", "volume"]
    target = parse_timeframe(timeframe)
    if target is None:
        return f"invalid timeframe {timeframe!r}"
    if bars.empty:
        return pd.DataFrame(columns=columns)
    daily = bool((bars["date"] == bars["date"].dt.normalize()).all())
    ends = bars["date"].dt.tz_localize(MARKET_TIMEZONE).dt.tz_convert("UTC")
    native = DAY if daily else infer_bar_length(ends)
    if target == DAY:
        day = bars["date"] if daily else session_dates(ends, native)
        rules = {"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum"}
        frame = bars.assign(day=day).groupby(["tic", "day"], sort=True).agg(rules).reset_index()
        frame["start"] = frame["day"].dt.tz_localize(MARKET_TIMEZONE).dt.tz_convert("UTC")
    elif daily or target % native != pd.Timedelta(0) or pd.Timedelta(hours=1) % target != pd.Timedelta(0):
        return f"the fake holds {native} bars: it cannot serve timeframe {timeframe!r}"
    else:
        frame = bars.drop(columns="date").assign(timestamp=ends)
        if target != native:
            frame = resample_bars(frame, target)
        frame["start"] = frame["timestamp"] - target
        frame["day"] = session_dates(frame["timestamp"], target)
    return frame[columns].sort_values(["tic", "start"], kind="stable", ignore_index=True)


def _iso(timestamp: pd.Timestamp) -> str:
    return timestamp.tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _number(value: float) -> str:
    """Alpaca sends quantities and money as strings: ``"10"``, ``"171.14"``."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def _error(code: int, message: str, **details: Any) -> dict[str, Any]:
    return {"code": code, "message": message, **details}


def _asset_id(symbol: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"fake-alpaca/assets/{symbol}"))


def _route_name(method: str, path: str) -> str:
    """``METHOD /path`` with ids and symbols replaced by placeholders, for request counts."""
    for prefix, placeholder in (("/v2/orders/", "{id}"), ("/v2/positions/", "{symbol}")):
        if path.startswith(prefix) and len(path) > len(prefix):
            return f"{method} {prefix}{placeholder}"
    return f"{method} {path}"


@dataclass(frozen=True)
class _Reply:
    status: int
    body: Any


def _encoded(reply: _Reply) -> _Reply:
    return _Reply(reply.status, json.dumps(reply.body).encode())


FaultOutcome = int | Literal["timeout", "disconnect"]


@dataclass(eq=False)
class FaultRule:
    """One way requests fail, made by :meth:`FakeAlpacaDataServer.inject`; ``hits`` counts the requests it failed.

    A rule applies to a request when its method and path match, it has ``times`` left (``None``: no count
    limit), it is within ``for_s`` of its first hit (``None``: no time limit), the rule it comes ``after`` has
    hit, and the server's seeded draw falls under ``probability``.
    """

    outcome: FaultOutcome
    method: str | None = None
    path_prefix: str | None = None
    times: int | None = 1
    for_s: float | None = None
    probability: float = 1.0
    after_processing: bool = False
    hang_s: float = 60.0
    after: FaultRule | None = None
    hits: int = 0
    first_hit: float | None = None

    def applies(self, method: str, path: str, now: float) -> bool:
        """Whether the rule may fail this request now (before the probability draw)."""
        return (
            (self.method is None or self.method == method)
            and (self.path_prefix is None or path.startswith(self.path_prefix))
            and (self.times is None or self.times > 0)
            and (self.for_s is None or self.first_hit is None or now - self.first_hit < self.for_s)
            and (self.after is None or self.after.hits > 0)
        )

    def hit(self, now: float) -> None:
        self.hits += 1
        self.first_hit = now if self.first_hit is None else self.first_hit
        if self.times is not None:
            self.times -= 1


class AccountJournal:
    """A fake account's state in a JSON-lines file: the first line whole, each later one what a request changed
    (changed orders, new fills, and the small rest whole), so saving costs the change, not the whole account.

    Lines are flushed to the operating system before the reply goes out: a killed process loses nothing; a
    line torn by the kill is the last one and is ignored on loading (its reply was never sent).

    :param path: the journal file; its folder is created when missing
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: Any = None

    def load(self) -> dict[str, Any] | None:
        """The saved account, ``None`` when the file does not exist or is empty.

        :raises ValueError: a line other than the last is not JSON, or the format is unknown
        """
        if not self.path.exists():
            return None
        lines = self.path.read_text().splitlines()
        state: dict[str, Any] | None = None
        for number, line in enumerate(lines, start=1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines):
                    break  # torn by a kill mid-write
                raise ValueError(f"{self.path}: line {number} is not JSON") from None
            if record.get("format") != JOURNAL_FORMAT:
                raise ValueError(
                    f"{self.path}: line {number} has format {record.get('format')!r}, not {JOURNAL_FORMAT}"
                )
            if state is None:
                state = record
                continue
            orders = {order["id"]: order for order in state["orders"]}
            orders.update({order["id"]: order for order in record["orders"]})
            state = {**record, "orders": list(orders.values()), "fills": state["fills"] + record["fills"]}
        return state

    def rewrite(self, state: dict[str, Any]) -> None:
        """Replace the file by one line holding ``state`` (atomically: a kill leaves the old file or the new)."""
        self.close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        scratch = self.path.with_name(self.path.name + ".tmp")
        with scratch.open("w") as file:
            file.write(json.dumps(state) + "\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(scratch, self.path)
        self._file = self.path.open("a")

    def append(self, record: dict[str, Any]) -> None:
        """Add one change."""
        if self._file is None:
            self._file = self.path.open("a")
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


# ----------------------------------------------------------------------------------------------------------
# The market-data part
# ----------------------------------------------------------------------------------------------------------


class FakeAlpacaDataServer:
    """Alpaca's historical bars and quotes API (``GET /v2/stocks/bars``, ``GET /v2/stocks/quotes``) on a loopback
    port, with fault injection.

    Bars (at the ``timeframe`` asked, see :func:`bars_at`) and quotes are served ``min(limit, page_size)`` at a
    time through ``page_token`` / ``next_page_token``, symbol by symbol in time order, between the request's
    ``start`` and ``end`` (inclusive; intraday bars by their start in UTC, daily bars by their exchange date).
    Requests without the right ``APCA-API-KEY-ID`` / ``APCA-API-SECRET-KEY`` headers get 401.

    :param bars: long-format bars (``date`` or ``datetime``, ``tic``, OHLCV)
    :param page_size: the most bars or quotes per page, whatever the request's ``limit``
    :param api_key: the accepted key id
    :param secret: the accepted secret key
    :param port: TCP port, 0 for any free one
    :param seed: seed of the draws of faults injected with a ``probability``
    :param quotes: quotes for the historical API (see :func:`normalise_quotes`)
    """

    def __init__(
        self,
        bars: pd.DataFrame | None,
        page_size: int = 250,
        api_key: str = DEFAULT_API_KEY,
        secret: str = DEFAULT_SECRET,
        *,
        port: int = 0,
        seed: int = 0,
        quotes: pd.DataFrame | None = None,
    ) -> None:
        self.bars = normalise_bars(bars)
        self.quotes = normalise_quotes(quotes)
        self.page_size = page_size
        # Keyed by the frame too: a test may replace `bars` after the server started.
        self._bars_by_timeframe: dict[tuple[int, str], pd.DataFrame | str] = {}
        self.api_key, self.secret = api_key, secret
        #: statuses answered, in order, to the next requests whatever their route (shorthand for inject)
        self.injected_errors: deque[int] = deque()
        #: the query of every market-data request, as parsed by ``parse_qs``
        self.requests: list[dict[str, list[str]]] = []
        #: requests per route, e.g. ``route_counts["POST /v2/orders"]``
        self.route_counts: Counter[str] = Counter()
        #: injected failures per route and outcome, e.g. ``fault_counts["POST /v2/orders 503 after processing"]``
        self.fault_counts: Counter[str] = Counter()
        self._faults: list[FaultRule] = []
        self._rng = random.Random(seed)
        self._lock = threading.RLock()
        self._closing = threading.Event()
        self._http = ThreadingHTTPServer(("127.0.0.1", port), _handler_class(self))
        # A short poll interval keeps close() quick: shutdown() waits for the next poll.
        self._http_thread = threading.Thread(
            target=self._http.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-alpaca-http",
            daemon=True,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self.url!r})"

    @property
    def url(self) -> str:
        """Base URL of the REST API (pass it as ``url_override``)."""
        host, port = self._http.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeAlpacaDataServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start serving in background threads."""
        self._http_thread.start()

    def close(self) -> None:
        """Stop serving; requests left hanging by an injected timeout are released."""
        self._closing.set()
        if self._http_thread.is_alive():  # shutdown() would wait forever for a loop that never ran
            self._http.shutdown()
        self._http.server_close()

    def inject(
        self,
        outcome: FaultOutcome,
        *,
        method: str | None = None,
        path_prefix: str | None = None,
        times: int | None = None,
        for_s: float | None = None,
        probability: float = 1.0,
        after_processing: bool = False,
        hang_s: float = 60.0,
        after: FaultRule | None = None,
    ) -> FaultRule:
        """Make matching requests fail; rules are tried in the order they were injected.

        An outage of every route for three seconds is ``inject(503, for_s=3)``, until :meth:`clear_faults`
        ``inject(503, for_s=math.inf)``; a reply lost after the order was created is ``inject("timeout", method="POST", path_prefix="/v2/orders", after_processing=True)``;
        one in ten order lookups throttled is ``inject(429, path_prefix="/v2/orders:", times=None,
        probability=0.1)``. The fake's own ``/_fake/bars`` route never fails.

        :param outcome: an HTTP status to answer (4xx, 5xx), ``"timeout"`` to answer nothing for ``hang_s``
            (longer than the client's timeout) and then drop the connection, or ``"disconnect"`` to drop the
            connection at once (the client sees it reset)
        :param method: only requests with this method (``"POST"``...); ``None`` for any
        :param path_prefix: only paths starting with this (``"/v2/orders"``); ``None`` for any
        :param times: how many requests fail; ``None`` is one without ``for_s`` and no count limit with it
        :param for_s: fail matching requests for this long from the rule's first hit (``math.inf``: for ever)
        :param probability: the chance that a matching request fails, drawn from the server's seeded generator
        :param after_processing: process the request first (create the order...) and fail only the reply
        :param hang_s: how long a timeout holds the request (released early when the server closes)
        :param after: only once this rule has hit (a lost reply followed by an outage)
        :return: the rule (its ``hits`` count the requests it failed)
        """
        if outcome not in ("timeout", "disconnect") and not 400 <= int(outcome) <= 599:
            raise ValueError(f"inject an error status (4xx, 5xx), 'timeout' or 'disconnect', got {outcome!r}")
        if not 0.0 < probability <= 1.0:
            raise ValueError(f"probability must be within (0, 1], got {probability}")
        count = times if times is not None or for_s is not None else 1
        rule = FaultRule(
            outcome, method, path_prefix, count, for_s, probability, after_processing, hang_s, after
        )
        with self._lock:
            self._faults.append(rule)
        return rule

    def clear_faults(self) -> None:
        """Remove every injected fault: the server answers normally from now on."""
        with self._lock:
            self._faults.clear()
            self.injected_errors.clear()

    # -------------------------------------------------------------------------------------- request handling

    def _respond(self, method: str, raw_path: str, headers: Any, body: bytes) -> _Reply | FaultRule:
        """Answer one request: a reply with its JSON body encoded, or the fault whose connection to hang or drop."""
        parsed = urlparse(raw_path)
        path, query = parsed.path, parse_qs(parsed.query)
        with self._lock:
            self.route_counts[_route_name(method, path)] += 1
            if path in (BARS_ROUTE, QUOTES_ROUTE):
                self.requests.append(query)
            if (
                headers.get("APCA-API-KEY-ID") != self.api_key
                or headers.get("APCA-API-SECRET-KEY") != self.secret
            ):
                return _encoded(_Reply(401, {"message": "unauthorized."}))
            if self.injected_errors:
                status = self.injected_errors.popleft()
                return _encoded(_Reply(status, _error(status, f"injected {status}")))
            fault = self._take_fault(method, path) if path != FAKE_BARS_ROUTE else None
        if fault is not None and not fault.after_processing:
            return self._fault_reply(fault)
        try:
            payload = json.loads(body) if body else None
        except json.JSONDecodeError:
            return _encoded(_Reply(400, _error(_INVALID, "request body is not JSON")))
        if method == "POST" and path == FAKE_BARS_ROUTE:
            # Outside the lock: publishing waits on the stream's event loop, which may need the lock.
            return _encoded(self._publish_payload(payload))
        with self._lock:
            # Encoded under the lock: the body may be live state that other requests change.
            reply = _encoded(self._route(method, path, {k: v[-1] for k, v in query.items()}, payload, query))
            self._persist()  # before the reply: a client that saw an answer never sees it undone
        return self._fault_reply(fault) if fault is not None else reply

    def _take_fault(self, method: str, path: str) -> FaultRule | None:
        """The first rule that fails this request (called with the lock held)."""
        now = time.monotonic()
        for rule in self._faults:
            if not rule.applies(method, path, now):
                continue
            if rule.probability < 1.0 and self._rng.random() >= rule.probability:
                continue
            rule.hit(now)
            processed = " after processing" if rule.after_processing else ""
            self.fault_counts[f"{_route_name(method, path)} {rule.outcome}{processed}"] += 1
            return rule
        return None

    @staticmethod
    def _fault_reply(fault: FaultRule) -> _Reply | FaultRule:
        if fault.outcome in ("timeout", "disconnect"):
            return fault
        return _encoded(_Reply(int(fault.outcome), _error(int(fault.outcome), f"injected {fault.outcome}")))

    def _persist(self) -> None:
        """Save what the last request changed (called with the lock held); the market data has no state."""

    def _route(
        self, method: str, path: str, params: dict[str, str], payload: Any, query: dict[str, list[str]]
    ) -> _Reply:
        """Route an authorised request (called with the lock held)."""
        if method == "GET" and path == BARS_ROUTE:
            return self._bars_page(query)
        if method == "GET" and path == QUOTES_ROUTE:
            return self._quotes_page(query)
        return _Reply(404, _error(_NOT_FOUND, f"no route {method} {path}"))

    def _page_bounds(self, query: dict[str, list[str]], size: int) -> tuple[int, int] | str:
        """The rows ``[offset, stop)`` of this page (from ``page_token`` and ``limit``), or why not."""
        try:
            offset = int(query.get("page_token", ["0"])[0] or 0)
            limit = int(query.get("limit", [str(self.page_size)])[0] or self.page_size)
        except ValueError:
            return "page_token and limit must be integers"
        if offset < 0 or not 1 <= limit <= 10_000:
            return "limit must be between 1 and 10000"
        return offset, min(offset + min(limit, self.page_size), size)

    @staticmethod
    def _window(query: dict[str, list[str]]) -> tuple[pd.Timestamp | None, pd.Timestamp | None]:
        """The request's ``start`` and ``end`` in UTC (Alpaca reads a time without offset as UTC)."""

        def utc(name: str) -> pd.Timestamp | None:
            if name not in query:
                return None
            value = pd.Timestamp(query[name][0])
            return value.tz_localize("UTC") if value.tzinfo is None else value.tz_convert("UTC")

        return utc("start"), utc("end")

    def _bars_page(self, query: dict[str, list[str]]) -> _Reply:
        timeframe = query.get("timeframe", ["1Day"])[0]
        key = (id(self.bars), timeframe)
        if key not in self._bars_by_timeframe:
            self._bars_by_timeframe[key] = bars_at(self.bars, timeframe)
        served = self._bars_by_timeframe[key]
        if isinstance(served, str):
            return _Reply(422, _error(_UNPROCESSABLE, served))
        rows = served[served["tic"].isin(query["symbols"][0].split(","))]
        start, end = self._window(query)
        if parse_timeframe(timeframe) == DAY:
            # Daily bars compare by their exchange date, so a bar dated D is inside `end=D` as Alpaca users expect.
            first = start.tz_localize(None).normalize() if start is not None else None
            rows = _between(rows, "day", first, end.tz_localize(None) if end is not None else None)
        else:
            rows = _between(rows, "start", start, end)
        bounds = self._page_bounds(query, len(rows))
        if isinstance(bounds, str):
            return _Reply(422, _error(_UNPROCESSABLE, bounds))
        bars: dict[str, list[dict[str, Any]]] = {}
        for row in rows.iloc[bounds[0] : bounds[1]].itertuples(index=False):
            bars.setdefault(row.tic, []).append(
                # The files hold no trade count or VWAP; null is Alpaca's "unknown".
                {
                    "t": row.start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "o": float(row.open),
                    "h": float(row.high),
                    "l": float(row.low),
                    "c": float(row.close),
                    "v": float(row.volume),
                    "n": None,
                    "vw": None,
                }
            )
        more = bounds[1] < len(rows)
        return _Reply(200, {"bars": bars, "next_page_token": str(bounds[1]) if more else None})

    def _quotes_page(self, query: dict[str, list[str]]) -> _Reply:
        rows = self.quotes[self.quotes["tic"].isin(query["symbols"][0].split(","))]
        rows = _between(rows, "timestamp", *self._window(query))
        bounds = self._page_bounds(query, len(rows))
        if isinstance(bounds, str):
            return _Reply(422, _error(_UNPROCESSABLE, bounds))
        quotes: dict[str, list[dict[str, Any]]] = {}
        for row in rows.iloc[bounds[0] : bounds[1]].itertuples(index=False):
            quotes.setdefault(row.tic, []).append(
                # IEX (exchange code V) is the default feed; the frames say nothing of conditions or tape.
                {
                    "t": _iso(row.timestamp),
                    "bx": "V",
                    "bp": float(row.bid),
                    "bs": float(row.bid_size),
                    "ax": "V",
                    "ap": float(row.ask),
                    "as": float(row.ask_size),
                    "c": ["R"],
                    "z": None,
                }
            )
        more = bounds[1] < len(rows)
        return _Reply(200, {"quotes": quotes, "next_page_token": str(bounds[1]) if more else None})


def _between(
    rows: pd.DataFrame, column: str, start: pd.Timestamp | None, end: pd.Timestamp | None
) -> pd.DataFrame:
    """The rows whose ``column`` lies in ``[start, end]``; an open side (``None``) bounds nothing."""
    keep = pd.Series(True, index=rows.index)
    if start is not None:
        keep &= rows[column] >= start
    if end is not None:
        keep &= rows[column] <= end
    return rows[keep]


def _handler_class(server: FakeAlpacaDataServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep test output quiet
            return

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            outcome = server._respond(method, self.path, self.headers, body)
            if isinstance(outcome, FaultRule):
                if outcome.outcome == "timeout":
                    # Answer nothing: the client's timeout fires first; then drop the connection.
                    server._closing.wait(outcome.hang_s)
                self.close_connection = True
                return
            payload = outcome.body
            try:
                self.send_response(outcome.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up on this request

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._serve("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._serve("POST")

        def do_DELETE(self) -> None:  # noqa: N802
            self._serve("DELETE")

        def do_PATCH(self) -> None:  # noqa: N802
            self._serve("PATCH")

    return Handler


# ----------------------------------------------------------------------------------------------------------
# The whole fake: trading API and bar stream
# ----------------------------------------------------------------------------------------------------------


class _Subscriber:
    """One authenticated stream connection and what it subscribed to."""

    def __init__(self, connection: ServerConnection, binary: bool) -> None:
        self.connection = connection
        self.binary = binary
        self.channels: dict[str, set[str]] = {channel: set() for channel in STREAM_CHANNELS}

    def wants(self, channel: str, symbol: str) -> bool:
        return symbol in self.channels[channel] or "*" in self.channels[channel]

    def wants_bars(self, symbol: str) -> bool:
        return self.wants("bars", symbol)

    async def send(self, messages: list[dict[str, Any]]) -> None:
        if self.binary:
            await self.connection.send(msgpack.packb(messages))
        else:
            await self.connection.send(json.dumps(messages, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, msgpack.Timestamp):
        return _iso(pd.Timestamp(value.to_unix_nano(), unit="ns", tz="UTC")).replace(".000000Z", "Z")
    raise TypeError(f"cannot encode {type(value).__name__}")


def _decode(raw: str | bytes) -> Any:
    return msgpack.unpackb(raw) if isinstance(raw, bytes) else json.loads(raw)


class FakeAlpacaServer(FakeAlpacaDataServer):
    """Alpaca's trading API, historical bars and quotes API and bar and quote stream in one local process.

    REST routes (all need the API-key headers): ``GET /v2/account``, ``GET /v2/positions``,
    ``GET /v2/positions/{symbol}``, ``POST /v2/orders``, ``GET /v2/orders`` (``status=open|closed|all``),
    ``GET /v2/orders/{id}``, ``GET /v2/orders:by_client_order_id``, ``DELETE /v2/orders``,
    ``DELETE /v2/positions``, ``GET /v2/clock``, ``GET /v2/stocks/bars`` and ``GET /v2/stocks/quotes``. The
    account is a cash account (no shorting, no margin). The stream speaks ``StockDataStream``'s protocol
    (connect, auth, subscribe) in msgpack when the client sends ``Content-Type: application/msgpack``, else
    JSON; bars (:meth:`publish_bar`) and quotes (:meth:`publish_quote`) carry data.

    :param bars: bars for the historical API and the default of :meth:`replay`
    :param quotes: quotes for the historical API
    :param api_key: the accepted key id
    :param secret: the accepted secret key
    :param page_size: bars per page of the historical API
    :param initial_cash: the account's starting cash (a journal's own account, when one is loaded, wins)
    :param port: REST port, 0 for any free one
    :param stream_port: stream port, 0 for any free one
    :param state_path: journal of the account (JSON lines): loaded when it exists, appended to before every
        reply that changed the account, so the account outlives the process
    :param seed: seed of the draws of faults injected with a ``probability``
    """

    def __init__(
        self,
        bars: pd.DataFrame | None = None,
        *,
        api_key: str = DEFAULT_API_KEY,
        secret: str = DEFAULT_SECRET,
        page_size: int = 250,
        initial_cash: float = 100_000.0,
        port: int = 0,
        stream_port: int = 0,
        state_path: str | Path | None = None,
        seed: int = 0,
        quotes: pd.DataFrame | None = None,
    ) -> None:
        super().__init__(bars, page_size, api_key, secret, port=port, seed=seed, quotes=quotes)
        self.initial_cash = float(initial_cash)
        self._cash = float(initial_cash)
        self._orders: dict[str, dict[str, Any]] = {}  # by order id, in submission order
        self._order_ids: dict[str, str] = {}  # client order id -> order id
        self._positions: dict[str, dict[str, float]] = {}  # symbol -> qty and cost basis
        self._last_price: dict[str, float] = {}
        self._fills: list[dict[str, Any]] = []
        self._clock_time: pd.Timestamp | None = None
        self._published: dict[str, pd.Timestamp] = {}
        self._stream_port = stream_port
        self._subscribers: set[_Subscriber] = set()
        self._subscription_changed = threading.Condition(self._lock)
        self._loop = asyncio.new_event_loop()
        self._stream_thread = threading.Thread(
            target=self._loop.run_forever, name="fake-alpaca-stream", daemon=True
        )
        self._stream_server: Server | None = None
        self._changed_orders: set[str] = set()
        self._changed = False
        self._saved_fills = 0
        self._journal = AccountJournal(Path(state_path)) if state_path is not None else None
        if self._journal is not None:
            saved = self._journal.load()
            if saved is not None:
                self._load_account(saved)
            self._journal.rewrite(self._account_state())  # one line again, however long the last run was
            self._saved_fills = len(self._fills)

    # ------------------------------------------------------------------------------------------ persistence

    def _account_state(self, orders: Iterable[str] | None = None, fills_from: int = 0) -> dict[str, Any]:
        """The account as JSON: the given orders (all by default), the fills from ``fills_from`` on, and the
        small rest whole."""
        ids = self._orders if orders is None else orders
        return {
            "format": JOURNAL_FORMAT,
            "initial_cash": self.initial_cash,
            "cash": self._cash,
            "orders": [self._orders[order_id] for order_id in ids],
            "fills": [{**f, "timestamp": _iso(f["timestamp"])} for f in self._fills[fills_from:]],
            "positions": self._positions,
            "last_price": self._last_price,
            "published": {symbol: _iso(when) for symbol, when in self._published.items()},
            "clock": _iso(self._clock_time) if self._clock_time is not None else None,
        }

    def _load_account(self, saved: dict[str, Any]) -> None:
        self.initial_cash = float(saved["initial_cash"])
        self._cash = float(saved["cash"])
        self._orders = {order["id"]: order for order in saved["orders"]}
        self._order_ids = {order["client_order_id"]: order["id"] for order in saved["orders"]}
        self._fills = [{**f, "timestamp": pd.Timestamp(f["timestamp"])} for f in saved["fills"]]
        self._positions = {s: {k: float(v) for k, v in p.items()} for s, p in saved["positions"].items()}
        self._last_price = {s: float(v) for s, v in saved["last_price"].items()}
        self._published = {s: pd.Timestamp(v) for s, v in saved["published"].items()}
        self._clock_time = pd.Timestamp(saved["clock"]) if saved["clock"] is not None else None

    def _touch(self, order_id: str | None = None) -> None:
        """Note a change for the next journal line (called with the lock held)."""
        self._changed = True
        if order_id is not None:
            self._changed_orders.add(order_id)

    def _persist(self) -> None:
        if self._journal is None or not self._changed:
            return
        self._journal.append(self._account_state(sorted(self._changed_orders), self._saved_fills))
        self._changed, self._changed_orders, self._saved_fills = False, set(), len(self._fills)

    # ------------------------------------------------------------------------------------------ lifecycle

    @property
    def stream_url(self) -> str:
        """The bar stream's URL (pass it as ``StockDataStream(..., url_override=...)``)."""
        if self._stream_server is None:
            raise RuntimeError(
                "the stream starts with the server: use it as a context manager or call start()"
            )
        port = next(iter(self._stream_server.sockets)).getsockname()[1]
        return f"ws://127.0.0.1:{port}/v2/iex"

    def __enter__(self) -> FakeAlpacaServer:
        self.start()
        return self

    def start(self) -> None:
        super().start()
        self._stream_thread.start()
        self._stream_server = self._on_loop(self._serve_stream())

    def close(self) -> None:
        super().close()
        if self._stream_thread.is_alive():
            self._on_loop(self._stop_stream())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._stream_thread.join(timeout=10)
        if not self._loop.is_running():
            self._loop.close()
        if self._journal is not None:
            with self._lock:
                self._journal.close()

    def _on_loop(self, coroutine: Any, timeout_s: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=timeout_s)

    async def _serve_stream(self) -> Server:
        return await serve(self._stream_session, "127.0.0.1", self._stream_port)

    async def _stop_stream(self) -> None:
        assert self._stream_server is not None
        self._stream_server.close()
        await self._stream_server.wait_closed()

    # ------------------------------------------------------------------------------------- for assertions

    @property
    def orders(self) -> list[dict[str, Any]]:
        """Every order as Alpaca would return it, in submission order."""
        with self._lock:
            return [dict(order) for order in self._orders.values()]

    @property
    def fills(self) -> list[dict[str, Any]]:
        """Every fill: ``order_id``, ``client_order_id``, ``symbol``, ``side``, ``qty``, ``price``, ``timestamp``."""
        with self._lock:
            return [dict(fill) for fill in self._fills]

    # --------------------------------------------------------------------------------------------- bars

    def publish_bar(
        self,
        symbol: str,
        timestamp: pd.Timestamp | str,
        open: float,
        high: float,
        low: float,
        close: float,
        volume: float,
    ) -> list[dict[str, Any]]:
        """Fill the symbol's waiting orders against this bar, then stream it to subscribers.

        Orders fill before the bar goes out, so an order sent in reaction to this bar fills on a later one.

        :return: the fills of this bar
        """
        when = market_time(timestamp)
        with self._lock:
            # A bar already seen is ignored: a replay restarted after a crash re-publishes its last bar, and
            # filling orders on it twice would fill them on a bar they were decided on.
            if when <= self._published.get(symbol, pd.Timestamp.min.tz_localize("UTC")):
                return []
            self._published[symbol] = when
            self._clock_time = when if self._clock_time is None else max(self._clock_time, when)
            fills = self._fill_orders(symbol, when, float(open), float(high), float(low))
            self._last_price[symbol] = float(close)
            self._touch()
            self._persist()
        message = {
            "T": "b",
            "S": symbol,
            "o": float(open),
            "h": float(high),
            "l": float(low),
            "c": float(close),
            "v": float(volume),
            "t": msgpack.Timestamp.from_unix_nano(when.value),
            # The bar files hold no trade count or VWAP; null is Alpaca's "unknown".
            "n": None,
            "vw": None,
        }
        if self._stream_thread.is_alive():
            self._on_loop(self._broadcast(symbol, message))
        return fills

    def publish_quote(
        self,
        symbol: str,
        timestamp: pd.Timestamp | str,
        bid: float,
        ask: float,
        bid_size: float = 100.0,
        ask_size: float = 100.0,
    ) -> None:
        """Stream a quote (NBBO) to the subscribers of the symbol's quotes, as Alpaca's ``T="q"`` message.

        Quotes move no orders: the fake fills on bars only, like the project's simulator.

        :param symbol: ticker
        :param timestamp: when the quote was set (naive: exchange time)
        :param bid: best bid
        :param ask: best ask
        :param bid_size: shares bid
        :param ask_size: shares offered
        """
        when = market_time(timestamp)
        message = {
            "T": "q",
            "S": symbol,
            "bx": "V",
            "bp": float(bid),
            "bs": float(bid_size),
            "ax": "V",
            "ap": float(ask),
            "as": float(ask_size),
            "t": msgpack.Timestamp.from_unix_nano(when.value),
            "c": ["R"],
            "z": "C",
        }
        if self._stream_thread.is_alive():
            self._on_loop(self._broadcast(symbol, message, channel="quotes"))

    def replay(self, bars_frame: pd.DataFrame | None = None, speed: float | None = None) -> int:
        """Publish bars in time order (symbols in name order within a time).

        :param bars_frame: long-format bars; defaults to the server's own
        :param speed: market seconds per wall-clock second; ``None`` publishes as fast as possible
        :return: bars published
        """
        frame = normalise_bars(bars_frame) if bars_frame is not None else self.bars
        frame = frame.sort_values(["date", "tic"], kind="stable")
        published, previous = 0, None
        for when, group in frame.groupby("date", sort=True):
            pause = (when - previous).total_seconds() / speed if speed and previous is not None else 0.0
            if pause > 0 and self._closing.wait(pause):
                break  # the server is closing
            for row in group.itertuples(index=False):
                self.publish_bar(row.tic, when, row.open, row.high, row.low, row.close, row.volume)
                published += 1
            previous = when
        return published

    def wait_for_subscription(
        self, symbols: Iterable[str], timeout_s: float = 10.0, channel: str = "bars"
    ) -> bool:
        """Block until some stream client subscribed to ``channel`` of every symbol; ``False`` on timeout.

        :param symbols: the symbols; none to wait for any subscription to the channel at all
        :param timeout_s: longest wait
        :param channel: one of Alpaca's stream channels (``bars``, ``quotes``...)
        """
        wanted = list(symbols)

        def subscribed() -> bool:
            if not wanted:
                return any(s.channels[channel] for s in self._subscribers)
            return all(any(s.wants(channel, symbol) for s in self._subscribers) for symbol in wanted)

        with self._subscription_changed:
            return self._subscription_changed.wait_for(subscribed, timeout=timeout_s)

    async def _broadcast(self, symbol: str, message: dict[str, Any], channel: str = "bars") -> None:
        with self._subscription_changed:
            receivers = [s for s in self._subscribers if s.wants(channel, symbol)]
        for subscriber in receivers:
            with contextlib.suppress(ConnectionClosed):  # its session ends and unregisters it
                await subscriber.send([message])

    async def _stream_session(self, connection: ServerConnection) -> None:
        content_type = (connection.request.headers.get("Content-Type") if connection.request else None) or ""
        subscriber = _Subscriber(connection, binary="msgpack" in content_type.lower())
        try:
            await subscriber.send([{"T": "success", "msg": "connected"}])
            try:
                auth = _decode(await asyncio.wait_for(connection.recv(), AUTH_TIMEOUT_S))
            except TimeoutError:
                await subscriber.send([{"T": "error", "code": 404, "msg": "auth timeout"}])
                return
            if not (
                isinstance(auth, dict)
                and auth.get("action") == "auth"
                and auth.get("key") == self.api_key
                and auth.get("secret") == self.secret
            ):
                await subscriber.send([{"T": "error", "code": 402, "msg": "auth failed"}])
                return
            await subscriber.send([{"T": "success", "msg": "authenticated"}])
            # Under the lock: wait_for_subscription reads the set from other threads.
            with self._subscription_changed:
                self._subscribers.add(subscriber)
            async for raw in connection:
                await self._stream_request(subscriber, _decode(raw))
        except ConnectionClosed:
            pass
        finally:
            with self._subscription_changed:
                self._subscribers.discard(subscriber)

    async def _stream_request(self, subscriber: _Subscriber, request: Any) -> None:
        action = request.get("action") if isinstance(request, dict) else None
        if action not in ("subscribe", "unsubscribe"):
            await subscriber.send([{"T": "error", "code": 400, "msg": "invalid syntax"}])
            return
        with self._subscription_changed:
            for channel in STREAM_CHANNELS:
                symbols = set(request.get(channel) or [])
                if action == "subscribe":
                    subscriber.channels[channel] |= symbols
                else:
                    subscriber.channels[channel] -= symbols
            self._subscription_changed.notify_all()
        await subscriber.send(
            [{"T": "subscription", **{c: sorted(subscriber.channels[c]) for c in STREAM_CHANNELS}}]
        )

    # ------------------------------------------------------------------------------------------ the REST API

    def _route(
        self, method: str, path: str, params: dict[str, str], payload: Any, query: dict[str, list[str]]
    ) -> _Reply:
        routes: dict[tuple[str, str], Callable[[], _Reply]] = {
            ("GET", "/v2/account"): self._account,
            ("GET", "/v2/positions"): lambda: _Reply(200, [self._position_json(s) for s in self._held()]),
            ("DELETE", "/v2/positions"): lambda: self._close_all(
                params.get("cancel_orders", "").lower() == "true"
            ),
            ("POST", "/v2/orders"): lambda: self._submit(payload),
            ("GET", "/v2/orders"): lambda: self._list_orders(params),
            ("DELETE", "/v2/orders"): self._cancel_all,
            ("GET", "/v2/orders:by_client_order_id"): lambda: self._order_by_client_id(params),
            ("GET", "/v2/clock"): self._clock,
        }
        route = routes.get((method, path))
        if route is not None:
            return route()
        if method == "GET" and path.startswith("/v2/orders/"):
            order = self._orders.get(path.removeprefix("/v2/orders/"))
            if order is None:
                return _Reply(404, _error(_NOT_FOUND, "order not found"))
            return _Reply(200, order)
        if method == "GET" and path.startswith("/v2/positions/"):
            symbol = path.removeprefix("/v2/positions/")
            if symbol not in self._held():
                return _Reply(404, _error(_NOT_FOUND, "position does not exist"))
            return _Reply(200, self._position_json(symbol))
        return super()._route(method, path, params, payload, query)

    def _publish_payload(self, payload: Any) -> _Reply:
        """``POST /_fake/bars``: another process (a replaying paper session) advances the fake market."""
        fills = []
        for bar in payload.get("bars", []) if isinstance(payload, dict) else []:
            fills += self.publish_bar(
                bar["symbol"], bar["t"], bar["o"], bar["h"], bar["l"], bar["c"], bar["v"]
            )
        return _Reply(200, {"fills": len(fills)})

    def _now(self) -> pd.Timestamp:
        """The fake's clock: the latest bar's time, or the wall clock before any bar."""
        return self._clock_time if self._clock_time is not None else pd.Timestamp.now(tz="UTC")

    def _held(self) -> list[str]:
        return [symbol for symbol, position in self._positions.items() if position["qty"] != 0]

    def _open_orders(self, symbol: str | None = None) -> list[dict[str, Any]]:
        return [
            order
            for order in self._orders.values()
            if order["status"] in OPEN_STATUSES and (symbol is None or order["symbol"] == symbol)
        ]

    def _reserved(self, side: str, symbol: str | None = None) -> float:
        """Shares (sells) or cash (buys) held for open orders."""
        total = 0.0
        for order in self._open_orders(symbol):
            if order["side"] != side:
                continue
            left = float(order["qty"]) - float(order["filled_qty"])
            if side == "sell":
                total += left
            else:
                price = order["limit_price"] or self._last_price.get(order["symbol"])
                total += left * float(price or 0.0)
        return total

    def _market_value(self) -> float:
        return sum(p["qty"] * self._last_price.get(s, 0.0) for s, p in self._positions.items())

    def _account(self) -> _Reply:
        equity = self._cash + self._market_value()
        buying_power = max(0.0, self._cash - self._reserved("buy"))
        created = pd.Timestamp("2019-01-02T14:30:00Z")
        return _Reply(
            200,
            {
                "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"fake-alpaca/accounts/{self.api_key}")),
                "account_number": "PA0000FAKE",
                "status": "ACTIVE",
                "crypto_status": "INACTIVE",
                "currency": "USD",
                "buying_power": _number(buying_power),
                "regt_buying_power": _number(buying_power),
                "daytrading_buying_power": "0",
                "non_marginable_buying_power": _number(buying_power),
                "options_buying_power": "0",
                "cash": _number(self._cash),
                "accrued_fees": "0",
                "pending_transfer_in": "0",
                "pending_transfer_out": "0",
                "portfolio_value": _number(equity),
                "pattern_day_trader": False,
                "trading_blocked": False,
                "transfers_blocked": False,
                "account_blocked": False,
                "created_at": _iso(created),
                "trade_suspended_by_user": False,
                "multiplier": "1",
                "shorting_enabled": False,
                "equity": _number(equity),
                "last_equity": _number(equity),
                "long_market_value": _number(self._market_value()),
                "short_market_value": "0",
                "initial_margin": "0",
                "maintenance_margin": "0",
                "last_maintenance_margin": "0",
                "sma": "0",
                "daytrade_count": 0,
                "options_approved_level": 0,
                "options_trading_level": 0,
            },
        )

    def _position_json(self, symbol: str) -> dict[str, Any]:
        position = self._positions[symbol]
        qty, cost = position["qty"], position["cost"]
        price = self._last_price.get(symbol, cost / qty)
        value = qty * price
        return {
            "asset_id": _asset_id(symbol),
            "symbol": symbol,
            "exchange": "",  # the bar files do not say where a symbol is listed
            "asset_class": "us_equity",
            "asset_marginable": False,
            "avg_entry_price": _number(cost / qty),
            "qty": _number(qty),
            "qty_available": _number(qty - self._reserved("sell", symbol)),
            "side": "long" if qty > 0 else "short",
            "market_value": _number(value),
            "cost_basis": _number(cost),
            "unrealized_pl": _number(value - cost),
            "unrealized_plpc": _number((value - cost) / cost if cost else 0.0),
            "unrealized_intraday_pl": _number(value - cost),
            "unrealized_intraday_plpc": _number((value - cost) / cost if cost else 0.0),
            "current_price": _number(price),
            "lastday_price": _number(price),
            "change_today": "0",
        }

    def _submit(self, payload: Any) -> _Reply:
        if not isinstance(payload, dict):
            return _Reply(422, _error(_INVALID, "request body must be a JSON object"))
        symbol, side, kind = payload.get("symbol"), payload.get("side"), payload.get("type")
        client_order_id = payload.get("client_order_id") or str(uuid.uuid4())
        if client_order_id in self._order_ids:
            return _Reply(422, _error(_INVALID, "client_order_id must be unique"))
        if len(client_order_id) > 128:
            return _Reply(422, _error(_INVALID, "client_order_id must be no more than 128 characters"))
        if not isinstance(symbol, str) or not symbol:
            return _Reply(422, _error(_INVALID, "symbol is required"))
        if side not in ("buy", "sell"):
            return _Reply(422, _error(_INVALID, "side must be buy or sell"))
        if kind not in ("market", "limit"):
            return _Reply(422, _error(_INVALID, f"order type {kind!r} is not supported by the fake"))
        if payload.get("time_in_force") is None:
            return _Reply(422, _error(_INVALID, "time_in_force is required"))
        try:
            qty = float(payload.get("qty"))
            limit_price = float(payload["limit_price"]) if payload.get("limit_price") is not None else None
        except (TypeError, ValueError):
            return _Reply(422, _error(_INVALID, "qty is required and must be a number (no notional orders)"))
        if not qty > 0:
            return _Reply(422, _error(_INVALID, "qty must be > 0"))
        if kind == "limit" and not (limit_price is not None and limit_price > 0):
            return _Reply(422, _error(_INVALID, "limit_price is required for limit orders"))
        if side == "sell":
            available = self._positions.get(symbol, {"qty": 0.0})["qty"] - self._reserved("sell", symbol)
            if qty > available:
                message = f"insufficient qty available for order (requested: {_number(qty)}, available: {_number(available)})"
                return _Reply(403, _error(_FORBIDDEN, message))
        else:
            price = limit_price or self._last_price.get(symbol)
            if price is not None and qty * price > self._cash - self._reserved("buy"):
                return _Reply(403, _error(_FORBIDDEN, "insufficient buying power"))
        return _Reply(
            200,
            self._create_order(
                client_order_id, symbol, side, kind, qty, limit_price, payload["time_in_force"]
            ),
        )

    def _create_order(
        self,
        client_order_id: str,
        symbol: str,
        side: str,
        kind: str,
        qty: float,
        limit_price: float | None,
        time_in_force: str,
    ) -> dict[str, Any]:
        order_id = str(uuid.UUID(int=len(self._orders) + 1))
        now = _iso(self._now())
        order = {
            "id": order_id,
            "client_order_id": client_order_id,
            "created_at": now,
            "updated_at": now,
            "submitted_at": now,
            "filled_at": None,
            "expired_at": None,
            "expires_at": None,
            "canceled_at": None,
            "failed_at": None,
            "replaced_at": None,
            "replaced_by": None,
            "replaces": None,
            "asset_id": _asset_id(symbol),
            "symbol": symbol,
            "asset_class": "us_equity",
            "notional": None,
            "qty": _number(qty),
            "filled_qty": "0",
            "filled_avg_price": None,
            "order_class": "simple",
            "order_type": kind,
            "type": kind,
            "side": side,
            "position_intent": "buy_to_open" if side == "buy" else "sell_to_close",
            "time_in_force": time_in_force,
            "limit_price": _number(limit_price) if limit_price is not None else None,
            "stop_price": None,
            "status": "accepted",
            "extended_hours": False,
            "legs": None,
            "trail_percent": None,
            "trail_price": None,
            "hwm": None,
        }
        self._orders[order_id] = order
        self._order_ids[client_order_id] = order_id
        self._touch(order_id)
        return order

    def _list_orders(self, params: dict[str, str]) -> _Reply:
        status = params.get("status", "open")
        if status not in ("open", "closed", "all"):
            return _Reply(422, _error(_INVALID, "status must be open, closed or all"))
        symbols = set(params["symbols"].split(",")) if params.get("symbols") else None
        limit = min(int(params.get("limit", 50)), 500)
        orders = [
            order
            for order in self._orders.values()
            if (status == "all" or (order["status"] in OPEN_STATUSES) == (status == "open"))
            and (symbols is None or order["symbol"] in symbols)
        ]
        if params.get("direction", "desc") == "desc":
            orders.reverse()
        return _Reply(200, orders[:limit])

    def _order_by_client_id(self, params: dict[str, str]) -> _Reply:
        client_order_id = params.get("client_order_id", "")
        order_id = self._order_ids.get(client_order_id)
        if order_id is None:
            return _Reply(404, _error(_NOT_FOUND, f"order not found for {client_order_id}"))
        return _Reply(200, self._orders[order_id])

    def _cancel_orders(self) -> list[dict[str, Any]]:
        now = _iso(self._now())
        canceled = []
        for order in self._open_orders():
            order.update(status="canceled", canceled_at=now, updated_at=now)
            self._touch(order["id"])
            canceled.append({"id": order["id"], "status": 200})
        return canceled

    def _cancel_all(self) -> _Reply:
        return _Reply(207, self._cancel_orders())

    def _close_all(self, cancel_orders: bool) -> _Reply:
        if cancel_orders:
            self._cancel_orders()
        results = []
        for symbol in self._held():
            qty = self._positions[symbol]["qty"]
            held = self._reserved("sell", symbol)
            if held > 0:
                details = {
                    "available": qty - held,
                    "existing_qty": qty,
                    "held_for_orders": held,
                    "symbol": symbol,
                }
                body = _error(_FORBIDDEN, "insufficient qty available for order", **details)
                results.append({"symbol": symbol, "status": 403, "body": body})
                continue
            order_id = str(uuid.UUID(int=len(self._orders) + 1))
            order = self._create_order(f"close-{order_id}", symbol, "sell", "market", qty, None, "day")
            results.append({"order_id": order["id"], "symbol": symbol, "status": 200, "body": order})
        return _Reply(207, results)

    def _clock(self) -> _Reply:
        """Regular sessions are weekdays 09:30-16:00 New York time; holidays are not modelled."""
        now = self._now().tz_convert(MARKET_TIMEZONE)

        def at(day: date, hour: int, minute: int = 0) -> pd.Timestamp:
            # Built from the calendar date, so daylight-saving changes cannot shift the session.
            return pd.Timestamp(
                year=day.year, month=day.month, day=day.day, hour=hour, minute=minute, tz=MARKET_TIMEZONE
            )

        today = now.date()
        is_open = today.weekday() < 5 and at(today, 9, 30) <= now < at(today, 16)
        day = today
        if not (day.weekday() < 5 and now < at(day, 9, 30)):
            day += timedelta(days=1)
            while day.weekday() >= 5:
                day += timedelta(days=1)
        next_open = at(day, 9, 30)
        next_close = at(today, 16) if is_open else at(day, 16)
        return _Reply(
            200,
            {
                "timestamp": now.isoformat(),
                "is_open": bool(is_open),
                "next_open": next_open.isoformat(),
                "next_close": next_close.isoformat(),
            },
        )

    def _fill_orders(
        self, symbol: str, when: pd.Timestamp, open_: float, high: float, low: float
    ) -> list[dict[str, Any]]:
        """Fill the symbol's open orders against a bar: market at the open, limits when traded through."""
        fills = []
        for order in self._open_orders(symbol):
            limit = float(order["limit_price"]) if order["limit_price"] is not None else None
            buy = order["side"] == "buy"
            if limit is None:
                price = open_
            elif buy and low < limit:
                price = min(open_, limit)  # a gap below the limit fills at the better open
            elif not buy and high > limit:
                price = max(open_, limit)
            else:
                continue
            qty = float(order["qty"]) - float(order["filled_qty"])
            position = self._positions.setdefault(symbol, {"qty": 0.0, "cost": 0.0})
            if buy:
                position["cost"] += qty * price
            elif position["qty"] > 0:
                position["cost"] *= max(0.0, 1.0 - qty / position["qty"])
            position["qty"] += qty if buy else -qty
            self._cash += -qty * price if buy else qty * price
            stamp = _iso(when)
            self._touch(order["id"])
            order.update(
                status="filled",
                filled_qty=order["qty"],
                filled_avg_price=_number(price),
                filled_at=stamp,
                updated_at=stamp,
            )
            fill = {
                "order_id": order["id"],
                "client_order_id": order["client_order_id"],
                "symbol": symbol,
                "side": order["side"],
                "qty": qty,
                "price": price,
                "timestamp": when,
            }
            self._fills.append(fill)
            fills.append(dict(fill))
        return fills


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------


def _env_key(names: Sequence[str], default: str) -> str:
    return next((os.environ[n] for n in names if os.environ.get(n)), default)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the fake in the foreground until interrupted.

    :param argv: command-line arguments (``sys.argv[1:]`` when ``None``)
    """
    parser = argparse.ArgumentParser(
        prog="python -m testkit.fake_alpaca", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--bars", help="long-format bars file (.csv or .csv.gz) to serve and replay")
    parser.add_argument(
        "--quotes", help="quotes file (.csv or .csv.gz: timestamp or datetime, tic, bid, ask, sizes) to serve"
    )
    parser.add_argument("--port", type=int, default=8765, help="REST port (trading and market data)")
    parser.add_argument("--stream-port", type=int, default=8766, help="bar stream port")
    parser.add_argument("--initial-cash", type=float, default=100_000.0, help="the account's starting cash")
    parser.add_argument(
        "--state", default=None, help="journal file of the account: kept across restarts of the fake"
    )
    parser.add_argument(
        "--replay-speed",
        type=float,
        default=None,
        help="stream the bars once a client subscribes, this many market seconds per second",
    )
    args = parser.parse_args(argv)
    bars = pd.read_csv(args.bars) if args.bars else None
    server = FakeAlpacaServer(
        bars,
        quotes=pd.read_csv(args.quotes) if args.quotes else None,
        api_key=_env_key(ALPACA_KEY_ENV, DEFAULT_API_KEY),
        secret=_env_key(ALPACA_SECRET_ENV, DEFAULT_SECRET),
        initial_cash=args.initial_cash,
        port=args.port,
        stream_port=args.stream_port,
        state_path=args.state,
    )
    with server:
        print(f"fake Alpaca REST (trading and market data): {server.url}", flush=True)
        print(f"fake Alpaca bar stream: {server.stream_url}", flush=True)
        print("keys: ALPACA_API_KEY / ALPACA_SECRET_KEY from the environment, else test-key / test-secret")
        try:
            if args.replay_speed is not None and not server.bars.empty:
                print("waiting for a bar subscription ...", flush=True)
                while not server.wait_for_subscription([], timeout_s=1.0):
                    pass
                print(f"replayed {server.replay(speed=args.replay_speed)} bars", flush=True)
            threading.Event().wait()
        except KeyboardInterrupt:
            print("stopped")


if __name__ == "__main__":
    main()


def publish_bars(
    url: str, bars: Sequence[dict[str, Any]], api_key: str, secret: str, timeout_s: float = 10.0
) -> int:
    """Advance a fake Alpaca market running in another process: ``bars`` of ``{symbol, t, o, h, l, c, v}``.

    :return: fills the bars caused
    """
    import requests

    reply = requests.post(
        url.rstrip("/") + FAKE_BARS_ROUTE,
        json={"bars": list(bars)},
        headers={"APCA-API-KEY-ID": api_key, "APCA-API-SECRET-KEY": secret},
        timeout=timeout_s,
    )
    reply.raise_for_status()
    return int(reply.json()["fills"])
