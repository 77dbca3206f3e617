"""The market-data bus against the real NATS JetStream server (127.0.0.1:4222 on every development and CI machine):
the codec, at-least-once delivery, broker-side dedupe, the lag gauge, and the crash test: a consumer process
SIGKILLed mid-stream and restarted decides every bar once, exactly as an uninterrupted one."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines import market_feed
from trading_core.broker.base import Bar, Quote
from trading_core.broker.simulated import SimulatedBroker
from trading_core.live.bus import (
    DEFAULT_KAFKA_BOOTSTRAP,
    DEFAULT_NATS_URL,
    BarCodecError,
    BusFeed,
    BusSettings,
    BusUnavailable,
    EmbeddedBus,
    KafkaBus,
    NatsJetStreamBus,
    bar_key,
    bus_for,
    decode_event,
    encode_event,
)
from trading_core.live.engine import DecisionEngine
from trading_core.live.loop import LiveConfig, LiveTradingLoop
from trading_core.live.sources import BarEvent, replay
from trading_core.live.state import CHAMPION, TradingStateStore
from trading_core.monitoring.live_metrics import LiveMetrics

PROJECT_ROOT = Path(__file__).resolve().parents[1]
NATS_URL = os.environ.get("RL_TRADING_NATS_URL", DEFAULT_NATS_URL)
KAFKA_BOOTSTRAP = os.environ.get("RL_TRADING_KAFKA_BOOTSTRAP", DEFAULT_KAFKA_BOOTSTRAP)
# Short waits keep the file fast: a crashed consumer's bar comes back after ACK_WAIT_S.
ACK_WAIT_S = 1.5
FAST = BusSettings(ack_wait_s=ACK_WAIT_S, poll_s=0.1, idle_timeout_s=5.0)
CRASH_BARS = 150  # of the shared 1-minute file, four tickers
EMBEDDED_BARS = 15
KILL_AT = CRASH_BARS // 3
SESSION = "bus-session"  # both runs: client order ids derive from it, so the orders compare one to one
WORKER_TIMEOUT_S = 120


def _answers(url: str, default_port: int) -> bool:
    from trading_core.live.bus.market_data_bus import host_and_port

    try:
        socket.create_connection(host_and_port(url, default_port), timeout=1.0).close()
    except OSError:
        return False
    return True


def require_nats() -> None:
    if not _answers(NATS_URL, 4222):
        pytest.skip(
            f"no NATS server answers at {NATS_URL} (start nats-server -js, or set RL_TRADING_NATS_URL)"
        )


def new_feed(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture()
def nats_bus():
    require_nats()
    bus = NatsJetStreamBus(new_feed("test"), NATS_URL, settings=FAST)
    yield bus
    bus.delete_stream()
    bus.close()


def minute_events(count: int, start: str = "2019-02-12 14:31") -> list[BarEvent]:
    first = pd.Timestamp(start, tz="UTC")
    return [
        BarEvent(
            first + pd.Timedelta(minutes=i), {"AAPL": Bar(170.0 + i, 171.0 + i, 169.5, 170.5, 1_000 + i)}
        )
        for i in range(count)
    ]


# ------------------------------------------------------------------------------------------------ the codec


def test_the_codec_round_trips_bars_quotes_and_times_exactly() -> None:
    awkward = [0.1 + 0.2, 1 / 3, 170.12999999999997, 5e-324 * 3, 2.0**52 + 0.5]
    event = BarEvent(
        pd.Timestamp("2019-02-12 14:31:00.000000123", tz="UTC"),
        {
            "AAPL": Bar(np.float64(awkward[0]), awkward[1] + 1, awkward[3], awkward[2], np.int64(2**53 + 1)),
            "MSFT": Bar(awkward[4], awkward[4] + 1, awkward[4] - 1, awkward[4], 0.5),
        },
        {"AAPL": Quote(170.1, 170.2, 300.0, 100, pd.Timestamp("2019-02-12 14:30:59.999", tz="UTC"))},
        received_at=pd.Timestamp("2019-02-12 14:31:00.25", tz="UTC"),
    )
    decoded = decode_event(encode_event(event))
    assert decoded == event
    for symbol, bar in event.bars.items():
        for field in ("open", "high", "low", "close"):
            assert repr(float(getattr(decoded.bars[symbol], field))) == repr(float(getattr(bar, field)))
    assert decoded.bars["AAPL"].volume == 2**53 + 1 and isinstance(decoded.bars["AAPL"].volume, int)
    assert decoded.timestamp.value == event.timestamp.value  # nanoseconds kept
    assert decoded.quotes["AAPL"].timestamp == event.quotes["AAPL"].timestamp
    assert encode_event(decoded) == encode_event(event)
    plain = BarEvent(event.timestamp, event.bars)
    assert decode_event(encode_event(plain)) == plain  # no quotes, no receipt time


def test_the_codec_refuses_what_it_did_not_write() -> None:
    for payload in (b"", b"{}", b'{"v": 99}', b"\xff", b'{"v": 1, "timestamp": "x", "bars": {}}'):
        with pytest.raises(BarCodecError):
            decode_event(payload)


# ------------------------------------------------------------------------------------- embedded and NATS


def test_the_embedded_bus_delivers_at_least_once_in_order() -> None:
    bus = EmbeddedBus("embedded-test")
    events = minute_events(4)
    assert [bus.publish(e) for e in events] == [True] * 4 and not bus.publish(events[0])
    bus.end_feed()
    deliveries = bus.consume("s1")
    first = next(deliveries)
    first.ack()
    second = next(deliveries)  # handed out, never acked: the consumer "crashed"
    assert (first.event, second.event, second.delivery_count) == (events[0], events[1], 1)
    again = [(d.event, d.delivery_count) for d in bus.consume("s1") if d.ack() is None]
    assert again == [(events[1], 2), (events[2], 1), (events[3], 1)]
    assert bus.lag("s1") == 0 and bus.lag("another") == 5  # four bars and the end marker


def test_nats_delivers_at_least_once_and_redelivers_an_unacked_bar_first(nats_bus) -> None:
    events = minute_events(5)
    for event in events:
        assert nats_bus.publish(event)
    nats_bus.end_feed()
    assert nats_bus.lag("c1") == 6  # a consumer yet to start has the whole stream ahead
    deliveries = nats_bus.consume("c1")
    first = next(deliveries)
    assert (first.event, first.key, first.delivery_count, first.pending) == (
        events[0],
        bar_key(nats_bus.feed, events[0].timestamp),
        1,
        5,
    )
    first.ack()
    assert next(deliveries).event == events[1]  # not acked: the process "dies" here
    deliveries.close()
    assert nats_bus.lag("c1") == 5
    started = time.monotonic()
    resumed = nats_bus.consume("c1")  # a new consumer process on the same durable consumer
    again = next(resumed)
    # One unacked at a time: nothing later came first; it waited out the dead process's ack wait.
    assert (again.event, again.redelivered, again.delivery_count) == (events[1], True, 2)
    assert time.monotonic() - started >= ACK_WAIT_S * 0.5
    again.ack()
    rest = []
    for delivery in resumed:
        rest.append(delivery.event)
        delivery.ack()
    assert rest == events[2:] and nats_bus.lag("c1") == 0


def test_nats_drops_a_republished_bar_by_its_key(nats_bus) -> None:
    events = minute_events(3)
    assert [nats_bus.publish(e) for e in events] == [True, True, True]
    republished = [nats_bus.publish(e) for e in events]  # a publisher restarted over the same replay
    assert republished == [False, False, False]
    nats_bus.end_feed()
    nats_bus.end_feed()  # the same feed ended twice is ended once
    assert nats_bus.lag("fresh") == 4
    consumed = []
    for delivery in nats_bus.consume("fresh"):
        consumed.append(delivery.event)
        delivery.ack()
    assert consumed == events


def test_the_lag_gauge_shows_the_bars_the_consumer_has_not_had(nats_bus) -> None:
    events = minute_events(6)
    for event in events:
        nats_bus.publish(event)
    metrics = LiveMetrics(namespace="rl_trading")
    feed = BusFeed(nats_bus, "session.with.dots", metrics)
    assert math.isnan(metrics.registry.get_sample_value("rl_trading_bus_consumed_bar_age_seconds"))
    for consumed, event in enumerate(feed, start=1):
        feed.done(event)
        lag = metrics.registry.get_sample_value("rl_trading_bus_consumer_lag")
        assert lag == len(events) - consumed == nats_bus.lag("session.with.dots")
        if consumed == 4:
            break
    age = metrics.registry.get_sample_value("rl_trading_bus_consumed_bar_age_seconds")
    assert abs(age - (time.time() - events[3].timestamp.timestamp())) < 60
    exposition = metrics.exposition().decode()
    assert (
        "rl_trading_bus_consumer_lag 2.0" in exposition
        and "rl_trading_bus_consumed_bar_age_seconds" in exposition
    )
    assert feed.counts.delivered == feed.counts.acked == 4


def test_a_broker_that_does_not_answer_is_one_line_naming_the_url(tmp_path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"nats://127.0.0.1:{probe.getsockname()[1]}"
    with pytest.raises(BusUnavailable, match=f"no NATS server answers at {closed}"):
        NatsJetStreamBus("anything", closed)
    kafka = closed.replace("nats://", "kafka://")
    with pytest.raises(BusUnavailable, match=f"no Kafka broker answers at {kafka}"):
        bus_for(kafka, "anything")
    with pytest.raises(SystemExit, match=f"--bus no NATS server answers at {closed}") as exited:
        market_feed.main(["--bus", closed, "--bars", str(tmp_path / "bars.csv")])
    assert "\n" not in str(exited.value)
    with pytest.raises(ValueError, match="use embedded, nats://host:port or kafka://host:port"):
        bus_for("amqp://127.0.0.1", "feed")
    with pytest.raises(ValueError, match="feed name"):
        bus_for("embedded", "market.bars")


def test_kafka_delivers_at_least_once_and_commits_after_the_ack() -> None:
    if not _answers(f"kafka://{KAFKA_BOOTSTRAP}", 9092):
        pytest.skip(
            f"no Kafka broker at {KAFKA_BOOTSTRAP} (set RL_TRADING_KAFKA_BOOTSTRAP to test the Kafka bus)"
        )
    bus = KafkaBus(new_feed("test"), KAFKA_BOOTSTRAP, settings=FAST)
    try:
        events = minute_events(4)
        for event in events:
            bus.publish(event)
        bus.end_feed()
        deliveries = bus.consume("k1")
        next(deliveries).ack()
        assert next(deliveries).event == events[1]  # never acked
        deliveries.close()
        assert bus.lag("k1") == 4
        consumed = []
        for delivery in bus.consume("k1"):
            consumed.append(delivery.event)
            delivery.ack()
        assert consumed == events[1:] and bus.lag("k1") == 0
    finally:
        bus.delete_topic()
        bus.close()


# --------------------------------------------------------------------- the live loop on the bus, in-process


def make_loop(live_agent, history, store) -> LiveTradingLoop:
    policy, spec = live_agent
    return LiveTradingLoop(
        LiveConfig(session_id=SESSION),
        store,
        SimulatedBroker(list(spec.tickers), spec.env_spec.simulation),
        (DecisionEngine(policy, spec), "1"),
        history=history,
    )


def new_store(path: Path) -> TradingStateStore:
    store = TradingStateStore.sqlite(path)
    store.create_schema()
    return store


def decisions_of(store: TradingStateStore) -> pd.DataFrame:
    frame = store.decisions(SESSION, CHAMPION)
    return frame.drop(columns=["id", "latency_ms"]).reset_index(drop=True)


def orders_of(store: TradingStateStore) -> pd.DataFrame:
    frame = store.orders(SESSION).drop(columns=["broker_order_id", "created_at", "updated_at"])
    return frame.sort_values("client_order_id").reset_index(drop=True)


def fills_of(store: TradingStateStore) -> pd.DataFrame:
    return (
        store.fills(SESSION)
        .drop(columns=["id"])
        .sort_values(["client_order_id", "source"])
        .reset_index(drop=True)
    )


def assert_same_session(store: TradingStateStore, reference: TradingStateStore) -> None:
    pd.testing.assert_frame_equal(decisions_of(store), decisions_of(reference), check_exact=True)
    pd.testing.assert_frame_equal(orders_of(store), orders_of(reference), check_exact=True)
    pd.testing.assert_frame_equal(fills_of(store), fills_of(reference), check_exact=True)
    assert store.positions(SESSION, CHAMPION) == reference.positions(SESSION, CHAMPION)
    pd.testing.assert_frame_equal(
        store.equity_curve(SESSION, CHAMPION), reference.equity_curve(SESSION, CHAMPION), check_exact=True
    )


def test_a_session_on_the_bus_decides_as_one_on_the_replay(live_agent, live_minutes, tmp_path) -> None:
    history, minutes = live_minutes
    events = list(replay(minutes))[:EMBEDDED_BARS]
    reference = new_store(tmp_path / "replay.db")
    make_loop(live_agent, history, reference).run(events)
    bus = EmbeddedBus("embedded-loop")
    for event in events:
        bus.publish(event)
    bus.end_feed()
    store = new_store(tmp_path / "bus.db")
    feed = BusFeed(bus, SESSION)
    summary = make_loop(live_agent, history, store).run(feed, on_done=feed.done)
    assert (summary.bars, summary.duplicates, feed.counts.acked, bus.lag(SESSION)) == (
        EMBEDDED_BARS,
        0,
        EMBEDDED_BARS,
        0,
    )
    assert_same_session(store, reference)


# ----------------------------------------------------------------------- the crash test, across processes


@pytest.fixture(scope="module")
def agent_dir(live_agent, live_minutes, tmp_path_factory) -> Path:
    """The small trained agent and its warm-up history, saved for the worker processes."""
    policy, spec = live_agent
    folder = tmp_path_factory.mktemp("bus_agent")
    policy.save(folder / "policy")
    spec.save(folder / "spec.json")
    live_minutes[0].to_parquet(folder / "history.parquet")
    return folder


def worker(agent: Path, db: Path, feed: str, consumer: str, *extra: str) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "tests.bus_consumer_worker",
        "--agent",
        str(agent),
        "--state-db",
        str(db),
    ]
    command += ["--feed", feed, "--consumer", consumer, "--session-id", SESSION, "--nats-url", NATS_URL]
    command += ["--ack-wait-s", str(ACK_WAIT_S), *extra]
    return subprocess.Popen(
        command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def progress(lines: list[str]) -> dict[str, int]:
    """What a worker said last: ``committed <bars> duplicates <n> redelivered <n>`` (all zero before a bar)."""
    said = [line.split() for line in lines if line.startswith("committed ")]
    last = said[-1] if said else ["committed", "0", "duplicates", "0", "redelivered", "0"]
    return {last[i]: int(last[i + 1]) for i in range(0, len(last), 2)}


def killed_from_outside(process: subprocess.Popen, after: int) -> dict[str, int]:
    """SIGKILL ``process`` once it says it committed ``after`` bars, wherever it then is (an ack, a fetch, the
    next bar between its write-ahead and its commit); what it said last."""
    lines: list[str] = []
    for line in process.stdout:
        lines.append(line)
        if progress([line])["committed"] >= after:
            os.kill(process.pid, signal.SIGKILL)
            break
    out, err = process.communicate(timeout=WORKER_TIMEOUT_S)
    assert process.returncode == -signal.SIGKILL, err[-3000:]
    return progress(lines + out.splitlines())


def killed_by_itself(process: subprocess.Popen) -> dict[str, int]:
    out, err = process.communicate(timeout=WORKER_TIMEOUT_S)
    assert process.returncode == -signal.SIGKILL, err[-3000:]
    return progress(out.splitlines())


def bars_committed(db: Path) -> int:
    return int(new_store(db).decisions(SESSION, CHAMPION)["bar_time"].nunique())


def test_a_consumer_killed_mid_stream_decides_every_bar_once_as_an_uninterrupted_one(
    live_agent, live_minutes, agent_dir, tmp_path
) -> None:
    require_nats()
    history, minutes = live_minutes
    events = list(replay(minutes))[:CRASH_BARS]
    bus = NatsJetStreamBus(new_feed("crash"), NATS_URL, settings=FAST)
    try:
        published = sum(bus.publish(event) for event in events)
        bus.end_feed()
        db, consumer, go = tmp_path / "killed.db", "killed-session", tmp_path / "go"
        # 1. SIGKILLed from outside after about a third of the bars. While it starts up, the uninterrupted
        # session runs here on the same feed, with a durable consumer of its own.
        first = worker(agent_dir, db, bus.feed, consumer, "--start-when", str(go))
        reference = new_store(tmp_path / "uninterrupted.db")
        feed = BusFeed(bus, "uninterrupted-session")
        uninterrupted = make_loop(live_agent, history, reference).run(feed, on_done=feed.done)
        go.touch()
        said = [killed_from_outside(first, KILL_AT)]
        after_first = bars_committed(db)
        # 2. Killed by itself once a bar is committed, before its ack leaves: the broker must hand it out again.
        second = worker(agent_dir, db, bus.feed, consumer, "--die-after", str(2 * KILL_AT - after_first))
        said.append(killed_by_itself(second))
        after_second = bars_committed(db)
        assert events[0].timestamp < new_store(db).get_session(SESSION).last_bar_time < events[-1].timestamp
        # 3. Restarted on the same session and durable consumer, it finishes the feed.
        report = tmp_path / "report.json"
        third = worker(agent_dir, db, bus.feed, consumer, "--report", str(report))
        _out, err = third.communicate(timeout=WORKER_TIMEOUT_S)
        assert third.returncode == 0, err[-3000:]
        last = json.loads(report.read_text())
        said.append({"committed": last["bars"], **{k: last[k] for k in ("duplicates", "redelivered")}})

        store = new_store(db)
        decided = store.decisions(SESSION, CHAMPION)["bar_time"]
        counts = {
            "published": published,
            "decided": int(decided.nunique()),
            "duplicated": sum(run["duplicates"] for run in said),
            "redelivered": sum(run["redelivered"] for run in said),
            "lost": len({e.timestamp for e in events} - set(decided)),
            "committed_when_killed": (after_first, after_second),
        }
        print(
            f"\nbus crash test: {counts}; per process {said}; uninterrupted: {uninterrupted.bars} bars, "
            f"{uninterrupted.decisions} decisions, {uninterrupted.orders_sent} orders"
        )
        assert published == CRASH_BARS and counts["lost"] == 0
        assert len(decided) == decided.nunique() == CRASH_BARS  # every bar decided, none twice
        assert after_first >= KILL_AT and after_second == 2 * KILL_AT
        # The bar committed before the second kill came back (its ack never left) and was skipped, decided once.
        assert said[2]["redelivered"] == said[2]["duplicates"] == 1
        assert last["bars"] == CRASH_BARS - after_second  # the rest, each once
        assert (uninterrupted.bars, uninterrupted.duplicates) == (CRASH_BARS, 0)
        assert bus.lag(consumer) == 0 and bus.lag("uninterrupted-session") == 0
        assert store.get_session(SESSION).status == "finished"
        assert_same_session(store, reference)
    finally:
        bus.delete_stream()
        bus.close()


# ---------------------------------------------------------------------------------------------- the CLIs


def test_the_feed_cli_publishes_and_a_paper_session_consumes_and_resumes_where_it_acked(
    live_agent, live_minutes, tmp_path, monkeypatch, capsys
) -> None:
    from pipelines import paper_trading
    from resources.mlflow_registry import MlflowRegistryResource
    from resources.state_home import StateHome
    from tests.live_support import register_agent

    require_nats()
    home = StateHome(tmp_path / "home").prepare()
    monkeypatch.setenv("RL_TRADING_HOME", str(home.root))
    registry = MlflowRegistryResource(
        tracking_uri=home.mlflow_tracking_uri, artifact_root=home.mlflow_artifact_root
    )
    register_agent(*live_agent, registry)
    history, minutes = live_minutes
    bars = tmp_path / "minutes.csv"
    two_days = pd.concat([history.rename(columns={"date": "timestamp"}), minutes]).head(len(history) + 4 * 30)
    local = two_days["timestamp"].dt.tz_convert("America/New_York").dt.tz_localize(None)
    two_days.assign(timestamp=local).rename(columns={"timestamp": "datetime"}).to_csv(bars, index=False)
    feed = new_feed("cli")
    try:
        assert market_feed.main(["--bus", NATS_URL, "--feed", feed, "--bars", str(bars)]) == 0
        assert (
            f"published 30 bars to feed {feed} on {NATS_URL} (0 published before" in capsys.readouterr().out
        )
        session = ["--bus", NATS_URL, "--feed", feed, "--bars", str(bars), "--challenger-alias", ""]
        session += ["--monitor-port", "-1"]
        assert paper_trading.main([*session, "--new-session-id", "cli.session", "--max-bars", "10"]) == 0
        assert "Bus " + NATS_URL + f" feed {feed}: 10 bars delivered" in capsys.readouterr().out
        assert paper_trading.main([*session, "--session-id", "cli.session"]) == 0
        out = capsys.readouterr().out
        # The durable consumer is the session's: resumed, it goes on after the ten bars it acked.
        assert f"Bus {NATS_URL} feed {feed}: 20 bars delivered (0 redelivered), 0 skipped" in out
        with TradingStateStore(home.trading_state_url) as store:
            decided = store.decisions("cli.session", CHAMPION)["bar_time"]
            assert len(decided) == decided.nunique() == 30
            assert store.get_session("cli.session").status == "finished"
    finally:
        with NatsJetStreamBus(feed, NATS_URL, settings=FAST) as bus:
            bus.delete_stream()
