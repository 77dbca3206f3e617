"""Alpaca paper trading through the real alpaca-py ``TradingClient`` against the local fake Alpaca server:
round trips, retries of transient faults, and exactly one order per client order id whatever the wire does."""

from __future__ import annotations

import dataclasses
import logging
import traceback

import pytest

from testkit.fake_alpaca import FakeAlpacaServer
from trading_core.broker import (
    AlpacaPaperBroker,
    Broker,
    BrokerError,
    OrderRejected,
    OrderRequest,
    RetryPolicy,
    TransientBrokerError,
    call_with_retries,
)

API_KEY = "PKFAKEKEYID0123456789"
SECRET = "fakeSecretKey0123456789abcdefghijklmnopq"
FAST_RETRY = RetryPolicy(max_attempts=4, base_delay_s=0.01, max_delay_s=0.05, seed=7)
TWO_ATTEMPTS = RetryPolicy(max_attempts=2, base_delay_s=0.01, seed=7)
# Long enough for a loaded machine to answer, short enough that injected timeouts cost little.
TIMEOUT_S = 1.0

pytestmark = pytest.mark.timeout(120)


@pytest.fixture()
def server():
    with FakeAlpacaServer(api_key=API_KEY, secret=SECRET) as fake:
        yield fake


@pytest.fixture()
def broker(server):
    return AlpacaPaperBroker(
        API_KEY, SECRET, url_override=server.url, retry=FAST_RETRY, request_timeout_s=TIMEOUT_S
    )


def publish(server: FakeAlpacaServer, minute: int, symbol: str = "AAPL", open_: float = 170.0) -> None:
    """A bar at 09:30 + ``minute`` New York time with a one-dollar range around ``open_``."""
    when = f"2019-02-11 09:{30 + minute:02d}"
    server.publish_bar(symbol, when, open_, open_ + 0.5, open_ - 0.5, open_ + 0.1, 10_000)


# ------------------------------------------------------------------------------------------- retry policy


def test_call_with_retries_backs_off_with_seeded_jitter_and_gives_up():
    policy = RetryPolicy(max_attempts=4, base_delay_s=0.2, max_delay_s=0.5, jitter=0.1, seed=3)
    waits: list[float] = []
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 4:
            raise TransientBrokerError(f"failure {len(calls)}")
        return "done"

    assert call_with_retries(flaky, policy, sleep=waits.append) == "done"
    assert waits == policy.delays() == dataclasses.replace(policy).delays()  # seeded: reproducible
    for wait, base in zip(waits, (0.2, 0.4, 0.5), strict=True):
        assert base * 0.9 <= wait <= min(base * 1.1, 0.5)
    assert waits != RetryPolicy(max_attempts=4, base_delay_s=0.2, max_delay_s=0.5, seed=4).delays()

    retried = []
    with pytest.raises(TransientBrokerError, match="failure 3"):
        calls.clear()
        call_with_retries(
            flaky, RetryPolicy(max_attempts=3), sleep=lambda _: None, on_retry=lambda *a: retried.append(a[0])
        )
    assert len(calls) == 3 and retried == [1, 2]

    def refused() -> None:
        calls.append(1)
        raise OrderRejected("no")

    calls.clear()
    with pytest.raises(OrderRejected):
        call_with_retries(refused, policy, sleep=lambda _: None)
    assert len(calls) == 1  # only transient errors are retried


# ------------------------------------------------------------------------------------------- round trips


def test_account_positions_and_orders_round_trip(server, broker):
    assert isinstance(broker, Broker)
    account = broker.account()
    assert (account.cash, account.equity, account.buying_power) == (100_000.0, 100_000.0, 100_000.0)
    assert broker.positions() == {} and broker.open_orders() == []

    publish(server, 1, open_=170.0)
    submitted = broker.submit_order(OrderRequest("buy-aapl", "AAPL", "buy", 10))
    assert submitted.is_open and submitted.filled_qty == 0 and submitted.filled_avg_price is None
    assert [o.client_order_id for o in broker.open_orders()] == ["buy-aapl"]

    publish(server, 2, open_=171.0)  # fills at the open of the next bar, not at the bar it was sent after
    filled = broker.get_order("buy-aapl")
    assert (filled.status, filled.filled_qty, filled.filled_avg_price) == ("filled", 10.0, 171.0)
    assert filled.broker_order_id == submitted.broker_order_id == server.orders[0]["id"]
    assert filled.updated_at == server.fills[0]["timestamp"]
    assert broker.positions() == {"AAPL": 10.0}
    account = broker.account()
    assert account.cash == pytest.approx(100_000.0 - 1_710.0)
    assert account.equity == pytest.approx(account.cash + 10 * 171.1)
    assert broker.get_order("never-sent") is None

    broker.submit_order(OrderRequest("limit-sell", "AAPL", "sell", 4, "limit", 500.0))
    assert broker.cancel_all_orders() == 1 and broker.open_orders() == []
    assert broker.get_order("limit-sell").status == "canceled"

    broker.close_all_positions()
    publish(server, 3)
    assert broker.positions() == {}
    assert server.orders[-1]["side"] == "sell" and server.orders[-1]["status"] == "filled"


