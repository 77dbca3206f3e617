"""A bar event as JSON and back, exactly: floats are written by ``repr`` (the shortest text that reads back to the
same double), integers stay integers and timestamps keep their nanoseconds."""

from __future__ import annotations

import json
import numbers

import pandas as pd

from trading_core.broker.base import Bar, Quote
from trading_core.live.sources import BarEvent

CODEC_VERSION = 1
BAR_FIELDS = ("open", "high", "low", "close", "volume")
QUOTE_FIELDS = ("bid", "ask", "bid_size", "ask_size")


class BarCodecError(ValueError):
    """A message that is no encoded bar event; the message says why."""


def _number(value: object) -> int | float:
    # numpy integers are no Python ints for json; an integral volume stays integral through the round trip.
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    return float(value)


def _time(value: pd.Timestamp | None) -> str | None:
    return None if value is None else pd.Timestamp(value).isoformat()


def _read_time(value: str | None) -> pd.Timestamp | None:
    return None if value is None else pd.Timestamp(value)


def encode_event(event: BarEvent) -> bytes:
    """The event as UTF-8 JSON (bars, quotes and ``received_at`` included).

    :param event: the bars of one timestamp
    """
    document = {
        "v": CODEC_VERSION,
        "timestamp": _time(event.timestamp),
        "bars": {s: [_number(getattr(b, f)) for f in BAR_FIELDS] for s, b in event.bars.items()},
        "quotes": {
            s: [*(_number(getattr(q, f)) for f in QUOTE_FIELDS), _time(q.timestamp)]
            for s, q in event.quotes.items()
        },
        "received_at": _time(event.received_at),
    }
    return json.dumps(document, separators=(",", ":"), allow_nan=False).encode()


def decode_event(payload: bytes) -> BarEvent:
    """The event :func:`encode_event` wrote.

    :param payload: the message body
    :raises BarCodecError: the body is no encoded bar event of this version
    """
    try:
        document = json.loads(payload)
        if document.get("v") != CODEC_VERSION:
            raise BarCodecError(f"bar event codec version {document.get('v')!r}, expected {CODEC_VERSION}")
        return BarEvent(
            pd.Timestamp(document["timestamp"]),
            {s: Bar(*values) for s, values in document["bars"].items()},
            {
                s: Quote(*values[:4], timestamp=_read_time(values[4]))
                for s, values in document["quotes"].items()
            },
            _read_time(document["received_at"]),
        )
    except BarCodecError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise BarCodecError(f"not an encoded bar event: {type(error).__name__}: {error}") from None
