"""Brokers behind one interface: the local simulated broker (the default) and Alpaca paper trading.

``AlpacaPaperBroker`` is imported on first use, so the simulated broker does not pay for alpaca-py's import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trading_core.broker.base import (
    AccountSnapshot,
    Bar,
    Broker,
    BrokerError,
    Fill,
    OrderRejected,
    OrderRequest,
    OrderState,
    RetryPolicy,
    TransientBrokerError,
    call_with_retries,
    make_client_order_id,
)
from trading_core.broker.simulated import SimulatedBroker

if TYPE_CHECKING:
    from trading_core.broker.alpaca import AlpacaPaperBroker

__all__ = [
    "AccountSnapshot",
    "AlpacaPaperBroker",
    "Bar",
    "Broker",
    "BrokerError",
    "Fill",
    "OrderRejected",
    "OrderRequest",
    "OrderState",
    "RetryPolicy",
    "SimulatedBroker",
    "TransientBrokerError",
    "call_with_retries",
    "make_client_order_id",
]


def __getattr__(name: str) -> Any:
    if name == "AlpacaPaperBroker":
        from trading_core.broker.alpaca import AlpacaPaperBroker

        return AlpacaPaperBroker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
