"""The market-data bus between bar sources and the live loop: embedded, NATS JetStream or Kafka."""

from __future__ import annotations

from urllib.parse import urlsplit

from trading_core.live.bus.bar_codec import BarCodecError, decode_event, encode_event
from trading_core.live.bus.bus_feed import BusFeed, FeedCounts
from trading_core.live.bus.embedded_bus import EMBEDDED_URL, EmbeddedBus
from trading_core.live.bus.jetstream_bus import DEFAULT_NATS_URL, NatsJetStreamBus
from trading_core.live.bus.kafka_bus import DEFAULT_KAFKA_BOOTSTRAP, KafkaBus
from trading_core.live.bus.market_data_bus import (
    DEFAULT_BUS_SETTINGS,
    DEFAULT_FEED,
    BusSettings,
    BusUnavailable,
    Delivery,
    MarketDataBus,
    bar_key,
)

__all__ = [
    "DEFAULT_FEED",
    "DEFAULT_KAFKA_BOOTSTRAP",
    "DEFAULT_NATS_URL",
    "EMBEDDED_URL",
    "BarCodecError",
    "BusFeed",
    "BusSettings",
    "BusUnavailable",
    "Delivery",
    "EmbeddedBus",
    "FeedCounts",
    "KafkaBus",
    "MarketDataBus",
    "NatsJetStreamBus",
    "bar_key",
    "bus_for",
    "decode_event",
    "encode_event",
]


def bus_for(url: str, feed: str, settings: BusSettings = DEFAULT_BUS_SETTINGS) -> MarketDataBus:
    """The bus a URL names: ``embedded``, ``nats://host:port`` or ``kafka://host:port[,host:port...]``.

    :param url: the bus URL
    :param feed: the feed's name
    :param settings: ack wait, idle timeout, dedupe window, timeouts
    :raises ValueError: an unknown scheme
    :raises BusUnavailable: the broker does not answer
    """
    scheme = urlsplit(url).scheme if "://" in url else url
    if scheme == EMBEDDED_URL:
        return EmbeddedBus(feed, settings)
    if scheme == "nats":
        return NatsJetStreamBus(feed, url, settings=settings)
    if scheme == "kafka":
        return KafkaBus(feed, url.split("://", 1)[1].rstrip("/"), settings=settings)
    raise ValueError(f"bus URL {url!r}: use embedded, nats://host:port or kafka://host:port")
