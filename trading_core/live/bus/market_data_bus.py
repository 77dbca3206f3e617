"""The market-data bus: one interface between a bar source (the publisher) and the live loop (a durable consumer).

Delivery is at least once: a consumer acks a bar only after the loop committed it, so a consumer killed before
its ack gets the bar again when it comes back; the loop skips a bar it already committed (its key, the bar time,
is at or before the session's last bar), so every bar is decided once. A bar is keyed ``<feed>:<bar end iso>``;
brokers that dedupe by message id (JetStream's ``Nats-Msg-Id``) drop a re-published bar.

End of a feed: the publisher closes it with an end-of-feed marker (:meth:`MarketDataBus.end_feed`), where a
consumer's iteration ends; a consumer may also stop after ``idle_timeout_s`` without a message.
"""

from __future__ import annotations

import re
import socket
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pandas as pd

from trading_core.live.sources import BarEvent

DEFAULT_FEED = "bars"
FEED_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Durable consumer names may not hold '.', '*', '>' or whitespace: session ids may hold '.'.
CONSUMER_NAME_FORBIDDEN = re.compile(r"[^A-Za-z0-9_-]")


class BusUnavailable(RuntimeError):
    """The broker does not answer; the message names the URL in one line."""


@dataclass(frozen=True)
class BusSettings:
    """How a broker-backed bus behaves.

    :param ack_wait_s: a delivered bar not acked for this long is delivered again (a crashed consumer's bar
        comes back after at most this long)
    :param idle_timeout_s: a consumer's iteration ends after this long without a message (``None``: it waits for
        the end-of-feed marker)
    :param dedupe_window_s: how long the broker remembers a bar key to drop its re-publication
    :param connect_timeout_s: how long to wait for the broker to answer
    :param poll_s: one fetch's wait for the next message (the idle timeout is checked between fetches)
    """

    ack_wait_s: float = 30.0
    idle_timeout_s: float | None = None
    dedupe_window_s: float = 86_400.0
    connect_timeout_s: float = 2.0
    poll_s: float = 1.0


DEFAULT_BUS_SETTINGS = BusSettings()


@dataclass(frozen=True)
class Delivery:
    """One bar handed to a consumer; :meth:`ack` once the bar is committed (never before).

    :param event: the bars
    :param key: the bar key ``<feed>:<bar end iso>``
    :param delivery_count: how often the broker handed this bar out (``None`` where the broker does not count)
    :param pending: messages after this one the consumer has not been handed yet, as the broker said at delivery
    :param acknowledge: tells the broker the bar is done
    """

    event: BarEvent
    key: str
    delivery_count: int | None
    pending: int | None
    acknowledge: Callable[[], None] = field(repr=False)

    @property
    def redelivered(self) -> bool:
        """Whether the broker handed this bar out before (``False`` where it does not count)."""
        return self.delivery_count is not None and self.delivery_count > 1

    def ack(self) -> None:
        self.acknowledge()


def bar_key(feed: str, timestamp: pd.Timestamp) -> str:
    """The key of a feed's bar: ``<feed>:<bar end, ISO 8601 UTC>``, the message id brokers dedupe by.

    :param feed: the feed's name
    :param timestamp: the bar's end
    """
    return f"{feed}:{pd.Timestamp(timestamp).tz_convert('UTC').isoformat()}"


def end_of_feed_key(feed: str, last: pd.Timestamp | None) -> str:
    """The end marker's key: after the feed's last bar, so a replay published twice is ended once."""
    return f"{bar_key(feed, last) if last is not None else feed + ':start'}:end-of-feed"


def check_feed_name(feed: str) -> str:
    """``feed`` when it is a valid feed name (letters, digits, ``_`` and ``-``; it names streams and topics).

    :raises ValueError: it is not
    """
    if not FEED_NAME.fullmatch(feed):
        raise ValueError(f"feed name {feed!r}: use letters, digits, '_' and '-' (64 at most)")
    return feed


def consumer_name(consumer: str) -> str:
    """A durable consumer name brokers accept (``.`` and other reserved characters become ``_``)."""
    if not consumer:
        raise ValueError("a durable consumer needs a name")
    return CONSUMER_NAME_FORBIDDEN.sub("_", consumer)


def require_listening(url: str, host: str, port: int, timeout_s: float, what: str) -> None:
    """Fail fast, in one line naming ``url``, when nothing listens at ``host:port``.

    :raises BusUnavailable: the connection was refused or timed out
    """
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as error:
        raise BusUnavailable(f"no {what} answers at {url} ({error.strerror or error})") from None


def host_and_port(url: str, default_port: int) -> tuple[str, int]:
    """The host and port of a broker URL such as ``nats://127.0.0.1:4222`` or ``kafka://host:9092``."""
    parts = urlsplit(url if "://" in url else f"tcp://{url}")
    return parts.hostname or "127.0.0.1", parts.port or default_port


class MarketDataBus(ABC):
    """Bars of one feed between a publisher and durable consumers (at least once, in publication order).

    :param feed: the feed's name (a stream or topic per feed)
    """

    url: str

    def __init__(self, feed: str) -> None:
        self.feed = check_feed_name(feed)
        self.last_published: pd.Timestamp | None = None

    @abstractmethod
    def publish(self, event: BarEvent) -> bool:
        """Publish a bar under its key; ``False`` when the broker dropped it as a re-publication."""

    @abstractmethod
    def end_feed(self) -> None:
        """Publish the end-of-feed marker: consumers' iterations end there."""

    @abstractmethod
    def consume(self, consumer: str) -> Iterator[Delivery]:
        """The bars the durable consumer ``consumer`` has not acked, in publication order, one unacked at a time
        (an unacked bar blocks the next: after a crash it comes back first), until the end-of-feed marker.

        :param consumer: the durable consumer's name (a session id): a resumed consumer continues where it acked
        """

    @abstractmethod
    def lag(self, consumer: str) -> int:
        """Messages published that ``consumer`` has not acked yet (delivered but unacked ones included)."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection (unacked bars stay with the broker)."""

    def __enter__(self) -> MarketDataBus:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
