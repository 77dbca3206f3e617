"""One interface for every broker: order requests and states, fills, account snapshots, errors and retries.

Every broker (the local simulated one, Alpaca paper trading) speaks :class:`Broker`. Orders carry a
client order id derived from the decision (:func:`make_client_order_id`), so a restarted process re-submits
the same id and the broker's idempotency keeps it from trading twice.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar, runtime_checkable

import pandas as pd

Side = Literal["buy", "sell"]
OrderType = Literal["market", "limit"]
OrderStatus = Literal["new", "accepted", "partially_filled", "filled", "canceled", "rejected", "expired"]

SIDES: tuple[str, ...] = ("buy", "sell")
ORDER_TYPES: tuple[str, ...] = ("market", "limit")
ORDER_STATUSES: tuple[str, ...] = (
    "new",
    "accepted",
    "partially_filled",
    "filled",
    "canceled",
    "rejected",
    "expired",
)
OPEN_STATUSES: frozenset[str] = frozenset({"new", "accepted", "partially_filled"})
CLIENT_ORDER_ID_LENGTH = 48

T = TypeVar("T")


def utc_timestamp(value: pd.Timestamp | str) -> pd.Timestamp:
    """A timezone-aware timestamp converted to UTC.

    Naive timestamps are refused: the project's intraday files are US/Eastern wall-clock times, and silently
    reading them as UTC would shift every fill by hours.

    :param value: a timezone-aware timestamp (or an ISO string with an offset)
    """
    timestamp = pd.Timestamp(value)
    if timestamp.tzinfo is None:
        raise ValueError(f"timestamp {timestamp} has no timezone; localize it first")
    return timestamp.tz_convert("UTC")


# ----------------------------------------------------------------------------------------------------------
# Orders, fills, account
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OrderRequest:
    """An order to submit.

    :param client_order_id: the caller's id for the order; brokers never create two orders for one id
    :param symbol: ticker
    :param side: ``buy`` or ``sell``
    :param qty: shares, ``> 0``
    :param order_type: ``market`` or ``limit``
    :param limit_price: limit price, required for (and only for) limit orders
    """

    client_order_id: str
    symbol: str
    side: Side
    qty: float
    order_type: OrderType = "market"
    limit_price: float | None = None

    def __post_init__(self) -> None:
        if not self.client_order_id:
            raise ValueError("client_order_id must not be empty")
        if not self.symbol:
            raise ValueError("symbol must not be empty")
        if self.side not in SIDES:
            raise ValueError(f"side must be 'buy' or 'sell', got {self.side!r}")
        # `not qty > 0` also rejects NaN.
        if not (math.isfinite(self.qty) and self.qty > 0):
            raise ValueError(f"qty must be a positive number, got {self.qty!r}")
        if self.order_type not in ORDER_TYPES:
            raise ValueError(f"order_type must be 'market' or 'limit', got {self.order_type!r}")
        if self.order_type == "limit":
            if self.limit_price is None or not (math.isfinite(self.limit_price) and self.limit_price > 0):
                raise ValueError(f"a limit order needs a positive limit_price, got {self.limit_price!r}")
        elif self.limit_price is not None:
            raise ValueError("a market order takes no limit_price")

    @property
    def signed_qty(self) -> float:
        """Shares with the side's sign: ``+`` buys, ``-`` sells."""
        return self.qty if self.side == "buy" else -self.qty


@dataclass(frozen=True)
class OrderState:
    """An order as the broker knows it.

    :param client_order_id: the caller's id
    :param broker_order_id: the broker's own id
    :param symbol: ticker
    :param side: ``buy`` or ``sell``
    :param qty: ordered shares
    :param filled_qty: shares filled so far
    :param filled_avg_price: average fill price, ``None`` before any fill
    :param status: lifecycle state; ``new``, ``accepted`` and ``partially_filled`` are open
    :param submitted_at: when the broker accepted the order (UTC)
    :param updated_at: last change (UTC)
    """

    client_order_id: str
    broker_order_id: str
    symbol: str
    side: Side
    qty: float
    filled_qty: float
    filled_avg_price: float | None
    status: OrderStatus
    submitted_at: pd.Timestamp
    updated_at: pd.Timestamp

    @property
    def is_open(self) -> bool:
        """Whether the order can still fill."""
        return self.status in OPEN_STATUSES

    @property
    def signed_filled_qty(self) -> float:
        """Filled shares with the side's sign: ``+`` bought, ``-`` sold."""
        return self.filled_qty if self.side == "buy" else -self.filled_qty


