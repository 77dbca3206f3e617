"""The live trading loop: bars -> features -> the champion's decision -> the shared risk manager -> orders.

One path for every broker (:class:`trading_core.broker.base.Broker`): the local simulated broker fills through
the same cost and fill code as training and backtests, Alpaca paper trading through alpaca-py. Beside the
champion, an optional challenger decides in shadow on the same bars with its own simulated book (A/B test), and
a simulated mirror of the champion's book fills the champion's own orders through the shared cost model, so the
broker's fills can be reconciled against what the simulator expected.

Durability: every bar is written in two transactions. The first records the decisions and the order intents
(write-ahead) before anything reaches the broker; the second records the broker's answers, fills, positions, the
bar's alerts and the loop's own state (features, risk managers, simulated books, drift window and score, the
alert evaluator's memory) together with the bar's time. The state is a JSON document
(:mod:`trading_core.runtime.stored_json`): reading it back never runs code. After a crash the loop restores the
state of the last completed bar, hands the alerts the sinks never got to them, asks the broker about every
pending intent (client order ids are derived from the session, bar and symbol, so a re-sent order is the same
order), and replays from there: nothing is lost, nothing is sent twice, and the alerts are those of an
uninterrupted session.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import pandas as pd

from trading_core.broker.base import (
    OPEN_STATUSES,
    Broker,
    BrokerError,
    Fill,
    OrderRejected,
    OrderRequest,
    OrderState,
    RetryPolicy,
    call_with_retries,
    make_client_order_id,
)
from trading_core.broker.simulated import SimulatedBroker
from trading_core.features.streaming import StreamingFeatures
from trading_core.live.engine import Decision, DecisionEngine, PortfolioBook, shared_regime_model
from trading_core.live.sources import BarEvent, BarSourceError
from trading_core.live.state import CHALLENGER, CHAMPION, PENDING_SUBMIT, SUBMIT_UNKNOWN, TradingStateStore
from trading_core.market.limits import RiskLimits, TradingState
from trading_core.market.measures import drawdown_from_peak, var_of_returns
from trading_core.market.risk import MIN_VAR_ROWS, RiskManager
from trading_core.market.simulator import run_bar
from trading_core.monitoring.alerts import Alert, AlertEvaluator, AlertSink, AlertSnapshot
from trading_core.monitoring.data_quality import MARKET_CLOSED, PROCESSED, SKIPPED, DataQualityConfig
from trading_core.monitoring.drift import LiveDriftScore
from trading_core.monitoring.feed_watch import Arrival, FeedWatch
from trading_core.monitoring.live_metrics import LiveMetrics
from trading_core.runtime.stored_json import PickledStateError, StoredStateError, from_document, to_document

logger = logging.getLogger(__name__)

STATE_SCHEMA = "live_trading_loop_state"
# Version 1 was a pickle; it is refused, never loaded.
STATE_VERSION = 2


@dataclass(frozen=True)
class LiveConfig:
    """Settings of one paper-trading session.

    :param session_id: names the session in the state store and seeds its client order ids
    :param model_name: registered model the champion and challenger versions belong to
    :param calendar: exchange calendar for market hours (``None`` trades every bar it is given)
    :param decide_every: bars between decisions
    :param flatten_on_kill: close every position when the kill switch engages
    :param drift_window: feature rows kept for the live drift score
    :param drift_every: bars between drift scores
    :param max_bar_age_s: with a live stream, ``/readyz`` fails when no bar arrived for this long while the
        exchange is open (``None`` for replays)
    :param outage_grace_s: how long the broker may stay unreachable (timeouts, resets, 5xx or 429 after the
        retries) before the session stops, its state saved; until then bars go on without orders, marked with
        the last book the broker reported
    :param feed: names the bar source in the stored bar arrivals (data quality per feed and day)
    :param data_quality: the trailing window and thresholds the feed's alerts look at
    """

    session_id: str
    model_name: str = "rl_trading_agent"
    calendar: str | None = "XNYS"
    decide_every: int = 1
    flatten_on_kill: bool = True
    drift_window: int = 200
    drift_every: int = 50
    max_bar_age_s: float | None = None
    outage_grace_s: float = 60.0
    feed: str = "replay"
    data_quality: DataQualityConfig = field(default_factory=DataQualityConfig)

    def __post_init__(self) -> None:
        if not self.outage_grace_s >= 0:
            raise ValueError(
                f"outage_grace_s must be a non-negative number of seconds, got {self.outage_grace_s}"
            )


@dataclass
class RoleState:
    """One decision maker of the session: the champion on the broker, or the challenger in shadow."""

    role: str
    version: str
    engine: DecisionEngine
    peak_equity: float = float("nan")
    last_equity: float = float("nan")
    last_cash: float = float("nan")
    last_var: float = 0.0
    returns: deque = field(default_factory=lambda: deque(maxlen=500))


@dataclass
class LiveSummary:
    """What a run of the loop did."""

    bars: int = 0
    skipped_closed: int = 0
    decisions: int = 0
    orders_sent: int = 0
    fills: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    killed: bool = False
    outages: int = 0
    duplicates: int = 0
    status: str = "running"
    stop_reason: str | None = None


@dataclass(frozen=True)
class _BarClose:
    """What the close of a bar left for the decision: the kill switch, the latency clock, features, books."""

    killed: bool
    started: float
    values: np.ndarray | None
    books: list[PortfolioBook]


class SessionStopped(RuntimeError):
    """The loop stopped a session early with its state saved (an outage past its grace, a dead bar source).

    :param session_id: the session
    :param reason: why, in one line
    """

    def __init__(self, session_id: str, reason: str) -> None:
        super().__init__(f"paper-trading session {session_id} stopped: {reason}")
        self.session_id = session_id
        self.reason = reason


class _BrokerDown(Exception):
    """The broker cannot be reached now (an outage is on); the bar goes on without it."""


@dataclass
class _Outage:
    """The broker stopped answering at ``began`` (``time.monotonic``); ``error`` is its latest failure.

    ``answering`` is set while a bar probes the broker; any failure clears it. The outage ends once a whole bar
    went by with every call answered, so an outage of one route (orders only, positions only) stays one outage.
    """

    began: float
    error: str
    answering: bool = False


@dataclass(frozen=True)
class _BrokerView:
    """The champion's positions and cash as the broker last reported them."""

    positions: dict[str, float]
    cash: float


@dataclass
class _Sync:
    """What the broker told the loop during one bar (or a restart), recorded in one transaction with it.

    :param states: the broker's order states by client order id
    :param settled: orders the loop settled itself by client order id: (status, reason)
    :param alerts: (rule, message) of the differences found between the store and the broker
    :param positions: the broker's positions after the bar's fills, ``None`` when they were not read
    """

    states: dict[str, OrderState] = field(default_factory=dict)
    settled: dict[str, tuple[str, str]] = field(default_factory=dict)
    alerts: list[tuple[str, str]] = field(default_factory=list)
    positions: dict[str, float] | None = None


T = TypeVar("T")
# Quantities closer than this are the same position (the broker's strings round-trip through floats).
QTY_TOLERANCE = 1e-9


