"""Intraday bars and quotes through the market-data resource: real 1-minute bars from the shared file served by the
fake Alpaca (alpaca-py's real client, paged, throttled), the same file read and resampled, and quotes generated
around the real bars (named synthetic)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
from alpaca.common.exceptions import APIError
from pydantic import ValidationError

from resources.market_data import MarketDataResource, market_data_problems
from testkit.fake_alpaca import BARS_ROUTE, QUOTES_ROUTE, FakeAlpacaDataServer
from tests.conftest import SHARED_DATA

MINUTE_FILE = SHARED_DATA / "intraday_1min_us_equities_2019.csv.gz"
QUARTER_FILE = SHARED_DATA / "intraday_15min_us_equities_2019.csv.gz"
TICKERS = ["AAPL", "MSFT", "SPY"]
SESSIONS = ("2019-02-12", "2019-02-13")
BARS = f"GET {BARS_ROUTE}"
QUOTES = f"GET {QUOTES_ROUTE}"

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def minute_rows() -> pd.DataFrame:
    """The shared 1-minute file's rows for three tickers, as stored (naive New York time, labelled at bar end)."""
    if not MINUTE_FILE.exists():
        pytest.skip(f"real intraday data {MINUTE_FILE} not found (set RL_TRADING_SHARED_DATA)")
    frame = pd.read_csv(MINUTE_FILE, parse_dates=["datetime"])
    return frame[frame["tic"].isin(TICKERS)].reset_index(drop=True)


