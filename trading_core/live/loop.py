"""The live trading loop: bars -> features -> the champion's decision -> the shared risk manager -> orders.

One path for every broker (:class:`trading_core.broker.base.Broker`): the local simulated broker fills through
the same cost and fill code as training and backtests, Alpaca paper trading through alpaca-py. Beside the
champion, an optional challenger decides in shadow on the same bars with its own simulated book (A/B test), and
a simulated mirror of the champion's book fills the champion's own orders through the shared cost model, so the
broker's fills can be reconciled against what the simulator expected.

Durability: every bar is written in two transactions. The first records the decisions and the order intents
(write-ahead) before anything reaches the broker; the second records the broker's answers, fills, positions and
the loop's own state (features, risk managers, simulated books) together with the bar's time. After a crash the
loop restores the state of the last completed bar, asks the broker about every pending intent (client order ids
are derived from the session, bar and symbol, so a re-sent order is the same order), and replays from there:
nothing is lost and nothing is sent twice.
"""

from __future__ import annotations

import base64
import logging
import pickle
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from trading_core.broker.base import (
    Broker,
    Fill,
    OrderRequest,
    OrderState,
    RetryPolicy,
    call_with_retries,
    make_client_order_id,
)
from trading_core.broker.simulated import SimulatedBroker
from trading_core.features.streaming import StreamingFeatures
from trading_core.live.engine import Decision, DecisionEngine, PortfolioBook
from trading_core.live.sources import BarEvent
from trading_core.live.state import CHALLENGER, CHAMPION, TradingStateStore
from trading_core.market.limits import RiskLimits, TradingState
from trading_core.market.measures import drawdown_from_peak, var_of_returns
from trading_core.market.risk import MIN_VAR_ROWS
from trading_core.market.simulator import run_bar
from trading_core.monitoring.alerts import Alert, AlertEvaluator, AlertSink, AlertSnapshot
from trading_core.monitoring.drift import psi_against_quantiles
from trading_core.monitoring.live_metrics import LiveMetrics
from trading_core.runtime.stored_pickles import load_project_pickle

logger = logging.getLogger(__name__)