class LiveTradingLoop:
    """Runs a session over a stream of bar events.

    :param config: session settings
    :param store: durable state
    :param broker: where the champion's orders go
    :param champion: the champion's decision engine and registry version
    :param challenger: an optional challenger (decides in shadow)
    :param initial_cash: starting cash of the simulated books (mirror and challenger)
    :param metrics: Prometheus metrics (optional)
    :param alerts: alert rules and where alerts go (optional)
    :param retry: retry policy for broker calls
    :param history: bars before the first traded bar (``date, tic, open, high, low, close, volume``) that warm
        the features up; ignored when a saved session is resumed
    """

    def __init__(
        self,
        config: LiveConfig,
        store: TradingStateStore,
        broker: Broker,
        champion: tuple[DecisionEngine, str],
        challenger: tuple[DecisionEngine, str] | None = None,
        initial_cash: float | None = None,
        metrics: LiveMetrics | None = None,
        alerts: tuple[AlertEvaluator, AlertSink] | None = None,
        retry: RetryPolicy | None = None,
        history: pd.DataFrame | None = None,
    ) -> None:
        engine, version = champion
        self.spec = engine.spec
        self.tickers = list(self.spec.tickers)
        if challenger is not None and list(challenger[0].spec.tickers) != self.tickers:
            raise ValueError(
                f"challenger trades {challenger[0].spec.tickers}, champion {self.spec.tickers}: A/B needs one universe"
            )
        self.config, self.store, self.broker = config, store, broker
        self.metrics, self.retry = metrics, retry or RetryPolicy()
        self.alert_evaluator, self.alert_sink = alerts if alerts is not None else (None, None)
        simulation = self.spec.env_spec.simulation
        self.initial_cash = float(simulation.initial_amount if initial_cash is None else initial_cash)
        self.roles = [RoleState(CHAMPION, version, engine)]
        if challenger is not None:
            self.roles.append(RoleState(CHALLENGER, challenger[1], challenger[0]))
        # A prior's fit window (a year) outgrows the dates the features keep by default: keep what it reads.
        has_prior = any(role.engine.spec.prior is not None for role in self.roles)
        keep = {"keep_dates": max(role.engine.history_dates for role in self.roles)} if has_prior else {}
        self.features = StreamingFeatures(
            self.tickers,
            use_turbulence=self.spec.use_turbulence,
            history=history,
            regime_model=shared_regime_model([role.engine.spec for role in self.roles]),
            **keep,
        )
        # The mirror fills the champion's own orders through the shared cost model (slippage reconciliation);
        # the challenger's shadow book fills the challenger's orders.
        self.mirror = (
            None
            if isinstance(broker, SimulatedBroker)
            else SimulatedBroker(self.tickers, simulation, self.initial_cash)
        )
        self.shadow = SimulatedBroker(self.tickers, simulation, self.initial_cash) if challenger else None
        self.calendar = None
        if config.calendar:
            import exchange_calendars

            self.calendar = exchange_calendars.get_calendar(config.calendar)
        self.last_close: np.ndarray | None = None
        self._feature_closes: np.ndarray | None = None
        self.bar_count = 0
        self.last_bar_time: pd.Timestamp | None = None
        self.kill_handled = False
        self.recent_alerts: deque = deque(maxlen=20)
        self.recent_interventions: deque = deque(maxlen=20)
        reference = self.spec.reference_quantiles
        self.drift = LiveDriftScore(reference, config.drift_window, config.drift_every) if reference else None
        self.alive = False
        self._started_wall: pd.Timestamp | None = None
        self._last_bar_wall: pd.Timestamp | None = None
        self.summary = LiveSummary()
        self._outage: _Outage | None = None
        self._view = _BrokerView({}, self.initial_cash)
        self._reported_orders: set[str] = set()  # broker orders the store does not hold open, alerted once
        self._unsettled = (
            True  # whether the store may hold unanswered submits or unsent intents (asked at start)
        )
        # Bar arrivals wait here for the next traded bar's transaction (a replay after a crash re-creates the
        # ones lost with it); the feed watch is rebuilt from the stored ones on the first event.
        self._arrivals: list[Arrival] = []
        self._feed_watch: FeedWatch | None = None

    # -------------------------------------------------------------------------------- session and recovery

    def start(self) -> None:
        """Open the session, or resume it: restore the last completed bar's state and reconcile the broker."""
        session = self.store.get_session(self.config.session_id)
        if session is None:
            challenger = self.roles[1].version if len(self.roles) > 1 else None
            self.store.start_session(
                self.config.session_id,
                model_name=self.config.model_name,
                model_version=self.roles[0].version,
                broker=getattr(self.broker, "name", type(self.broker).__name__),
                challenger_version=challenger,
            )
            for role in self.roles:
                role.engine.reset(self.initial_cash)
        else:
            self._restore()
            if not session.kill_switch:  # a killed session stays killed: the loop only flattens it
                self.store.resume_session(self.config.session_id)
            champion = self.roles[0]
            cash = champion.last_cash if np.isfinite(champion.last_cash) else self.initial_cash
            self._view = _BrokerView(self.store.positions(self.config.session_id, CHAMPION), cash)
            self._reconcile()
        self._started_wall = pd.Timestamp.now(tz="UTC")
        self.alive = True

    def _engine_state(self) -> dict:
        """The loop's state after a bar, as data :mod:`trading_core.runtime.stored_json` stores exactly."""
        return {
            "features": self.features.snapshot(),
            "risk": [
                role.engine.risk.to_dict() if role.engine.risk is not None else None for role in self.roles
            ],
            "roles": [
                {
                    "peak_equity": r.peak_equity,
                    "last_equity": r.last_equity,
                    "last_cash": r.last_cash,
                    "last_var": r.last_var,
                    "returns": np.stack(list(r.returns)) if r.returns else None,
                }
                for r in self.roles
            ],
            "mirror": self.mirror.snapshot() if self.mirror is not None else None,
            "shadow": self.shadow.snapshot() if self.shadow else None,
            "broker": self.broker.snapshot() if isinstance(self.broker, SimulatedBroker) else None,
            "last_close": self.last_close,
            "bar_count": self.bar_count,
            "kill_handled": self.kill_handled,
            "drift": self.drift.state() if self.drift is not None else None,
            "alerts": self.alert_evaluator.state() if self.alert_evaluator is not None else None,
            "recent_alerts": list(self.recent_alerts),
            "recent_interventions": list(self.recent_interventions),
            "feature_closes": self._feature_closes,
        }

    def _restore(self) -> None:
        """Deliver the alerts the last process stored but never handed over, then load the last bar's state.

        :raises PickledStateError: the session was saved as a pickle by earlier versions (refused, never loaded)
        :raises StoredStateError: the saved state is foreign or corrupt
        """
        session_id = self.config.session_id
        self._redeliver_alerts()
        saved = self.store.load_broker_snapshot(session_id)
        if saved is None:
            for role in self.roles:
                role.engine.reset(self.initial_cash)
            return
        if "engine_state" in saved.payload:
            raise PickledStateError(
                f"saved state of session {session_id} is a pickle, the format before version {STATE_VERSION}; "
                "it is never loaded (it could run code): start a new session"
            )
        source = f"saved state of session {session_id}"
        state = from_document(saved.payload, STATE_SCHEMA, STATE_VERSION, source)
        try:
            self._load_state(state)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as error:
            what = f"missing {error}" if isinstance(error, KeyError) else str(error)
            raise StoredStateError(f"{source} is corrupt: {what}") from None
        self.last_bar_time = saved.bar_time
        logger.info(f"session {session_id} resumed after bar {saved.bar_time}")

    def _load_state(self, state: dict) -> None:
        simulation = self.spec.env_spec.simulation
        if len(state["risk"]) != len(self.roles) or len(state["roles"]) != len(self.roles):
            raise ValueError(f"it holds {len(state['roles'])} roles, the session has {len(self.roles)}")
        self.features = StreamingFeatures.from_snapshot(state["features"])
        for role, risk, saved in zip(self.roles, state["risk"], state["roles"], strict=True):
            role.engine.risk = RiskManager.from_dict(risk) if risk is not None else None
            role.peak_equity, role.last_equity = saved["peak_equity"], saved["last_equity"]
            role.last_cash, role.last_var = saved["last_cash"], saved["last_var"]
            role.returns.clear()
            role.returns.extend(saved["returns"] if saved["returns"] is not None else ())
        if state["mirror"] is not None:
            self.mirror = SimulatedBroker.from_snapshot(state["mirror"], simulation)
        if state["shadow"] is not None:
            self.shadow = SimulatedBroker.from_snapshot(state["shadow"], simulation)
        if state["broker"] is not None:
            if not isinstance(self.broker, SimulatedBroker):
                raise RuntimeError(
                    "the session traded on the local simulated broker; resume it with that broker"
                )
            self.broker = SimulatedBroker.from_snapshot(state["broker"], simulation)
        self.last_close = state["last_close"]
        self.bar_count = state["bar_count"]
        self.kill_handled = state["kill_handled"]
        if self.drift is not None and state["drift"] is not None:
            self.drift.load_state(state["drift"])
        if self.alert_evaluator is not None and state["alerts"] is not None:
            self.alert_evaluator.load_state(state["alerts"])
        self.recent_alerts.extend(state["recent_alerts"])
        self.recent_interventions.extend(state["recent_interventions"])
        self._feature_closes = state["feature_closes"]

    def _reconcile(self) -> None:
        """Bring the store in line with the broker after a restart (the broker is the truth): settle the orders
        whose submit got no answer, update open orders and their fills, compare positions, in one transaction.
        An unreachable broker starts an outage, which the bars ride out."""
        sync = _Sync()
        with contextlib.suppress(_BrokerDown):
            self._settle_submissions(None, sync)
            self._reconcile_orders(sync)
            self._reconcile_positions(sync, [])
        with self.store.transaction():
            alerts = self._record_sync(sync)
        self._deliver(alerts)

    # ------------------------------------------------------------------------------- the broker and outages

    @property
    def _reachable(self) -> bool:
        """Whether the broker may be called: no outage, or one the bar is probing."""
        return self._outage is None or self._outage.answering

    def _broker_call(self, action: str, call: Callable[[], T]) -> T:
        """``call`` under the retry policy. A broker failure other than an order's rejection (a timeout, a lost
        connection, 5xx or 429 after the retries, a refused key) starts an outage, alerted once; while it lasts
        the broker is called only when a bar probes it.

        :param action: what the call does, for the log
        :raises _BrokerDown: the broker did not answer, or an outage is on and no probe runs
        :raises OrderRejected: the broker refused an order (a verdict on the order, not an outage)
        """
        if not self._reachable:
            raise _BrokerDown(action)
        began = time.monotonic()
        try:
            return call_with_retries(call, self.retry)
        except OrderRejected:
            raise
        except BrokerError as error:
            if self._outage is not None:
                self._outage.error, self._outage.answering = str(error), False
            else:
                self._outage = _Outage(began, str(error))
                self.summary.outages += 1
                self._raise_now(
                    "broker_outage",
                    "critical",
                    f"broker unreachable ({error}); no orders are sent until it answers, and the session stops "
                    f"after {self.config.outage_grace_s:g} s without an answer",
                )
            raise _BrokerDown(action) from None

    def _end_outage(self) -> None:
        """End an outage once a whole bar's calls were answered (reconciled first): the alert's resolution."""
        if self._outage is None or not self._outage.answering:
            return
        down, self._outage = time.monotonic() - self._outage.began, None
        message = f"broker answers again after {down:.1f} s unreachable; reconciled and trading again"
        logger.info(f"session {self.config.session_id}: {message}")
        self._raise(Alert("broker_outage", "info", message, pd.Timestamp.now(tz="UTC"), True))

    def _check_outage_grace(self) -> None:
        """Stop the session once the broker has been unreachable for longer than the configured grace.

        :raises SessionStopped: the outage outlasted ``outage_grace_s``
        """
        if self._outage is None or self._outage.answering:
            return
        down = time.monotonic() - self._outage.began
        if down > self.config.outage_grace_s:
            grace = self.config.outage_grace_s
            raise SessionStopped(
                self.config.session_id,
                f"the broker was unreachable for {down:.1f} s, past the {grace:g} s grace: {self._outage.error}",
            )

    def _sync_broker(self, bar_time: pd.Timestamp, sync: _Sync) -> None:
        """Reach the broker before a bar: ask about the orders whose submit got no answer; during an outage
        probe every route the bar reads and reconcile before anything is traded (one failure and the bar goes
        on without the broker)."""
        probing = self._outage is not None
        if self._outage is not None:
            self._outage.answering = True
        with contextlib.suppress(_BrokerDown):
            if probing:
                self._broker_call("get account", self.broker.account)
            self._settle_submissions(bar_time, sync)
            if probing:
                self._reconcile_orders(sync)
                self._reconcile_positions(sync, [])

    def _settle_submissions(self, bar_time: pd.Timestamp | None, sync: _Sync) -> None:
        """Ask the broker about the orders whose submit got no answer, and the intents a crash left unsent.

        One the broker holds takes the broker's state (an alert tells when its submit went unanswered); one it
        does not hold is canceled with an alert, since its bar has passed. Orders of the bar about to run (or, on
        a restart, of the bar a crash interrupted) are left alone: that bar is replayed and sends them again.

        :param bar_time: the bar about to run; ``None`` on a restart
        """
        if not self._unsettled:
            return
        unsettled = self.store.orders(self.config.session_id, statuses=(PENDING_SUBMIT, SUBMIT_UNKNOWN))
        replayed_any = False
        for row in unsettled.itertuples(index=False):
            decided = pd.Timestamp(row.decision_time)
            if bar_time is not None:
                replayed = decided >= bar_time
            else:
                replayed = self.last_bar_time is None or decided > self.last_bar_time
            if replayed:
                replayed_any = True  # asked about once its bar has run again
                continue
            cid = row.client_order_id
            state = self._broker_call(f"look up order {cid}", lambda cid=cid: self.broker.get_order(cid))
            what = f"{row.side} {row.qty:g} {row.symbol} decided at {decided}"
            if state is not None:
                sync.states[cid] = state
                self.summary.orders_sent += 1
                if row.status == SUBMIT_UNKNOWN:
                    sync.alerts.append(
                        (
                            "order_reconciliation",
                            f"order {cid} ({what}) got no answer when submitted; the broker holds it as "
                            f"{state.status}, {state.filled_qty:g} filled",
                        )
                    )
            else:
                sync.settled[cid] = ("canceled", "the broker never received it and its bar has passed")
                sync.alerts.append(
                    (
                        "order_reconciliation",
                        f"order {cid} ({what}, {row.status}) is unknown to the broker after its bar; canceled",
                    )
                )
        self._unsettled = replayed_any

    def _reconcile_orders(self, sync: _Sync) -> None:
        """Bring the orders that can still fill up to date: the broker's open orders in one call, then, by
        client order id, each order the store holds open (or the bar sent) that left that list. An order open in
        the store that the broker does not know is canceled with an alert; an order open at the broker that the
        store does not hold open is alerted once."""
        listed = self._broker_call("list open orders", self.broker.open_orders)
        at_broker = {state.client_order_id: state for state in listed}
        stored = self.store.orders(self.config.session_id, statuses=sorted(OPEN_STATUSES))
        tracked = [*stored["client_order_id"], *(cid for cid, state in sync.states.items() if state.is_open)]
        for cid in dict.fromkeys(tracked):
            if cid in sync.settled:
                continue
            state = at_broker.get(cid)
            if state is None:
                state = self._broker_call(f"look up order {cid}", lambda cid=cid: self.broker.get_order(cid))
            if state is not None:
                sync.states[cid] = state
                continue
            sync.settled[cid] = ("canceled", "the broker no longer knows it")
            sync.alerts.append(
                (
                    "order_reconciliation",
                    f"order {cid} is open in the store but unknown to the broker; canceled",
                )
            )
        known = {*tracked, *sync.states, *sync.settled, *self._reported_orders}
        for cid, state in at_broker.items():
            if cid in known:
                continue
            row = self.store.get_order(cid)
            if row is not None and row["status"] in (PENDING_SUBMIT, SUBMIT_UNKNOWN):
                continue  # sent in the bar a crash interrupted; that bar is replayed
            self._reported_orders.add(cid)
            held = (
                f"the store holds it as {row['status']}" if row is not None else "the session never sent it"
            )
            sync.alerts.append(
                (
                    "order_reconciliation",
                    f"order {cid} ({state.side} {state.qty:g} {state.symbol}) is {state.status} at the broker "
                    f"but {held}",
                )
            )

    def _reconcile_positions(self, sync: _Sync, broker_fills: list[Fill]) -> None:
        """Compare the broker's positions with the store's plus the fills recorded since; a difference is alerted
        with its numbers and the broker's positions are kept. A fill can land between reading the orders and
        the positions, so a difference is looked at once more before it counts."""
        positions = self._broker_call("get positions", self.broker.positions)
        differences = self._position_differences(positions, sync, broker_fills)
        if differences:
            self._reconcile_orders(sync)
            positions = self._broker_call("get positions", self.broker.positions)
            differences = self._position_differences(positions, sync, broker_fills)
        if differences and all(rule != "position_reconciliation" for rule, _ in sync.alerts):
            sync.alerts.append(
                (
                    "position_reconciliation",
                    f"positions differ from the store's plus its fills: {'; '.join(differences)}; "
                    "the broker's are kept",
                )
            )
        sync.positions = positions

    def _position_differences(
        self, positions: dict[str, float], sync: _Sync, broker_fills: list[Fill]
    ) -> list[str]:
        """``SYMBOL: expected x, broker y`` for each symbol whose broker position is not the stored one plus the
        fills since."""
        expected = self._expected_positions(sync, broker_fills)
        return [
            f"{symbol}: expected {expected.get(symbol, 0.0):g}, broker {positions.get(symbol, 0.0):g}"
            for symbol in sorted(set(expected) | set(positions))
            if abs(expected.get(symbol, 0.0) - positions.get(symbol, 0.0)) > QTY_TOLERANCE
        ]

    def _expected_positions(self, sync: _Sync, broker_fills: list[Fill]) -> dict[str, float]:
        """The stored positions plus the fills since (the new fills of the broker's order states, or the local
        broker's own fills); flat symbols left out."""
        expected = dict(self.store.positions(self.config.session_id, CHAMPION))
        if isinstance(self.broker, SimulatedBroker):
            moves = [(fill.symbol, fill.qty if fill.side == "buy" else -fill.qty) for fill in broker_fills]
        else:
            moves = [
                (state.symbol, qty if state.side == "buy" else -qty)
                for state in sync.states.values()
                if (qty := self._new_fill_qty(state)) > 0
            ]
        for symbol, qty in moves:
            expected[symbol] = expected.get(symbol, 0.0) + qty
        return {symbol: qty for symbol, qty in expected.items() if abs(qty) > QTY_TOLERANCE}

    def _record_sync(self, sync: _Sync) -> list[tuple[int, Alert]]:
        """Write what the broker told the bar, inside the bar's transaction; the differences' alerts, stored.

        When the broker's positions could not be read, the stored ones move by the fills recorded here, so the
        store's positions always equal its fills and the next comparison with the broker stays exact.
        """
        positions = sync.positions
        if positions is None and sync.states:
            positions = self._expected_positions(sync, [])
        for cid, (status, reason) in sync.settled.items():
            self.store.update_order(cid, status=status, status_reason=reason)
        for cid, state in sync.states.items():
            if cid not in sync.settled:
                self._record_order_state(state)
        if positions is not None:
            self.store.set_positions(self.config.session_id, CHAMPION, positions)
        now = pd.Timestamp.now(tz="UTC")
        return [
            self._record_alert(Alert(rule, "warning", message, now, False)) for rule, message in sync.alerts
        ]

    # ----------------------------------------------------------------------------------------------- bars

    def market_open(self, bar_end: pd.Timestamp) -> bool:
        """Whether the exchange was open during the bar ending at ``bar_end``."""
        if self.calendar is None:
            return True
        minute = (bar_end - pd.Timedelta(minutes=1)).floor("min")
        return bool(self.calendar.is_open_on_minute(minute))

    def run(
        self,
        events: Iterable[BarEvent],
        max_bars: int | None = None,
        on_done: Callable[[BarEvent], None] | None = None,
    ) -> LiveSummary:
        """Process bar events until the source ends (the session is then ``finished``) or ``max_bars`` were
        processed (``stopped``); a killed session stays ``killed``.

        An event at or before the last committed bar (a bus's redelivery, a replay from the top after a restart)
        is skipped and counted in ``duplicates``: each bar is decided once.

        :param on_done: called with each event once the loop is done with it (its bar committed, or skipped),
            never before: a bus acks the bar's delivery there, so a crash before it gets the bar again
        :raises SessionStopped: the broker stayed unreachable past ``outage_grace_s``, or the bar source failed:
            the session is ``stopped`` with the reason and its state saved, ready to resume
        """
        self.start()
        try:
            for event in events:
                if self.last_bar_time is not None and event.timestamp <= self.last_bar_time:
                    self.summary.duplicates += 1  # already processed before a restart
                self.process(event)  # a duplicate is only recorded as an arrival there, never decided again
                if on_done is not None:
                    on_done(event)
                if max_bars is not None and self.summary.bars >= max_bars:
                    self._end_session("stopped", f"max_bars={max_bars} bars processed")
                    break
            else:
                self._end_session("finished", "the bars ran out")
        except (SessionStopped, BarSourceError) as error:
            reason = error.reason if isinstance(error, SessionStopped) else f"the bar source failed: {error}"
            self._end_session("stopped", reason)
            self._raise_now("session_stopped", "critical", f"session stopped with its state saved: {reason}")
            if isinstance(error, SessionStopped):
                raise
            raise SessionStopped(self.config.session_id, reason) from None
        except KeyboardInterrupt:
            self._end_session("stopped", "interrupted")
            raise
        finally:
            self.alive = False
        return self.summary

    def _end_session(self, status: str, reason: str) -> None:
        """Mark the session finished or stopped (a killed one stays killed) and note the outcome in the summary."""
        end = self.store.finish_session if status == "finished" else self.store.stop_session
        end(self.config.session_id, reason)
        session = self.store.get_session(self.config.session_id)
        self.summary.status = session.status if session is not None else status
        self.summary.stop_reason = reason

    def process(self, event: BarEvent) -> None:
        """One bar in the market loop's order (:func:`~trading_core.market.simulator.run_bar`): earlier orders
        fill, the close marks every book and its risk manager sees the bar, the agents decide; then the orders
        go out, open orders, fills and positions are reconciled with the broker, and the state is saved.

        Before the bar the orders whose submit got no answer are settled and, during an outage, every route the
        bar reads is probed and reconciled before anything is traded. While the broker cannot be reached the bar
        goes on without decisions or orders, its book the last one the broker reported; the outage ends after a
        bar whose every call was answered.

        Every event's arrival is recorded (:meth:`_note_arrival`), with the bar's transaction: one outside market
        hours, or one at or before the last traded bar (skipped; a replay's re-delivery after a restart is not an
        arrival and is not recorded), as well as the traded bar.

        :raises SessionStopped: the broker has been unreachable for longer than ``outage_grace_s`` (checked
            before the bar, whose state is then the last bar's, and after the bar is saved)
        """
        if not self.market_open(event.timestamp):
            self._note_arrival(event, MARKET_CLOSED)
            self.summary.skipped_closed += 1
            return
        if self.last_bar_time is not None and event.timestamp <= self.last_bar_time:
            if event.received_at is not None:
                self._note_arrival(event, SKIPPED)
            return
        self._note_arrival(event, PROCESSED)
        session_id, bar_time = self.config.session_id, event.timestamp
        bars = {s: b for s, b in event.bars.items() if s in self.tickers}
        sync = _Sync()
        self._sync_broker(bar_time, sync)
        self._check_outage_grace()
        (broker_fills, mirror_fills), close, decisions = run_bar(
            lambda: self._fill(bar_time, bars, event.quotes),
            lambda: self._close(bar_time, bars),
            lambda close: self._decide(bar_time, close),
        )
        killed, started = close.killed, close.started
        orders = self._orders(decisions)
        decided = time.perf_counter()
        if decisions:
            self.summary.latencies_ms.append((decided - started) * 1e3)
        with self.store.transaction():  # write-ahead: decisions and intents before the broker hears of them
            for role, decision, book in decisions:
                self._record_decision(role, decision, book, (decided - started) * 1e3)
            # Intents written already were written before a restart: that process may have sent them.
            resent = set()
            for request, expected in orders:
                if not self._record_intent(request, bar_time, expected):
                    resent.add(request.client_order_id)
        for request, _ in orders:
            self._submit(request, sync, resent=request.client_order_id in resent)
        for role, decision, _ in decisions:
            if role.role == CHALLENGER and self.shadow is not None:
                for request, _ in self._role_orders(role, decision, self.shadow.positions(), shadow=True):
                    self.shadow.submit_order(request)
        if killed and not self.kill_handled and self._reachable:
            with contextlib.suppress(_BrokerDown):  # flattened on the first bar the broker answers
                self._flatten(bar_time, sync)
        if self._reachable:
            with contextlib.suppress(_BrokerDown):
                self._reconcile_orders(sync)
                self._reconcile_positions(sync, broker_fills)
        if sync.positions is not None:
            self._view = _BrokerView(sync.positions, self._view.cash)
        with self.store.transaction():
            reconciled = self._record_sync(sync)
            for fill in broker_fills:
                self._record_fill(fill, "broker")
            for fill in mirror_fills:
                self._record_fill(fill, "simulated")
            for role in self.roles:
                self._record_mark(role, bar_time)
            if self.shadow is not None:
                self.store.set_positions(session_id, CHALLENGER, self.shadow.positions())
            self.bar_count += 1
            self.last_bar_time = bar_time
            # Finished orders and fills are in the store now; the simulated books keep only what is open.
            for book in (self.broker, self.mirror, self.shadow):
                if isinstance(book, SimulatedBroker):
                    book.compact()
            # Drift and alerts belong to the bar: stored with it, or (killed before the commit) redone with it.
            self._update_drift(close.values)
            self._store_arrivals()
            alerts = self._monitor(bar_time)
            payload = to_document(STATE_SCHEMA, STATE_VERSION, self._engine_state())
            self.store.save_broker_snapshot(session_id, bar_time, payload)
            self.store.set_last_bar_time(session_id, bar_time)
        self.summary.bars += 1
        self._last_bar_wall = pd.Timestamp.now(tz="UTC")
        self.summary.fills += len(broker_fills)
        self._deliver([*reconciled, *alerts])
        self._observe(bar_time)
        self._end_outage()
        self._check_outage_grace()

    def _fill(self, bar_time: pd.Timestamp, bars: dict, quotes: dict) -> tuple[list[Fill], list[Fill]]:
        """The open, the exchange's side of the bar: earlier orders fill (the local broker, the simulated
        mirror and the challenger's shadow book); the broker's and the mirror's fills."""
        broker_fills = (
            self.broker.on_bar(bar_time, bars, quotes) if isinstance(self.broker, SimulatedBroker) else []
        )
        mirror_fills = self.mirror.on_bar(bar_time, bars, quotes) if self.mirror is not None else broker_fills
        if self.shadow is not None:
            self.shadow.on_bar(bar_time, bars, quotes)
        return broker_fills, mirror_fills

    def _close(self, bar_time: pd.Timestamp, bars: dict) -> _BarClose:
        """The close: the bar's features, and every role's book marked to it (its risk manager sees the bar).
        The decision latency is timed from here (features, marks, decisions, orders)."""
        killed = self._kill_switch_engaged()
        started = time.perf_counter()
        values = self.features.update_values(
            bar_time, {s: (b.open, b.high, b.low, b.close, b.volume) for s, b in bars.items()}
        )
        closes = self._closes(bars)
        asset_returns = self._asset_returns(values) if values is not None else None
        books = []
        for role in self.roles:
            book = self._book(role)
            self._mark(role, book, closes, values, asset_returns)
            books.append(book)
        return _BarClose(killed, started, values, books)

    def _decide(
        self, bar_time: pd.Timestamp, close: _BarClose
    ) -> list[tuple[RoleState, Decision, PortfolioBook]]:
        """The decision: each role's agent decides on the close (every ``decide_every`` bars; not once killed, nor
        while the broker cannot be reached, so the challenger's shadow stays comparable)."""
        decisions: list[tuple[RoleState, Decision, PortfolioBook]] = []
        if close.killed or not self._reachable or self.bar_count % self.config.decide_every != 0:
            return decisions
        for role, book in zip(self.roles, close.books, strict=True):
            matrix = self._feature_matrix(role, close.values)
            if matrix is None:
                continue
            book.returns = list(role.returns)
            decisions.append((role, role.engine.decide(bar_time, *matrix, book), book))
        return decisions

    # ------------------------------------------------------------------------------------------- helpers

    def _closes(self, bars: dict) -> np.ndarray:
        closes = np.array([bars[s].close if s in bars else np.nan for s in self.tickers])
        if self.last_close is not None:
            closes = np.where(np.isnan(closes), self.last_close, closes)
        self.last_close = closes
        return np.nan_to_num(closes)

    def _book(self, role: RoleState) -> PortfolioBook:
        if role.role == CHAMPION:
            self._view = self._read_view()
            positions, cash = self._view.positions, self._view.cash
        else:
            assert self.shadow is not None  # a challenger always has its shadow book
            positions, cash = self.shadow.positions(), self.shadow.account().cash
        return PortfolioBook(cash, np.array([positions.get(s, 0.0) for s in self.tickers]))

    def _read_view(self) -> _BrokerView:
        """The champion's positions and cash from the broker; the last ones it reported while it cannot answer."""
        try:
            positions = self._broker_call("get positions", self.broker.positions)
            account = self._broker_call("get account", self.broker.account)
        except _BrokerDown:
            return self._view
        return _BrokerView(positions, account.cash)

    def _mark(
        self,
        role: RoleState,
        book: PortfolioBook,
        closes: np.ndarray,
        values: np.ndarray | None,
        asset_returns: np.ndarray | None,
    ) -> None:
        """Mark a book to the bar's close, update its VaR, and let its risk manager see the bar.

        The VaR is the risk manager's historical VaR of the current book over the spec's ``var_lookback`` bars at
        its ``var_confidence`` (the default limits' confidence when the spec has no risk limits).
        """
        equity = book.cash + float(book.holdings @ closes)
        columns = self.features.value_columns
        has_turbulence = values is not None and "turbulence" in columns
        turbulence = float(values[0, columns.index("turbulence")]) if has_turbulence else 0.0
        role.engine.mark(equity, turbulence)
        role.peak_equity = equity if not np.isfinite(role.peak_equity) else max(role.peak_equity, equity)
        role.last_equity, role.last_cash = equity, book.cash
        if asset_returns is not None:
            role.returns.append(asset_returns)
        simulation = role.engine.spec.env_spec.simulation
        limits = simulation.risk
        confidence = limits.var_confidence if limits is not None else RiskLimits.var_confidence
        history = np.array(role.returns)[-simulation.var_lookback :]
        if len(history) >= MIN_VAR_ROWS and equity > 0:
            pnl = history @ (book.holdings * closes) / equity
            role.last_var = var_of_returns(pnl, confidence)

    def _asset_returns(self, values: np.ndarray) -> np.ndarray:
        """Close-to-close returns between the last two feature dates (what the risk manager's VaR uses)."""
        closes = values[:, self.features.value_columns.index("close")]
        previous, self._feature_closes = self._feature_closes, closes
        return np.zeros(len(self.tickers)) if previous is None else closes / previous - 1.0

    def _drawdown(self, role: RoleState) -> float:
        if not role.peak_equity > 0:  # no mark yet (NaN) or never any positive equity
            return 0.0
        return float(max(drawdown_from_peak(role.last_equity, role.peak_equity), 0.0))

    def _trading_state(self, role: RoleState) -> TradingState:
        risk = role.engine.risk
        return TradingState(int(risk.state[0])) if risk is not None else TradingState.ACTIVE

    def _record_mark(self, role: RoleState, bar_time: pd.Timestamp) -> None:
        self.store.record_equity(
            session_id=self.config.session_id,
            role=role.role,
            bar_time=bar_time,
            equity=role.last_equity,
            cash=role.last_cash,
            drawdown=self._drawdown(role),
            var_95=role.last_var,
            trading_state=self._trading_state(role).name,
        )

    def _feature_matrix(self, role: RoleState, values: np.ndarray | None):
        if values is None:
            return None
        if not role.engine.needs_history:
            return values, self.features.value_columns
        return role.engine.feature_matrix(self.features.latest_window(role.engine.history_dates))

    def _orders(self, decisions) -> list[tuple[OrderRequest, float]]:
        for role, decision, book in decisions:
            if role.role == CHAMPION:
                return self._role_orders(role, decision, dict(zip(self.tickers, book.holdings, strict=True)))
        return []

    def _role_orders(
        self, role: RoleState, decision: Decision, positions: dict[str, float], shadow: bool = False
    ) -> list[tuple[OrderRequest, float]]:
        orders = []
        session = self.config.session_id + ("/challenger" if shadow else "")
        for symbol, target, price in zip(self.tickers, decision.approved, decision.prices, strict=True):
            delta = float(np.trunc(target - positions.get(symbol, 0.0)))
            if delta == 0:
                continue
            side = "buy" if delta > 0 else "sell"
            request = OrderRequest(
                client_order_id=make_client_order_id(session, decision.bar_time, symbol, side),
                symbol=symbol,
                side=side,
                qty=abs(delta),
            )
            orders.append((request, float(price)))
        return orders

    def _submit(self, request: OrderRequest, sync: _Sync, resent: bool = False) -> None:
        """Send one order. Only the broker's rejection decides it (``rejected``, with the broker's reason); an
        answer that never came leaves it ``unknown``, asked about on the next bars; during an outage it is not
        sent at all: ``canceled``, or ``unknown`` when it is ``resent`` (written down before a restart, so the
        process before may have sent it and only the broker can say)."""
        cid = request.client_order_id
        if not self._reachable:
            if resent:
                sync.settled[cid] = (SUBMIT_UNKNOWN, "not sent again: the broker was unreachable")
                self._unsettled = True
            else:
                sync.settled[cid] = ("canceled", "not sent: the broker was unreachable")
            return
        try:
            state = self._broker_call(f"submit order {cid}", lambda: self.broker.submit_order(request))
        except OrderRejected as error:
            logger.warning(f"order {cid} rejected: {error.reason}")
            sync.settled[cid] = ("rejected", error.reason)
            if self.metrics:
                self.metrics.observe_order("rejected")
            return
        except _BrokerDown:
            error = self._outage.error if self._outage is not None else "no answer"
            sync.settled[cid] = (SUBMIT_UNKNOWN, f"the submit got no answer: {error}")
            self._unsettled = True
            if self.metrics:
                self.metrics.observe_order(SUBMIT_UNKNOWN)
            return
        # An order whose submit went unanswered never reaches the mirror: filled there bars later, it would
        # misstate the slippage.
        if self.mirror is not None:
            self.mirror.submit_order(request)
        self.summary.orders_sent += 1
        if self.metrics:
            self.metrics.observe_order(str(state.status))
        sync.states[cid] = state

    def _new_fill_qty(self, state: OrderState) -> float:
        """Shares the broker filled since the store last heard of the order (0 for the local broker, whose fills
        arrive as its own :class:`Fill` s)."""
        if isinstance(self.broker, SimulatedBroker) or not state.filled_avg_price:
            return 0.0
        before = self.store.get_order(state.client_order_id)
        previous = float(before["filled_qty"] or 0.0) if before else 0.0
        return max(state.filled_qty - previous, 0.0)

    def _record_order_state(self, state: OrderState) -> None:
        new_fill = self._new_fill_qty(state)
        self.store.update_order(
            state.client_order_id,
            status=state.status,
            broker_order_id=state.broker_order_id,
            filled_qty=state.filled_qty,
            filled_avg_price=state.filled_avg_price,
        )
        if new_fill > 0:
            # The broker reports cumulative fills; the new part is booked at the average price.
            self.store.record_fill(
                client_order_id=state.client_order_id,
                session_id=self.config.session_id,
                symbol=state.symbol,
                side=state.side,
                qty=new_fill,
                price=float(state.filled_avg_price),
                filled_at=state.updated_at,
                source="broker",
            )
            self.summary.fills += 1

    def _record_intent(
        self, request: OrderRequest, bar_time: pd.Timestamp, expected_price: float | None = None
    ) -> bool:
        """Write an order down before the broker hears of it (a restart then knows to ask about it).

        :return: ``False`` when it was written already (its bar is replayed after a restart)
        """
        return self.store.record_order_intent(
            client_order_id=request.client_order_id,
            session_id=self.config.session_id,
            symbol=request.symbol,
            side=request.side,
            qty=request.qty,
            decision_time=bar_time,
            expected_price=expected_price,
        )

    def _record_fill(self, fill: Fill, source: str) -> None:
        self.store.record_fill(
            client_order_id=fill.client_order_id,
            session_id=self.config.session_id,
            symbol=fill.symbol,
            side=fill.side,
            qty=fill.qty,
            price=fill.price,
            filled_at=fill.filled_at,
            commission=fill.commission,
            spread_cost=fill.spread_cost,
            impact_cost=fill.impact_cost,
            source=source,
        )

    def _record_decision(
        self, role: RoleState, decision: Decision, book: PortfolioBook, latency_ms: float
    ) -> None:
        session_id = self.config.session_id
        equity = book.cash + float(book.holdings @ decision.prices)
        self.store.record_decision(
            session_id=session_id,
            role=role.role,
            bar_time=decision.bar_time,
            model_version=role.version,
            targets=dict(zip(self.tickers, decision.targets.tolist(), strict=True)),
            approved=dict(zip(self.tickers, decision.approved.tolist(), strict=True)),
            latency_ms=latency_ms,
            cash=book.cash,
            equity=equity,
        )
        if decision.review is not None:
            rows = [
                {
                    "rule": i.rule,
                    "symbol": self.tickers[i.asset] if i.asset is not None else None,
                    "requested": i.requested,
                    "approved": i.approved,
                    "reason": i.reason,
                }
                for i in decision.review.interventions(self.bar_count)
            ]
            if rows:
                self.store.record_interventions(session_id, role.role, decision.bar_time, rows)
                if role.role == CHAMPION:
                    self.recent_interventions.extend(
                        {
                            "time": decision.bar_time.isoformat(),
                            **{k: r[k] for k in ("rule", "symbol", "reason")},
                        }
                        for r in rows
                    )
        self.summary.decisions += role.role == CHAMPION
        if self.metrics:
            self.metrics.observe_decision(role.role, latency_ms / 1e3)

    def _update_drift(self, values: np.ndarray | None) -> None:
        """Add the bar's rows to the model-drift score (the largest PSI against the training deciles)."""
        if values is None or self.drift is None:
            return
        columns = self.features.value_columns
        self.drift.update(values[:, [columns.index(c) for c in self.drift.columns]], self.bar_count)

    def _kill_switch_engaged(self) -> bool:
        session = self.store.get_session(self.config.session_id)
        return bool(session is not None and session.kill_switch)

    def _flatten(self, bar_time: pd.Timestamp, sync: _Sync) -> None:
        """Cancel open orders and, when configured, close every position with orders of the session's own.

        :raises _BrokerDown: the broker stopped answering; the kill is handled again on a later bar
        """
        closing_session = self.config.session_id + "/kill"
        # A process killed after recording this bar's closing orders got past the cancel. Cancelling again would
        # cancel the closing orders it sent, and their client order ids could not send them again. (The local
        # broker comes back with the last bar's state, that cancel undone: it cancels again.)
        stored = self.store.orders(self.config.session_id)
        closing_started = not isinstance(self.broker, SimulatedBroker) and any(
            row.client_order_id == make_client_order_id(closing_session, bar_time, row.symbol, row.side)
            for row in stored[stored["decision_time"] == bar_time].itertuples(index=False)
        )
        if not closing_started:
            self._broker_call("cancel all orders", self.broker.cancel_all_orders)
        if self.config.flatten_on_kill:
            positions = self._broker_call("get positions", self.broker.positions)
            closing = []
            for symbol, qty in positions.items():
                side = "sell" if qty > 0 else "buy"
                request = OrderRequest(
                    client_order_id=make_client_order_id(closing_session, bar_time, symbol, side),
                    symbol=symbol,
                    side=side,
                    qty=abs(qty),
                )
                closing.append(request)
            with self.store.transaction():
                resent = {r.client_order_id for r in closing if not self._record_intent(r, bar_time)}
            for request in closing:
                self._submit(request, sync, resent=request.client_order_id in resent)
            if not self._reachable:
                raise _BrokerDown("close positions")
        self.kill_handled = True
        self.summary.killed = True
        session = self.store.get_session(self.config.session_id)
        closed = ", positions closed" if self.config.flatten_on_kill else ""
        self._raise_now(
            "kill_switch", "critical", f"kill switch engaged: {session.kill_reason}; orders canceled{closed}"
        )

    def _raise_now(self, rule: str, severity: str, message: str) -> None:
        self._raise(Alert(rule, severity, message, pd.Timestamp.now(tz="UTC"), False))

    def _raise(self, alert: Alert) -> None:
        """Store an alert and deliver it at once (alerts outside a bar: reconciliation, the kill switch)."""
        self._deliver([self._record_alert(alert)])

    def _record_alert(self, alert: Alert) -> tuple[int, Alert]:
        """Store an alert in the open transaction (the bar's, for the rules'), waiting in the outbox."""
        self.recent_alerts.append(alert.to_payload(self.config.session_id))
        alert_id = self.store.record_alert(
            self.config.session_id,
            alert.rule,
            alert.severity,
            alert.message,
            raised_at=alert.raised_at,
            resolved=alert.resolved,
        )
        return alert_id, alert

    def _deliver(self, alerts: list[tuple[int, Alert]]) -> None:
        """Hand stored alerts to the sink (or the log), then take them out of the outbox."""
        for alert_id, alert in alerts:
            if self.metrics:
                self.metrics.observe_alert(alert.rule)
            if self.alert_sink is not None:
                self.alert_sink.send(alert)
            else:
                logger.warning(f"[{alert.severity}] {alert.rule}: {alert.message}")
            self.store.mark_alert_delivered(alert_id)

    def _redeliver_alerts(self) -> None:
        """Deliver what a killed process stored but never handed over (at least once: it may have just sent it)."""
        pending = self.store.undelivered_alerts(self.config.session_id)
        alerts = [
            (
                int(row.id),
                Alert(row.rule, row.severity, row.message, row.raised_at.to_pydatetime(), row.resolved),
            )
            for row in pending.itertuples(index=False)
        ]
        if alerts:
            logger.info(
                f"session {self.config.session_id}: delivering {len(alerts)} alert(s) stored before the restart"
            )
        self._deliver(alerts)

    def _monitor(self, bar_time: pd.Timestamp) -> list[tuple[int, Alert]]:
        """The bar's alerts, evaluated and stored in the bar's transaction; delivered once it committed."""
        if self.alert_evaluator is None:
            return []
        champion = self.roles[0]
        snapshot = AlertSnapshot(
            drawdown=self._drawdown(champion),
            trading_state=self._trading_state(champion),
            last_bar_time=bar_time.timestamp(),
            market_open=True,
            drift_score=self.drift.score if self.drift is not None else None,
            feed=self._watch().health(),
        )
        return [self._record_alert(alert) for alert in self.alert_evaluator.evaluate(snapshot)]

    # ------------------------------------------------------------------------------------ bar arrivals

    def _watch(self) -> FeedWatch:
        """The feed watch, rebuilt from the session's stored arrivals on first use (a resumed loop then watches
        as the one before did)."""
        if self._feed_watch is None:
            quality = self.config.data_quality
            stored = self.store.bar_arrivals(
                self.config.session_id, last=quality.window_bars + 1, handlings=(PROCESSED, SKIPPED)
            )
            self._feed_watch = FeedWatch.from_arrivals(stored, quality, self.calendar)
        return self._feed_watch

    def _note_arrival(self, event: BarEvent, handling: str) -> None:
        """Note how a bar event arrived: when (the source's stamp, else this process's wall clock at receipt,
        which says nothing about a replay's feed), how many of the universe's symbols it held, its oldest quote
        at the bar's end; stored with the next traded bar.

        :param event: the bar event
        :param handling: what the loop does with it (processed, skipped, closed)
        """
        bar_time = event.timestamp
        ages = [
            (bar_time - quote.timestamp).total_seconds()
            for symbol, quote in event.quotes.items()
            if symbol in self.tickers and quote.timestamp is not None
        ]
        arrival = Arrival(
            bar_time=bar_time,
            received_at=event.received_at if event.received_at is not None else pd.Timestamp.now(tz="UTC"),
            source_clock=event.received_at is not None,
            symbols=sum(symbol in event.bars for symbol in self.tickers),
            expected_symbols=len(self.tickers),
            max_quote_age_s=max(ages) if ages else None,
            handling=handling,
        )
        self._watch().observe(arrival)
        self._arrivals.append(arrival)

    def _store_arrivals(self) -> None:
        """Write the noted arrivals in the open (the bar's) transaction."""
        rows = [{"feed": self.config.feed, **vars(arrival)} for arrival in self._arrivals]
        self.store.record_bar_arrivals(self.config.session_id, rows)
        self._arrivals.clear()

    def _observe(self, bar_time: pd.Timestamp) -> None:
        """Prometheus gauges of the bar (after its commit: the broker's positions may be a network call)."""
        if not self.metrics:
            return
        champion = self.roles[0]
        self.metrics.observe_bar(bar_time.to_pydatetime())
        self.metrics.set_portfolio(
            champion.last_equity,
            champion.last_equity - self.initial_cash,
            self._drawdown(champion),
            champion.last_var,
            self._trading_state(champion),
            self._view.positions,  # as reconciled with the broker this bar: no call during an outage
        )
        self.metrics.set_kill_switch(self.kill_handled)

    # ------------------------------------------------------------------------------------ status for the UI

    def status(self) -> dict:
        """What ``/api/status`` serves to the dashboard."""
        session_id = self.config.session_id
        champion = self.roles[0]
        curve = self.store.equity_curve(session_id, CHAMPION).tail(2_000)
        closes = self.last_close if self.last_close is not None else np.zeros(len(self.tickers))
        positions = (
            self._view.positions
        )  # as reconciled at the last bar: the dashboard never waits on the broker
        session = self.store.get_session(session_id)
        return {
            "loop_alive": self.alive,
            "session_id": session_id,
            "model_version": champion.version,
            "broker": getattr(self.broker, "name", type(self.broker).__name__),
            "trading_state": self._trading_state(champion).name,
            "kill_switch": bool(session.kill_switch) if session else False,
            "equity_curve": [{"t": t.isoformat(), "equity": float(v)} for t, v in curve["equity"].items()],
            "positions": [
                {"symbol": s, "qty": q, "price": float(p), "value": q * float(p)}
                for s, p in zip(self.tickers, closes, strict=True)
                if (q := positions.get(s, 0.0))
            ],
            "cash": self._view.cash,
            "equity": champion.last_equity,
            "drawdown": self._drawdown(champion),
            "var_95": champion.last_var,
            "last_bar_time": self.last_bar_time.isoformat() if self.last_bar_time is not None else None,
            "recent_alerts": list(self.recent_alerts),
            "recent_interventions": list(self.recent_interventions),
        }

    def ready(self, now: pd.Timestamp | None = None) -> tuple[bool, str]:
        """Ready when the loop runs, the broker answers and, on a live stream, bars keep arriving."""
        if not self.alive:
            return False, "the trading loop is not running"
        limit = self.config.max_bar_age_s
        now = now if now is not None else pd.Timestamp.now(tz="UTC")
        if limit is not None and self.market_open(now.ceil("min")):
            last = self._last_bar_wall or self._started_wall
            if last is not None and (now - last).total_seconds() > limit:
                return False, f"no bar for {(now - last).total_seconds():.0f} s while the market is open"
        if self._outage is not None:
            return False, f"broker unreachable for {time.monotonic() - self._outage.began:.0f} s"
        try:
            self.broker.account()
        except Exception as error:  # noqa: BLE001 - readiness reports any failure
            return False, f"broker unreachable: {type(error).__name__}"
        return True, "ok"


def kill_session(store: TradingStateStore, session_id: str, reason: str) -> bool:
    """Engage a session's kill switch; the running loop cancels orders and flattens on its next bar."""
    return store.set_kill_switch(session_id, reason)
