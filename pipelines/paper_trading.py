"""``make paper``: paper-trade the registry's champion (the challenger in shadow) on a replay or a live stream.

Defaults: the local simulated broker, a replay of the default data source over the champion's test period, the
state in the state home's sqlite database, monitoring (metrics, health, dashboard) on the host and port below.
``--fake-alpaca`` runs the same session through the real alpaca-py clients against a local fake Alpaca server;
``--broker alpaca`` trades Alpaca paper with ``ALPACA_API_KEY`` / ``ALPACA_SECRET_KEY`` from the environment;
``--bars FILE`` replays recorded bars (e.g. the 1-minute file); ``--stream`` takes live bars from Alpaca.
``--kill REASON`` engages a running session's kill switch.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from resources.state_home import StateHome

logger = logging.getLogger("paper_trading")
DEFAULT_MONITOR_PORT = 9108
METRICS_NAMESPACE = "rl_trading"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from pipelines.resources_by_env import MODEL_NAME
    from resources.mlflow_registry import CHALLENGER_ALIAS, CHAMPION_ALIAS
    from trading_assets.config_defaults import default_of
    from trading_core.monitoring.server import MonitoringServer

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--broker", choices=("local", "alpaca"), default="local", help="where orders go")
    parser.add_argument(
        "--fake-alpaca", action="store_true", help="trade through alpaca-py against a local fake"
    )
    parser.add_argument("--alpaca-url", default=None, help="Alpaca trading URL override (a fake server)")
    parser.add_argument(
        "--publish-to-fake", action="store_true", help="advance the fake at --alpaca-url per bar"
    )
    parser.add_argument(
        "--stream", action="store_true", help="live minute bars from Alpaca instead of a replay"
    )
    parser.add_argument("--stream-url", default=None, help="Alpaca stream URL override (a fake server)")
    parser.add_argument("--bars", default=None, help="recorded bars to replay (daily or intraday CSV)")
    parser.add_argument(
        "--start", default=None, help="first bar date to trade (earlier bars warm up features)"
    )
    parser.add_argument("--end", default=None, help="last bar date to trade")
    parser.add_argument("--session-id", default=None, help="resume this session (default: a new one)")
    parser.add_argument("--model-name", default=MODEL_NAME, help="registered model (default %(default)s)")
    parser.add_argument(
        "--alias",
        default=CHAMPION_ALIAS,
        help="registry alias of the model that trades (default %(default)s)",
    )
    parser.add_argument(
        "--fallback-alias",
        default=CHALLENGER_ALIAS,
        help="alias used when none holds --alias ('' to refuse; default %(default)s)",
    )
    parser.add_argument(
        "--challenger-alias",
        default=CHALLENGER_ALIAS,
        help="shadow model alias ('' for none; default %(default)s)",
    )
    parser.add_argument("--state-db", default=None, help="SQLAlchemy URL of the trading state")
    parser.add_argument(
        "--monitor-host",
        default=default_of(MonitoringServer, "host"),
        help="monitoring server address (default %(default)s)",
    )
    parser.add_argument(
        "--monitor-port",
        type=int,
        default=DEFAULT_MONITOR_PORT,
        help="monitoring server port, -1 disables the server (default %(default)s)",
    )
    parser.add_argument("--alert-webhook", default=os.environ.get("RL_TRADING_ALERT_WEBHOOK_URL"))
    parser.add_argument("--max-bars", type=int, default=None)
    parser.add_argument("--no-calendar", action="store_true", help="trade bars outside exchange hours too")
    parser.add_argument("--kill", default=None, metavar="REASON", help="engage --session-id's kill switch")
    return parser.parse_args(argv)


def resolve_versions(registry, args) -> tuple[str, str, str | None]:
    """(trading version, the alias it holds, shadow challenger version or None)."""
    version, alias = registry.version_for_alias(args.alias, args.model_name), args.alias
    if version is None and args.fallback_alias:
        version, alias = registry.version_for_alias(args.fallback_alias, args.model_name), args.fallback_alias
        if version is not None:
            print(
                f"NOTE: no version of {args.model_name} holds '{args.alias}' (the gate promoted none); trading "
                f"version {version}, which holds '{alias}'."
            )
    if version is None:
        raise SystemExit(f"no version of {args.model_name} holds '{args.alias}': run `make run` first")
    challenger = (
        registry.version_for_alias(args.challenger_alias, args.model_name) if args.challenger_alias else None
    )
    return version, alias, (challenger if challenger != version else None)


def load_engine(registry, model_name: str, version: str):
    from trading_core.live.engine import DecisionEngine

    policy, spec = registry.load_decision_bundle(version, model_name)
    if spec is None:
        raise SystemExit(
            f"{model_name} v{version} has no decision spec; retrain it with this version of the code"
        )
    if spec.uses_vix:
        raise SystemExit(f"{model_name} v{version} observes the VIX, which no live source here provides")
    forecaster = registry.load_forecaster(spec.forecaster_uri) if spec.forecaster_uri else None
    return DecisionEngine(policy, spec, forecaster)


def recorded_bars(
    args, tickers: list[str], registry, model_name: str, version: str
) -> tuple[pd.DataFrame, pd.Timestamp]:
    """(bars, first bar to trade): a file, or the default data source with trading from the test period on."""
    from trading_core.live.sources import DAILY_CLOSE, EXCHANGE_TIMEZONE, read_bars

    if args.bars:
        frame = read_bars(args.bars, tickers)
        days = frame["timestamp"].dt.tz_convert(EXCHANGE_TIMEZONE).dt.normalize().unique()
        # Without --start, the first day of a file warms the features up.
        start = pd.Timestamp(args.start, tz=EXCHANGE_TIMEZONE) if args.start else days[min(1, len(days) - 1)]
    else:
        from pipelines.resources_by_env import market_data_for

        daily = market_data_for(os.environ.get("RL_TRADING_ENV", "local")).model_copy(
            update={"tickers": tickers}
        )
        raw = daily.load_daily_bars().frame
        local = pd.to_datetime(raw["date"]) + DAILY_CLOSE
        frame = raw.assign(timestamp=local.dt.tz_localize(EXCHANGE_TIMEZONE).dt.tz_convert("UTC"))
        frame = frame[["timestamp", "tic", "open", "high", "low", "close", "volume"]]
        tags = registry.version_run_tags(version, model_name)
        start = pd.Timestamp(args.start or tags.get("data_test_start"), tz=EXCHANGE_TIMEZONE)
    start = start.tz_convert("UTC")
    if args.end:
        end = pd.Timestamp(args.end, tz=EXCHANGE_TIMEZONE) + pd.Timedelta(days=1)
        frame = frame[frame["timestamp"] < end.tz_convert("UTC")]
    return frame.sort_values(["timestamp", "tic"], ignore_index=True), start


def publishing(events: Iterator, publish) -> Iterator:
    """Advance a fake market with each bar before the loop sees it (replays through the fake Alpaca)."""
    for event in events:
        publish(event)
        yield event


def summarize(
    loop, store, session_id: str, state_url: str, monitor_url: str | None, make_target: str = "paper"
) -> str:
    from trading_core.live.state import CHALLENGER, CHAMPION

    summary = loop.summary
    lines = ["", "=" * 78, f"Paper-trading session {session_id}", "=" * 78]
    lines.append(
        f"Bars {summary.bars} (skipped outside market hours: {summary.skipped_closed}), decisions "
        f"{summary.decisions}, orders sent {summary.orders_sent}, broker fills {summary.fills}"
    )
    if summary.latencies_ms:
        latencies = np.array(summary.latencies_ms)
        lines.append(
            f"Decision latency: p50 {np.percentile(latencies, 50):.2f} ms, p99 {np.percentile(latencies, 99):.2f} ms"
        )
    for role in (CHAMPION, CHALLENGER):
        curve = store.equity_curve(session_id, role)
        if len(curve) >= 2:
            equity = curve["equity"]
            lines.append(
                f"{role:<11}: equity {equity.iloc[0]:,.0f} -> {equity.iloc[-1]:,.0f} "
                f"({equity.iloc[-1] / equity.iloc[0] - 1:+.2%}), max drawdown {curve['drawdown'].max():.1%}"
            )
    fills = store.fills(session_id)
    if len(fills):
        lines.append(
            f"Fills recorded: {int((fills['source'] == 'broker').sum())} broker, "
            f"{int((fills['source'] == 'simulated').sum())} simulated (for reconciliation)"
        )
    alerts = store.alerts(session_id)
    lines.append(
        f"Alerts: {len(alerts)}" + (f" ({', '.join(sorted(set(alerts['rule'])))})" if len(alerts) else "")
    )
    if summary.killed:
        lines.append("Kill switch: engaged — orders canceled, positions closed")
    lines.append(f"State: {state_url}")
    if monitor_url:
        lines.append(f"Dashboard: {monitor_url}/dashboard (served while the session runs)")
    lines.append(f"Resume this session: make {make_target} ARGS='--session-id {session_id}'")
    lines.append("=" * 78)
    return "\n".join(lines)


@dataclass(frozen=True)
class Models:
    """The registered versions a session trades: the champion's engine and the shadow challenger's, if any."""

    registry: Any
    version: str
    alias: str
    champion: Any
    challenger: Any = None
    challenger_version: str | None = None

    @property
    def tickers(self) -> list[str]:
        return list(self.champion.spec.tickers)


@dataclass(frozen=True)
class Session:
    """A session ready to run: its loop, the bars it will see and where its dashboard is served."""

    session_id: str
    loop: Any
    events: Iterator
    monitor_url: str | None


def open_store(url: str):
    from trading_core.live.state import TradingStateStore

    store = TradingStateStore(url)
    store.create_schema()
    return store


def engage_kill_switch(store, args: argparse.Namespace) -> int:
    from trading_core.live.loop import kill_session

    if not args.session_id:
        raise SystemExit("--kill needs --session-id")
    kill_session(store, args.session_id, args.kill)
    print(f"kill switch engaged for session {args.session_id}: {args.kill}")
    return 0


def load_models(args: argparse.Namespace) -> Models:
    """The trading version and its shadow challenger from the registry (no shadow when its tickers differ)."""
    from pipelines.resources_by_env import resources_for

    registry = resources_for()["model_registry"]
    version, alias, challenger_version = resolve_versions(registry, args)
    champion = load_engine(registry, args.model_name, version)
    challenger = load_engine(registry, args.model_name, challenger_version) if challenger_version else None
    if challenger is not None and list(challenger.spec.tickers) != list(champion.spec.tickers):
        print(f"NOTE: challenger v{challenger_version} trades other tickers; no shadow A/B this session")
        challenger, challenger_version = None, None
    return Models(registry, version, alias, champion, challenger, challenger_version)


def new_session_id() -> str:
    return f"paper-{pd.Timestamp.now(tz='UTC'):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def fake_market(args: argparse.Namespace, stack: ExitStack, models: Models) -> Callable | None:
    """What advances a fake Alpaca with each bar: a local fake started here (``--fake-alpaca``, which then
    becomes the broker) or the fake at ``--alpaca-url`` (``--publish-to-fake``); ``None`` without a fake."""
    if args.fake_alpaca:
        from testkit.fake_alpaca import DEFAULT_API_KEY, DEFAULT_SECRET, FakeAlpacaServer

        server = stack.enter_context(
            FakeAlpacaServer(initial_cash=models.champion.spec.env_spec.initial_amount)
        )
        os.environ.setdefault("ALPACA_API_KEY", DEFAULT_API_KEY)
        os.environ.setdefault("ALPACA_SECRET_KEY", DEFAULT_SECRET)
        args.broker, args.alpaca_url = "alpaca", server.url

        def publish(event, server=server) -> None:
            for symbol, bar in event.bars.items():
                server.publish_bar(
                    symbol, event.timestamp, bar.open, bar.high, bar.low, bar.close, bar.volume
                )

        return publish
    if args.publish_to_fake:
        from testkit.fake_alpaca import publish_bars

        def publish(event) -> None:
            publish_bars(
                args.alpaca_url,
                [
                    {
                        "symbol": s,
                        "t": event.timestamp.isoformat(),
                        "o": b.open,
                        "h": b.high,
                        "l": b.low,
                        "c": b.close,
                        "v": b.volume,
                    }
                    for s, b in event.bars.items()
                ],
                os.environ["ALPACA_API_KEY"],
                os.environ["ALPACA_SECRET_KEY"],
            )

        return publish
    return None


def make_broker(args: argparse.Namespace, models: Models):
    if args.broker == "alpaca":
        from trading_core.broker.alpaca import AlpacaPaperBroker

        return AlpacaPaperBroker.from_env(url_override=args.alpaca_url)
    from trading_core.broker.simulated import SimulatedBroker

    return SimulatedBroker(models.tickers, models.champion.spec.env_spec.simulation)


def bar_events(
    args: argparse.Namespace, stack: ExitStack, models: Models
) -> tuple[pd.DataFrame | None, Iterator]:
    """(warm-up history or None, the bars to trade): live from Alpaca with ``--stream``, else a replay."""
    from trading_core.live.sources import AlpacaBarStream, replay

    if args.stream:
        from trading_core.broker.alpaca import ALPACA_KEY_ENV, ALPACA_SECRET_ENV

        key = next((os.environ[n] for n in ALPACA_KEY_ENV if os.environ.get(n)), None)
        secret = next((os.environ[n] for n in ALPACA_SECRET_ENV if os.environ.get(n)), None)
        if not key or not secret:
            raise SystemExit(
                f"--stream needs {ALPACA_KEY_ENV[0]} and {ALPACA_SECRET_ENV[0]} in the environment"
            )
        stream = AlpacaBarStream(key, secret, models.tickers, url_override=args.stream_url)
        stack.callback(stream.stop)
        return None, iter(stream)
    frame, start = recorded_bars(args, models.tickers, models.registry, args.model_name, models.version)
    history = frame[frame["timestamp"] < start].rename(columns={"timestamp": "date"})
    return history, replay(frame, start)


def alerting(args: argparse.Namespace, session_id: str, current_loop: Callable[[], Any]) -> tuple:
    """(evaluator, sink) of the session's alerts: to the log, and to ``--alert-webhook`` when given."""
    from trading_core.monitoring.alerts import (
        AlertEvaluator,
        BackgroundAlertSink,
        FanOutAlertSink,
        LogAlertSink,
        WebhookAlertSink,
        default_rules,
    )

    sinks = [LogAlertSink(logger)]
    if args.alert_webhook:
        sinks.append(BackgroundAlertSink(WebhookAlertSink(args.alert_webhook, session_id=session_id)))
    if args.stream:
        evaluator = AlertEvaluator(default_rules())
    else:
        # Replays judge staleness on the replayed clock, live streams on the wall clock.
        def clock() -> float:
            bar_time = current_loop().last_bar_time
            return bar_time.timestamp() if bar_time is not None else 0.0

        evaluator = AlertEvaluator(default_rules(), clock=clock)
    return evaluator, FanOutAlertSink(sinks)