STATE_FORMAT = 1


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
    """

    session_id: str
    model_name: str = "rl_trading_agent"
    calendar: str | None = "XNYS"
    decide_every: int = 1
    flatten_on_kill: bool = True
    drift_window: int = 200
    drift_every: int = 50
    max_bar_age_s: float | None = None


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


@dataclass(frozen=True)
class _BarClose:
    """What the close of a bar left for the decision: the kill switch, the latency clock, features, books."""

    killed: bool
    started: float
    values: np.ndarray | None
    books: list[PortfolioBook]


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
            self.tickers, use_turbulence=self.spec.use_turbulence, history=history, **keep
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
        self.drift_rows: deque = deque(maxlen=config.drift_window)
        self.drift_score: float | None = None
        self.alive = False
        self._started_wall: pd.Timestamp | None = None
        self._last_bar_wall: pd.Timestamp | None = None
        self.summary = LiveSummary()

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
            self._reconcile()
        self._started_wall = pd.Timestamp.now(tz="UTC")
        self.alive = True

    def _engine_state(self) -> dict:
        return {
            "format": STATE_FORMAT,
            "features": self.features.snapshot(),
            "risk": [role.engine.risk for role in self.roles],
            "roles": [
                (r.peak_equity, r.last_equity, r.last_cash, r.last_var, list(r.returns)) for r in self.roles
            ],
            "mirror": self.mirror.snapshot() if self.mirror is not None else None,
            "shadow": self.shadow.snapshot() if self.shadow else None,
            "broker": self.broker.snapshot() if isinstance(self.broker, SimulatedBroker) else None,
            "last_close": self.last_close,
            "bar_count": self.bar_count,
            "kill_handled": self.kill_handled,
            "drift_rows": list(self.drift_rows),
            "feature_closes": self._feature_closes,
        }

    def _restore(self) -> None:
        saved = self.store.load_broker_snapshot(self.config.session_id)
        if saved is None:
            for role in self.roles:
                role.engine.reset(self.initial_cash)
            return
        # The state is the loop's own, written by this code into the project's own database.
        state = load_project_pickle(base64.b64decode(saved.payload["engine_state"]))
        if state["format"] != STATE_FORMAT:
            raise RuntimeError(
                f"session {self.config.session_id}: saved state format {state['format']} unknown"
            )
        simulation = self.spec.env_spec.simulation
        self.features = StreamingFeatures.from_snapshot(state["features"])
        for role, risk, (peak, last, cash, var, returns) in zip(
            self.roles, state["risk"], state["roles"], strict=True
        ):
            role.engine.risk = risk
            role.peak_equity, role.last_equity, role.last_cash, role.last_var = peak, last, cash, var
            role.returns.extend(returns)
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
        self.drift_rows.extend(state["drift_rows"])
        self._feature_closes = state["feature_closes"]
        self.last_bar_time = saved.bar_time
        logger.info(f"session {self.config.session_id} resumed after bar {saved.bar_time}")

    def _reconcile(self) -> None:
        """Bring the store in line with the broker after a restart: the broker is the truth."""
        for intent in self.store.pending_intents(self.config.session_id).itertuples(index=False):
            state = call_with_retries(
                lambda cid=intent.client_order_id: self.broker.get_order(cid), self.retry
            )
            if state is not None:
                self._record_order_state(state)
            elif self.last_bar_time is not None and pd.Timestamp(intent.decision_time) <= self.last_bar_time:
                # Its bar completed yet the broker never saw it: too late to send now.
                self.store.update_order(intent.client_order_id, status="canceled")
                self._raise_now(
                    "order_reconciliation",
                    "warning",
                    f"intent {intent.client_order_id} never reached the broker before its bar completed; canceled",
                )
            # Otherwise the intent's bar is replayed and the order (same id) is sent then.
        broker_positions = call_with_retries(self.broker.positions, self.retry)
        stored = self.store.positions(self.config.session_id, CHAMPION)
        if {k: v for k, v in broker_positions.items() if v} != {k: v for k, v in stored.items() if v}:
            self._raise_now(
                "position_reconciliation",
                "warning",
                f"positions differ after restart: stored {stored}, broker {broker_positions}; the broker's are kept",
            )
            self.store.set_positions(self.config.session_id, CHAMPION, broker_positions)

    # ----------------------------------------------------------------------------------------------- bars

    def market_open(self, bar_end: pd.Timestamp) -> bool:
        """Whether the exchange was open during the bar ending at ``bar_end``."""
        if self.calendar is None:
            return True
        minute = (bar_end - pd.Timedelta(minutes=1)).floor("min")
        return bool(self.calendar.is_open_on_minute(minute))

    def run(self, events: Iterable[BarEvent], max_bars: int | None = None) -> LiveSummary:
        """Process bar events until the source ends (or ``max_bars`` were processed)."""
        self.start()
        try:
            for event in events:
                if self.last_bar_time is not None and event.timestamp <= self.last_bar_time:
                    continue  # already processed before a restart
                self.process(event)
                if max_bars is not None and self.summary.bars >= max_bars:
                    break
        finally:
            self.alive = False
        return self.summary

    def process(self, event: BarEvent) -> None:
        """One bar in the market loop's order (:func:`~trading_core.market.simulator.run_bar`): earlier orders
        fill, the close marks every book and its risk manager sees the bar, the agents decide; then the orders
        go out and the state is saved."""
        if not self.market_open(event.timestamp):
            self.summary.skipped_closed += 1
            return
        session_id, bar_time = self.config.session_id, event.timestamp
        bars = {s: b for s, b in event.bars.items() if s in self.tickers}
        (broker_fills, mirror_fills), close, decisions = run_bar(
            lambda: self._fill(bar_time, bars),
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
            for request, expected in orders:
                self._record_intent(request, bar_time, expected)
        states = [self._submit(request) for request, _ in orders]
        for role, decision, _ in decisions:
            if role.role == CHALLENGER and self.shadow is not None:
                for request, _ in self._role_orders(role, decision, self.shadow.positions(), shadow=True):
                    self.shadow.submit_order(request)
        if killed and not self.kill_handled:
            self._flatten(bar_time)
        open_states = self._poll_open_orders()
        with self.store.transaction():
            for state in [*states, *open_states]:
                if state is not None:
                    self._record_order_state(state)
            for fill in broker_fills:
                self._record_fill(fill, "broker")
            for fill in mirror_fills:
                self._record_fill(fill, "simulated")
            for role in self.roles:
                self._record_mark(role, bar_time)
            self.store.set_positions(session_id, CHAMPION, self.broker.positions())
            if self.shadow is not None:
                self.store.set_positions(session_id, CHALLENGER, self.shadow.positions())
            self.bar_count += 1
            self.last_bar_time = bar_time
            # Finished orders and fills are in the store now; the simulated books keep only what is open.
            for book in (self.broker, self.mirror, self.shadow):
                if isinstance(book, SimulatedBroker):
                    book.compact()
            payload = {"engine_state": base64.b64encode(pickle.dumps(self._engine_state())).decode()}
            self.store.save_broker_snapshot(session_id, bar_time, payload)
            self.store.set_last_bar_time(session_id, bar_time)
        self.summary.bars += 1
        self._last_bar_wall = pd.Timestamp.now(tz="UTC")
        self.summary.fills += len(broker_fills)
        self._update_drift(close.values)
        self._monitor(bar_time)

    def _fill(self, bar_time: pd.Timestamp, bars: dict) -> tuple[list[Fill], list[Fill]]:
        """The open, the exchange's side of the bar: earlier orders fill (the local broker, the simulated
        mirror and the challenger's shadow book); the broker's and the mirror's fills."""
        broker_fills = self.broker.on_bar(bar_time, bars) if isinstance(self.broker, SimulatedBroker) else []
        mirror_fills = self.mirror.on_bar(bar_time, bars) if self.mirror is not None else broker_fills
        if self.shadow is not None:
            self.shadow.on_bar(bar_time, bars)
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
        """The decision: each role's agent decides on the close (every ``decide_every`` bars, not once killed)."""
        decisions: list[tuple[RoleState, Decision, PortfolioBook]] = []
        if close.killed or self.bar_count % self.config.decide_every != 0:
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
        broker = self.broker if role.role == CHAMPION else self.shadow
        positions = broker.positions() if broker is not None else {}
        cash = broker.account().cash
        return PortfolioBook(cash, np.array([positions.get(s, 0.0) for s in self.tickers]))

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
        return role.engine.feature_matrix(self.features.latest_frame(role.engine.history_dates))

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

    def _submit(self, request: OrderRequest) -> OrderState | None:
        try:
            state = call_with_retries(lambda: self.broker.submit_order(request), self.retry)
        except Exception as error:  # noqa: BLE001 - one failed order must not stop the session
            logger.error(f"order {request.client_order_id} failed: {error}")
            self.store.update_order(request.client_order_id, status="rejected")
            if self.metrics:
                self.metrics.observe_order("rejected")
            return None
        if self.mirror is not None:
            self.mirror.submit_order(request)
        self.summary.orders_sent += 1
        if self.metrics:
            self.metrics.observe_order(str(state.status))
        return state

    def _poll_open_orders(self) -> list[OrderState]:
        states = []
        open_orders = self.store.orders(
            self.config.session_id, statuses=("new", "accepted", "partially_filled")
        )
        for client_order_id in open_orders.get("client_order_id", []):
            state = call_with_retries(lambda cid=client_order_id: self.broker.get_order(cid), self.retry)
            if state is not None:
                states.append(state)
        return states

    def _record_order_state(self, state: OrderState) -> None:
        before = self.store.get_order(state.client_order_id)
        self.store.update_order(
            state.client_order_id,
            status=state.status,
            broker_order_id=state.broker_order_id,
            filled_qty=state.filled_qty,
            filled_avg_price=state.filled_avg_price,
        )
        previous = float(before["filled_qty"] or 0.0) if before else 0.0
        if (
            not isinstance(self.broker, SimulatedBroker)
            and state.filled_qty > previous
            and state.filled_avg_price
        ):
            # The broker reports cumulative fills; the new part is booked at the average price.
            self.store.record_fill(
                client_order_id=state.client_order_id,
                session_id=self.config.session_id,
                symbol=state.symbol,
                side=state.side,
                qty=state.filled_qty - previous,
                price=float(state.filled_avg_price),
                filled_at=state.updated_at,
                source="broker",
            )
            self.summary.fills += 1

    def _record_intent(
        self, request: OrderRequest, bar_time: pd.Timestamp, expected_price: float | None = None
    ) -> None:
        """Write an order down before the broker hears of it (a restart then knows to ask about it)."""
        self.store.record_order_intent(
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
        """Largest PSI of the recent feature rows against the training deciles (the model-drift score)."""
        reference = self.spec.reference_quantiles
        if values is None or not reference:
            return
        columns = self.features.value_columns
        self.drift_rows.append(values[:, [columns.index(c) for c in reference]])
        if self.bar_count % self.config.drift_every or len(self.drift_rows) < self.config.drift_window // 2:
            return
        recent = np.concatenate(list(self.drift_rows))
        self.drift_score = max(
            psi_against_quantiles(np.asarray(edges), recent[:, i])
            for i, edges in enumerate(reference.values())
        )

    def _kill_switch_engaged(self) -> bool:
        session = self.store.get_session(self.config.session_id)
        return bool(session is not None and session.kill_switch)

    def _flatten(self, bar_time: pd.Timestamp) -> None:
        """Cancel open orders and, when configured, close every position with orders of the session's own."""
        call_with_retries(self.broker.cancel_all_orders, self.retry)
        if self.config.flatten_on_kill:
            positions = call_with_retries(self.broker.positions, self.retry)
            closing = []
            for symbol, qty in positions.items():
                side = "sell" if qty > 0 else "buy"
                request = OrderRequest(
                    client_order_id=make_client_order_id(
                        self.config.session_id + "/kill", bar_time, symbol, side
                    ),
                    symbol=symbol,
                    side=side,
                    qty=abs(qty),
                )
                closing.append(request)
            with self.store.transaction():
                for request in closing:
                    self._record_intent(request, bar_time)
            for request in closing:
                state = self._submit(request)
                if state is not None:
                    self._record_order_state(state)
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
        self.recent_alerts.append(alert.to_payload(self.config.session_id))
        self.store.record_alert(self.config.session_id, alert.rule, alert.severity, alert.message)
        if self.metrics:
            self.metrics.observe_alert(alert.rule)
        if self.alert_sink is not None:
            self.alert_sink.send(alert)
        else:
            logger.warning(f"[{alert.severity}] {alert.rule}: {alert.message}")

    def _monitor(self, bar_time: pd.Timestamp) -> None:
        champion = self.roles[0]
        drawdown, state = self._drawdown(champion), self._trading_state(champion)
        if self.metrics:
            self.metrics.observe_bar(bar_time.to_pydatetime())
            self.metrics.set_portfolio(
                champion.last_equity,
                champion.last_equity - self.initial_cash,
                drawdown,
                champion.last_var,
                state,
                self.broker.positions(),
            )
            self.metrics.set_kill_switch(self.kill_handled)
        if self.alert_evaluator is not None:
            snapshot = AlertSnapshot(
                drawdown=drawdown,
                trading_state=state,
                last_bar_time=bar_time.timestamp(),
                market_open=True,
                drift_score=self.drift_score,
            )
            for alert in self.alert_evaluator.evaluate(snapshot):
                self._raise(alert)

    # ------------------------------------------------------------------------------------ status for the UI

    def status(self) -> dict:
        """What ``/api/status`` serves to the dashboard."""
        session_id = self.config.session_id
        champion = self.roles[0]
        curve = self.store.equity_curve(session_id, CHAMPION).tail(2_000)
        closes = self.last_close if self.last_close is not None else np.zeros(len(self.tickers))
        positions = self.broker.positions()
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
            "cash": self.broker.account().cash,
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
        try:
            self.broker.account()
        except Exception as error:  # noqa: BLE001 - readiness reports any failure
            return False, f"broker unreachable: {type(error).__name__}"
        return True, "ok"


def kill_session(store: TradingStateStore, session_id: str, reason: str) -> bool:
    """Engage a session's kill switch; the running loop cancels orders and flattens on its next bar."""
    return store.set_kill_switch(session_id, reason)
