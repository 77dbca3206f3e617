"""A durable consumer's deliveries as the live loop's bar events, each acked once the loop is done with its bar."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pandas as pd

from trading_core.live.bus.market_data_bus import Delivery, MarketDataBus
from trading_core.live.sources import BarEvent
from trading_core.monitoring.live_metrics import LiveMetrics


@dataclass
class FeedCounts:
    """What a consumer was handed: bars delivered, of them redelivered (handed out before), and acked."""

    delivered: int = 0
    redelivered: int = 0
    acked: int = 0


class BusFeed:
    """Iterate it as ``LiveTradingLoop.run``'s events and pass :meth:`done` as its ``on_done``: a bar is acked
    only after the loop committed it (or skipped it as already committed), so a crash never loses one.

    :param bus: the bus
    :param consumer: the durable consumer's name (the session id: a resumed session continues where it acked)
    :param metrics: where the consumer lag and the last consumed bar go (optional)
    """

    def __init__(self, bus: MarketDataBus, consumer: str, metrics: LiveMetrics | None = None) -> None:
        self.bus, self.consumer, self.metrics = bus, consumer, metrics
        self.counts = FeedCounts()
        self._unacked: dict[pd.Timestamp, Delivery] = {}

    def __iter__(self) -> Iterator[BarEvent]:
        for delivery in self.bus.consume(self.consumer):
            self.counts.delivered += 1
            self.counts.redelivered += delivery.redelivered
            self._unacked[delivery.event.timestamp] = delivery
            yield delivery.event

    def done(self, event: BarEvent) -> None:
        """Ack the delivery of ``event`` (the loop committed or skipped its bar) and update the lag gauges.

        :param event: an event this feed yielded
        """
        delivery = self._unacked.pop(event.timestamp, None)
        if delivery is None:
            return
        delivery.ack()
        self.counts.acked += 1
        if self.metrics is not None:
            self.metrics.observe_consumed(delivery.pending, event.timestamp.to_pydatetime())
