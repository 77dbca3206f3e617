"""Prometheus metrics of the live trading agent, in a registry of their own.

The metrics never touch prometheus_client's global default registry: two agents (or a test next to an agent) in
one process keep separate figures, and the exposition shows only trading metrics, no process collectors.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from threading import Lock

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from trading_core.market.limits import TradingState

# Decision latency from a tenth of a millisecond (a cached policy forward pass) up to a second (a stalled step).
DECISION_LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)


def breaker_state_value(state: TradingState | int | str) -> int:
    """The ``breaker_state`` gauge value of a trading state: 0 ACTIVE, 1 REDUCING, 2 HALTED.

    :param state: a :class:`TradingState`, its integer value or its name (case-insensitive)
    """
    if isinstance(state, str):
        try:
            return int(TradingState[state.upper()])
        except KeyError:
            raise ValueError(f"unknown trading state {state!r}") from None
    return int(TradingState(int(state)))


def timestamp_seconds(timestamp: float | datetime) -> float:
    """Seconds since the Unix epoch; a naive datetime is taken as UTC.

    :param timestamp: epoch seconds or a datetime (``pd.Timestamp`` included)
    """
    if isinstance(timestamp, datetime):
        if timestamp.tzinfo is None:
            timestamp = timestamp.replace(tzinfo=UTC)
        return timestamp.timestamp()
    return float(timestamp)


class LiveMetrics:
    """Counters, a latency histogram and gauges of one live trading session.

    :param registry: registry to register the metrics in; a new private one when ``None``
    :param namespace: optional prefix of every metric name (``namespace_equity``); none by default
    """

    content_type: str = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None, namespace: str = "") -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        common = {"namespace": namespace, "registry": self.registry}
        self.decisions = Counter("decisions", "Agent decisions taken, by agent role.", ["role"], **common)
        self.orders = Counter(
            "orders", "Orders by final status (filled, rejected, ...).", ["status"], **common
        )
        self.bars = Counter("bars", "Market bars received.", **common)
        self.alerts = Counter("alerts", "Alerts raised, by rule.", ["rule"], **common)
        self.decision_latency = Histogram(
            "decision_latency_seconds",
            "Time from bar to decision.",
            buckets=DECISION_LATENCY_BUCKETS,
            **common,
        )
        self.equity = Gauge("equity", "Portfolio equity (cash plus positions at the last prices).", **common)
        self.pnl = Gauge("pnl", "Profit and loss of the session.", **common)
        self.drawdown = Gauge("drawdown", "Drawdown from peak equity, a positive fraction.", **common)
        self.var_95 = Gauge("var_95", "One-day 95% value at risk, a positive fraction of equity.", **common)
        self.breaker_state = Gauge(
            "breaker_state", "Trading state: 0 ACTIVE, 1 REDUCING, 2 HALTED.", **common
        )
        self.last_bar_timestamp = Gauge(
            "last_bar_timestamp_seconds", "Unix time of the last bar received.", **common
        )
        self.positions = Gauge("positions", "Signed position in shares, by symbol.", ["symbol"], **common)
        self.kill_switch = Gauge("kill_switch", "1 while the kill switch is engaged.", **common)
        self.bus_consumer_lag = Gauge(
            "bus_consumer_lag",
            "Bars on the market-data bus the session's durable consumer has not been handed yet.",
            **common,
        )
        self.bus_consumed_bar_age = Gauge(
            "bus_consumed_bar_age_seconds",
            "Seconds from the end of the last bar consumed from the bus to the scrape (NaN before the first).",
            **common,
        )
        self._last_consumed_bar: float | None = None
        # Computed at scrape time: the age grows while no bar arrives, which is what a stalled consumer looks like.
        self.bus_consumed_bar_age.set_function(self._consumed_bar_age)
        self._held_symbols: set[str] = set()
        self._positions_lock = Lock()

    def observe_decision(self, role: str, latency_s: float) -> None:
        """Count one decision and record its latency.

        :param role: the agent role that decided (e.g. ``trader``, ``hedger``)
        :param latency_s: seconds from the bar's arrival to the decision
        """
        self.decisions.labels(role=role).inc()
        self.decision_latency.observe(latency_s)

    def observe_order(self, status: str) -> None:
        """Count one order by its status.

        :param status: final or current status, e.g. ``filled``, ``rejected``, ``canceled``
        """
        self.orders.labels(status=status).inc()

    def observe_bar(self, timestamp: float | datetime) -> None:
        """Count one bar and remember its time (staleness is ``time() - last_bar_timestamp_seconds``).

        :param timestamp: the bar's time, epoch seconds or a datetime (naive = UTC)
        """
        self.bars.inc()
        self.last_bar_timestamp.set(timestamp_seconds(timestamp))

    def observe_consumed(self, lag: int | None, bar_time: float | datetime) -> None:
        """Note a bar consumed (acked) from the market-data bus.

        :param lag: bars still waiting for the durable consumer, as the broker said (``None``: not known)
        :param bar_time: the bar's end, epoch seconds or a datetime (naive = UTC)
        """
        if lag is not None:
            self.bus_consumer_lag.set(lag)
        self._last_consumed_bar = timestamp_seconds(bar_time)

    def _consumed_bar_age(self) -> float:
        if self._last_consumed_bar is None:
            return float("nan")
        return time.time() - self._last_consumed_bar

    def observe_alert(self, rule: str) -> None:
        """Count one alert.

        :param rule: name of the rule that raised it
        """
        self.alerts.labels(rule=rule).inc()

    def set_kill_switch(self, engaged: bool) -> None:
        """Show whether the kill switch is engaged.

        :param engaged: ``True`` while trading is stopped by the kill switch
        """
        self.kill_switch.set(1.0 if engaged else 0.0)

    def set_portfolio(
        self,
        equity: float,
        pnl: float,
        drawdown: float,
        var_95: float,
        breaker_state: TradingState | int | str,
        positions: Mapping[str, float],
    ) -> None:
        """Update the portfolio gauges; symbols no longer held disappear from ``positions``.

        :param equity: cash plus positions at the last prices
        :param pnl: profit and loss of the session
        :param drawdown: drawdown from peak equity (positive fraction)
        :param var_95: one-day 95% VaR (positive fraction of equity)
        :param breaker_state: the risk manager's trading state
        :param positions: signed shares by symbol (flat symbols may be left out)
        """
        self.equity.set(equity)
        self.pnl.set(pnl)
        self.drawdown.set(drawdown)
        self.var_95.set(var_95)
        self.breaker_state.set(breaker_state_value(breaker_state))
        with self._positions_lock:
            # A closed position must not linger at its last size; removing labels (not clearing all) keeps a
            # concurrent scrape from seeing an empty book.
            for symbol in self._held_symbols - positions.keys():
                self.positions.remove(symbol)
            for symbol, quantity in positions.items():
                self.positions.labels(symbol=symbol).set(quantity)
            self._held_symbols = set(positions)

    def exposition(self) -> bytes:
        """The Prometheus text exposition of every metric (content type :attr:`content_type`)."""
        return generate_latest(self.registry)