def test_limit_orders_fill_only_when_a_bar_trades_through(server, broker):
    publish(server, 1, open_=170.0)
    broker.submit_order(OrderRequest("dip", "AAPL", "buy", 3, "limit", 169.0))
    publish(server, 2, open_=169.5)  # low 169.0 touches but does not trade through
    assert broker.get_order("dip").is_open
    publish(server, 3, open_=168.9)  # gaps below: fills at the better open
    assert broker.get_order("dip").filled_avg_price == 168.9


def test_rejected_orders_are_final(server, broker):
    with pytest.raises(OrderRejected, match="insufficient qty") as short:
        broker.submit_order(OrderRequest("short", "AAPL", "sell", 5))  # a cash account cannot short
    assert short.value.reason == "HTTP 403: insufficient qty available for order (requested: 5, available: 0)"
    publish(server, 1, open_=170.0)
    with pytest.raises(OrderRejected, match="buying power"):
        broker.submit_order(OrderRequest("huge", "AAPL", "buy", 10_000))
    assert server.route_counts["POST /v2/orders"] == 2  # no retries
    assert server.orders == []


# ---------------------------------------------------------------------------------------------- faults


def test_alpaca_py_does_not_retry_behind_the_policy(server):
    """alpaca-py would retry 429 itself after a fixed 3 s; the broker switches that off."""
    single = AlpacaPaperBroker(API_KEY, SECRET, url_override=server.url, retry=RetryPolicy(max_attempts=1))
    server.inject(429, path_prefix="/v2/account")
    with pytest.raises(TransientBrokerError, match="429"):
        single.account()
    assert server.route_counts["GET /v2/account"] == 1


def test_429_and_503_are_retried_then_succeed(server, broker):
    server.inject(429, method="GET", path_prefix="/v2/account")
    server.inject(503, method="GET", path_prefix="/v2/account")
    assert broker.account().cash == 100_000.0
    assert server.route_counts["GET /v2/account"] == 3

    server.inject(502, method="GET", path_prefix="/v2/positions", times=2)
    assert broker.positions() == {}
    assert server.route_counts["GET /v2/positions"] == 3


def test_gives_up_after_max_attempts(server, broker):
    server.inject(503, path_prefix="/v2/positions", times=100)
    with pytest.raises(TransientBrokerError, match="503"):
        broker.positions()
    assert server.route_counts["GET /v2/positions"] == FAST_RETRY.max_attempts


def test_every_request_carries_a_timeout(server):
    patient = AlpacaPaperBroker(
        API_KEY, SECRET, url_override=server.url, retry=TWO_ATTEMPTS, request_timeout_s=TIMEOUT_S
    )
    server.inject("timeout", path_prefix="/v2/account", times=100)
    with pytest.raises(TransientBrokerError, match="(?i)timeout|timed out"):
        patient.account()
    assert server.route_counts["GET /v2/account"] == 2


@pytest.mark.parametrize("fault", ["timeout", 503, 500])
def test_a_submit_the_server_processed_but_never_answered_creates_one_order(server, broker, fault):
    publish(server, 1)
    server.inject(fault, method="POST", path_prefix="/v2/orders", after_processing=True)
    state = broker.submit_order(OrderRequest("once", "AAPL", "buy", 7))
    [order] = server.orders
    assert order["client_order_id"] == "once" and state.broker_order_id == order["id"]
    assert state.qty == 7 and state.is_open
    assert server.route_counts["POST /v2/orders"] == 1  # found by its client order id: not sent again
    publish(server, 2)
    assert broker.positions() == {"AAPL": 7.0}


def test_a_submit_lost_before_the_server_saw_it_is_sent_again(server, broker):
    server.inject("timeout", method="POST", path_prefix="/v2/orders")
    state = broker.submit_order(OrderRequest("retry-me", "AAPL", "buy", 2))
    assert [o["id"] for o in server.orders] == [state.broker_order_id]
    assert server.route_counts["POST /v2/orders"] == 2
    assert server.route_counts["GET /v2/orders:by_client_order_id"] == 1


