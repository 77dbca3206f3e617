"""Alert rules over the live agent's state, an evaluator that keeps alerts from storming, and delivery sinks.

Every evaluation the trading loop builds an :class:`AlertSnapshot` and calls :meth:`AlertEvaluator.evaluate`; the
alerts it returns go to an :class:`AlertSink` (log, webhook, or several). Sinks never raise into the trading loop:
a failed delivery is logged and dropped.

When an alert fires (see :class:`AlertEvaluator`):

- once on entering a bad state, unless the same rule raised the same kind of alert less than ``cooldown_s`` ago;
  not again while the state lasts (unless reminders are asked for with ``remind_every_s``). A threshold rule
  leaves its bad state only once its value has come back by a margin, at or below
  ``threshold * (1 - hysteresis)`` (:class:`AlertRulesConfig`), so a value hovering at the threshold, or a
  constant score above it, alerts once;
- on a transition to another bad state of the same rule (the breaker going from REDUCING to HALTED), which is a
  different kind of alert and has its own cooldown;
- once on leaving a bad state that was alerted, as a ``resolved`` alert of severity ``info``.

Beside the standard rules (:func:`default_rules`), :func:`data_quality_rules` watch the bar feed through the live
loop's trailing window (:class:`~trading_core.monitoring.feed_watch.FeedWatch`): late bars (live feeds only: a
replay's arrivals carry the loop's wall clock), missing bars, repeated or out-of-order bars, stale quotes. A gap or
an out-of-order bar alerts once and clears when it has left the window.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from queue import Full, Queue
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import requests

from trading_core.market.limits import TradingState
from trading_core.monitoring.data_quality import DataQualityConfig
from trading_core.monitoring.feed_watch import FeedHealth

Severity = Literal["info", "warning", "critical"]

_LOGGER = logging.getLogger(__name__)

# A resolved alert's message: this prefix, "was " and the message of the alert it clears (which reads as a breach
# on its own); stored alerts are told by the prefix.
RESOLVED_PREFIX = "resolved: "

_LOG_LEVELS: dict[str, int] = {"info": logging.INFO, "warning": logging.WARNING, "critical": logging.ERROR}


@dataclass(frozen=True)
class AlertSnapshot:
    """What the rules look at, gathered by the trading loop at one instant.

    :param drawdown: drawdown from peak equity, a positive fraction
    :param trading_state: the risk manager's (worst) trading state
    :param last_bar_time: Unix time of the last bar received; ``None`` if none arrived yet (pass the session
        start instead to give the feed ``max_age_s`` to deliver its first bar)
    :param market_open: whether the market is open now (data can only be stale while it is)
    :param drift_score: latest model-drift score (e.g. the largest feature PSI); ``None`` when not measured
    :param feed: the bar feed's trailing window (:class:`~trading_core.monitoring.feed_watch.FeedHealth`):
        late, missing and out-of-order bars, stale quotes; ``None`` when not watched
    """

    drawdown: float = 0.0
    trading_state: TradingState = TradingState.ACTIVE
    last_bar_time: float | None = None
    market_open: bool = False
    drift_score: float | None = None
    feed: FeedHealth | None = None


@dataclass(frozen=True)
class Breach:
    """A rule's finding that the snapshot is in a bad state.

    :param message: human-readable description with the numbers
    :param severity: how urgent the alert is
    :param kind: which bad state, for rules with several (a new kind is a transition and alerts at once)
    """

    message: str
    severity: Severity
    kind: str = ""


@dataclass(frozen=True)
class Alert:
    """One alert to deliver.

    :param rule: name of the rule that raised it
    :param severity: ``info``, ``warning`` or ``critical`` (resolved alerts are ``info``)
    :param message: human-readable description
    :param raised_at: when it was raised (UTC)
    :param resolved: ``True`` for the notice that the bad state has cleared
    """

    rule: str
    severity: Severity
    message: str
    raised_at: datetime
    resolved: bool = False

    def to_payload(self, session_id: str = "") -> dict[str, Any]:
        """JSON-ready body: rule, severity, message, raised_at (ISO 8601), session_id and resolved.

        :param session_id: trading session the alert belongs to
        """
        return {
            "rule": self.rule,
            "severity": self.severity,
            "message": self.message,
            "raised_at": self.raised_at.isoformat(),
            "session_id": session_id,
            "resolved": self.resolved,
        }


@dataclass(frozen=True)
class AlertRulesConfig:
    """Thresholds of the standard rules (:func:`default_rules`) and the margin a value must come back by.

    :param drawdown_limit: drawdown that raises ``drawdown_breach``
    :param max_bar_age_s: bar age that raises ``stale_data`` while the market is open
    :param drift_threshold: drift score that raises ``model_drift``
    :param hysteresis: a threshold rule in its bad state clears only once its value is back at or below
        ``threshold * (1 - hysteresis)``, so a value hovering around the threshold raises one alert, not one
        per crossing
    """

    drawdown_limit: float = 0.10
    max_bar_age_s: float = 180.0
    drift_threshold: float = 0.25
    hysteresis: float = 0.2

    def rules(self) -> list[AlertRule]:
        """The four standard rules with these settings."""
        return [
            DrawdownBreachRule(self.drawdown_limit, hysteresis=self.hysteresis),
            BreakerTripRule(),
            StaleDataRule(self.max_bar_age_s, hysteresis=self.hysteresis),
            ModelDriftRule(self.drift_threshold, hysteresis=self.hysteresis),
        ]


class AlertRule(ABC):
    """A named condition on :class:`AlertSnapshot`; subclasses say when the snapshot is in a bad state."""

    name: str

    @abstractmethod
    def check(self, snapshot: AlertSnapshot, now: float, active: bool = False) -> Breach | None:
        """The breach when ``snapshot`` is in a bad state, else ``None``.

        :param snapshot: state of the agent
        :param now: current Unix time (from the evaluator's clock)
        :param active: the rule was in a bad state at the previous evaluation (threshold rules then clear only
            past their hysteresis margin)
        """


def _check_hysteresis(hysteresis: float) -> float:
    if not 0.0 <= hysteresis < 1.0:
        raise ValueError(f"hysteresis must lie in [0, 1), got {hysteresis}")
    return hysteresis


def _breached(value: float | None, threshold: float, hysteresis: float, active: bool) -> bool:
    """Above ``threshold``; for a rule already in its bad state, above ``threshold * (1 - hysteresis)``."""
    if value is None or not math.isfinite(value):
        return False
    return value > (threshold * (1.0 - hysteresis) if active else threshold)


def _against(value: float, threshold: float, hysteresis: float, unit: str, spec: str) -> str:
    """How ``value`` stands against its threshold, with the clearing level while between the two."""
    if value > threshold:
        return f"above the {unit} of {threshold:{spec}}"
    return f"back under the {unit} of {threshold:{spec}}, not yet at {threshold * (1.0 - hysteresis):{spec}}"


class DrawdownBreachRule(AlertRule):
    """Drawdown above a limit, cleared once back at or below ``limit * (1 - hysteresis)``.

    :param limit: largest acceptable drawdown (positive fraction)
    :param severity: severity of the alert
    :param hysteresis: fraction of the limit the drawdown must come back by to clear
    """

    name = "drawdown_breach"

    def __init__(
        self, limit: float, severity: Severity = "critical", hysteresis: float = AlertRulesConfig.hysteresis
    ) -> None:
        if limit < 0:
            raise ValueError(f"limit must be non-negative, got {limit}")
        self.limit, self.severity, self.hysteresis = limit, severity, _check_hysteresis(hysteresis)

    def check(self, snapshot: AlertSnapshot, now: float, active: bool = False) -> Breach | None:
        if not _breached(snapshot.drawdown, self.limit, self.hysteresis, active):
            return None
        against = _against(snapshot.drawdown, self.limit, self.hysteresis, "limit", ".2%")
        return Breach(f"drawdown {snapshot.drawdown:.2%} {against}", self.severity)


class BreakerTripRule(AlertRule):
    """The risk manager left ACTIVE; REDUCING and HALTED are different kinds, so an escalation alerts at once.

    The risk manager's own cooldown keeps its states from flapping, so this rule needs no hysteresis.

    :param reducing_severity: severity when REDUCING (orders may only shrink positions)
    :param halted_severity: severity when HALTED (no orders)
    """

    name = "breaker_trip"

    def __init__(
        self, reducing_severity: Severity = "warning", halted_severity: Severity = "critical"
    ) -> None:
        self.severities: dict[TradingState, Severity] = {
            TradingState.REDUCING: reducing_severity,
            TradingState.HALTED: halted_severity,
        }

    def check(self, snapshot: AlertSnapshot, now: float, active: bool = False) -> Breach | None:
        state = TradingState(snapshot.trading_state)
        if state == TradingState.ACTIVE:
            return None
        return Breach(
            f"circuit breaker tripped: trading state {state.name}", self.severities[state], state.name
        )


class StaleDataRule(AlertRule):
    """No bar for more than ``max_age_s`` seconds while the market is open.

    :param max_age_s: largest acceptable age of the last bar, in seconds
    :param severity: severity of the alert
    :param hysteresis: fraction of ``max_age_s`` the age must come back by to clear
    """

    name = "stale_data"

    def __init__(
        self,
        max_age_s: float,
        severity: Severity = "warning",
        hysteresis: float = AlertRulesConfig.hysteresis,
    ) -> None:
        if max_age_s <= 0:
            raise ValueError(f"max_age_s must be positive, got {max_age_s}")
        self.max_age_s, self.severity, self.hysteresis = max_age_s, severity, _check_hysteresis(hysteresis)

    def check(self, snapshot: AlertSnapshot, now: float, active: bool = False) -> Breach | None:
        if not snapshot.market_open:
            return None
        if snapshot.last_bar_time is None:
            return Breach("market is open and no bar has arrived yet", self.severity)
        age = now - snapshot.last_bar_time
        if _breached(age, self.max_age_s, self.hysteresis, active):
            return Breach(f"last bar is {age:.0f} s old (limit {self.max_age_s:.0f} s)", self.severity)
        return None


class ModelDriftRule(AlertRule):
    """Model drift score above a threshold, cleared once back at or below ``threshold * (1 - hysteresis)``.

    :param threshold: largest acceptable drift score (e.g. 0.25 for a PSI)
    :param severity: severity of the alert
    :param hysteresis: fraction of the threshold the score must come back by to clear
    """

    name = "model_drift"

    def __init__(
        self,
        threshold: float,
        severity: Severity = "warning",
        hysteresis: float = AlertRulesConfig.hysteresis,
    ) -> None:
        self.threshold, self.severity, self.hysteresis = threshold, severity, _check_hysteresis(hysteresis)

    def check(self, snapshot: AlertSnapshot, now: float, active: bool = False) -> Breach | None:
        score = snapshot.drift_score
        if not _breached(score, self.threshold, self.hysteresis, active):
            return None
        against = _against(score, self.threshold, self.hysteresis, "threshold", ".3f")
        return Breach(f"model drift score {score:.3f} {against}", self.severity)


def default_rules(
    drawdown_limit: float = AlertRulesConfig.drawdown_limit,
    max_bar_age_s: float = AlertRulesConfig.max_bar_age_s,
    drift_threshold: float = AlertRulesConfig.drift_threshold,
) -> list[AlertRule]:
    """The four standard rules (:meth:`AlertRulesConfig.rules`) with the default hysteresis.

    :param drawdown_limit: drawdown that raises ``drawdown_breach``
    :param max_bar_age_s: bar age that raises ``stale_data`` while the market is open
    :param drift_threshold: drift score that raises ``model_drift``
    """
    return AlertRulesConfig(drawdown_limit, max_bar_age_s, drift_threshold).rules()


class LateBarsRule(AlertRule):
    """The share of late bars in the feed's trailing window above ``max_share``, cleared once back at or below
    ``max_share * (1 - hysteresis)``. Only feeds that stamp their arrivals are judged (a replay's arrivals carry
    the loop's wall clock, against which every recorded bar is years late).

    :param max_share: largest acceptable share of late bars
    :param late_after_s: the late threshold, for the message
    :param severity: severity of the alert
    :param hysteresis: fraction of ``max_share`` the share must come back by to clear
    """

    name = "late_bars"

    def __init__(
        self,
        max_share: float = DataQualityConfig.max_late_share,
        late_after_s: float = DataQualityConfig.late_after_s,
        severity: Severity = "warning",
        hysteresis: float = AlertRulesConfig.hysteresis,
    ) -> None:
        self.max_share, self.late_after_s = max_share, late_after_s
        self.severity, self.hysteresis = severity, _check_hysteresis(hysteresis)

    def check(self, snapshot: AlertSnapshot, now: float, active: bool = False) -> Breach | None:
        feed = snapshot.feed
        share = feed.late_bar_share if feed is not None else None
        if not _breached(share, self.max_share, self.hysteresis, active):
            return None
        against = _against(share, self.max_share, self.hysteresis, "limit", ".0%")
        return Breach(
            f"{share:.0%} of the last {feed.window} bars arrived more than {self.late_after_s:g} s after their "
            f"end, {against}",
            self.severity,
        )


class BarGapRule(AlertRule):
    """Expected bars missing in the feed's trailing window (on the calendar's market minutes); clears once the
    window holds no gap, so a gap alerts once.

    :param severity: severity of the alert
    """

    name = "bar_gap"

    def __init__(self, severity: Severity = "warning") -> None:
        self.severity = severity

    def check(self, snapshot: AlertSnapshot, now: float, active: bool = False) -> Breach | None:
        feed = snapshot.feed
        if feed is None or feed.missing_bars <= 0:
            return None
        return Breach(
            f"{feed.missing_bars} expected bar(s) missing in the last {feed.window} bars", self.severity
        )


class OutOfOrderBarRule(AlertRule):
    """Bars in the feed's trailing window that ended at or before a bar received earlier (repeated or out of
    order; the loop skips them); clears once the window holds none.

    :param severity: severity of the alert
    """

    name = "out_of_order_bar"

    def __init__(self, severity: Severity = "warning") -> None:
        self.severity = severity

    def check(self, snapshot: AlertSnapshot, now: float, active: bool = False) -> Breach | None:
        feed = snapshot.feed
        if feed is None or feed.out_of_order_bars <= 0:
            return None
        return Breach(
            f"{feed.out_of_order_bars} of the last {feed.window} bars repeated or came out of order (skipped)",
            self.severity,
        )


class StaleQuotesRule(AlertRule):
    """The oldest quote at the newest bar's end older than ``max_age_s``, cleared once back at or below
    ``max_age_s * (1 - hysteresis)``. Quote ages are on the data's own clock, so replays with quotes count.

    :param max_age_s: largest acceptable quote age at a bar's end, in seconds
    :param severity: severity of the alert
    :param hysteresis: fraction of ``max_age_s`` the age must come back by to clear
    """

    name = "stale_quotes"

    def __init__(
        self,
        max_age_s: float = DataQualityConfig.stale_quote_s,
        severity: Severity = "warning",
        hysteresis: float = AlertRulesConfig.hysteresis,
    ) -> None:
        self.max_age_s, self.severity, self.hysteresis = max_age_s, severity, _check_hysteresis(hysteresis)

    def check(self, snapshot: AlertSnapshot, now: float, active: bool = False) -> Breach | None:
        age = snapshot.feed.stale_quote_age_s if snapshot.feed is not None else None
        if not _breached(age, self.max_age_s, self.hysteresis, active):
            return None
        against = _against(age, self.max_age_s, self.hysteresis, "limit", ".0f")
        return Breach(f"oldest quote is {age:.0f} s old at the bar's end, {against} s", self.severity)


def data_quality_rules(
    config: DataQualityConfig | None = None, hysteresis: float = AlertRulesConfig.hysteresis
) -> list[AlertRule]:
    """The bar feed's rules (``late_bars``, ``bar_gap``, ``out_of_order_bar``, ``stale_quotes``) on the live
    loop's trailing window; paper trading evaluates them beside :func:`default_rules`.

    :param config: the late share, late threshold and stale-quote age
    :param hysteresis: margin of the threshold rules
    """
    config = config or DataQualityConfig()
    return [
        LateBarsRule(config.max_late_share, config.late_after_s, hysteresis=hysteresis),
        BarGapRule(),
        OutOfOrderBarRule(),
        StaleQuotesRule(config.stale_quote_s, hysteresis=hysteresis),
    ]


class AlertEvaluator:
    """Turns snapshots into alerts: once on entering a bad state, not again until it cleared (module docstring).

    Not thread-safe: call :meth:`evaluate` from one thread (the trading loop). A rule that raises is logged and
    skipped for that evaluation. What the evaluator remembers between snapshots is :meth:`state`; a resumed
    session that restores it (:meth:`load_state`) raises exactly the alerts an uninterrupted one would.

    :param rules: rules to evaluate, with distinct names
    :param cooldown_s: least time between two alerts of the same rule and kind, in seconds: a state-based
        condition (no hysteresis) that clears and re-enters within it does not alert again
    :param clock: Unix time source (injectable for tests; a replay passes its bar clock)
    :param notify_resolved: also return an ``info`` alert when an alerted bad state clears
    :param remind_every_s: while a bad state lasts, alert again this often (``None``: never, the bad state was
        announced once)
    """

    def __init__(
        self,
        rules: Sequence[AlertRule],
        cooldown_s: float = 900.0,
        clock: Callable[[], float] = time.time,
        notify_resolved: bool = True,
        remind_every_s: float | None = None,
    ) -> None:
        names = [rule.name for rule in rules]
        if len(set(names)) != len(names):
            raise ValueError(f"rule names must be distinct, got {names}")
        if cooldown_s < 0:
            raise ValueError(f"cooldown_s must be non-negative, got {cooldown_s}")
        if remind_every_s is not None and not remind_every_s > 0:
            raise ValueError(f"remind_every_s must be positive or None, got {remind_every_s}")
        self.rules = list(rules)
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.notify_resolved = notify_resolved
        self.remind_every_s = remind_every_s
        self._active: dict[str, Breach] = {}  # rule name -> its current bad state
        # Rules with an alert sent since they left the good state, and that alert's message: they owe a resolved one.
        self._alerted: dict[str, str] = {}
        self._last_fired: dict[tuple[str, str], float] = {}  # (rule, kind) -> time of its last alert

    @property
    def active(self) -> dict[str, Breach]:
        """The rules now in a bad state, with their breach."""
        return dict(self._active)

    def evaluate(self, snapshot: AlertSnapshot) -> list[Alert]:
        """Alerts due for this snapshot, in rule order.

        :param snapshot: current state of the agent
        """
        now = self.clock()
        raised_at = datetime.fromtimestamp(now, tz=UTC)
        alerts = []
        for rule in self.rules:
            previous = self._active.get(rule.name)
            try:
                breach = rule.check(snapshot, now, previous is not None)
            except Exception:
                # A broken rule must not take the trading loop down with it; it keeps its previous state.
                _LOGGER.exception("alert rule %s failed", rule.name)
                continue
            if breach is None:
                if previous is not None:
                    del self._active[rule.name]
                    message = self._alerted.pop(rule.name, None)
                    if message is not None and self.notify_resolved:
                        alerts.append(
                            Alert(rule.name, "info", f"{RESOLVED_PREFIX}was {message}", raised_at, True)
                        )
                continue
            self._active[rule.name] = breach
            last = self._last_fired.get((rule.name, breach.kind))
            if previous is not None and previous.kind == breach.kind:
                # The same bad state lasts: it was announced on entering (or held back by the cooldown).
                due = self.remind_every_s is not None and (last is None or now - last >= self.remind_every_s)
            else:
                due = last is None or now - last >= self.cooldown_s
            if due:
                self._last_fired[(rule.name, breach.kind)] = now
                self._alerted[rule.name] = breach.message
                alerts.append(Alert(rule.name, breach.severity, breach.message, raised_at))
        return alerts

    def state(self) -> dict[str, Any]:
        """What the evaluator remembers between snapshots, as JSON data (see :meth:`load_state`)."""
        return {
            "active": {name: asdict(breach) for name, breach in self._active.items()},
            "alerted": dict(self._alerted),
            "last_fired": [[rule, kind, fired] for (rule, kind), fired in self._last_fired.items()],
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state`; entries of rules this evaluator does not have are dropped.

        :raises ValueError: ``state`` is not an evaluator's state
        """
        names = {rule.name for rule in self.rules}
        try:
            active = {name: Breach(**breach) for name, breach in state["active"].items() if name in names}
            alerted = {str(name): str(message) for name, message in state["alerted"].items() if name in names}
            fired = {(str(r), str(k)): float(t) for r, k, t in state["last_fired"] if r in names}
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"not an alert evaluator's state ({error!r})") from None
        self._active, self._alerted, self._last_fired = active, alerted, fired