@dataclass(frozen=True)
class Fill:
    """One execution: shares, price and the costs paid, in currency.

    :param client_order_id: the order it belongs to
    :param symbol: ticker
    :param side: ``buy`` or ``sell``
    :param qty: shares, ``> 0``
    :param price: execution price per share (costs of spread and impact included)
    :param commission: broker commission
    :param spread_cost: half-spread paid
    :param impact_cost: market impact paid
    :param filled_at: execution time (UTC)
    """

    client_order_id: str
    symbol: str
    side: Side
    qty: float
    price: float
    commission: float
    spread_cost: float
    impact_cost: float
    filled_at: pd.Timestamp


@dataclass(frozen=True)
class AccountSnapshot:
    """Cash, marked-to-market equity and buying power, in currency."""

    cash: float
    equity: float
    buying_power: float


@dataclass(frozen=True)
class Bar:
    """One OHLCV bar of one symbol.

    :param open: first trade price
    :param high: highest trade price
    :param low: lowest trade price
    :param close: last trade price
    :param volume: traded shares, ``>= 0``
    """

    open: float
    high: float
    low: float
    close: float
    volume: float

    def __post_init__(self) -> None:
        prices = (self.open, self.high, self.low, self.close)
        if not all(math.isfinite(p) and p > 0 for p in prices):
            raise ValueError(f"bar prices must be positive numbers, got {prices}")
        if not self.low <= self.high:
            raise ValueError(f"bar low {self.low} is above its high {self.high}")
        if not (math.isfinite(self.volume) and self.volume >= 0):
            raise ValueError(f"bar volume must be a non-negative number, got {self.volume!r}")


@dataclass(frozen=True)
class Quote:
    """The best bid and offer (NBBO) of one symbol at one time.

    :param bid: best bid price
    :param ask: best ask price, ``>= bid``
    :param bid_size: shares bid at ``bid``, ``>= 0``
    :param ask_size: shares offered at ``ask``, ``>= 0``
    :param timestamp: when the quote was set (UTC); ``None`` when the source gives no time
    """

    bid: float
    ask: float
    bid_size: float = 0.0
    ask_size: float = 0.0
    timestamp: pd.Timestamp | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.bid) and math.isfinite(self.ask) and 0 < self.bid <= self.ask):
            raise ValueError(f"a quote needs 0 < bid <= ask, got bid {self.bid} ask {self.ask}")
        if not all(math.isfinite(s) and s >= 0 for s in (self.bid_size, self.ask_size)):
            raise ValueError(f"quote sizes must be non-negative, got {self.bid_size}, {self.ask_size}")

    @property
    def mid(self) -> float:
        return 0.5 * (self.bid + self.ask)


# ----------------------------------------------------------------------------------------------------------
# The interface
# ----------------------------------------------------------------------------------------------------------


class BrokerError(Exception):
    """A broker refused or failed a request."""


class TransientBrokerError(BrokerError):
    """A failure worth retrying: rate limit (429), server error (5xx), timeout or lost connection."""


class OrderRejected(BrokerError):
    """The broker refused an order (invalid, unknown symbol, insufficient funds...): a final verdict on it.

    :param message: one line naming the order and the refusal
    :param reason: the broker's own words (e.g. ``HTTP 403: insufficient buying power``); the message when omitted
    """

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


@runtime_checkable
class Broker(Protocol):
    """What the trading loop needs from a broker."""

    name: str

    def account(self) -> AccountSnapshot:
        """Cash, equity and buying power now."""
        ...

    def positions(self) -> dict[str, float]:
        """Signed shares per symbol; symbols without a position are left out."""
        ...

    def submit_order(self, request: OrderRequest) -> OrderState:
        """Submit an order. Idempotent on ``client_order_id``: a second submit of the same id returns the
        existing order and never creates a second one.

        Only :class:`OrderRejected` is a verdict on the order. Any other :class:`BrokerError` (a timeout, a lost
        connection, 5xx or 429 after the retries) leaves its outcome unknown: the broker may hold it, so the
        caller asks :meth:`get_order` later instead of deciding.

        :param request: the order
        :raises OrderRejected: the broker refused the order
        """
        ...

    def get_order(self, client_order_id: str) -> OrderState | None:
        """The order with this client order id, ``None`` when the broker has none.

        :param client_order_id: the caller's id
        """
        ...

    def open_orders(self) -> list[OrderState]:
        """Orders that can still fill."""
        ...

    def cancel_all_orders(self) -> int:
        """Cancel every open order; returns how many were canceled."""
        ...

    def close_all_positions(self) -> None:
        """Cancel open orders and liquidate every position (the kill switch)."""
        ...