def test_a_failing_lookup_after_a_lost_reply_still_gives_one_order(server, broker):
    server.inject(503, method="POST", path_prefix="/v2/orders", after_processing=True)
    server.inject(503, method="GET", path_prefix="/v2/orders:by_client_order_id")
    state = broker.submit_order(OrderRequest("twice-unlucky", "AAPL", "buy", 1))
    # The resubmit meets Alpaca's duplicate check (422), which returns the existing order.
    assert [o["id"] for o in server.orders] == [state.broker_order_id]
    assert server.route_counts["POST /v2/orders"] == 2


def test_a_refusal_of_the_resend_after_a_lost_reply_returns_the_order_alpaca_holds(server, broker):
    # The first order took the buying power; a resend is refused for it (403), yet the order exists.
    lost = server.inject(503, method="POST", path_prefix="/v2/orders", after_processing=True)
    lookup = server.inject(503, method="GET", path_prefix="/v2/orders:by_client_order_id", after=lost)
    server.inject(403, method="POST", path_prefix="/v2/orders", after=lookup)
    state = broker.submit_order(OrderRequest("refused-resend", "AAPL", "buy", 4))
    [order] = server.orders
    assert state.broker_order_id == order["id"] and state.qty == 4
    assert server.route_counts["POST /v2/orders"] == 2


def test_a_refusal_without_an_earlier_unknown_outcome_is_final(server, broker):
    server.inject(403, method="POST", path_prefix="/v2/orders")
    with pytest.raises(OrderRejected, match="403"):
        broker.submit_order(OrderRequest("refused", "AAPL", "buy", 4))
    assert server.orders == [] and server.route_counts.get("GET /v2/orders:by_client_order_id", 0) == 0


def test_duplicate_submit_returns_the_same_order(server, broker):
    first = broker.submit_order(OrderRequest("dup", "AAPL", "buy", 3))
    again = broker.submit_order(OrderRequest("dup", "AAPL", "buy", 3))
    assert again == first and len(server.orders) == 1
    assert server.route_counts["POST /v2/orders"] == 2  # the second one got Alpaca's 422


# ------------------------------------------------------------------------------------------------ keys


def test_keys_never_show_in_repr_errors_or_logs(server, broker, caplog):
    caplog.set_level(logging.DEBUG)
    assert API_KEY not in repr(broker) and SECRET not in str(broker)
    errors: list[BaseException] = []
    server.inject(503, path_prefix="/v2/account", times=100)
    with pytest.raises(TransientBrokerError) as transient:
        broker.account()
    errors.append(transient.value)
    with pytest.raises(OrderRejected) as rejected:
        broker.submit_order(OrderRequest("no-shares", "AAPL", "sell", 1))
    errors.append(rejected.value)
    server.inject("timeout", path_prefix="/v2/positions", times=100)
    with pytest.raises(TransientBrokerError) as timed_out:
        AlpacaPaperBroker(
            API_KEY, SECRET, url_override=server.url, retry=TWO_ATTEMPTS, request_timeout_s=TIMEOUT_S
        ).positions()
    errors.append(timed_out.value)
    wrong_keys = AlpacaPaperBroker(API_KEY, "not-the-secret", url_override=server.url, retry=FAST_RETRY)
    with pytest.raises(BrokerError, match="401") as unauthorised:
        wrong_keys.account()
    assert not isinstance(unauthorised.value, TransientBrokerError)
    errors.append(unauthorised.value)
    for error in errors:
        text = "".join(traceback.format_exception(error))
        assert API_KEY not in text and SECRET not in text
    assert caplog.records and all(
        API_KEY not in r.getMessage() and SECRET not in r.getMessage() for r in caplog.records
    )


def test_from_env_names_the_missing_variables(server, monkeypatch):
    for name in ("ALPACA_API_KEY", "APCA_API_KEY_ID", "ALPACA_SECRET_KEY", "APCA_API_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="ALPACA_API_KEY or APCA_API_KEY_ID and ALPACA_SECRET_KEY"):
        AlpacaPaperBroker.from_env(server.url)
    monkeypatch.setenv("APCA_API_KEY_ID", API_KEY)
    with pytest.raises(ValueError, match="ALPACA_SECRET_KEY") as missing:
        AlpacaPaperBroker.from_env(server.url)
    assert API_KEY not in str(missing.value)
    monkeypatch.setenv("ALPACA_SECRET_KEY", SECRET)
    assert AlpacaPaperBroker.from_env(server.url).account().cash == 100_000.0