@pytest.fixture(scope="module")
def minute_file(minute_rows: pd.DataFrame, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("intraday") / "minutes.csv.gz"
    minute_rows.to_csv(path, index=False)
    return path


@pytest.fixture()
def alpaca_keys(monkeypatch) -> None:
    monkeypatch.setenv("ALPACA_API_KEY", "test-key")
    monkeypatch.setenv("ALPACA_SECRET_KEY", "test-secret")


def aggregated(rows: pd.DataFrame, minutes: int, sessions: tuple[str, ...] = SESSIONS) -> pd.DataFrame:
    """The file's rows aggregated independently of the code under test: pandas' own resample, intervals closed
    and labelled on the right (bars are labelled at their end), in exchange time, then to the project's UTC frame."""
    days = rows["datetime"].dt.strftime("%Y-%m-%d")
    rows = rows[days.isin(sessions)]
    rules = {"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum"}
    coarse = (
        rows.set_index("datetime")
        .groupby("tic")
        .resample(f"{minutes}min", closed="right", label="right")
        .agg(rules)
        .dropna(subset=["open"])  # the night between sessions: intervals without any bar
        .reset_index()
    )
    coarse["timestamp"] = coarse["datetime"].dt.tz_localize("America/New_York").dt.tz_convert("UTC")
    columns = ["timestamp", "tic", "open", "high", "low", "close", "volume"]
    return coarse[columns].sort_values(["timestamp", "tic"], ignore_index=True)


def alpaca_resource(server: FakeAlpacaDataServer, **fields) -> MarketDataResource:
    defaults = {"tickers": TICKERS, "start_date": "2019-02-11", "retry_wait_seconds": 0.001}
    return MarketDataResource(source="alpaca", alpaca_url_override=server.url, **{**defaults, **fields})


@pytest.mark.parametrize("minutes", [1, 5, 15])
def test_alpaca_intraday_bars_through_the_fake_equal_the_files_bars(minute_rows, alpaca_keys, minutes):
    with FakeAlpacaDataServer(minute_rows, page_size=10_000) as server:
        raw = alpaca_resource(server).load_intraday_bars(*SESSIONS, timeframe=f"{minutes}Min")
    assert server.requests[0]["timeframe"] == [f"{minutes}Min"]
    assert server.requests[0]["adjustment"] == ["split"] and server.requests[0]["feed"] == ["iex"]
    expected = aggregated(minute_rows, minutes)
    pd.testing.assert_frame_equal(raw.frame, expected, check_dtype=False)
    assert f"Alpaca {minutes}Min bars" in raw.source
    # Labelled at the end: the first bar of a session ends one bar after the 09:30 open.
    first = raw.frame["timestamp"].min().tz_convert("America/New_York")
    assert first == pd.Timestamp(f"{SESSIONS[0]} 09:30", tz="America/New_York") + pd.Timedelta(
        minutes=minutes
    )


def test_bars_outside_the_regular_session_are_dropped_unless_asked_for(minute_rows, alpaca_keys):
    """Alpaca's minute bars include extended hours; the shared file has none, so two SYNTHETIC ones are added: a
    pre-market minute (09:29-09:30) and an after-hours one (16:00-16:01), copies of real bars moved in time."""
    day = minute_rows[minute_rows["datetime"].dt.strftime("%Y-%m-%d") == SESSIONS[0]]
    aapl = day[day["tic"] == "AAPL"]
    synthetic = pd.concat(
        [
            aapl.head(1).assign(datetime=pd.Timestamp(f"{SESSIONS[0]} 09:30")),
            aapl.tail(1).assign(datetime=pd.Timestamp(f"{SESSIONS[0]} 16:01")),
        ]
    )
    with FakeAlpacaDataServer(pd.concat([day, synthetic]), page_size=10_000) as server:
        regular = alpaca_resource(server).load_intraday_bars(SESSIONS[0], SESSIONS[0]).frame
        everything = (
            alpaca_resource(server, regular_session_only=False)
            .load_intraday_bars(SESSIONS[0], SESSIONS[0])
            .frame
        )
    pd.testing.assert_frame_equal(regular, aggregated(day, 1, SESSIONS[:1]), check_dtype=False)
    extra = everything.merge(regular, how="left", indicator=True).query("_merge == 'left_only'")
    local = extra["timestamp"].dt.tz_convert("America/New_York").dt.strftime("%H:%M")
    assert list(zip(extra["tic"], local, strict=True)) == [("AAPL", "09:30"), ("AAPL", "16:01")]


def test_a_small_page_limit_pages_through_every_bar_and_429_pages_are_retried_on_their_own(
    minute_rows, alpaca_keys
):
    page_size = 97
    day = minute_rows[minute_rows["datetime"].dt.strftime("%Y-%m-%d") == SESSIONS[0]]
    pages = math.ceil(len(day) / page_size)
    with FakeAlpacaDataServer(minute_rows, page_size=page_size, seed=7) as server:
        # Seeded draws: two pages somewhere in the run are throttled once each (or one page twice).
        throttle = server.inject(429, path_prefix=BARS_ROUTE, times=2, probability=0.3)
        raw = alpaca_resource(server).load_intraday_bars(SESSIONS[0], SESSIONS[0])
    assert throttle.hits == 2
    # Retried page by page: the pages before a throttled one are not fetched again.
    assert server.route_counts[BARS] == pages + 2
    tokens = [q.get("page_token", [None])[0] for q in server.requests]
    assert sorted(set(tokens), key=lambda t: int(t or 0)) == [None] + [
        str(page_size * i) for i in range(1, pages)
    ]
    pd.testing.assert_frame_equal(raw.frame, aggregated(minute_rows, 1, SESSIONS[:1]), check_dtype=False)


def test_the_fake_honours_limit_and_page_token_and_refuses_timeframes_it_cannot_serve(minute_rows):
    headers = {"APCA-API-KEY-ID": "test-key", "APCA-API-SECRET-KEY": "test-secret"}
    query = {"symbols": "AAPL,MSFT", "timeframe": "15Min", "start": "2019-02-12T14:30:00Z", "limit": 10}
    with FakeAlpacaDataServer(minute_rows, page_size=1000) as server:
        first = requests.get(server.url + BARS_ROUTE, params=query, headers=headers, timeout=10).json()
        second = requests.get(
            server.url + BARS_ROUTE,
            params={**query, "page_token": first["next_page_token"]},
            headers=headers,
            timeout=10,
        ).json()
        refused = requests.get(
            server.url + BARS_ROUTE, params={**query, "timeframe": "7Min"}, headers=headers, timeout=10
        )
    assert [len(v) for v in first["bars"].values()] == [10] and first["next_page_token"] == "10"
    # Alpaca's stamps are bar starts: the first 15-minute bar of the day starts at the 09:30 open.
    assert first["bars"]["AAPL"][0]["t"] == "2019-02-12T14:30:00Z"
    assert second["bars"]["AAPL"][0]["t"] == "2019-02-12T17:00:00Z"
    assert refused.status_code == 422
    assert refused.json() == {
        "code": 42210000,
        "message": "the fake holds 0 days 00:01:00 bars: it cannot serve timeframe '7Min'",
    }


def test_daily_bars_cannot_be_served_as_minutes(dow30_bars, alpaca_keys):
    daily = dow30_bars[dow30_bars["tic"].isin(TICKERS[:2])].head(20)
    with (
        FakeAlpacaDataServer(daily.assign(date=pd.to_datetime(daily["date"]))) as server,
        pytest.raises(APIError, match="it cannot serve timeframe '1Min'"),
    ):
        alpaca_resource(server, tickers=TICKERS[:2]).load_intraday_bars("2009-01-02", "2009-01-05")
    assert server.route_counts[BARS] == 1  # a refused query is not retried


def test_the_file_resampled_equals_the_file_aggregated_and_refuses_a_finer_bar(minute_rows, minute_file):
    resource = MarketDataResource(intraday_path=str(minute_file), intraday_timeframe="15Min", tickers=TICKERS)
    raw = resource.load_intraday_bars(*SESSIONS)
    pd.testing.assert_frame_equal(raw.frame, aggregated(minute_rows, 15), check_dtype=False)
    assert "1Min bars resampled to 15Min" in raw.source
    one_minute = resource.load_intraday_bars(SESSIONS[0], SESSIONS[0], timeframe="1Min").frame
    pd.testing.assert_frame_equal(one_minute, aggregated(minute_rows, 1, SESSIONS[:1]), check_dtype=False)

    if not QUARTER_FILE.exists():
        pytest.skip(f"real intraday data {QUARTER_FILE} not found")
    coarse = MarketDataResource(intraday_path=str(QUARTER_FILE), tickers=["AAPL"])
    message = f"intraday_path='{QUARTER_FILE}' holds 15Min bars: it cannot give 5Min bars (only 15Min or a multiple of it)"
    with pytest.raises(ValueError, match=re.escape(message)):
        coarse.load_intraday_bars(*SESSIONS, timeframe="5Min")


def test_the_1min_file_resampled_agrees_with_the_shared_15min_file(minute_file):
    """Two real sources of the same week (2019-02-11 .. 15). Measured for AAPL, MSFT, SPY: the same 390
    (bar, ticker) keys; closes equal on 81% of bars and within 0.1% on all, worst 0.05% (any price); volumes equal
    on 67%, worst 2.6% apart. Over all 23 tickers: 2,975 keys, the same; closes within 0.1% on 99.6%, worst 0.2% (opens 0.3%);
    volumes equal on 57%, some thinly traded ones several times apart: the vendors count trades differently."""
    if not QUARTER_FILE.exists():
        pytest.skip(f"real intraday data {QUARTER_FILE} not found")
    ours = MarketDataResource(intraday_path=str(minute_file), tickers=TICKERS).load_intraday_bars(
        "2019-02-11", "2019-02-15", timeframe="15Min"
    )
    theirs = MarketDataResource(intraday_path=str(QUARTER_FILE), tickers=TICKERS).load_intraday_bars(
        "2019-02-11", "2019-02-15", timeframe="15Min"
    )
    both = ours.frame.merge(theirs.frame, on=["timestamp", "tic"], how="outer", indicator=True)
    assert (both["_merge"] == "both").all()
    gaps = {c: (both[f"{c}_x"] / both[f"{c}_y"] - 1).abs() for c in ("open", "high", "low", "close")}
    agreement = {c: float((gap <= 1e-3).mean()) for c, gap in gaps.items()}
    print(f"15-minute bars: {len(both)}; share within 0.1%: {agreement}")
    assert all(share > 0.98 for share in agreement.values())
    assert max(float(gap.max()) for gap in gaps.values()) < 0.01


def synthetic_quotes(rows: pd.DataFrame, seed: int = 11) -> pd.DataFrame:
    """SYNTHETIC quotes (not market data): three per real bar, at seeded random moments inside the minute,
    around the bar's close with a seeded spread of 1-5 cents."""
    rng = np.random.default_rng(seed)
    ends = rows["datetime"].dt.tz_localize("America/New_York").dt.tz_convert("UTC")
    repeated = np.repeat(np.arange(len(rows)), 3)
    offsets = pd.to_timedelta(rng.uniform(0, 60, len(repeated)), unit="s").round("us")
    mid = rows["close"].to_numpy()[repeated]
    half = rng.integers(1, 6, len(repeated)) / 200
    frame = pd.DataFrame(
        {
            "timestamp": pd.DatetimeIndex(ends)[repeated] - offsets,
            "tic": rows["tic"].to_numpy()[repeated],
            "bid": np.round(mid - half, 4),
            "ask": np.round(mid + half, 4),
            "bid_size": rng.integers(1, 20, len(repeated)) * 100.0,
            "ask_size": rng.integers(1, 20, len(repeated)) * 100.0,
        }
    )
    return frame.sort_values(["timestamp", "tic"], kind="stable", ignore_index=True)


def test_alpaca_quotes_through_the_fake_are_paged_retried_and_equal_the_served_quotes(
    minute_rows, alpaca_keys
):
    day = minute_rows[minute_rows["datetime"].dt.strftime("%Y-%m-%d") == SESSIONS[0]].head(120)
    quotes = synthetic_quotes(day)
    with FakeAlpacaDataServer(None, page_size=50, quotes=quotes) as server:
        server.injected_errors.append(429)
        got = alpaca_resource(server).load_quotes(SESSIONS[0], SESSIONS[0])
    assert server.route_counts[QUOTES] == math.ceil(len(quotes) / 50) + 1
    pd.testing.assert_frame_equal(got, quotes, check_dtype=False)


def test_quotes_from_a_file_in_either_time_layout(minute_rows, tmp_path):
    quotes = synthetic_quotes(minute_rows[minute_rows["datetime"] < pd.Timestamp(f"{SESSIONS[0]} 09:40")])
    utc_file, local_file = tmp_path / "quotes_utc.csv", tmp_path / "quotes_local.parquet"
    quotes.to_csv(utc_file, index=False)
    local = quotes.assign(datetime=quotes["timestamp"].dt.tz_convert("America/New_York").dt.tz_localize(None))
    local.drop(columns="timestamp").to_parquet(local_file)
    for path in (utc_file, local_file):
        got = MarketDataResource(source="sample", quotes_path=str(path), tickers=["AAPL"]).load_quotes()
        expected = quotes[quotes["tic"] == "AAPL"].reset_index(drop=True)
        pd.testing.assert_frame_equal(got, expected, check_dtype=False)
    assert market_data_problems({"quotes_path": str(local_file)}) == []


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"intraday_timeframe": "7Min"}, "intraday_timeframe='7Min': expected one of 1Min, 5Min, 15Min"),
        (
            {"intraday_path": "minutes.xlsx"},
            "intraday_path='minutes.xlsx': expected a .csv, .csv.gz or .parquet intraday bars file",
        ),
        (
            {"quotes_path": "quotes.json"},
            "quotes_path='quotes.json': expected a .csv, .csv.gz or .parquet quotes file",
        ),
        ({"source": "alpaca", "start_date": "2019-02-11"}, "tickers is not set: expected the tickers Alpaca"),
    ],
)
def test_bad_intraday_settings_are_one_line_errors_when_built(fields, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        MarketDataResource(**fields)
    [line] = [p.line() for p in market_data_problems(fields, check_sources=False)]
    assert line.startswith(message) and "\n" not in line


def test_intraday_files_are_checked_and_asking_too_much_is_one_line(slice_csv, tmp_path, alpaca_keys):
    def lines(**settings) -> list[str]:
        return [p.line() for p in market_data_problems(settings)]

    missing = tmp_path / "nope.csv.gz"
    assert lines(intraday_path=str(missing)) == [
        f"intraday_path='{missing}': expected an existing .csv, .csv.gz or .parquet intraday bars file (no such file)"
    ]
    assert lines(intraday_path=str(slice_csv)) == [
        f"intraday_path='{slice_csv}': expected a .csv, .csv.gz or .parquet intraday bars file with columns "
        "datetime, tic, open, high, low, close, volume; missing column(s) datetime"
    ]
    no_time = tmp_path / "quotes.csv"
    pd.DataFrame({"tic": ["AAPL"], "bid": [1.0], "ask": [1.1], "bid_size": [1.0], "ask_size": [1.0]}).to_csv(
        no_time, index=False
    )
    assert lines(quotes_path=str(no_time)) == [
        f"quotes_path='{no_time}': expected a .csv, .csv.gz or .parquet quotes file with columns tic, bid, ask, "
        "bid_size, ask_size, timestamp or datetime; missing column(s) timestamp or datetime"
    ]
    # The files are Alpaca's business only when it is not the source.
    assert lines(source="alpaca", tickers=["AAPL"], start_date="2019-02-11", intraday_path=str(missing)) == []

    with pytest.raises(
        ValueError, match=r"^market data source 'sample' has no intraday bars: set intraday_path"
    ):
        MarketDataResource().load_intraday_bars("2019-02-11")
    with pytest.raises(ValueError, match=r"^market data source 'csv' has no quotes: set quotes_path"):
        MarketDataResource(source="csv", path=str(slice_csv)).load_quotes()
    with pytest.raises(ValueError, match=re.escape("start='2019/02/11': expected a session date YYYY-MM-DD")):
        MarketDataResource(intraday_path=str(slice_csv)).load_intraday_bars("2019/02/11")
    with pytest.raises(ValueError, match=re.escape("timeframe='2Min': expected one of 1Min, 5Min, 15Min")):
        MarketDataResource(intraday_path=str(slice_csv)).load_intraday_bars(timeframe="2Min")
    with pytest.raises(ValueError, match=re.escape("end='2019-02-10': expected a session on or after start")):
        MarketDataResource(intraday_path=str(slice_csv)).load_intraday_bars("2019-02-11", "2019-02-10")
