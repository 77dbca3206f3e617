"""The bus on NATS JetStream: a stream per feed, a durable pull consumer per session, explicit acks.

nats-py is asyncio; its event loop runs in a thread of its own and this class offers blocking calls, so the
(synchronous) live loop consumes it like any iterator. The consumer lets one bar be unacked at a time
(``max_ack_pending=1``): after a crash the unacked bar is redelivered (after ``ack_wait``) before any later one,
so the bars reach the loop in order and none is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

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
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
NATS_PORT = 4222
SUBJECT_PREFIX = "market.bars"
MSG_ID_HEADER = "Nats-Msg-Id"
END_OF_FEED_HEADER = "Rl-Trading-End-Of-Feed"
# Beyond one call's own timeout, how long to wait for the loop thread to hand its answer back.
CALL_MARGIN_S = 5.0
T = TypeVar("T")


def stream_name(feed: str) -> str:
    """The JetStream stream of a feed."""
    return f"MARKET_BARS_{feed}"


def subject_of(feed: str) -> str:
    """The subject a feed's bars are published on."""
    return f"{SUBJECT_PREFIX}.{feed}"


class NatsJetStreamBus(MarketDataBus):
    """A feed's bars on a JetStream stream (file storage, publications deduped by bar key).

    :param feed: the feed's name: stream ``MARKET_BARS_<feed>``, subject ``market.bars.<feed>``
    :param url: the NATS server
    :param stream: the stream's name (default from the feed)
    :param settings: ack wait, idle timeout, dedupe window, timeouts
    :raises BusUnavailable: no NATS server with JetStream answers at ``url``
    """

    def __init__(
        self,
        feed: str,
        url: str = DEFAULT_NATS_URL,
        stream: str | None = None,
        settings: BusSettings = DEFAULT_BUS_SETTINGS,
    ) -> None:
        super().__init__(feed)
        self.url, self.settings = url, settings
        self.stream = stream or stream_name(self.feed)
        self.subject = subject_of(self.feed)
        host, port = host_and_port(url, NATS_PORT)
        require_listening(url, host, port, settings.connect_timeout_s, "NATS server")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"nats-{self.feed}", daemon=True)
        self._thread.start()
        try:
            self._client = self._call(self._connect(), settings.connect_timeout_s)
            self._js = self._client.jetstream(timeout=settings.connect_timeout_s)
            self._call(self._ensure_stream(), settings.connect_timeout_s)
        except BusUnavailable:
            self._stop_loop()
            raise
        except Exception as error:  # noqa: BLE001 - any failure to set up is one line naming the URL
            self._stop_loop()
            raise BusUnavailable(
                f"NATS JetStream at {url} did not answer: {type(error).__name__}: {error}"
            ) from None

    def __repr__(self) -> str:
        return f"NatsJetStreamBus(feed={self.feed!r}, url={self.url!r}, stream={self.stream!r})"

    # ------------------------------------------------------------------------------------- the loop thread

    def _call(self, coroutine: Coroutine[Any, Any, T], timeout_s: float) -> T:
        """Run ``coroutine`` on the bus's event loop and wait for its result (its exception is raised here)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout_s + CALL_MARGIN_S)

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(CALL_MARGIN_S)

    async def _connect(self):
        import nats

        async def log_error(error: Exception) -> None:  # nats-py reports reconnects here; keep them quiet
            logger.debug(f"NATS {self.url}: {type(error).__name__}: {error}")

        return await nats.connect(
            self.url, connect_timeout=self.settings.connect_timeout_s, error_cb=log_error, name="rl-trading"
        )

    async def _ensure_stream(self) -> None:
        from nats.js.api import StorageType, StreamConfig
        from nats.js.errors import NotFoundError

        try:
            await self._js.stream_info(self.stream)
        except NotFoundError:
            config = StreamConfig(
                name=self.stream,
                subjects=[self.subject],
                storage=StorageType.FILE,
                duplicate_window=self.settings.dedupe_window_s,
            )
            await self._js.add_stream(config)

    # ----------------------------------------------------------------------------------------- publishing

    def publish(self, event: BarEvent) -> bool:
        key = bar_key(self.feed, event.timestamp)
        ack = self._call(self._publish(encode_event(event), {MSG_ID_HEADER: key}), self.settings.poll_s)
        self.last_published = event.timestamp
        return not ack.duplicate

    def end_feed(self) -> None:
        headers = {MSG_ID_HEADER: end_of_feed_key(self.feed, self.last_published), END_OF_FEED_HEADER: "1"}
        self._call(self._publish(b"", headers), self.settings.poll_s)

    async def _publish(self, payload: bytes, headers: dict[str, str]):
        return await self._js.publish(
            self.subject, payload, timeout=self.settings.poll_s, stream=self.stream, headers=headers
        )

    # ------------------------------------------------------------------------------------------ consuming

    async def _subscribe(self, durable: str):
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        config = ConsumerConfig(
            durable_name=durable,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.settings.ack_wait_s,
            max_ack_pending=1,  # in order after a crash: the unacked bar comes back before any later one
        )
        return await self._js.pull_subscribe(self.subject, durable=durable, stream=self.stream, config=config)

    def consume(self, consumer: str) -> Iterator[Delivery]:
        import nats.errors

        durable = consumer_name(consumer)
        subscription = self._call(self._subscribe(durable), self.settings.connect_timeout_s)
        poll, limit = self.settings.poll_s, self.settings.idle_timeout_s
        idle = 0.0
        try:
            while True:
                try:
                    (message,) = self._call(subscription.fetch(1, timeout=poll), poll)
                except nats.errors.TimeoutError:
                    idle += poll
                    if limit is not None and idle >= limit:
                        return
                    continue
                idle = 0.0
                headers = message.headers or {}
                if headers.get(END_OF_FEED_HEADER):
                    self._ack(message)
                    return
                metadata = message.metadata
                yield Delivery(
                    decode_event(message.data),
                    headers.get(MSG_ID_HEADER, ""),
                    metadata.num_delivered,
                    metadata.num_pending,
                    lambda message=message: self._ack(message),
                )
        finally:
            if self._loop.is_running():
                try:
                    self._call(subscription.unsubscribe(), self.settings.connect_timeout_s)
                except Exception as error:  # noqa: BLE001 - the durable consumer stays on the server anyway
                    logger.debug(f"unsubscribing {durable}: {type(error).__name__}")

    def _ack(self, message) -> None:
        # Acked synchronously: once it returns, the broker will not hand the bar out again.
        self._call(message.ack_sync(timeout=self.settings.connect_timeout_s), self.settings.connect_timeout_s)

    def lag(self, consumer: str) -> int:
        return self._call(self._lag(consumer_name(consumer)), self.settings.connect_timeout_s)

    async def _lag(self, durable: str) -> int:
        from nats.js.errors import NotFoundError

        try:
            info = await self._js.consumer_info(self.stream, durable)
        except NotFoundError:  # a consumer yet to start has every message ahead of it
            return int((await self._js.stream_info(self.stream)).state.messages)
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)

    def delete_stream(self) -> None:
        """Delete the feed's stream with its bars and consumers (tests, a feed started over)."""
        from nats.js.errors import NotFoundError

        async def delete() -> None:
            with contextlib.suppress(NotFoundError):
                await self._js.delete_stream(self.stream)

        self._call(delete(), self.settings.connect_timeout_s)

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        try:
            self._call(self._client.drain(), self.settings.connect_timeout_s)
        except Exception as error:  # noqa: BLE001 - closing a broken connection is not an error
            logger.debug(f"closing NATS {self.url}: {type(error).__name__}")
        self._stop_loop()
