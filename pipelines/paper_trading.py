"""``make paper``: paper-trade the registry's champion (the challenger in shadow) on a replay or a live stream.

Defaults: the local simulated broker, a replay of the default data source over the champion's test period, the
state in the state home's sqlite database, monitoring (metrics, health, dashboard) on the host and port below.
``--fake-alpaca`` runs the same session through the real alpaca-py clients against a local fake Alpaca server
with its own keys (exported Alpaca keys are never used for it) and an account kept beside the trading state, so a
resumed session finds its positions again; ``--broker alpaca`` trades Alpaca paper with ``ALPACA_API_KEY`` /
``ALPACA_SECRET_KEY`` from the environment; ``--bars FILE`` replays recorded bars (e.g. the 1-minute file), checked
by the project's data validation first; ``--stream`` takes live bars from Alpaca. ``--session-id ID`` resumes a
session, ``--new-session-id ID`` names a new one. ``--kill REASON`` engages a session's kill switch.

A session ends ``finished`` when its bars run out and ``stopped`` otherwise (``--max-bars``, an interrupt, or a
broker unreachable for longer than its outage grace, which exits with status 3 and one line saying why).

The dashboard names the traded version (``<model> v<k> (<alias>)``: ``champion`` only when that version holds it)
and the shadow challenger, or why none runs. When the session ends, its dashboard stays up with the final state
(status ``finished`` or ``stopped``, final equity, positions and alerts) until Ctrl-C: by default when stdin and
stdout are terminals (a person is watching), never in scripts, CI or a container; ``--keep-dashboard`` and
``--no-keep-dashboard`` decide it either way.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from resources.state_home import StateHome

logger = logging.getLogger("paper_trading")
DEFAULT_MONITOR_PORT = 9108
METRICS_NAMESPACE = "rl_trading"
SESSION_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
EXIT_STOPPED = 3
EXIT_INTERRUPTED = 130


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
    sessions = parser.add_mutually_exclusive_group()
    sessions.add_argument("--session-id", default=None, help="resume this stored session")
    sessions.add_argument(
        "--new-session-id", default=None, help="start a new session with this id (default: a generated one)"
    )
    parser.add_argument(
        "--create-if-missing",
        action="store_true",
        help="with --session-id: start that session when the store has none (a pinned deployment's first run)",
    )
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
    parser.add_argument(
        "--keep-dashboard",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep the dashboard up with the final state after the session ends, until Ctrl-C "
        "(default: when stdin and stdout are terminals)",
    )
    parser.add_argument("--alert-webhook", default=os.environ.get("RL_TRADING_ALERT_WEBHOOK_URL"))
    parser.add_argument("--max-bars", type=int, default=None)
    parser.add_argument(
        "--outage-grace-s",
        type=float,
        default=None,
        help="how long the broker may stay unreachable before the session stops (default: LiveConfig's)",
    )
    parser.add_argument("--no-calendar", action="store_true", help="trade bars outside exchange hours too")
    parser.add_argument(
        "--bus",
        default=None,
        help="consume bars from the market-data bus (nats://host:port, kafka://host:port, or embedded) "
        "as the durable consumer named after the session id; the bars are published by pipelines.market_feed",
    )
    parser.add_argument(
        "--feed", default=None, help="with --bus: the feed to consume (default: market_feed's)"
    )
    parser.add_argument(
        "--bus-idle-timeout-s",
        type=float,
        default=None,
        help="with --bus: end the session after this long without a bar (default: at the end-of-feed marker)",
    )
    parser.add_argument("--kill", default=None, metavar="REASON", help="engage --session-id's kill switch")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.keep_dashboard is None:
        args.keep_dashboard = watched_in_a_terminal()
    if args.fake_alpaca and (args.stream or args.publish_to_fake or args.alpaca_url):
        parser.error(
            "--fake-alpaca starts its own fake market: drop --stream, --publish-to-fake and --alpaca-url"
        )
    if args.outage_grace_s is not None and not args.outage_grace_s >= 0:
        parser.error(f"--outage-grace-s must be a non-negative number of seconds, got {args.outage_grace_s}")
    if args.bus and args.stream:
        parser.error(
            "--bus consumes the feed pipelines.market_feed publishes: run the stream there (--stream)"
        )
    if (args.feed or args.bus_idle_timeout_s is not None) and not args.bus:
        parser.error("--feed and --bus-idle-timeout-s need --bus")
    if args.create_if_missing and not args.session_id:
        parser.error("--create-if-missing needs --session-id")
    created = args.new_session_id or (args.session_id if args.create_if_missing else None)
    if created and not SESSION_ID_PATTERN.fullmatch(created):
        parser.error(f"session id {created!r}: use letters, digits, '.', '_' and '-' (128 at most)")
    return args


def watched_in_a_terminal() -> bool:
    """Whether a person runs the command at a terminal (who can look at the final state, then press Ctrl-C)."""
    return sys.stdin.isatty() and sys.stdout.isatty()


def resolve_versions(registry, args) -> tuple[str, str]:
    """(trading version, the alias it holds): ``--alias``'s, else ``--fallback-alias``'s."""
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
    return version, alias


def shadow_version(registry, args, version: str) -> tuple[str | None, str]:
    """(the shadow challenger's version, or None and why no shadow runs)."""
    if not args.challenger_alias:
        return None, "--challenger-alias is empty"
    challenger = registry.version_for_alias(args.challenger_alias, args.model_name)
    if challenger is None:
        return None, f"no version of {args.model_name} holds '{args.challenger_alias}'"
    if challenger == version:
        return None, f"v{version}, which holds '{args.challenger_alias}', is the one trading"
    return challenger, ""


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
        frame = bars_file(args.bars, tickers, read_bars)
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


def bars_file(path: str, tickers: list[str], read: Callable[..., pd.DataFrame]) -> pd.DataFrame:
    """The bars of ``--bars``; a file that cannot be read or breaks the validation rules exits with one line."""
    from trading_core.data.files import BarsFileError
    from trading_core.data.validation import DataValidationError

    try:
        return read(path, tickers)
    except DataValidationError as error:
        failures = "; ".join(f"{failure.name}: {failure.description}" for failure in error.failures)
        raise SystemExit(f"--bars {error.source}: {failures}") from None
    except (BarsFileError, ValueError) as error:
        raise SystemExit(f"--bars {' '.join(str(error).split())}") from None


def publishing(events: Iterator, publish) -> Iterator:
    """Advance a fake market with each bar before the loop sees it (replays through the fake Alpaca)."""
    for event in events:
        publish(event)
        yield event


def summarize(
    loop,
    store,
    session_id: str,
    state_url: str,
    monitor_url: str | None,
    resume: str,
    models: Models,
    dashboard_kept: bool = False,
) -> str:
    """The session's report: the versions, bars, orders, equity, alerts, how it ended and the command that
    resumes it."""
    from trading_core.live.state import CHALLENGER, CHAMPION

    summary = loop.summary
    lines = ["", "=" * 78, f"Paper-trading session {session_id}", "=" * 78]
    lines.append(f"Traded: {models.traded}; {models.shadow}")
    lines.append(
        f"Bars {summary.bars} (skipped outside market hours: {summary.skipped_closed}), decisions "
        f"{summary.decisions}, orders sent {summary.orders_sent}, broker fills {summary.fills}"
    )
    if summary.latencies_ms:
        latencies = np.array(summary.latencies_ms)
        lines.append(
            f"Decision latency: p50 {np.percentile(latencies, 50):.2f} ms, p99 {np.percentile(latencies, 99):.2f} ms"
        )
    # The loop's roles are "champion" (traded) and "challenger" (shadow), whichever alias each version holds.
    labels = {CHAMPION: f"traded v{models.version} ({models.alias})"}
    if models.challenger_version is not None:
        labels[CHALLENGER] = f"shadow v{models.challenger_version} ({models.challenger_alias})"
    width = max(len(label) for label in labels.values())
    for role, label in labels.items():
        curve = store.equity_curve(session_id, role)
        if len(curve) >= 2:
            equity = curve["equity"]
            lines.append(
                f"{label:<{width}}: equity {equity.iloc[0]:,.0f} -> {equity.iloc[-1]:,.0f} "
                f"({equity.iloc[-1] / equity.iloc[0] - 1:+.2%}), max drawdown {curve['drawdown'].max():.1%}"
            )
    fills = store.fills(session_id)
    if len(fills):
        lines.append(
            f"Fills recorded: {int((fills['source'] == 'broker').sum())} broker, "
            f"{int((fills['source'] == 'simulated').sum())} simulated (for reconciliation)"
        )
    lines.append(alert_counts(store.alerts(session_id)))
    if summary.killed:
        lines.append("Kill switch: engaged — orders canceled, positions closed")
    session = store.get_session(session_id)
    if session is not None:
        lines.append(
            f"Session: {session.status}" + (f" ({session.stop_reason})" if session.stop_reason else "")
        )
    lines.append(f"State: {state_url}")
    if monitor_url:
        served = (
            "kept up with the final state until Ctrl-C" if dashboard_kept else "served while the session ran"
        )
        lines.append(f"Dashboard: {monitor_url}/dashboard ({served})")
    lines.append(f"Resume this session: {resume}")
    lines.append("=" * 78)
    return "\n".join(lines)


def alert_counts(alerts: pd.DataFrame) -> str:
    """``Alerts: N (rule raised[, k resolved], ...)``: how often each rule alerted and how often it cleared."""
    from trading_core.monitoring.alerts import RESOLVED_PREFIX

    if alerts.empty:
        return "Alerts: 0"
    resolved = alerts["message"].str.startswith(RESOLVED_PREFIX)
    parts = []
    for rule, rows in alerts.groupby("rule", sort=True):
        cleared = int(resolved[rows.index].sum())
        parts.append(f"{rule} {len(rows) - cleared}" + (f" ({cleared} resolved)" if cleared else ""))
    return f"Alerts: {len(alerts)}: " + ", ".join(parts)


def resume_command(args: argparse.Namespace, session_id: str) -> str:
    """The command that resumes the session: this one's arguments, with ``--session-id`` as the only session flag."""
    target = "paper-fake" if args.fake_alpaca else "paper"
    kept: list[str] = []
    words = iter(args.argv)
    for word in words:
        name = word.split("=", 1)[0]
        if name in ("--session-id", "--new-session-id"):
            if "=" not in word:
                next(words, None)
            continue
        if not (target == "paper-fake" and word == "--fake-alpaca"):  # the make target adds it
            kept.append(word)
    return f"make {target} ARGS={shlex.quote(shlex.join([*kept, '--session-id', session_id]))}"


def unknown_session(store, session_id: str) -> str:
    """One line saying the session is not in the store, and which are."""
    known = list(store.sessions()["session_id"])
    listed = ", ".join(known[-10:]) if known else "none"
    earlier = f" (and {len(known) - 10} earlier)" if len(known) > 10 else ""
    return f"no paper-trading session '{session_id}' in {store.url}; known: {listed}{earlier}"


def session_to_run(store, args: argparse.Namespace) -> str:
    """The session id to run: a stored one to resume, a new chosen one, or a generated one."""
    if args.session_id:
        if store.get_session(args.session_id) is None and not args.create_if_missing:
            raise SystemExit(unknown_session(store, args.session_id))
        return args.session_id
    if args.new_session_id:
        if store.get_session(args.new_session_id) is not None:
            raise SystemExit(
                f"paper-trading session '{args.new_session_id}' exists in {store.url}; "
                f"resume it with --session-id {args.new_session_id}"
            )
        return args.new_session_id
    return new_session_id()


@dataclass(frozen=True)
class Models:
    """The registered versions a session runs: the traded one's engine (the loop's ``champion`` role, whichever
    alias the version holds) and the shadow challenger's, if any.

    :param alias: the alias the traded version holds (``challenger`` when nothing was promoted)
    :param no_shadow: why no shadow challenger runs (empty when one does)
    """

    registry: Any
    version: str
    alias: str
    champion: Any
    challenger: Any = None
    challenger_version: str | None = None
    model_name: str = ""
    challenger_alias: str = ""
    no_shadow: str = ""

    @property
    def tickers(self) -> list[str]:
        return list(self.champion.spec.tickers)

    @property
    def traded(self) -> str:
        """The traded version as ``<model> v<k> (<alias>)``."""
        return f"{self.model_name} v{self.version} ({self.alias})"

    @property
    def shadow(self) -> str:
        """``shadow: <model> v<k> (<alias>)``, or ``no shadow: <why>``."""
        if self.challenger_version is None:
            return f"no shadow: {self.no_shadow}"
        return f"shadow: {self.model_name} v{self.challenger_version} ({self.challenger_alias})"


@dataclass(frozen=True)
class Session:
    """A session ready to run: its loop, the bars it will see and where its dashboard is served."""

    session_id: str
    loop: Any
    events: Iterator
    monitor_url: str | None
    feed: Any = None  # the bus consumer (--bus): acks each bar once the loop is done with it


def open_store(url: str):
    from trading_core.live.state import TradingStateStore

    store = TradingStateStore(url)
    store.create_schema()
    return store


def engage_kill_switch(store, args: argparse.Namespace) -> int:
    from trading_core.live.loop import kill_session

    if not args.session_id:
        raise SystemExit("--kill needs --session-id")
    if store.get_session(args.session_id) is None:
        raise SystemExit(unknown_session(store, args.session_id))
    if kill_session(store, args.session_id, args.kill):
        print(f"kill switch engaged for session {args.session_id}: {args.kill}")
    else:
        reason = store.get_session(args.session_id).kill_reason
        print(f"kill switch of session {args.session_id} was engaged already: {reason}")
    return 0


def load_models(args: argparse.Namespace) -> Models:
    """The trading version and its shadow challenger from the registry (no shadow when its tickers differ)."""
    from pipelines.resources_by_env import resources_for

    registry = resources_for()["model_registry"]
    version, alias = resolve_versions(registry, args)
    challenger_version, no_shadow = shadow_version(registry, args, version)
    champion = load_engine(registry, args.model_name, version)
    challenger = load_engine(registry, args.model_name, challenger_version) if challenger_version else None
    if challenger is not None and list(challenger.spec.tickers) != list(champion.spec.tickers):
        print(f"NOTE: challenger v{challenger_version} trades other tickers; no shadow A/B this session")
        no_shadow = f"v{challenger_version}, which holds '{args.challenger_alias}', trades other tickers"
        challenger, challenger_version = None, None
    return Models(
        registry,
        version,
        alias,
        champion,
        challenger,
        challenger_version,
        model_name=args.model_name,
        challenger_alias=args.challenger_alias,
        no_shadow=no_shadow,
    )


def new_session_id() -> str:
    return f"paper-{pd.Timestamp.now(tz='UTC'):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class FakeMarket:
    """A fake Alpaca the session trades on: its URL, the keys it takes and how to advance it by one bar.

    :param keys: the fake's own keys (a fake started here); ``None`` for the environment's (``--publish-to-fake``)
    """

    url: str
    keys: tuple[str, str] | None
    publish: Callable[[Any], None]


def fake_account_path(store, session_id: str) -> Path:
    """Where ``--fake-alpaca`` keeps a session's fake account: beside a sqlite trading state, else in the home."""
    from sqlalchemy.engine import make_url

    url = make_url(store.url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        folder = Path(url.database).parent
    else:
        folder = StateHome.from_env().root / "live"
    return folder / "fake_alpaca" / f"{session_id}.jsonl"


def fake_market(
    args: argparse.Namespace, stack: ExitStack, models: Models, store, session_id: str
) -> FakeMarket | None:
    """The fake Alpaca the session trades on: one started here (``--fake-alpaca``) with its own keys and an
    account journaled beside the trading state, or the fake at ``--alpaca-url`` (``--publish-to-fake``); ``None``
    without a fake."""
    if args.fake_alpaca:
        from testkit.fake_alpaca import DEFAULT_API_KEY, DEFAULT_SECRET, FakeAlpacaServer

        account = fake_account_path(store, session_id)
        if store.get_session(session_id) is None:
            account.unlink(missing_ok=True)  # a stale account of a session that is gone from the store
        elif not account.exists():
            raise SystemExit(
                f"session {session_id} has no fake Alpaca account at {account}: it did not trade on "
                "--fake-alpaca, or the account was deleted; resume it with the broker it traded on"
            )
        server = stack.enter_context(
            FakeAlpacaServer(initial_cash=models.champion.spec.env_spec.initial_amount, state_path=account)
        )
        args.broker = "alpaca"

        def publish(event, server=server) -> None:
            for symbol, bar in event.bars.items():
                server.publish_bar(
                    symbol, event.timestamp, bar.open, bar.high, bar.low, bar.close, bar.volume
                )

        return FakeMarket(server.url, (DEFAULT_API_KEY, DEFAULT_SECRET), publish)
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

        return FakeMarket(args.alpaca_url, None, publish)
    return None


def make_broker(args: argparse.Namespace, models: Models, market: FakeMarket | None):
    """The broker: the fake's with its own keys, Alpaca paper with the environment's keys, or the local one."""
    if args.broker == "alpaca":
        from trading_core.broker.alpaca import AlpacaPaperBroker

        if market is not None and market.keys is not None:
            return AlpacaPaperBroker(*market.keys, url_override=market.url)
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


def bus_feed(
    args: argparse.Namespace, stack: ExitStack, models: Models, session_id: str
) -> tuple[pd.DataFrame | None, Any]:
    """(warm-up history or None, the session's bus consumer): the durable consumer is named after the session, so
    a resumed session goes on after the last bar it acked.

    ``--bars`` gives the warm-up history (the file's bars before ``--start``, as a replay has it: publish from the
    same ``--start``); ``--bus embedded`` publishes the session's own replay into an in-process bus first.
    """
    from trading_core.live.bus import (
        DEFAULT_FEED,
        EMBEDDED_URL,
        BusFeed,
        BusSettings,
        BusUnavailable,
        bus_for,
    )

    settings = BusSettings(idle_timeout_s=args.bus_idle_timeout_s)
    try:
        bus = bus_for(args.bus, args.feed or DEFAULT_FEED, settings)
    except (BusUnavailable, ValueError) as error:
        raise SystemExit(f"--bus {error}") from None
    stack.callback(bus.close)
    history = None
    if args.bus == EMBEDDED_URL:
        history, events = bar_events(args, stack, models)
        for event in events:
            bus.publish(event)
        bus.end_feed()
    elif args.bars:
        frame, start = recorded_bars(args, models.tickers, models.registry, args.model_name, models.version)
        history = frame[frame["timestamp"] < start].rename(columns={"timestamp": "date"})
    return history, BusFeed(bus, session_id)


def alerting(args: argparse.Namespace, session_id: str, current_loop: Callable[[], Any]) -> tuple:
    """(evaluator, sink) of the session's alerts: to the log, and to ``--alert-webhook`` when given."""
    from trading_core.monitoring.alerts import (
        AlertEvaluator,
        BackgroundAlertSink,
        FanOutAlertSink,
        LogAlertSink,
        WebhookAlertSink,
        data_quality_rules,
        default_rules,
    )

    # The bar feed's rules (late, missing, out-of-order bars, stale quotes) beside the standard ones.
    rules = [*default_rules(), *data_quality_rules()]
    sinks = [LogAlertSink(logger)]
    if args.alert_webhook:
        sinks.append(BackgroundAlertSink(WebhookAlertSink(args.alert_webhook, session_id=session_id)))
    if args.stream:
        evaluator = AlertEvaluator(rules)
    else:
        # Replays judge staleness on the replayed clock, live streams on the wall clock.
        def clock() -> float:
            bar_time = current_loop().last_bar_time
            return bar_time.timestamp() if bar_time is not None else 0.0

        evaluator = AlertEvaluator(rules, clock=clock)
    return evaluator, FanOutAlertSink(sinks)


def dashboard_status(loop, models: Models) -> Callable[[], dict[str, Any]]:
    """``/api/status``: the loop's status, the traded version and the shadow by name, and the session's status
    (``running``, then ``finished``, ``stopped`` or ``killed``) with why it ended."""
    versions = {
        "model_name": models.model_name,
        "model_alias": models.alias,
        "model": models.traded,
        "shadow": models.shadow,
    }

    def status() -> dict[str, Any]:
        summary = loop.summary
        return {
            **loop.status(),
            **versions,
            "session_status": summary.status,
            "stop_reason": summary.stop_reason,
        }

    return status


def set_up(args: argparse.Namespace, stack: ExitStack, store, models: Models, session_id: str) -> Session:
    """The fake market, broker, bars, alerts, loop and monitoring server of a session, closed by ``stack``."""
    from trading_assets.config_defaults import default_of
    from trading_core.broker.base import RetryPolicy
    from trading_core.live.loop import LiveConfig, LiveTradingLoop
    from trading_core.monitoring.alerts import default_rules
    from trading_core.monitoring.live_metrics import LiveMetrics
    from trading_core.monitoring.server import MonitoringServer

    # A bad --bars file stops here, before anything starts; so does a bus that does not answer.
    if args.bus:
        history, events = bus_feed(args, stack, models, session_id)
    else:
        history, events = bar_events(args, stack, models)
    feed = events if args.bus else None
    market = fake_market(args, stack, models, store, session_id)
    broker = make_broker(args, models, market)
    if market is not None:
        events = publishing(events, market.publish)
    metrics = LiveMetrics(namespace=METRICS_NAMESPACE)
    loop: LiveTradingLoop
    alerts = alerting(args, session_id, lambda: loop)
    loop = LiveTradingLoop(
        LiveConfig(
            session_id=session_id,
            model_name=args.model_name,
            # Names the feed in the stored bar arrivals (data quality per feed and day).
            feed=feed.bus.feed if feed is not None else "alpaca" if args.stream else "replay",
            # A live stream that stops is unready after as long as the stale-data alert waits.
            max_bar_age_s=default_of(default_rules, "max_bar_age_s") if args.stream else None,
            **({"calendar": None} if args.no_calendar else {}),
            **({"outage_grace_s": args.outage_grace_s} if args.outage_grace_s is not None else {}),
        ),
        store,
        broker,
        (models.champion, models.version),
        (models.challenger, models.challenger_version) if models.challenger is not None else None,
        metrics=metrics,
        alerts=alerts,
        # Brokers retry their own calls (AlpacaPaperBroker's policy); a second layer would multiply the waits.
        retry=RetryPolicy(max_attempts=1),
        history=history,
    )
    monitor_url = None
    if args.monitor_port >= 0:
        server = stack.enter_context(
            MonitoringServer(
                dashboard_status(loop, models),
                metrics,
                loop.ready,
                host=args.monitor_host,
                port=args.monitor_port,
            )
        )
        monitor_url = server.url
        print(
            f"Monitoring: {monitor_url}/dashboard  {monitor_url}/metrics  {monitor_url}/healthz", flush=True
        )
    if feed is not None:
        feed.metrics = metrics
    return Session(session_id, loop, events, monitor_url, feed)


def run(args: argparse.Namespace, session: Session, models: Models) -> None:
    print(
        f"Session {session.session_id}: {args.model_name} v{models.version} ('{models.alias}') on the "
        f"{args.broker} broker"
        + (
            f", challenger v{models.challenger_version} in shadow"
            if models.challenger_version
            else f"; {models.shadow}"
        )
    )
    on_done = session.feed.done if session.feed is not None else None
    session.loop.run(session.events, max_bars=args.max_bars, on_done=on_done)


def keeps_dashboard(args: argparse.Namespace, session: Session) -> bool:
    """Whether the dashboard stays up after the session ended (``--keep-dashboard``, with a server running)."""
    return bool(args.keep_dashboard) and session.monitor_url is not None


def hold_dashboard(url: str) -> None:
    """Keep serving the ended session's dashboard until Ctrl-C (the caller's stack then closes the server)."""
    print(
        f"The dashboard stays up at {url}/dashboard with the final state: press Ctrl-C to stop.", flush=True
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("dashboard stopped", flush=True)


def report(args: argparse.Namespace, session: Session, store, models: Models) -> str:
    resume = resume_command(args, session.session_id)
    text = summarize(
        session.loop,
        store,
        session.session_id,
        store.url,
        session.monitor_url,
        resume,
        models,
        keeps_dashboard(args, session),
    )
    if session.feed is None:
        return text
    counts, bus = session.feed.counts, session.feed.bus
    consumed = (
        f"Bus {bus.url} feed {bus.feed}: {counts.delivered} bars delivered ({counts.redelivered} redelivered), "
        f"{session.loop.summary.duplicates} skipped as decided before, {counts.acked} acked"
    )
    return text.replace("\nState: ", f"\n{consumed}\nState: ", 1)


def main(argv: list[str] | None = None) -> int:
    """``make paper``: 0 when the session ran, 3 when it stopped early (one line on stderr says why)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    home = StateHome.from_env().prepare()
    store = open_store(args.state_db or home.trading_state_url)
    if args.kill:
        return engage_kill_switch(store, args)
    session_id = session_to_run(store, args)
    models = load_models(args)
    with ExitStack() as stack:
        session = set_up(args, stack, store, models, session_id)
        code = run_and_report(args, session, models, store)
        # Ctrl-C during the session ends it all; otherwise its final state stays up for whoever watches.
        if code != EXIT_INTERRUPTED and keeps_dashboard(args, session):
            hold_dashboard(session.monitor_url)
    return code


def run_and_report(args: argparse.Namespace, session: Session, models: Models, store) -> int:
    """Run the session, print its report; the exit status (0, or 3 stopped early, or 130 interrupted)."""
    from trading_core.live.loop import SessionStopped
    from trading_core.runtime.stored_json import StoredStateError

    resume = resume_command(args, session.session_id)
    try:
        run(args, session, models)
    except StoredStateError as error:
        raise SystemExit(str(error)) from None
    except SessionStopped as stopped:
        print(report(args, session, store, models))
        print(f"{stopped}; resume: {resume}", file=sys.stderr)
        return EXIT_STOPPED
    except KeyboardInterrupt:
        print(report(args, session, store, models))
        print(f"interrupted; resume: {resume}", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(report(args, session, store, models), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