def set_up(args: argparse.Namespace, stack: ExitStack, store, models: Models, session_id: str) -> Session:
    """The fake market, broker, bars, alerts, loop and monitoring server of a session, closed by ``stack``."""
    from trading_assets.config_defaults import default_of
    from trading_core.live.loop import LiveConfig, LiveTradingLoop
    from trading_core.monitoring.alerts import default_rules
    from trading_core.monitoring.live_metrics import LiveMetrics
    from trading_core.monitoring.server import MonitoringServer

    publish = fake_market(args, stack, models)
    broker = make_broker(args, models)
    history, events = bar_events(args, stack, models)
    if publish is not None:
        events = publishing(events, publish)
    metrics = LiveMetrics(namespace=METRICS_NAMESPACE)
    loop: LiveTradingLoop
    alerts = alerting(args, session_id, lambda: loop)
    loop = LiveTradingLoop(
        LiveConfig(
            session_id=session_id,
            model_name=args.model_name,
            # A live stream that stops is unready after as long as the stale-data alert waits.
            max_bar_age_s=default_of(default_rules, "max_bar_age_s") if args.stream else None,
            **({"calendar": None} if args.no_calendar else {}),
        ),
        store,
        broker,
        (models.champion, models.version),
        (models.challenger, models.challenger_version) if models.challenger is not None else None,
        metrics=metrics,
        alerts=alerts,
        history=history,
    )
    monitor_url = None
    if args.monitor_port >= 0:
        server = stack.enter_context(
            MonitoringServer(loop.status, metrics, loop.ready, host=args.monitor_host, port=args.monitor_port)
        )
        monitor_url = server.url
        print(f"Monitoring: {monitor_url}/dashboard  {monitor_url}/metrics  {monitor_url}/healthz")
    return Session(session_id, loop, events, monitor_url)


def run(args: argparse.Namespace, session: Session, models: Models) -> None:
    print(
        f"Session {session.session_id}: {args.model_name} v{models.version} ('{models.alias}') on the "
        f"{args.broker} broker"
        + (f", challenger v{models.challenger_version} in shadow" if models.challenger_version else "")
    )
    session.loop.run(session.events, max_bars=args.max_bars)


def report(args: argparse.Namespace, session: Session, store) -> str:
    target = "paper-fake" if args.fake_alpaca else "paper"
    return summarize(session.loop, store, session.session_id, store.url, session.monitor_url, target)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    home = StateHome.from_env().prepare()
    store = open_store(args.state_db or home.trading_state_url)
    if args.kill:
        return engage_kill_switch(store, args)
    models = load_models(args)
    with ExitStack() as stack:
        session = set_up(args, stack, store, models, args.session_id or new_session_id())
        run(args, session, models)
        print(report(args, session, store))
    return 0


if __name__ == "__main__":
    sys.exit(main())
