"""The fake Alpaca's fault rules (timed outages, seeded random faults, chained faults, dropped connections) and
its journaled account, which a server started again on the same file carries on with."""

from __future__ import annotations

import json
import time

import pytest

from testkit.fake_alpaca import FakeAlpacaServer, publish_bars
from trading_core.broker import AlpacaPaperBroker, OrderRequest, RetryPolicy, TransientBrokerError

API_KEY, SECRET = "fake-key", "fake-secret"
ONE_TRY = RetryPolicy(max_attempts=1)

pytestmark = pytest.mark.timeout(60)


def client(server: FakeAlpacaServer) -> AlpacaPaperBroker:
    return AlpacaPaperBroker(API_KEY, SECRET, url_override=server.url, retry=ONE_TRY, request_timeout_s=1.0)


def answered(call) -> bool:
    try:
        call()
    except TransientBrokerError:
        return False
    return True


def publish(server: FakeAlpacaServer, minute: int, open_: float = 170.0) -> None:
    when = f"2019-02-11 09:{30 + minute:02d}"
    server.publish_bar("AAPL", when, open_, open_ + 0.5, open_ - 0.5, open_ + 0.1, 10_000)


def test_a_timed_outage_fails_every_route_from_its_first_hit_until_it_ends():
    with FakeAlpacaServer(api_key=API_KEY, secret=SECRET) as server:
        broker = client(server)
        rule = server.inject(503, for_s=0.4)
        time.sleep(0.5)  # the clock starts at the first failed request, not at the injection
        assert not answered(broker.account) and not answered(broker.positions)
        # The fake's own route keeps working, so a harness can advance the market during an outage.
        assert publish_bars(server.url, [], API_KEY, SECRET) == 0
        time.sleep(0.45)
        assert answered(broker.account) and answered(broker.positions)
        assert rule.hits == 2
        assert server.fault_counts == {"GET /v2/account 503": 1, "GET /v2/positions 503": 1}


def test_random_faults_are_drawn_from_the_servers_seed():
    def pattern(seed: int) -> list[bool]:
        with FakeAlpacaServer(api_key=API_KEY, secret=SECRET, seed=seed) as server:
            server.inject(429, path_prefix="/v2/account", for_s=float("inf"), probability=0.5)
            broker = client(server)
            return [answered(broker.account) for _ in range(16)]

    first = pattern(11)
    assert first == pattern(11)  # reproducible
    assert first != pattern(12) and 0 < sum(first) < len(first)


def test_a_chained_fault_waits_for_the_one_before_and_a_lost_reply_still_creates_the_order():
    with FakeAlpacaServer(api_key=API_KEY, secret=SECRET) as server:
        broker = client(server)
        lost = server.inject("disconnect", method="POST", path_prefix="/v2/orders", after_processing=True)
        outage = server.inject(503, times=2, after=lost)
        assert answered(broker.account)  # the outage waits for the lost reply
        # The connection drops after the order was made; the broker's look-up of it meets the outage.
        with pytest.raises(TransientBrokerError, match="look up order lost-once failed: HTTP 503"):
            broker.submit_order(OrderRequest("lost-once", "AAPL", "buy", 1))
        assert [o["client_order_id"] for o in server.orders] == ["lost-once"]
        assert server.fault_counts["POST /v2/orders disconnect after processing"] == 1
        assert not answered(broker.account) and answered(broker.account)
        assert (lost.hits, outage.hits) == (1, 2)
        server.inject(503, for_s=float("inf"))
        server.clear_faults()
        assert answered(broker.positions)


def test_inject_refuses_what_is_not_a_fault():
    with FakeAlpacaServer() as server:
        with pytest.raises(ValueError, match="error status"):
            server.inject(200)
        with pytest.raises(ValueError, match="probability"):
            server.inject(503, probability=0.0)


def test_the_account_survives_a_restart_on_its_journal(tmp_path):
    journal = tmp_path / "live" / "fake_alpaca" / "session.jsonl"
    with FakeAlpacaServer(api_key=API_KEY, secret=SECRET, initial_cash=50_000, state_path=journal) as server:
        broker = client(server)
        publish(server, 1, open_=170.0)
        broker.submit_order(OrderRequest("buy-10", "AAPL", "buy", 10))
        publish(server, 2, open_=171.0)  # fills at this open
        broker.submit_order(OrderRequest("limit", "AAPL", "sell", 4, "limit", 500.0))
        before = (broker.account(), broker.positions(), server.orders, server.fills)
    assert len(journal.read_text().splitlines()) > 1  # one line per change

    # A kill can tear the line being written: it is ignored (its reply never went out).
    with journal.open("a") as file:
        file.write('{"format": 1, "cash": 1')
    with FakeAlpacaServer(api_key=API_KEY, secret=SECRET, initial_cash=1.0, state_path=journal) as server:
        broker = client(server)
        assert (broker.account(), broker.positions(), server.orders, server.fills) == before
        assert broker.get_order("buy-10").status == "filled" and broker.get_order("limit").is_open
        publish(server, 2, open_=100.0)  # a replay restarted from the top re-publishes seen bars: ignored
        assert broker.positions() == {"AAPL": 10.0}
        broker.submit_order(OrderRequest("buy-1", "AAPL", "buy", 1))  # order ids carry on
        assert len({o["id"] for o in server.orders}) == 3
    assert len(journal.read_text().splitlines()) == 2  # compacted to one line at start, plus the new order


def test_a_corrupt_journal_is_named_with_its_line(tmp_path):
    journal = tmp_path / "account.jsonl"
    with FakeAlpacaServer(state_path=journal) as server:
        publish(server, 1)
    lines = journal.read_text().splitlines()
    journal.write_text("\n".join([lines[0], "not json", json.dumps({"format": 1})]) + "\n")
    with pytest.raises(ValueError, match=r"account\.jsonl: line 2 is not JSON"):
        FakeAlpacaServer(state_path=journal)
