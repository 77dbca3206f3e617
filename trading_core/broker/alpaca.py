"""Alpaca paper trading behind the :class:`~trading_core.broker.base.Broker` interface, on alpaca-py's
``TradingClient``.

Failures are sorted the way the retry policy needs: rate limits (429), server errors (5xx), timeouts and lost
connections are :class:`TransientBrokerError` and retried; other 4xx answers are final. Order submission is
idempotent on the client order id even when a request times out after Alpaca accepted it: before any retry
the order is looked up by its client order id, and Alpaca's own "client_order_id must be unique" answer
returns the existing order.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar

import pandas as pd
import requests
from alpaca.common.enums import BaseURL
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, QueryOrderStatus, TimeInForce
from alpaca.trading.models import Order
from alpaca.trading.requests import GetOrdersRequest, LimitOrderRequest, MarketOrderRequest
from requests.adapters import HTTPAdapter

from trading_core.broker.base import (
    AccountSnapshot,
    BrokerError,
    OrderRejected,
    OrderRequest,
    OrderState,
    RetryPolicy,
    TransientBrokerError,
    call_with_retries,
)

log = logging.getLogger(__name__)

ALPACA_KEY_ENV = ("ALPACA_API_KEY", "APCA_API_KEY_ID")
ALPACA_SECRET_ENV = ("ALPACA_SECRET_KEY", "APCA_API_SECRET_KEY")
TRANSIENT_STATUS = frozenset({408, 429})
DUPLICATE_ORDER_STATUS = 422
MAX_OPEN_ORDERS = 500  # Alpaca's largest page of orders

T = TypeVar("T")

# Alpaca's order statuses on the interface's smaller set. Open states that wait on Alpaca (pending_*,
# held, done_for_day until the next session...) count as accepted; `calculated` is settled below by quantity.
_STATUS = {
    "new": "new",
    "pending_new": "new",
    "accepted": "accepted",
    "accepted_for_bidding": "accepted",
    "pending_review": "accepted",
    "pending_cancel": "accepted",
    "pending_replace": "accepted",
    "held": "accepted",
    "stopped": "accepted",
    "suspended": "accepted",
    "done_for_day": "accepted",
    "partially_filled": "partially_filled",
    "filled": "filled",
    "calculated": "filled",
    "canceled": "canceled",
    "replaced": "canceled",
    "expired": "expired",
    "rejected": "rejected",
}


class _TimeoutAdapter(HTTPAdapter):
    """An adapter that gives every request a timeout unless the caller set one.

    alpaca-py calls ``Session.request`` without ``timeout=``, and requests then waits forever on a server that
    stops answering. Every request of a session passes through its mounted adapter's ``send``, so a default
    set here covers all of alpaca-py's calls without patching alpaca-py itself. ``max_retries=0`` (the
    requests default) keeps urllib3 from retrying behind the retry policy's back.

    :param timeout_s: connect and read timeout in seconds
    """

    def __init__(self, timeout_s: float) -> None:
        super().__init__(max_retries=0)
        self.timeout_s = timeout_s

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout_s
        return super().send(request, **kwargs)


class AlpacaPaperBroker:
    """Alpaca paper trading through alpaca-py's ``TradingClient``.

    The keys live only inside the client; ``repr``, logs and the errors raised here never show them.

    :param api_key: Alpaca paper API key id
    :param secret_key: Alpaca paper secret key
    :param url_override: another trading API base URL (a local fake in tests and demos)
    :param retry: retries of transient failures
    :param request_timeout_s: connect and read timeout of every HTTP request
    """

    name = "alpaca_paper"

    def __init__(
        self,
        api_key: str,
        secret_key: str,
        *,
        url_override: str | None = None,
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen, so a shared default is safe
        request_timeout_s: float = 10.0,
    ) -> None:
        if not api_key or not secret_key:
            raise ValueError("AlpacaPaperBroker needs an API key and a secret key")
        if not request_timeout_s > 0:
            raise ValueError(f"request_timeout_s must be positive, got {request_timeout_s}")
        self.url = url_override or BaseURL.TRADING_PAPER.value
        self.retry = retry
        self.request_timeout_s = request_timeout_s
        self._client = TradingClient(api_key, secret_key, paper=True, url_override=url_override)
        # alpaca-py retries 429/504 itself, sleeping a fixed 3 s each time, before our policy sees anything;
        # and a `retry_attempts=0` argument is ignored (falsy), so switch it off on the instance.
        self._client._retry = 0
        self._client._retry_codes = []
        adapter = _TimeoutAdapter(request_timeout_s)
        self._client._session.mount("https://", adapter)
        self._client._session.mount("http://", adapter)

    @classmethod
    def from_env(
        cls,
        url_override: str | None = None,
        *,
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen, so a shared default is safe
        request_timeout_s: float = 10.0,
    ) -> AlpacaPaperBroker:
        """Build the broker with keys from ``ALPACA_API_KEY`` / ``APCA_API_KEY_ID`` and ``ALPACA_SECRET_KEY`` /
        ``APCA_API_SECRET_KEY``.

        :param url_override: another trading API base URL
        :param retry: retries of transient failures
        :param request_timeout_s: timeout of every HTTP request
        """
        api_key = next((os.environ[n] for n in ALPACA_KEY_ENV if os.environ.get(n)), None)
        secret_key = next((os.environ[n] for n in ALPACA_SECRET_ENV if os.environ.get(n)), None)
        missing = [
            " or ".join(names)
            for names, v in ((ALPACA_KEY_ENV, api_key), (ALPACA_SECRET_ENV, secret_key))
            if not v
        ]
        if missing:
            raise ValueError(f"Alpaca paper trading needs {' and '.join(missing)} in the environment")
        return cls(
            api_key, secret_key, url_override=url_override, retry=retry, request_timeout_s=request_timeout_s
        )

    def __repr__(self) -> str:
        return f"AlpacaPaperBroker(url={self.url!r}, retry={self.retry!r}, request_timeout_s={self.request_timeout_s})"

    __str__ = __repr__

    # ------------------------------------------------------------------------------------------ the interface

    def account(self) -> AccountSnapshot:
        account = self._call("get account", self._client.get_account)
        return AccountSnapshot(
            cash=float(account.cash or 0.0),
            equity=float(account.equity or 0.0),
            buying_power=float(account.buying_power or 0.0),
        )

    def positions(self) -> dict[str, float]:
        held = self._call("get positions", self._client.get_all_positions)
        positions = {}
        for position in held:
            # Alpaca signs short quantities already; the side makes it explicit either way.
            qty = abs(float(position.qty)) * (-1.0 if position.side == "short" else 1.0)
            if qty != 0:
                positions[position.symbol] = qty
        return positions

    def submit_order(self, request: OrderRequest) -> OrderState:
        """Submit an order once, whatever happens on the wire.

        A transient failure may hide an order Alpaca accepted, so before retrying the order is looked up by
        its client order id; only when Alpaca has none is it submitted again. Alpaca refuses a second order
        with the same client order id (422), and that answer returns the existing order too.

        :param request: the order
        :raises OrderRejected: Alpaca refused the order
        :raises TransientBrokerError: still failing after the retry policy's attempts
        """
        order_data = _order_data(request)
        # Set once an attempt's outcome is unknown: a refusal after it (buying power the first order took) may
        # refuse a resend of an order Alpaca already holds, so the order is looked up before it counts.
        outcome_unknown = False

        def attempt() -> Order:
            nonlocal outcome_unknown
            try:
                return self._client.submit_order(order_data)
            except (APIError, requests.RequestException) as error:
                failure = self._translate(error, f"submit order {request.client_order_id}", order=True)
                duplicate = _is_duplicate(error)
                if not (duplicate or isinstance(failure, TransientBrokerError) or outcome_unknown):
                    raise failure from None
                outcome_unknown = outcome_unknown or isinstance(failure, TransientBrokerError)
            existing = self._find_order(request.client_order_id)  # transient failures here retry `attempt`
            if existing is not None:
                return existing
            if duplicate:
                raise BrokerError(
                    f"Alpaca reports order {request.client_order_id} as a duplicate but cannot find it"
                )
            raise failure

        return _order_state(call_with_retries(attempt, self.retry, on_retry=self._log_retry))

    def get_order(self, client_order_id: str) -> OrderState | None:
        order = call_with_retries(
            lambda: self._find_order(client_order_id), self.retry, on_retry=self._log_retry
        )
        return _order_state(order) if order is not None else None

    def open_orders(self) -> list[OrderState]:
        query = GetOrdersRequest(status=QueryOrderStatus.OPEN, limit=MAX_OPEN_ORDERS)
        orders = self._call("get open orders", lambda: self._client.get_orders(query))
        return [_order_state(order) for order in orders]

    def cancel_all_orders(self) -> int:
        responses = self._call("cancel all orders", self._client.cancel_orders)
        return sum(1 for response in responses if 200 <= response.status < 300)

    def close_all_positions(self) -> None:
        """Cancel open orders and liquidate every position with market orders (the kill switch).

        Retrying after a lost reply cannot sell twice: Alpaca refuses to sell shares already held for the
        first liquidation orders.
        """
        self._call("close all positions", lambda: self._client.close_all_positions(cancel_orders=True))

    # ------------------------------------------------------------------------------------------ the plumbing

    def _call(self, action: str, fn: Callable[[], T]) -> T:
        """``fn`` under the retry policy, with alpaca-py's and requests' errors translated."""

        def attempt() -> T:
            try:
                return fn()
            except (APIError, requests.RequestException) as error:
                raise self._translate(error, action) from None

        return call_with_retries(attempt, self.retry, on_retry=self._log_retry)

    def _find_order(self, client_order_id: str) -> Order | None:
        """The order with this client order id, ``None`` when Alpaca answers 404 (one attempt)."""
        try:
            return self._client.get_order_by_client_id(client_order_id)
        except APIError as error:
            if error.status_code == 404:
                return None
            raise self._translate(error, f"look up order {client_order_id}") from None
        except requests.RequestException as error:
            raise self._translate(error, f"look up order {client_order_id}") from None

    def _translate(self, error: Exception, action: str, *, order: bool = False) -> BrokerError:
        """One of the interface's errors for an alpaca-py or requests failure, its message free of keys.

        The original exception is not chained: requests' exceptions hold the prepared request, key headers
        included.
        """
        if isinstance(error, APIError):
            status = error.status_code
            reason = f"HTTP {status}: {self._redact(_api_message(error))}"
            message = f"{action} failed: {reason}"
            if status is None or status in TRANSIENT_STATUS or status >= 500:
                return TransientBrokerError(message)
            if order and status != 401:  # a bad key is not a verdict on the order
                return OrderRejected(message, reason)
            return BrokerError(message)
        message = f"{action} failed: {type(error).__name__}: {self._redact(str(error))}"
        if isinstance(
            error, requests.Timeout | requests.ConnectionError | requests.exceptions.ChunkedEncodingError
        ):
            return TransientBrokerError(message)
        return BrokerError(message)

    def _redact(self, text: str) -> str:
        # The keys live only in the client; a server echoing them back must not put them in our messages.
        for secret in (self._client._api_key, self._client._secret_key):
            if secret:
                text = text.replace(secret, "***")
        return text

    def _log_retry(self, attempt: int, error: TransientBrokerError, delay: float) -> None:
        # Messages were redacted when the error was made.
        log.warning("attempt %d failed (%s); retrying in %.2f s", attempt, error, delay)


def _order_data(request: OrderRequest) -> MarketOrderRequest | LimitOrderRequest:
    fields = {
        "symbol": request.symbol,
        "qty": request.qty,
        "side": OrderSide.BUY if request.side == "buy" else OrderSide.SELL,
        "time_in_force": TimeInForce.DAY,
        "client_order_id": request.client_order_id,
    }
    if request.order_type == "limit":
        return LimitOrderRequest(**fields, limit_price=request.limit_price)
    return MarketOrderRequest(**fields)


def _api_message(error: APIError) -> str:
    try:
        return str(error.message)
    except (ValueError, KeyError, TypeError):
        return str(error)  # not Alpaca's JSON error body


def _is_duplicate(error: Exception) -> bool:
    if not isinstance(error, APIError) or error.status_code != DUPLICATE_ORDER_STATUS:
        return False
    message = _api_message(error).lower()
    return "client_order_id" in message and "unique" in message


def _utc(value: Any) -> pd.Timestamp:
    timestamp = pd.Timestamp(value)
    return timestamp.tz_localize("UTC") if timestamp.tzinfo is None else timestamp.tz_convert("UTC")


def _order_state(order: Order) -> OrderState:
    qty = float(order.qty or 0.0)
    filled_qty = float(order.filled_qty or 0.0)
    raw_status = order.status.value if hasattr(order.status, "value") else str(order.status)
    status = _STATUS.get(raw_status)
    if status is None:
        raise BrokerError(f"unknown Alpaca order status {raw_status!r} for {order.client_order_id}")
    if status == "filled" and filled_qty < qty:
        status = "partially_filled"
    price = order.filled_avg_price
    side = order.side.value if order.side is not None else ""
    return OrderState(
        client_order_id=order.client_order_id,
        broker_order_id=str(order.id),
        symbol=order.symbol or "",
        side=side,  # type: ignore[arg-type]  # equity orders are always buy or sell
        qty=qty,
        filled_qty=filled_qty,
        filled_avg_price=float(price) if price is not None and filled_qty > 0 else None,
        status=status,  # type: ignore[arg-type]
        submitted_at=_utc(order.submitted_at),
        updated_at=_utc(order.updated_at),
    )