class AlertSink(Protocol):
    """Where alerts go; ``send`` must not raise."""

    def send(self, alert: Alert) -> None:
        """Deliver one alert (failures are logged, not raised).

        :param alert: the alert
        """


class LogAlertSink:
    """Writes alerts to a logger, at ERROR for critical, WARNING for warning and INFO for info alerts.

    :param logger: logger to write to; ``trading_core.monitoring.alerts`` when ``None``
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger if logger is not None else _LOGGER

    def send(self, alert: Alert) -> None:
        status = "RESOLVED" if alert.resolved else alert.severity.upper()
        self.logger.log(
            _LOG_LEVELS.get(alert.severity, logging.WARNING),
            "alert %s [%s]: %s",
            alert.rule,
            status,
            alert.message,
        )


def redact_url(url: str) -> str:
    """Scheme and host of a URL only: webhook paths and queries often embed a secret token (Slack, Teams).

    :param url: the full URL
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return (
        f"{parts.scheme}://{host}{port}/***"
        if parts.path.strip("/") or parts.query
        else f"{parts.scheme}://{host}{port}"
    )


class WebhookAlertSink:
    """POSTs each alert as JSON (:meth:`Alert.to_payload`) to a webhook; failures are logged, never raised.

    Connection errors, timeouts, 429 and 5xx answers are retried; other 4xx answers are not (the request itself is
    wrong). The URL is never logged or shown in ``repr`` beyond its host, as webhook URLs usually carry a secret.
    Delivery blocks up to ``(retries + 1) * timeout_s`` plus back-off: wrap the sink in
    :class:`BackgroundAlertSink` to keep that off the trading loop.

    :param url: webhook address
    :param timeout_s: timeout of one attempt, in seconds
    :param retries: attempts after a failed first one
    :param session_id: trading session written into every payload
    :param backoff_s: wait before the first retry, doubled at each further retry
    :param logger: logger for delivery failures
    """

    def __init__(
        self,
        url: str,
        timeout_s: float = 5.0,
        retries: int = 3,
        session_id: str = "",
        backoff_s: float = 0.5,
        logger: logging.Logger | None = None,
    ) -> None:
        if retries < 0:
            raise ValueError(f"retries must be non-negative, got {retries}")
        self._url = url
        self.timeout_s, self.retries, self.session_id, self.backoff_s = (
            timeout_s,
            retries,
            session_id,
            backoff_s,
        )
        self.logger = logger if logger is not None else _LOGGER
        self._session = requests.Session()

    def __repr__(self) -> str:
        return f"WebhookAlertSink(url={redact_url(self._url)!r}, timeout_s={self.timeout_s}, retries={self.retries})"

    def send(self, alert: Alert) -> None:
        """POST the alert; returns after delivery, or after the last failed attempt (logged).

        :param alert: the alert
        """
        body = json.dumps(alert.to_payload(self.session_id)).encode()
        headers = {"Content-Type": "application/json"}
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                response = self._session.post(self._url, data=body, headers=headers, timeout=self.timeout_s)
            except requests.RequestException as error:
                # The exception text can contain the full URL, so only its type is logged.
                problem = f"{type(error).__name__}"
                continue
            if response.status_code < 300:
                return
            problem = f"HTTP {response.status_code}"
            if response.status_code < 500 and response.status_code != 429:
                break
        self.logger.error(
            "alert %s not delivered to webhook %s after %d attempt(s): %s",
            alert.rule,
            redact_url(self._url),
            attempt + 1,
            problem,
        )

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._session.close()


class FanOutAlertSink:
    """Sends every alert to several sinks; one failing sink does not stop the others.

    :param sinks: sinks to deliver to, in order
    :param logger: logger for sinks that raise despite the protocol
    """

    def __init__(self, sinks: Iterable[AlertSink], logger: logging.Logger | None = None) -> None:
        self.sinks = list(sinks)
        self.logger = logger if logger is not None else _LOGGER

    def send(self, alert: Alert) -> None:
        for sink in self.sinks:
            try:
                sink.send(alert)
            except Exception:
                self.logger.exception("alert sink %s failed on alert %s", type(sink).__name__, alert.rule)


class BackgroundAlertSink:
    """Delivers alerts on a daemon thread so a slow sink (a dead webhook) never blocks the trading loop.

    ``send`` only queues; when the queue is full the alert is logged and dropped rather than blocking.

    :param sink: sink that does the delivery
    :param max_queue: most alerts waiting for delivery
    :param logger: logger for dropped alerts and failing sinks
    """

    _STOP = object()

    def __init__(self, sink: AlertSink, max_queue: int = 1000, logger: logging.Logger | None = None) -> None:
        self.sink = sink
        self.logger = logger if logger is not None else _LOGGER
        self._queue: Queue[Any] = Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._deliver, name="alert-delivery", daemon=True)
        self._thread.start()

    def send(self, alert: Alert) -> None:
        try:
            self._queue.put_nowait(alert)
        except Full:
            self.logger.error("alert queue full, alert %s dropped: %s", alert.rule, alert.message)

    def flush(self) -> None:
        """Wait until every queued alert has been handed to the sink."""
        self._queue.join()

    def close(self) -> None:
        """Deliver what is queued, then stop the delivery thread."""
        self._queue.put(self._STOP)
        self._thread.join()

    def _deliver(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is self._STOP:
                    return
                self.sink.send(item)
            except Exception:
                self.logger.exception("alert sink %s failed on alert %s", type(self.sink).__name__, item.rule)
            finally:
                self._queue.task_done()
