"""Publish market bars to the market-data bus: a replay of recorded bars, or Alpaca's live minute bars.

``python -m pipelines.market_feed --bus nats://127.0.0.1:4222 --bars FILE`` publishes the file's bars (from
``--start``, by default its second day: the first warms the consumer's features up, as ``make paper --bars`` does)
to the feed's stream, then the end-of-feed marker, and exits. ``--stream`` publishes Alpaca's live bars of
``--tickers`` (keys from the environment) until interrupted, without an end marker (a restarted publisher goes on
with the same feed). Every bar is published under its key ``<feed>:<bar end>``: a bar published twice (a
publisher restarted over the same replay) is dropped by JetStream. ``python -m pipelines.paper_trading --bus URL
--feed NAME`` consumes the feed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterator

import pandas as pd

logger = logging.getLogger("market_feed")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from trading_core.live.bus import DEFAULT_FEED, DEFAULT_NATS_URL

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--bus", default=DEFAULT_NATS_URL, help="nats://host:port or kafka://host:port (default %(default)s)"
    )
    parser.add_argument("--feed", default=DEFAULT_FEED, help="the feed's name (default %(default)s)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--bars", default=None, help="recorded bars to publish (daily or intraday CSV)")
    source.add_argument("--stream", action="store_true", help="publish Alpaca's live minute bars")
    parser.add_argument("--stream-url", default=None, help="Alpaca stream URL override (a fake server)")
    parser.add_argument("--tickers", nargs="+", default=None, help="symbols to publish (default: the file's)")
    parser.add_argument(
        "--start", default=None, help="first bar date to publish (default: the file's second day)"
    )
    parser.add_argument("--end", default=None, help="last bar date to publish")
    parser.add_argument("--max-bars", type=int, default=None, help="stop after this many bars")
    args = parser.parse_args(argv)
    if args.stream and not args.tickers:
        parser.error("--stream needs --tickers")
    return args


def replay_events(args: argparse.Namespace) -> Iterator:
    """The bars of ``--bars`` between ``--start`` (default: the file's second day) and ``--end``."""
    from pipelines.paper_trading import bars_file
    from trading_core.live.sources import EXCHANGE_TIMEZONE, read_bars, replay

    frame = bars_file(args.bars, args.tickers, read_bars)
    days = frame["timestamp"].dt.tz_convert(EXCHANGE_TIMEZONE).dt.normalize().unique()
    start = pd.Timestamp(args.start, tz=EXCHANGE_TIMEZONE) if args.start else days[min(1, len(days) - 1)]
    if args.end:
        end = pd.Timestamp(args.end, tz=EXCHANGE_TIMEZONE) + pd.Timedelta(days=1)
        frame = frame[frame["timestamp"] < end.tz_convert("UTC")]
    return replay(frame, start.tz_convert("UTC"))


def stream_events(args: argparse.Namespace):
    """Alpaca's live bars of ``--tickers`` (keys from the environment, never printed)."""
    from trading_core.broker.alpaca import ALPACA_KEY_ENV, ALPACA_SECRET_ENV
    from trading_core.live.sources import AlpacaBarStream

    key = next((os.environ[n] for n in ALPACA_KEY_ENV if os.environ.get(n)), None)
    secret = next((os.environ[n] for n in ALPACA_SECRET_ENV if os.environ.get(n)), None)
    if not key or not secret:
        raise SystemExit(f"--stream needs {ALPACA_KEY_ENV[0]} and {ALPACA_SECRET_ENV[0]} in the environment")
    return AlpacaBarStream(key, secret, args.tickers, url_override=args.stream_url)


def publish(bus, events, max_bars: int | None) -> tuple[int, int]:
    """Publish ``events``; (bars stored, bars the broker dropped as published before)."""
    stored = dropped = 0
    for event in events:
        if bus.publish(event):
            stored += 1
        else:
            dropped += 1
        if max_bars is not None and stored + dropped >= max_bars:
            break
    return stored, dropped


def main(argv: list[str] | None = None) -> int:
    """Publish the feed; 0 when it was published, one line naming the URL when the broker does not answer."""
    from trading_core.live.bus import BusUnavailable, bus_for
    from trading_core.live.sources import BarSourceError

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:  # the broker first: it answers at once, a large file's validation takes a while
        bus = bus_for(args.bus, args.feed)
    except (BusUnavailable, ValueError) as error:
        raise SystemExit(f"--bus {error}") from None
    with bus:
        events = stream_events(args) if args.stream else replay_events(args)
        try:
            stored, dropped = publish(bus, events, args.max_bars)
        except KeyboardInterrupt:
            print(f"interrupted; feed {args.feed} on {args.bus} left open (no end-of-feed marker)")
            return 130
        except BarSourceError as error:
            raise SystemExit(str(error)) from None
        finally:
            if args.stream:
                events.stop()
        if not args.stream:
            bus.end_feed()
    ended = ", then the end-of-feed marker" if not args.stream else ""
    print(
        f"published {stored} bars to feed {args.feed} on {args.bus} ({dropped} published before, dropped){ended}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