# ----------------------------------------------------------------------------------------------------------
# Client order ids and retries
# ----------------------------------------------------------------------------------------------------------


def make_client_order_id(session_id: str, decision_time: pd.Timestamp, symbol: str, side: str) -> str:
    """A deterministic client order id for one decision, so a restarted process re-derives the same id.

    The id is ``rl-`` plus the first 45 hex digits of a SHA-256 over the inputs: 48 characters of
    ``[a-z0-9-]``, within every broker's limits. The decision time enters as UTC nanoseconds, so the same
    instant written in another timezone gives the same id.

    :param session_id: the trading session (one per strategy deployment)
    :param decision_time: when the decision was taken, timezone-aware
    :param symbol: ticker
    :param side: ``buy`` or ``sell``
    """
    if not session_id:
        raise ValueError("session_id must not be empty")
    if side not in SIDES:
        raise ValueError(f"side must be 'buy' or 'sell', got {side!r}")
    instant = utc_timestamp(decision_time).value
    # The unit separator cannot appear in any of the parts, so different splits cannot collide.
    key = "\x1f".join((session_id, str(instant), symbol, side))
    prefix = "rl-"
    digest = hashlib.sha256(key.encode()).hexdigest()
    return prefix + digest[: CLIENT_ORDER_ID_LENGTH - len(prefix)]


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with seeded jitter for :class:`TransientBrokerError`.

    The wait before retry ``k`` (1-based) is ``min(max_delay_s, base_delay_s * 2**(k-1))`` scaled by a factor
    drawn uniformly from ``[1 - jitter, 1 + jitter]``, then capped at ``max_delay_s``. Processes sharing an
    account should use different seeds so their retries do not line up.

    :param max_attempts: calls in all, the first one included
    :param base_delay_s: wait before the first retry
    :param max_delay_s: longest wait
    :param jitter: relative spread of the waits
    :param seed: seed of the jitter
    """

    max_attempts: int = 5
    base_delay_s: float = 0.2
    max_delay_s: float = 5.0
    jitter: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if not (self.base_delay_s >= 0 and self.max_delay_s >= 0):
            raise ValueError("delays must be non-negative")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be within [0, 1], got {self.jitter}")

    def delays(self) -> list[float]:
        """The waits before each retry, ``max_attempts - 1`` of them."""
        rng = random.Random(self.seed)
        waits = []
        for retry in range(1, self.max_attempts):
            wait = min(self.max_delay_s, self.base_delay_s * 2.0 ** (retry - 1))
            wait *= 1.0 + self.jitter * rng.uniform(-1.0, 1.0)
            waits.append(min(self.max_delay_s, max(0.0, wait)))
        return waits


def call_with_retries(
    fn: Callable[[], T],
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[int, TransientBrokerError, float], None] | None = None,
) -> T:
    """Call ``fn`` until it succeeds, retrying only :class:`TransientBrokerError`.

    :param fn: the call
    :param policy: attempts and waits
    :param sleep: how to wait (tests pass a recorder)
    :param on_retry: called as ``on_retry(attempt, error, delay)`` before each wait; ``attempt`` is the failed
        attempt's number, starting at 1
    :return: ``fn``'s result
    :raises TransientBrokerError: the last failure, after ``max_attempts`` calls
    """
    delays = policy.delays()
    for attempt in range(1, policy.max_attempts + 1):
        try:
            return fn()
        except TransientBrokerError as error:
            if attempt == policy.max_attempts:
                raise
            delay = delays[attempt - 1]
            if on_retry is not None:
                on_retry(attempt, error, delay)
            sleep(delay)
    raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover
