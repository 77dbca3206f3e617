"""Quotes beside bars in the live sources: recorded quotes read and replayed with the real 1-minute bars, and
quotes streamed by the fake Alpaca websocket attached to the bar events. Every quote here is SYNTHETIC (generated
in the test around real bars, seeded); the bars are real."""

from __future__ import annotations

import json
import re
import threading

import numpy as np
import pandas as pd
import pytest
from websockets.sync.client import connect

from testkit.fake_alpaca import DEFAULT_API_KEY, DEFAULT_SECRET, FakeAlpacaServer
from tests.conftest import SHARED_DATA
from trading_core.broker.base import Quote
from trading_core.live.sources import (
    AlpacaBarStream,
    QuoteBook,
    read_bars,
    read_quotes,
    replay,
    usable_quotes,
)

MINUTE_FILE = SHARED_DATA / "intraday_1min_us_equities_2019.csv.gz"
TICKERS = ["AAPL", "MSFT", "SPY"]
MINUTE = pd.Timedelta(minutes=1)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def bars() -> pd.DataFrame:
    """The first 30 minutes of 2019-02-11 for three tickers (real bars, UTC bar ends)."""
    if not MINUTE_FILE.exists():
        pytest.skip(f"real intraday data {MINUTE_FILE} not found (set RL_TRADING_SHARED_DATA)")
    frame = read_bars(MINUTE_FILE, TICKERS, validate=False)
    return frame[frame["timestamp"] <= pd.Timestamp("2019-02-11 15:00", tz="UTC")].reset_index(drop=True)


def synthetic_quotes(bars: pd.DataFrame, seed: int = 5) -> pd.DataFrame:
    """SYNTHETIC quotes around the real bars, seeded: per bar, quotes at random moments from 90 s before to 30 s
    after its end (so some are stamped after it), a few exactly at the end, a few crossed (bid above ask)."""
    rng = np.random.default_rng(seed)
    picks = np.repeat(np.arange(len(bars)), 4)
    offsets = pd.to_timedelta(rng.uniform(-90, 30, len(picks)), unit="s").round("us")
    offsets = offsets.where(rng.random(len(picks)) > 0.1, pd.Timedelta(0))  # exactly at the bar's end
    mid = bars["close"].to_numpy()[picks] * (1 + rng.normal(0, 2e-4, len(picks)))
    half = rng.integers(1, 6, len(picks)) / 200
    crossed = rng.random(len(picks)) < 0.05
    frame = pd.DataFrame(
        {
            "timestamp": pd.DatetimeIndex(bars["timestamp"])[picks] + offsets,
            "tic": bars["tic"].to_numpy()[picks],
            "bid": np.round(np.where(crossed, mid + half, mid - half), 4),
            "ask": np.round(np.where(crossed, mid - half, mid + half), 4),
            "bid_size": rng.integers(1, 20, len(picks)) * 100.0,
            "ask_size": rng.integers(1, 20, len(picks)) * 100.0,
        }
    )
    return frame.sort_values(["timestamp", "tic"], kind="stable", ignore_index=True)


