"""The bus on Kafka (confluent-kafka): a single-partition topic per feed (one order), a consumer group per
durable consumer, offsets committed by hand once a bar is committed (``enable.auto.commit`` off).

Kafka drops no re-published bar (no broker-side dedupe by key): the loop's bar-time check skips it. It does not
count deliveries either (``delivery_count`` is ``None``). A bar handed out and not acked is sought back to, so
it comes again before any later one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from trading_core.live.bus.bar_codec import decode_event, encode_event
from trading_core.live.bus.market_data_bus import (
    DEFAULT_BUS_SETTINGS,
    BusSettings,
    BusUnavailable,
    Delivery,
    MarketDataBus,
    bar_key,
    consumer_name,
    end_of_feed_key,
    host_and_port,
    require_listening,
)
from trading_core.live.sources import BarEvent

logger = logging.getLogger(__name__)
DEFAULT_KAFKA_BOOTSTRAP = "127.0.0.1:9092"
KAFKA_PORT = 9092
TOPIC_PREFIX = "market.bars"
END_OF_FEED_HEADER = "rl-trading-end-of-feed"
PARTITION = 0  # one partition: the bars keep their order
# A killed member's partition is handed on after this long: a restarted consumer waits at most this.
SESSION_TIMEOUT_MS = 6_000


def topic_of(feed: str) -> str:
    """The Kafka topic of a feed."""
    return f"{TOPIC_PREFIX}.{feed}"


class KafkaBus(MarketDataBus):
    """A feed's bars on a Kafka topic.

    :param feed: the feed's name: topic ``market.bars.<feed>``
    :param bootstrap_servers: ``host:port[,host:port...]``
    :param topic: the topic's name (default from the feed)
    :param settings: idle timeout, poll and connect timeouts (``ack_wait_s`` and ``dedupe_window_s`` do not apply)
    :raises BusUnavailable: no Kafka broker answers at ``bootstrap_servers``
    """

    def __init__(
        self,
        feed: str,
        bootstrap_servers: str = DEFAULT_KAFKA_BOOTSTRAP,
        topic: str | None = None,
        settings: BusSettings = DEFAULT_BUS_SETTINGS,
    ) -> None:
        from confluent_kafka import KafkaException, Producer
        from confluent_kafka.admin import AdminClient

        super().__init__(feed)
        self.bootstrap_servers, self.settings = bootstrap_servers, settings
        self.url = f"kafka://{bootstrap_servers}"
        self.topic = topic or topic_of(self.feed)
        host, port = host_and_port(bootstrap_servers.split(",")[0], KAFKA_PORT)
        require_listening(self.url, host, port, settings.connect_timeout_s, "Kafka broker")
        self._admin = AdminClient({"bootstrap.servers": bootstrap_servers})
        try:
            self._admin.list_topics(timeout=settings.connect_timeout_s)
            self._ensure_topic()
        except KafkaException as error:
            raise BusUnavailable(f"Kafka at {self.url} did not answer: {error}") from None
        self._producer = Producer({"bootstrap.servers": bootstrap_servers, "enable.idempotence": True})

    def __repr__(self) -> str:
        return f"KafkaBus(feed={self.feed!r}, url={self.url!r}, topic={self.topic!r})"

    def _ensure_topic(self) -> None:
        from confluent_kafka import KafkaError, KafkaException
        from confluent_kafka.admin import NewTopic

        future = self._admin.create_topics([NewTopic(self.topic, num_partitions=1, replication_factor=1)])[
            self.topic
        ]
        try:
            future.result(self.settings.connect_timeout_s)
        except KafkaException as error:
            if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise

    def _produce(self, key: str, payload: bytes, headers: list[tuple[str, bytes]]) -> None:
        errors: list[str] = []

        def delivered(error, _message) -> None:
            if error is not None:
                errors.append(str(error))

        self._producer.produce(
            self.topic, payload, key, partition=PARTITION, headers=headers, on_delivery=delivered
        )
        self._producer.flush(self.settings.connect_timeout_s)
        if errors:
            raise BusUnavailable(f"Kafka at {self.url} refused a bar: {errors[0]}")

    def publish(self, event: BarEvent) -> bool:
        self._produce(bar_key(self.feed, event.timestamp), encode_event(event), [])
        self.last_published = event.timestamp
        return True  # Kafka keeps every publication; the consumer side skips a repeated bar

    def end_feed(self) -> None:
        self._produce(end_of_feed_key(self.feed, self.last_published), b"", [(END_OF_FEED_HEADER, b"1")])

    def _consumer(self, group: str):
        from confluent_kafka import Consumer

        return Consumer(
            {
                "bootstrap.servers": self.bootstrap_servers,
                "group.id": group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": SESSION_TIMEOUT_MS,
            }
        )

    def consume(self, consumer: str) -> Iterator[Delivery]:
        from confluent_kafka import TopicPartition

        group = consumer_name(consumer)
        kafka = self._consumer(group)
        kafka.subscribe([self.topic])
        poll, limit = self.settings.poll_s, self.settings.idle_timeout_s
        idle = 0.0
        try:
            while True:
                message = kafka.poll(poll)
                if message is None:
                    idle += poll
                    if limit is not None and idle >= limit:
                        return
                    continue
                if message.error() is not None:
                    logger.warning(f"Kafka {self.url} {self.topic}: {message.error()}")
                    continue
                idle = 0.0
                if any(name == END_OF_FEED_HEADER for name, _ in message.headers() or []):
                    kafka.commit(message=message, asynchronous=False)
                    return
                acked: list[bool] = []

                def ack(message=message, acked=acked) -> None:
                    kafka.commit(message=message, asynchronous=False)
                    acked.append(True)

                _low, high = kafka.get_watermark_offsets(
                    TopicPartition(self.topic, message.partition()), cached=True
                )
                yield Delivery(
                    decode_event(message.value()),
                    (message.key() or b"").decode(),
                    None,
                    max(high - message.offset() - 1, 0),
                    ack,
                )
                if not acked:  # handed out again before anything later, as the other buses do
                    kafka.seek(TopicPartition(self.topic, message.partition(), message.offset()))
        finally:
            kafka.close()

    def lag(self, consumer: str) -> int:
        from confluent_kafka import TopicPartition

        # A consumer of the group that never joins it: asking never moves the group's partitions.
        kafka = self._consumer(consumer_name(consumer))
        try:
            partition = TopicPartition(self.topic, PARTITION)
            (committed,) = kafka.committed([partition], timeout=self.settings.connect_timeout_s)
            low, high = kafka.get_watermark_offsets(partition, timeout=self.settings.connect_timeout_s)
            start = committed.offset if committed.offset >= 0 else low
            return max(high - start, 0)
        finally:
            kafka.close()

    def delete_topic(self) -> None:
        """Delete the feed's topic (tests, a feed started over)."""
        self._admin.delete_topics([self.topic])[self.topic].result(self.settings.connect_timeout_s)

    def close(self) -> None:
        self._producer.flush(self.settings.connect_timeout_s)
