"""The in-process bus: the default where no broker runs (a replay, or a test), with the brokers' semantics."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from trading_core.live.bus.market_data_bus import (
    DEFAULT_BUS_SETTINGS,
    BusSettings,
    Delivery,
    MarketDataBus,
    bar_key,
    consumer_name,
    end_of_feed_key,
)
from trading_core.live.sources import BarEvent

EMBEDDED_URL = "embedded"


@dataclass(frozen=True)
class _Message:
    key: str
    event: BarEvent | None  # None: the end-of-feed marker


class EmbeddedBus(MarketDataBus):
    """Bars kept in a list in this process: publishers and consumers in other threads see the same feed.

    Durable consumers keep their position in this object (gone with the process); a bar handed out and not acked
    comes back at the consumer's next :meth:`consume`, with its delivery count raised.

    :param feed: the feed's name
    :param settings: ``idle_timeout_s`` ends a consumer's wait for bars (``None``: until the end-of-feed marker)
    """

    url = EMBEDDED_URL

    def __init__(self, feed: str = "embedded", settings: BusSettings = DEFAULT_BUS_SETTINGS) -> None:
        super().__init__(feed)
        self.settings = settings
        self._messages: list[_Message] = []
        self._keys: set[str] = set()
        self._acked: dict[str, int] = {}  # consumer -> messages acked (the position of the next)
        self._deliveries: dict[tuple[str, int], int] = {}
        self._changed = threading.Condition()

    def _append(self, message: _Message) -> bool:
        with self._changed:
            if message.key in self._keys:
                return False
            self._keys.add(message.key)
            self._messages.append(message)
            self._changed.notify_all()
            return True

    def publish(self, event: BarEvent) -> bool:
        self.last_published = event.timestamp
        return self._append(_Message(bar_key(self.feed, event.timestamp), event))

    def end_feed(self) -> None:
        self._append(_Message(end_of_feed_key(self.feed, self.last_published), None))

    def _ack(self, consumer: str, position: int) -> None:
        with self._changed:
            self._acked[consumer] = max(self._acked.get(consumer, 0), position + 1)

    def _next(self, consumer: str) -> int | None:
        """The position of the consumer's next message, waiting for one; ``None`` after the idle timeout."""
        limit = self.settings.idle_timeout_s
        deadline = None if limit is None else time.monotonic() + limit
        with self._changed:
            while (position := self._acked.get(consumer, 0)) >= len(self._messages):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._changed.wait(remaining)
            return position

    def consume(self, consumer: str) -> Iterator[Delivery]:
        name = consumer_name(consumer)
        while (position := self._next(name)) is not None:
            message = self._messages[position]
            if message.event is None:
                self._ack(name, position)
                return
            count = self._deliveries[name, position] = self._deliveries.get((name, position), 0) + 1
            yield Delivery(
                message.event,
                message.key,
                count,
                len(self._messages) - position - 1,
                lambda position=position: self._ack(name, position),
            )
            # Not acked before the next is asked for: the same bar comes again, as a broker's after ack_wait.

    def lag(self, consumer: str) -> int:
        with self._changed:
            return len(self._messages) - self._acked.get(consumer_name(consumer), 0)

    def close(self) -> None:
        """Nothing to release: the bars stay in this object."""