def test_read_quotes_reads_utc_and_exchange_time_and_names_bad_lines(bars, tmp_path):
    quotes = synthetic_quotes(bars)
    utc, local = tmp_path / "utc.csv.gz", tmp_path / "local.csv"
    quotes.to_csv(utc, index=False)
    exchange_time = quotes["timestamp"].dt.tz_convert("America/New_York").dt.tz_localize(None)
    quotes.drop(columns="timestamp").assign(datetime=exchange_time).to_csv(local, index=False)
    for path in (utc, local):
        pd.testing.assert_frame_equal(read_quotes(path), quotes, check_dtype=False)
    assert set(read_quotes(utc, ["MSFT"])["tic"]) == {"MSFT"}

    broken = tmp_path / "broken.csv"
    text = quotes.head(4).to_csv(index=False).splitlines()
    text[3] = text[3].replace(text[3].split(",")[2], "n/a", 1)  # line 4's bid
    broken.write_text("\n".join(text) + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{broken}: column 'bid' is not a number on line(s) 4")):
        read_quotes(broken)
    with pytest.raises(ValueError, match=re.escape(f"{utc}: no quotes for TSLA; it holds AAPL, MSFT, SPY")):
        read_quotes(utc, ["TSLA"])
    quotes.drop(columns="ask_size").to_csv(broken, index=False)
    with pytest.raises(ValueError, match=re.escape(f"{broken}: a quotes file needs column(s) ask_size")):
        read_quotes(broken)


def test_replay_attaches_each_symbols_last_usable_quote_at_or_before_the_bar_end(bars):
    quotes = synthetic_quotes(bars)
    events = list(replay(bars, quotes=quotes))
    assert [e.timestamp for e in events] == [e.timestamp for e in replay(bars)]
    usable = quotes[usable_quotes(quotes)]
    assert 0 < len(usable) < len(quotes)  # the crossed ones are left out
    late = 0
    for event in events:
        assert event.received_at is None  # a replay has no arrival time
        for tic in event.bars:
            # Brute force: every usable quote of the symbol stamped at or before the bar's end, the last one.
            mine = usable[(usable["tic"] == tic) & (usable["timestamp"] <= event.timestamp)]
            later = usable[(usable["tic"] == tic) & (usable["timestamp"] > event.timestamp)]
            late += int(not later.empty)
            if mine.empty:
                assert tic not in event.quotes
                continue
            last = mine.iloc[-1]
            assert event.quotes[tic] == Quote(
                last.bid, last.ask, last.bid_size, last.ask_size, last.timestamp
            )
            assert event.quotes[tic].timestamp <= event.timestamp
    assert late > 0  # quotes stamped after a bar's end existed, and none of them was attached to it


def test_a_quote_stamped_after_the_bar_end_is_not_in_that_bars_event(bars):
    first = bars[bars["tic"] == "AAPL"].head(2).reset_index(drop=True)
    end = first.loc[0, "timestamp"]
    quotes = pd.DataFrame(
        {
            "timestamp": [end - pd.Timedelta(seconds=5), end + pd.Timedelta(microseconds=1), end + MINUTE],
            "tic": "AAPL",
            "bid": [170.90, 999.00, 171.00],  # SYNTHETIC; the middle one is absurd so it cannot go unnoticed
            "ask": [170.92, 999.02, 171.02],
            "bid_size": 100.0,
            "ask_size": 100.0,
        }
    )
    first_event, second_event = replay(first, quotes=quotes)
    assert first_event.quotes["AAPL"].bid == 170.90
    assert (
        second_event.quotes["AAPL"].bid == 171.00
    )  # stamped exactly at the second bar's end: at or before it


def test_the_quote_book_never_answers_with_a_later_quote():
    book = QuoteBook()
    t0 = pd.Timestamp("2019-02-11 14:31", tz="UTC")
    for seconds, bid in ((30, 1.0), (-10, 0.5), (75, 2.0)):  # arriving out of time order
        book.add("AAPL", Quote(bid, bid + 0.01, timestamp=t0 + pd.Timedelta(seconds=seconds)))
    assert book.at("AAPL", t0 - pd.Timedelta(seconds=11)) is None
    assert book.at("AAPL", t0).bid == 0.5
    assert book.at("AAPL", t0 + MINUTE).bid == 1.0
    book.forget_before(t0 + MINUTE)
    assert book.at("AAPL", t0 + MINUTE).bid == 1.0 and book.at("AAPL", t0 + 2 * MINUTE).bid == 2.0
    assert book.at("MSFT", t0) is None


def test_streamed_quotes_are_attached_to_the_bar_event_and_events_carry_their_arrival(bars):
    minutes = bars[bars["tic"].isin(["AAPL", "MSFT"])].head(4).reset_index(drop=True)
    first_end = minutes.loc[0, "timestamp"]
    second_end = first_end + MINUTE
    before = pd.Timestamp.now(tz="UTC")
    with FakeAlpacaServer() as server:
        stream = AlpacaBarStream(
            DEFAULT_API_KEY,
            DEFAULT_SECRET,
            ["AAPL", "MSFT"],
            url_override=server.stream_url,
            with_quotes=True,
        )
        events = iter(stream)

        def publish() -> None:
            assert server.wait_for_subscription(["AAPL", "MSFT"], timeout_s=20, channel="quotes")
            # SYNTHETIC quotes. The second AAPL quote is stamped after the first bar's end but sent before it.
            server.publish_quote("AAPL", first_end - pd.Timedelta(seconds=20), 170.95, 170.97, 300, 200)
            server.publish_quote("AAPL", first_end + pd.Timedelta(seconds=1), 171.50, 171.52)
            server.publish_quote("MSFT", first_end - pd.Timedelta(seconds=5), 104.00, 103.90)  # crossed
            for row in minutes.itertuples(index=False):
                if row.timestamp == second_end:
                    server.publish_quote("MSFT", second_end, 104.10, 104.12)  # at the second bar's end
                start = row.timestamp - MINUTE  # Alpaca stamps a bar with its start
                server.publish_bar(row.tic, start, row.open, row.high, row.low, row.close, row.volume)

        publisher = threading.Thread(target=publish, daemon=True)
        publisher.start()
        received = [next(events), next(events)]
        after = pd.Timestamp.now(tz="UTC")
        stream.stop()
        publisher.join(timeout=20)
    first, second = received
    assert [first.timestamp, second.timestamp] == [first_end, second_end]
    assert first.quotes == {
        "AAPL": Quote(170.95, 170.97, 300.0, 200.0, first_end - pd.Timedelta(seconds=20))
    }  # not the later AAPL quote, and MSFT's crossed one is no quote
    assert second.quotes["AAPL"].bid == 171.50 and second.quotes["MSFT"].bid == 104.10
    for event in received:
        assert before <= event.received_at <= after
    assert first.received_at <= second.received_at
    assert "with_quotes=True" in repr(stream) and DEFAULT_SECRET not in repr(stream)


def test_json_clients_subscribe_to_quotes_in_alpacas_shape():
    with FakeAlpacaServer() as server, connect(server.stream_url) as client:
        client.recv(timeout=10)
        client.send(json.dumps({"action": "auth", "key": DEFAULT_API_KEY, "secret": DEFAULT_SECRET}))
        client.recv(timeout=10)
        client.send(json.dumps({"action": "subscribe", "quotes": ["AAPL"]}))
        [subscription] = json.loads(client.recv(timeout=10))
        assert subscription["quotes"] == ["AAPL"] and subscription["bars"] == []
        assert server.wait_for_subscription(["AAPL"], channel="quotes")
        assert not server.wait_for_subscription(["AAPL"], timeout_s=0.05)  # no bars asked
        server.publish_quote("MSFT", "2019-02-11 09:31:00", 104.0, 104.02)  # not subscribed
        server.publish_quote("AAPL", "2019-02-11 09:31:00.250", 170.95, 170.97, 300, 200)
        [quote] = json.loads(client.recv(timeout=10))
    assert {k: quote[k] for k in ("T", "S", "bp", "bs", "ap", "as", "bx", "ax")} == {
        "T": "q",
        "S": "AAPL",
        "bp": 170.95,
        "bs": 300.0,
        "ap": 170.97,
        "as": 200.0,
        "bx": "V",
        "ax": "V",
    }
    assert pd.Timestamp(quote["t"]) == pd.Timestamp("2019-02-11 14:31:00.250", tz="UTC")
