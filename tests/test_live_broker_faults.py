"""The live loop against the fake Alpaca when the broker misbehaves: lost replies, outages, rejections and
differences between the store and the broker. Orders reconcile with the broker's truth, outages are ridden out
up to the grace, and past it the session stops cleanly and resumes."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator

import pandas as pd
import pytest

from testkit.fake_alpaca import DEFAULT_API_KEY, DEFAULT_SECRET, FakeAlpacaServer
from trading_core.broker.alpaca import AlpacaPaperBroker
from trading_core.broker.base import OrderRequest, RetryPolicy
from trading_core.live.engine import DecisionEngine
from trading_core.live.loop import LiveConfig, LiveTradingLoop, SessionStopped
from trading_core.live.sources import BarEvent, BarSourceError, replay
from trading_core.live.state import CHAMPION, SUBMIT_UNKNOWN, TradingStateStore

# The broker retries a few times quickly; the loop adds no retries of its own on top.
BROKER_RETRY = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.02, seed=5)
NO_RETRY = RetryPolicy(max_attempts=1)
BARS = 30

pytestmark = pytest.mark.timeout(180)


@pytest.fixture()
def server(live_agent):
    with FakeAlpacaServer(initial_cash=live_agent[1].env_spec.initial_amount) as fake:
        yield fake


@pytest.fixture()
def store(tmp_path):
    with TradingStateStore.sqlite(tmp_path / "state.db") as state:
        state.create_schema()
        yield state


@pytest.fixture(scope="module")
def all_events(live_minutes) -> list[BarEvent]:
    return list(replay(live_minutes[1]))


@pytest.fixture(scope="module")
def events(all_events) -> list[BarEvent]:
    return all_events[:BARS]


def broker_for(server: FakeAlpacaServer) -> AlpacaPaperBroker:
    return AlpacaPaperBroker(
        DEFAULT_API_KEY, DEFAULT_SECRET, url_override=server.url, retry=BROKER_RETRY, request_timeout_s=0.5
    )


def make_loop(live_agent, live_minutes, store, server, grace_s: float = 30.0) -> LiveTradingLoop:
    policy, spec = live_agent
    return LiveTradingLoop(
        LiveConfig(session_id="faults", outage_grace_s=grace_s),
        store,
        broker_for(server),
        (DecisionEngine(policy, spec), "1"),
        history=live_minutes[0],
        retry=NO_RETRY,
    )


def market(
    server: FakeAlpacaServer,
    events: Iterable[BarEvent],
    before: dict[int, Callable[[], object]] | None = None,
    pace_s: Callable[[], float] = lambda: 0.0,
) -> Iterator[BarEvent]:
    """Publish each bar to the fake before the loop sees it, ``pace_s()`` apart (a stream's clock, so an outage
    spans a few bars on any machine); ``before[k]`` runs before the k-th bar."""
    for k, event in enumerate(events):
        time.sleep(pace_s())
        if before and k in before:
            before[k]()
        for symbol, bar in event.bars.items():
            server.publish_bar(symbol, event.timestamp, bar.open, bar.high, bar.low, bar.close, bar.volume)
        yield event


def alerts_of(store: TradingStateStore, rule: str, severity: str | None = None) -> pd.DataFrame:
    alerts = store.alerts("faults")
    keep = alerts["rule"] == rule
    if severity is not None:
        keep &= alerts["severity"] == severity
    return alerts[keep]


def assert_books_agree(store: TradingStateStore, server: FakeAlpacaServer) -> None:
    """One order per client order id at the broker, and the store's positions are the broker's."""
    ids = [order["client_order_id"] for order in server.orders]
    assert len(ids) == len(set(ids))
    assert store.positions("faults", CHAMPION) == broker_for(server).positions()


def test_a_lost_reply_then_an_outage_ends_with_the_brokers_fill_and_one_order(
    live_agent, live_minutes, store, server, events
):
    # The first order is created but its reply lost; then every route answers 503 for a second.
    lost = server.inject(503, method="POST", path_prefix="/v2/orders", after_processing=True)
    server.inject(503, for_s=1.0, after=lost)
    loop = make_loop(live_agent, live_minutes, store, server)
    summary = loop.run(market(server, events))

    first = server.orders[0]
    order = store.get_order(first["client_order_id"])
    assert lost.hits == 1 and first["status"] == "filled"
    assert (order["status"], order["filled_qty"], order["filled_avg_price"]) == (
        "filled",
        float(first["qty"]),
        float(first["filled_avg_price"]),
    )
    fills = store.fills("faults")
    [fill] = fills[
        (fills["client_order_id"] == first["client_order_id"]) & (fills["source"] == "broker")
    ].itertuples()
    assert fill.qty == float(first["qty"]) and fill.price == float(first["filled_avg_price"])
    assert_books_agree(store, server)
    assert len(alerts_of(store, "broker_outage", "critical")) == 1 and summary.outages == 1
    assert len(alerts_of(store, "broker_outage", "info")) == 1  # the resolution
    reconciled = alerts_of(store, "order_reconciliation")["message"]
    assert reconciled.str.contains(first["client_order_id"]).any()
    assert alerts_of(store, "position_reconciliation").empty
    # It traded again once the broker answered: orders decided after the lost one reached the broker.
    decided = pd.Timestamp(order["decision_time"])
    sent = store.orders("faults")
    assert (sent.loc[sent["decision_time"] > decided, "status"] == "filled").any()
    assert summary.status == "finished" and store.get_session("faults").status == "finished"


def test_three_seconds_of_503_on_positions_are_ridden_out(
    live_agent, live_minutes, store, server, all_events
):
    events = all_events[:40]
    outage: list = []
    before = {
        5: lambda: outage.append(server.inject(503, method="GET", path_prefix="/v2/positions", for_s=3.0))
    }

    def pace_s() -> float:  # a quarter second a bar while the outage lasts: about twelve bars of it
        rule = outage[0] if outage else None
        active = rule is not None and (rule.first_hit is None or time.monotonic() - rule.first_hit < 3.0)
        return 0.25 if active else 0.0

    loop = make_loop(live_agent, live_minutes, store, server)
    summary = loop.run(market(server, events, before, pace_s))

    assert outage[0].hits > 0
    assert summary.bars == len(events) and summary.outages == 1
    assert len(alerts_of(store, "broker_outage", "critical")) == 1
    decisions = store.decisions("faults", CHAMPION)
    assert 0 < len(decisions) < len(events)  # no decisions while the broker could not be read
    assert decisions["bar_time"].iloc[-1] == events[-1].timestamp  # ...and decisions again after it
    assert_books_agree(store, server)
    assert alerts_of(store, "position_reconciliation").empty


def test_an_outage_past_the_grace_stops_cleanly_and_the_session_resumes(
    live_agent, live_minutes, store, server, events
):
    before = {12: lambda: server.inject(503, for_s=math.inf)}  # the broker goes away for good
    loop = make_loop(live_agent, live_minutes, store, server, grace_s=0.3)
    with pytest.raises(SessionStopped, match="unreachable for .* past the 0.3 s grace") as stopped:
        loop.run(market(server, events, before))
    assert "\n" not in str(stopped.value)
    session = store.get_session("faults")
    assert session.status == "stopped" and "grace" in session.stop_reason
    assert session.last_bar_time is not None and session.last_bar_time < events[-1].timestamp
    assert store.load_broker_snapshot("faults").bar_time == session.last_bar_time
    assert len(alerts_of(store, "session_stopped", "critical")) == 1

    server.clear_faults()
    resumed = make_loop(live_agent, live_minutes, store, server)
    summary = resumed.run(market(server, events))
    assert summary.status == "finished" and store.get_session("faults").stop_reason == "the bars ran out"
    assert summary.bars == sum(event.timestamp > session.last_bar_time for event in events)
    assert store.get_session("faults").last_bar_time == events[-1].timestamp
    assert not store.decisions("faults", CHAMPION)["bar_time"].duplicated().any()
    assert_books_agree(store, server)
    assert store.orders("faults", statuses=("pending_submit", SUBMIT_UNKNOWN)).empty


def test_rejections_are_final_and_unanswered_submits_the_broker_never_got_are_canceled(
    live_agent, live_minutes, store, server, events
):
    # The first order is refused (a verdict); the next one never reaches the broker (503 before processing).
    rejected = server.inject(422, method="POST", path_prefix="/v2/orders")
    unanswered = server.inject(
        503, method="POST", path_prefix="/v2/orders", times=BROKER_RETRY.max_attempts, after=rejected
    )
    loop = make_loop(live_agent, live_minutes, store, server)
    loop.run(market(server, events))

    orders = store.orders("faults")
    refused = orders[orders["status"] == "rejected"]
    assert len(refused) == 1 and refused["status_reason"].iloc[0] == "HTTP 422: injected 422"
    assert unanswered.hits == BROKER_RETRY.max_attempts
    lost = orders[orders["status_reason"] == "the broker never received it and its bar has passed"]
    assert len(lost) == 1 and lost["status"].iloc[0] == "canceled"
    assert (
        alerts_of(store, "order_reconciliation")["message"]
        .str.contains(lost["client_order_id"].iloc[0])
        .any()
    )
    at_broker = {order["client_order_id"] for order in server.orders}
    assert not at_broker & set(refused["client_order_id"]) and not at_broker & set(lost["client_order_id"])
    assert_books_agree(store, server)


def test_differences_with_the_broker_raise_one_alert_each(live_agent, live_minutes, store, server, events):
    # Someone else trades on the account: an order the session never sent, then a position it never bought.
    outsider = broker_for(server)
    before = {
        10: lambda: outsider.submit_order(OrderRequest("manual-limit", "AAPL", "buy", 1, "limit", 1.0)),
        20: lambda: outsider.submit_order(OrderRequest("manual-buy", "JPM", "buy", 3)),
    }
    loop = make_loop(live_agent, live_minutes, store, server)
    loop.run(market(server, events, before))

    [foreign] = alerts_of(store, "order_reconciliation")["message"]
    assert "manual-limit" in foreign and "never sent it" in foreign  # once, though it stays open
    [positions] = alerts_of(store, "position_reconciliation")["message"]
    assert "JPM: expected" in positions and "the broker's are kept" in positions
    assert store.positions("faults", CHAMPION) == outsider.positions()


def test_a_bar_source_that_dies_stops_the_session_cleanly(live_agent, live_minutes, store, server, events):
    def dying() -> Iterator[BarEvent]:
        yield from market(server, events[:5])
        raise BarSourceError("the Alpaca bar stream ended by itself (subscription refused?)")

    loop = make_loop(live_agent, live_minutes, store, server)
    with pytest.raises(SessionStopped, match="bar source failed: the Alpaca bar stream ended by itself"):
        loop.run(dying())
    session = store.get_session("faults")
    assert session.status == "stopped" and session.stop_reason.startswith("the bar source failed")
    assert session.last_bar_time == events[4].timestamp
