"""A live session consuming a NATS feed, in a process of its own, so a test can SIGKILL it mid-stream.

``python -m tests.bus_consumer_worker --agent DIR --state-db FILE --feed NAME --consumer NAME --session-id ID``
runs the live loop on the local simulated broker with the agent saved in ``DIR`` (``policy.zip``, ``spec.json``,
``history.parquet`` to warm the features up) until the end-of-feed marker, printing ``committed <n>`` after each
bar it is done with (before that bar's ack), and writes what it counted to ``--report`` when it finishes.
``--die-after N`` SIGKILLs the process itself once its N-th bar is committed, before that bar is acked: the
broker hands the bar out again and the restarted session must skip it. ``--start-when FILE`` waits for ``FILE``
before consuming (the test starts the process, runs its reference, then lets it go).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import pandas as pd

from trading_core.agents.decision_spec import DecisionSpec
from trading_core.agents.zoo import load_policy
from trading_core.broker.simulated import SimulatedBroker
from trading_core.live.bus import DEFAULT_NATS_URL, BusFeed, BusSettings, NatsJetStreamBus
from trading_core.live.engine import DecisionEngine
from trading_core.live.loop import LiveConfig, LiveTradingLoop
from trading_core.live.state import TradingStateStore
from trading_core.monitoring.live_metrics import LiveMetrics


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agent", type=Path, required=True)
    parser.add_argument("--state-db", type=Path, required=True)
    parser.add_argument("--feed", required=True)
    parser.add_argument("--consumer", required=True)
    parser.add_argument("--session-id", required=True)
    parser.add_argument("--nats-url", default=DEFAULT_NATS_URL)
    parser.add_argument("--ack-wait-s", type=float, required=True)
    parser.add_argument("--report", type=Path, default=None)
    parser.add_argument("--die-after", type=int, default=None)
    parser.add_argument("--start-when", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spec = DecisionSpec.load(args.agent / "spec.json")
    policy = load_policy("ppo", args.agent / "policy.zip")
    store = TradingStateStore.sqlite(args.state_db)
    store.create_schema()
    metrics = LiveMetrics()
    loop = LiveTradingLoop(
        LiveConfig(session_id=args.session_id),
        store,
        SimulatedBroker(list(spec.tickers), spec.env_spec.simulation),
        (DecisionEngine(policy, spec), "1"),
        metrics=metrics,
        history=pd.read_parquet(args.agent / "history.parquet"),
    )
    settings = BusSettings(ack_wait_s=args.ack_wait_s, poll_s=0.2)
    with NatsJetStreamBus(args.feed, args.nats_url, settings=settings) as bus:
        feed = BusFeed(bus, args.consumer, metrics)

        def done(event) -> None:
            summary = loop.summary
            if args.die_after is not None and summary.bars >= args.die_after:
                os.kill(os.getpid(), signal.SIGKILL)  # the bar is committed; its ack never leaves
            progress = (summary.bars, summary.duplicates, feed.counts.redelivered)
            print("committed {} duplicates {} redelivered {}".format(*progress), flush=True)
            feed.done(event)

        while args.start_when is not None and not args.start_when.exists():
            time.sleep(0.05)

        summary = loop.run(feed, on_done=done)
    report = {
        "bars": summary.bars,
        "decisions": summary.decisions,
        "duplicates": summary.duplicates,
        "delivered": feed.counts.delivered,
        "redelivered": feed.counts.redelivered,
        "acked": feed.counts.acked,
        "status": summary.status,
        "lag_gauge": metrics.registry.get_sample_value("bus_consumer_lag"),
    }
    if args.report is not None:
        args.report.write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
