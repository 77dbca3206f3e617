"""The fake Alpaca bar stream: alpaca-py's real ``StockDataStream`` (msgpack) and a plain JSON client receive
real 1-minute bars published by the fake, and publishing a bar fills the orders waiting for it."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pandas as pd
import pytest
from websockets.sync.client import connect

from testkit.fake_alpaca import FakeAlpacaServer
from tests.conftest import SHARED_DATA

INTRADAY_FILE: Path = SHARED_DATA / "intraday_1min_us_equities_2019.csv.gz"

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def minutes() -> pd.DataFrame:
    """The first five minutes of 2019-02-11 for AAPL, MSFT and SPY, as stored (naive New York time)."""
    if not INTRADAY_FILE.exists():
        pytest.skip(f"real intraday data {INTRADAY_FILE} not found (set RL_TRADING_SHARED_DATA)")
    frame = pd.read_csv(INTRADAY_FILE, parse_dates=["datetime"])
    frame = frame[frame["tic"].isin(["AAPL", "MSFT", "SPY"])]
    frame = frame[frame["datetime"] < pd.Timestamp("2019-02-11 09:36")]
    assert len(frame) == 15
    return frame.reset_index(drop=True)


def test_stock_data_stream_receives_published_bars(minutes):
    from alpaca.data.live import StockDataStream

    received = []
    all_in = threading.Event()
    expected = minutes[minutes["tic"].isin(["AAPL", "MSFT"])]

    async def on_bar(bar) -> None:
        received.append(bar)
        if len(received) == len(expected):
            all_in.set()

    with FakeAlpacaServer() as server:
        stream = StockDataStream("test-key", "test-secret", url_override=server.stream_url)
        stream.subscribe_bars(on_bar, "AAPL", "MSFT")
        runner = threading.Thread(target=stream.run, daemon=True)
        runner.start()
        try:
            assert server.wait_for_subscription(["AAPL", "MSFT"], timeout_s=20)
            assert server.replay(minutes) == len(minutes)  # SPY is published but not subscribed
            assert all_in.wait(timeout=20)
        finally:
            stream.stop()
    # Closing the server drops the connection, so the stopped stream returns at once.
    runner.join(timeout=20)
    assert not runner.is_alive()

    expected = expected.sort_values(["datetime", "tic"])
    assert [(b.symbol, b.open, b.high, b.low, b.close, b.volume) for b in received] == [
        (r.tic, r.open, r.high, r.low, r.close, float(r.volume)) for r in expected.itertuples()
    ]
    times = [pd.Timestamp(b.timestamp) for b in received]
    assert times == [pd.Timestamp(t).tz_localize("America/New_York") for t in expected["datetime"]]


def test_json_clients_get_json_and_bad_keys_are_refused(minutes):
    first = minutes.iloc[0]
    with FakeAlpacaServer() as server:
        with connect(server.stream_url) as client:
            assert json.loads(client.recv(timeout=10)) == [{"T": "success", "msg": "connected"}]
            client.send(json.dumps({"action": "auth", "key": "test-key", "secret": "test-secret"}))
            assert json.loads(client.recv(timeout=10)) == [{"T": "success", "msg": "authenticated"}]
            client.send(json.dumps({"action": "subscribe", "bars": [first.tic], "trades": ["SPY"]}))
            [subscription] = json.loads(client.recv(timeout=10))
            assert subscription["T"] == "subscription" and subscription["bars"] == [first.tic]
            assert subscription["trades"] == ["SPY"]
            server.publish_bar(
                first.tic, first.datetime, first.open, first.high, first.low, first.close, first.volume
            )
            [bar] = json.loads(client.recv(timeout=10))
            assert (
                bar["T"] == "b"
                and bar["S"] == first.tic
                and bar["o"] == first.open
                and bar["v"] == first.volume
            )
            assert pd.Timestamp(bar["t"]) == pd.Timestamp(first.datetime).tz_localize("America/New_York")

        with connect(server.stream_url) as intruder:
            intruder.recv(timeout=10)
            intruder.send(json.dumps({"action": "auth", "key": "test-key", "secret": "wrong"}))
            assert json.loads(intruder.recv(timeout=10)) == [
                {"T": "error", "code": 402, "msg": "auth failed"}
            ]


def test_published_bars_fill_waiting_orders_at_their_open(minutes):
    from alpaca.trading.client import TradingClient
    from alpaca.trading.enums import OrderSide, TimeInForce
    from alpaca.trading.requests import MarketOrderRequest

    aapl = minutes[minutes["tic"] == "AAPL"].reset_index(drop=True)
    with FakeAlpacaServer(aapl) as server:
        client = TradingClient("test-key", "test-secret", url_override=server.url)
        server.replay(aapl.iloc[:1])
        order = MarketOrderRequest(symbol="AAPL", qty=5, side=OrderSide.BUY, time_in_force=TimeInForce.DAY)
        client.submit_order(order)
        assert server.fills == []  # not on the bar already published
        server.replay(aapl.iloc[1:2])
        assert [(f["qty"], f["price"]) for f in server.fills] == [(5.0, aapl.loc[1, "open"])]
        assert float(client.get_open_position("AAPL").qty) == 5.0


def test_replay_publishes_in_time_order_to_wildcard_subscribers(minutes):
    """Five minutes of market time at 3000x is 0.1 s of pauses; the bars come out in time order."""
    with FakeAlpacaServer(minutes) as server, connect(server.stream_url) as client:
        client.recv(timeout=10)
        client.send(json.dumps({"action": "auth", "key": "test-key", "secret": "test-secret"}))
        client.recv(timeout=10)
        client.send(json.dumps({"action": "subscribe", "bars": ["*"]}))
        client.recv(timeout=10)
        assert server.replay(speed=3000.0) == len(minutes)
        bars = [json.loads(client.recv(timeout=10))[0] for _ in range(len(minutes))]
    assert [(pd.Timestamp(b["t"]), b["S"]) for b in bars] == sorted(
        (pd.Timestamp(t).tz_localize("America/New_York"), tic)
        for t, tic in zip(minutes["datetime"], minutes["tic"], strict=True)
    )


def test_the_stream_url_is_alpacas_endpoint_shape():
    with FakeAlpacaServer() as server:
        assert server.stream_url.startswith("ws://127.0.0.1:") and server.stream_url.endswith("/v2/iex")
        assert server.url.startswith("http://127.0.0.1:")


def test_a_stream_that_ends_unasked_ends_the_iteration_with_one_redacted_line():
    from trading_core.live.sources import AlpacaBarStream, BarSourceError

    with FakeAlpacaServer() as server:
        stream = AlpacaBarStream("test-key", "test-secret", ["AAPL"], url_override=server.stream_url)

        def refused() -> None:
            raise ValueError("auth failed for test-key / test-secret")

        stream._stream.run = refused  # what alpaca-py's run does when it gives up
        with pytest.raises(BarSourceError) as failed:
            next(iter(stream))
    assert str(failed.value) == "the Alpaca bar stream failed: ValueError: auth failed for *** / ***"
