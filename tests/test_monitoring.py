"""Live monitoring: Prometheus metrics in a private registry, alert rules and their cooldown, alert delivery to a
local webhook receiver, and the monitoring HTTP server's endpoints with a fake status provider."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import requests
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from pipelines.sensors import degradation_request
from resources.mlflow_registry import CHAMPION_ALIAS
from trading_assets.config_defaults import default_of
from trading_assets.monitoring import ChampionMonitoringSettings, champion_monitoring
from trading_core.agents.decision_spec import DecisionSpec, feature_deciles
from trading_core.data.schema import feature_columns_of, indicator_columns_of, select_window
from trading_core.data.validation import to_validated_bars
from trading_core.envs.spec import EnvSpec
from trading_core.features.batch import build_features
from trading_core.market.limits import TradingState
from trading_core.monitoring import (
    Alert,
    AlertEvaluator,
    AlertRulesConfig,
    AlertSnapshot,
    BackgroundAlertSink,
    BreakerTripRule,
    DrawdownBreachRule,
    FanOutAlertSink,
    LiveMetrics,
    LogAlertSink,
    ModelDriftRule,
    MonitoringServer,
    StaleDataRule,
    WebhookAlertSink,
    default_rules,
)
from trading_core.regimes.history import MarketRegimes, fit_market_regimes
from trading_core.regimes.settings import RegimeConfig

# ------------------------------------------------------------------------------------------------ helpers


def samples(exposition: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a text exposition, keyed by name and sorted labels, parsed by prometheus_client."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(exposition.decode())
        for sample in family.samples
    }


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Receiver:
    """A local webhook receiver on a thread: records JSON bodies and answers with ``status``."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.bodies: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                receiver.bodies.append(
                    {"content_type": self.headers["Content-Type"], **json.loads(self.rfile.read(length))}
                )
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T000/SECRET-TOKEN"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def closed_port_url() -> str:
    """A URL on a local port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hooks/SECRET-TOKEN"


def an_alert(rule: str = "drawdown_breach", severity: str = "critical") -> Alert:
    return Alert(
        rule, severity, "drawdown 12.00% above the limit of 10.00%", datetime(2024, 3, 1, 15, 30, tzinfo=UTC)
    )


# ------------------------------------------------------------------------------------------------ live metrics


def test_live_metrics_use_a_private_registry() -> None:
    first, second = LiveMetrics(), LiveMetrics()  # the same names twice would clash in one registry
    first.observe_bar(1.0)
    assert samples(first.exposition())[("bars_total", ())] == 1.0
    assert samples(second.exposition())[("bars_total", ())] == 0.0
    assert REGISTRY.get_sample_value("bars_total") is None
    assert first.content_type == CONTENT_TYPE_LATEST


def test_live_metrics_expose_the_observed_values() -> None:
    metrics = LiveMetrics()
    for role, latency in [("trader", 0.0003), ("trader", 0.002), ("hedger", 0.4)]:
        metrics.observe_decision(role, latency)
    for status in ["filled", "filled", "rejected"]:
        metrics.observe_order(status)
    metrics.observe_bar(datetime(2024, 3, 1, 15, 30))  # naive = UTC
    metrics.observe_alert("stale_data")
    metrics.set_kill_switch(True)
    metrics.set_portfolio(
        equity=101_500.0,
        pnl=1_500.0,
        drawdown=0.031,
        var_95=0.012,
        breaker_state=TradingState.REDUCING,
        positions={"AAPL": 120.0, "MSFT": -15.0},
    )
    values = samples(metrics.exposition())
    assert values[("decisions_total", (("role", "trader"),))] == 2
    assert values[("decisions_total", (("role", "hedger"),))] == 1
    assert values[("orders_total", (("status", "filled"),))] == 2
    assert values[("orders_total", (("status", "rejected"),))] == 1
    assert values[("alerts_total", (("rule", "stale_data"),))] == 1
    assert values[("bars_total", ())] == 1
    assert values[("decision_latency_seconds_count", ())] == 3
    assert values[("decision_latency_seconds_sum", ())] == pytest.approx(0.4023)
    assert values[("decision_latency_seconds_bucket", (("le", "0.0001"),))] == 0
    assert values[("decision_latency_seconds_bucket", (("le", "0.0005"),))] == 1
    assert values[("decision_latency_seconds_bucket", (("le", "0.0025"),))] == 2
    assert values[("decision_latency_seconds_bucket", (("le", "1.0"),))] == 3
    assert values[("last_bar_timestamp_seconds", ())] == datetime(2024, 3, 1, 15, 30, tzinfo=UTC).timestamp()
    assert values[("equity", ())] == 101_500.0 and values[("pnl", ())] == 1_500.0
    assert values[("drawdown", ())] == 0.031 and values[("var_95", ())] == 0.012
    assert values[("breaker_state", ())] == 1 and values[("kill_switch", ())] == 1
    assert values[("positions", (("symbol", "AAPL"),))] == 120.0
    assert values[("positions", (("symbol", "MSFT"),))] == -15.0


def test_closed_positions_leave_the_gauge_and_breaker_states_map_to_numbers() -> None:
    metrics = LiveMetrics()
    metrics.set_portfolio(1.0, 0.0, 0.0, 0.0, "halted", {"AAPL": 1.0, "KO": 2.0})
    metrics.set_portfolio(1.0, 0.0, 0.0, 0.0, 0, {"KO": 3.0})
    values = samples(metrics.exposition())
    assert ("positions", (("symbol", "AAPL"),)) not in values
    assert values[("positions", (("symbol", "KO"),))] == 3.0
    assert values[("breaker_state", ())] == 0
    metrics.set_portfolio(1.0, 0.0, 0.0, 0.0, TradingState.HALTED, {})
    assert samples(metrics.exposition())[("breaker_state", ())] == 2
    with pytest.raises(ValueError, match="unknown trading state"):
        metrics.set_portfolio(1.0, 0.0, 0.0, 0.0, "paused", {})


# ------------------------------------------------------------------------------------------------ alert rules

BAD_AND_GOOD = [
    (DrawdownBreachRule(0.10), AlertSnapshot(drawdown=0.12), AlertSnapshot(drawdown=0.08), "critical"),
    (
        BreakerTripRule(),
        AlertSnapshot(trading_state=TradingState.HALTED),
        AlertSnapshot(trading_state=TradingState.ACTIVE),
        "critical",
    ),
    (
        StaleDataRule(60.0),
        AlertSnapshot(last_bar_time=1_700_000_000.0 - 61.0, market_open=True),
        AlertSnapshot(last_bar_time=1_700_000_000.0 - 40.0, market_open=True),
        "warning",
    ),
    (ModelDriftRule(0.25), AlertSnapshot(drift_score=0.4), AlertSnapshot(drift_score=0.1), "warning"),
]


@pytest.mark.parametrize(
    ("rule", "bad", "good", "severity"), BAD_AND_GOOD, ids=lambda x: getattr(x, "name", "")
)
def test_each_rule_fires_and_clears(rule, bad: AlertSnapshot, good: AlertSnapshot, severity: str) -> None:
    clock = FakeClock()
    evaluator = AlertEvaluator([rule], cooldown_s=300.0, clock=clock)
    assert evaluator.evaluate(good) == []
    clock.now += 1.0
    fired = evaluator.evaluate(bad)
    assert [(a.rule, a.severity, a.resolved) for a in fired] == [(rule.name, severity, False)]
    assert fired[0].raised_at == datetime.fromtimestamp(clock.now, tz=UTC)
    assert rule.name in evaluator.active
    clock.now += 1.0
    assert evaluator.evaluate(bad) == []  # still bad: no repeat within the cooldown
    clock.now += 1.0
    cleared = evaluator.evaluate(good)
    assert [(a.rule, a.severity, a.resolved) for a in cleared] == [(rule.name, "info", True)]
    # The alert it clears, told as past: "resolved: drawdown 12% above ..." read as if still above.
    assert cleared[0].message == f"resolved: was {fired[0].message}"
    assert evaluator.active == {}


def test_rule_messages_carry_the_numbers() -> None:
    now = 1_700_000_000.0
    assert "12.00%" in DrawdownBreachRule(0.1).check(AlertSnapshot(drawdown=0.12), now).message
    stale = StaleDataRule(60.0).check(AlertSnapshot(last_bar_time=now - 300, market_open=True), now)
    assert "300 s old" in stale.message
    assert "0.400" in ModelDriftRule(0.25).check(AlertSnapshot(drift_score=0.4), now).message


def test_stale_data_only_while_the_market_is_open() -> None:
    rule, now = StaleDataRule(60.0), 1_700_000_000.0
    assert rule.check(AlertSnapshot(last_bar_time=now - 3600, market_open=False), now) is None
    assert rule.check(AlertSnapshot(last_bar_time=None, market_open=False), now) is None
    assert "no bar" in rule.check(AlertSnapshot(last_bar_time=None, market_open=True), now).message


def test_drift_rule_ignores_missing_scores() -> None:
    rule = ModelDriftRule(0.25)
    assert rule.check(AlertSnapshot(drift_score=None), 0.0) is None
    assert rule.check(AlertSnapshot(drift_score=float("nan")), 0.0) is None


def test_reminders_repeat_a_lasting_alert_once_per_period() -> None:
    clock = FakeClock()
    evaluator = AlertEvaluator([DrawdownBreachRule(0.1)], clock=clock, remind_every_s=600.0)
    bad = AlertSnapshot(drawdown=0.2)
    fired_at = []
    for _ in range(130):  # 130 evaluations 10 s apart: 0 .. 1290 s
        if evaluator.evaluate(bad):
            fired_at.append(clock.now - 1_700_000_000.0)
        clock.now += 10.0
    assert fired_at == [0.0, 600.0, 1200.0]


def test_a_flapping_condition_does_not_storm() -> None:
    clock = FakeClock()
    evaluator = AlertEvaluator([DrawdownBreachRule(0.1)], cooldown_s=600.0, clock=clock)
    alerts = []
    for step in range(60):  # bad, good, bad, good ... every 10 s for 10 minutes
        alerts += evaluator.evaluate(AlertSnapshot(drawdown=0.2 if step % 2 == 0 else 0.0))
        clock.now += 10.0
    # One alert and its resolution in the first cooldown; the next entry after 600 s alerts again.
    assert [(a.resolved, a.raised_at.timestamp() - 1_700_000_000.0) for a in alerts] == [
        (False, 0.0),
        (True, 10.0),
    ]
    alerts = evaluator.evaluate(AlertSnapshot(drawdown=0.2))
    assert [a.resolved for a in alerts] == [False]


def test_a_value_hovering_at_the_threshold_alerts_once_until_it_clears_by_the_margin() -> None:
    clock = FakeClock()
    evaluator = AlertEvaluator([DrawdownBreachRule(0.10, hysteresis=0.2)], cooldown_s=0.0, clock=clock)
    fired = []
    # Around the 10% limit, never at or below the 8% clearing level, then cleared, then breached again.
    for drawdown in (0.101, 0.099, 0.104, 0.095, 0.0801, 0.102, 0.08, 0.09, 0.101):
        clock.now += 86_400.0
        fired += [(drawdown, a.resolved) for a in evaluator.evaluate(AlertSnapshot(drawdown=drawdown))]
    assert fired == [(0.101, False), (0.08, True), (0.101, False)]
    in_band = DrawdownBreachRule(0.10).check(AlertSnapshot(drawdown=0.09), 0.0, active=True)
    assert in_band.message == "drawdown 9.00% back under the limit of 10.00%, not yet at 8.00%"
    assert DrawdownBreachRule(0.10).check(AlertSnapshot(drawdown=0.09), 0.0) is None  # not entered below it


def test_a_constant_drift_score_alerts_once_not_on_every_bar() -> None:
    clock = FakeClock()
    rules = AlertRulesConfig(drift_threshold=0.25).rules()
    evaluator = AlertEvaluator(rules, clock=clock)
    fired = []
    for bar in range(60):  # daily bars, one every 86 400 s: far more than any cooldown
        clock.now += 86_400.0
        score = 0.4 if bar < 40 else 0.1
        fired += [(bar, a.rule, a.resolved) for a in evaluator.evaluate(AlertSnapshot(drift_score=score))]
    assert fired == [(0, "model_drift", False), (40, "model_drift", True)]


def test_hysteresis_defaults_and_validation() -> None:
    config = AlertRulesConfig()
    assert [rule.hysteresis for rule in config.rules() if hasattr(rule, "hysteresis")] == [
        config.hysteresis
    ] * 3
    assert DrawdownBreachRule(0.1).hysteresis == config.hysteresis
    assert default_of(default_rules, "max_bar_age_s") == config.max_bar_age_s
    with pytest.raises(ValueError, match="hysteresis"):
        ModelDriftRule(0.25, hysteresis=1.0)
    with pytest.raises(ValueError, match="remind_every_s"):
        AlertEvaluator(default_rules(), remind_every_s=0.0)


def test_an_evaluator_restored_from_its_state_alerts_as_an_uninterrupted_one() -> None:
    rng = np.random.default_rng(7)
    snapshots = [
        AlertSnapshot(
            drawdown=float(rng.uniform(0.0, 0.15)),
            trading_state=TradingState(int(rng.integers(0, 3))),
            drift_score=float(rng.uniform(0.15, 0.35)),
        )
        for _ in range(200)
    ]

    def run(clock: FakeClock, kill_at: int | None = None, restore: bool = True) -> list[tuple]:
        evaluator, fresh = (AlertEvaluator(default_rules(), cooldown_s=600.0, clock=clock) for _ in range(2))
        fired = []
        for index, snapshot in enumerate(snapshots):
            if index == kill_at:  # a new process: a fresh evaluator with the state saved after the last bar
                saved = json.loads(json.dumps(evaluator.state(), allow_nan=False))
                evaluator = fresh
                if restore:
                    evaluator.load_state(saved)
            clock.now += 60.0
            fired += [(index, a.rule, a.severity, a.message) for a in evaluator.evaluate(snapshot)]
        return fired

    uninterrupted = run(FakeClock())
    assert len(uninterrupted) > 20
    assert {a[1] for a in uninterrupted} == {"drawdown_breach", "breaker_trip", "model_drift"}
    assert run(FakeClock(), kill_at=97) == uninterrupted
    assert run(FakeClock(), kill_at=97, restore=False) != uninterrupted  # what a restart without it did
    with pytest.raises(ValueError, match="alert evaluator's state"):
        AlertEvaluator(default_rules()).load_state({"active": {}})


def test_breaker_transitions_alert_at_once_each_with_its_own_cooldown() -> None:
    clock = FakeClock()
    evaluator = AlertEvaluator([BreakerTripRule()], cooldown_s=900.0, clock=clock)

    def step(state: TradingState) -> list[tuple[str, bool]]:
        clock.now += 30.0
        return [(a.severity, a.resolved) for a in evaluator.evaluate(AlertSnapshot(trading_state=state))]

    assert step(TradingState.REDUCING) == [("warning", False)]
    assert step(TradingState.HALTED) == [("critical", False)]  # escalation inside the cooldown still alerts
    assert step(TradingState.REDUCING) == []  # REDUCING was announced 60 s ago
    assert step(TradingState.ACTIVE) == [("info", True)]
    assert step(TradingState.HALTED) == []  # HALTED was announced 90 s ago


def test_evaluator_options_and_validation() -> None:
    clock = FakeClock()
    quiet = AlertEvaluator([DrawdownBreachRule(0.1)], cooldown_s=60.0, clock=clock, notify_resolved=False)
    assert len(quiet.evaluate(AlertSnapshot(drawdown=0.2))) == 1
    assert quiet.evaluate(AlertSnapshot(drawdown=0.0)) == []
    with pytest.raises(ValueError, match="distinct"):
        AlertEvaluator([DrawdownBreachRule(0.1), DrawdownBreachRule(0.2)])
    names = [rule.name for rule in default_rules()]
    assert names == ["drawdown_breach", "breaker_trip", "stale_data", "model_drift"]
    all_bad = AlertSnapshot(
        drawdown=0.5, trading_state=TradingState.HALTED, last_bar_time=None, market_open=True, drift_score=1.0
    )
    assert [a.rule for a in AlertEvaluator(default_rules(), clock=clock).evaluate(all_bad)] == names


def test_a_failing_rule_is_logged_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(DrawdownBreachRule):
        name = "broken"

        def check(self, snapshot: AlertSnapshot, now: float, active: bool = False) -> None:
            raise ZeroDivisionError("rule bug")

    evaluator = AlertEvaluator([Broken(0.1), DrawdownBreachRule(0.1)], clock=FakeClock())
    with caplog.at_level(logging.ERROR):
        alerts = evaluator.evaluate(AlertSnapshot(drawdown=0.2))
    assert [a.rule for a in alerts] == ["drawdown_breach"]
    assert "alert rule broken failed" in caplog.records[0].getMessage()


# ------------------------------------------------------------------------------------------------ alert sinks


def test_log_sink_logs_at_the_severity_level(caplog: pytest.LogCaptureFixture) -> None:
    sink = LogAlertSink(logging.getLogger("test.alerts"))
    with caplog.at_level(logging.INFO, logger="test.alerts"):
        sink.send(an_alert(severity="critical"))
        sink.send(an_alert(rule="model_drift", severity="warning"))
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.ERROR, "alert drawdown_breach [CRITICAL]: drawdown 12.00% above the limit of 10.00%"),
        (logging.WARNING, "alert model_drift [WARNING]: drawdown 12.00% above the limit of 10.00%"),
    ]


def test_webhook_posts_the_json_body() -> None:
    with Receiver() as receiver:
        sink = WebhookAlertSink(receiver.url, timeout_s=5, retries=3, session_id="paper-42")
        sink.send(an_alert())
        sink.close()
    assert receiver.bodies == [
        {
            "content_type": "application/json",
            "rule": "drawdown_breach",
            "severity": "critical",
            "message": "drawdown 12.00% above the limit of 10.00%",
            "raised_at": "2024-03-01T15:30:00+00:00",
            "session_id": "paper-42",
            "resolved": False,
        }
    ]


def test_webhook_server_error_is_retried_then_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    with Receiver(status=500) as receiver, caplog.at_level(logging.ERROR):
        WebhookAlertSink(receiver.url, retries=2, backoff_s=0.0).send(an_alert())
    assert len(receiver.bodies) == 3  # the first attempt and two retries
    [record] = caplog.records
    assert "not delivered" in record.getMessage() and "HTTP 500" in record.getMessage()
    assert "SECRET-TOKEN" not in record.getMessage()


def test_webhook_client_error_is_not_retried(caplog: pytest.LogCaptureFixture) -> None:
    with Receiver(status=400) as receiver, caplog.at_level(logging.ERROR):
        WebhookAlertSink(receiver.url, retries=3, backoff_s=0.0).send(an_alert())
    assert len(receiver.bodies) == 1
    assert "HTTP 400" in caplog.records[0].getMessage()


def test_webhook_down_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    url = closed_port_url()
    sink = WebhookAlertSink(url, timeout_s=2, retries=1, backoff_s=0.0)
    with caplog.at_level(logging.ERROR):
        sink.send(an_alert())
    [record] = caplog.records
    assert "after 2 attempt(s): ConnectionError" in record.getMessage()
    assert "SECRET-TOKEN" not in record.getMessage() and "SECRET-TOKEN" not in repr(sink)


def test_fan_out_reaches_every_sink_even_when_one_raises(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def send(self, alert: Alert) -> None:
            raise RuntimeError("sink bug")

    class Collecting:
        def __init__(self) -> None:
            self.alerts: list[Alert] = []

        def send(self, alert: Alert) -> None:
            self.alerts.append(alert)

    first, last = Collecting(), Collecting()
    with caplog.at_level(logging.ERROR):
        FanOutAlertSink([first, Broken(), last]).send(an_alert())
    assert len(first.alerts) == len(last.alerts) == 1
    assert "Broken failed" in caplog.records[0].getMessage()


def test_background_sink_does_not_block_the_caller() -> None:
    release, delivered = threading.Event(), []

    class Slow:
        def send(self, alert: Alert) -> None:
            release.wait(timeout=30)
            delivered.append(alert)

    sink = BackgroundAlertSink(Slow())
    sink.send(an_alert())
    sink.send(an_alert(rule="stale_data"))
    assert delivered == []  # send returned while the sink is still stuck on the first alert
    release.set()
    sink.flush()
    assert [a.rule for a in delivered] == ["drawdown_breach", "stale_data"]
    sink.close()


def test_background_sink_to_a_real_receiver() -> None:
    with Receiver() as receiver:
        sink = BackgroundAlertSink(WebhookAlertSink(receiver.url, session_id="s1"))
        sink.send(an_alert())
        sink.close()
    assert [body["session_id"] for body in receiver.bodies] == ["s1"]


# ------------------------------------------------------------------------------------------------ server


class FakeAgent:
    """Status provider and readiness check of a pretend live agent, switchable by the tests."""

    def __init__(self) -> None:
        self.loop_alive: bool | None = True
        self.readiness: Any = True
        self.fail = False

    def status(self) -> dict[str, Any]:
        if self.fail:
            raise RuntimeError("status broke")
        status: dict[str, Any] = {
            "session_id": "paper-42",
            "model_version": "ppo-v7",
            "broker": "alpaca-paper",
            "trading_state": TradingState.REDUCING,
            "kill_switch": np.bool_(False),
            "equity_curve": [{"t": datetime(2024, 3, 1, tzinfo=UTC), "equity": np.float64(100_000.0)}],
            "positions": [{"symbol": "AAPL", "qty": np.int64(10), "price": 180.5, "value": 1805.0}],
            "cash": 98_195.0,
            "equity": 100_000.0,
            "drawdown": 0.0,
            "var_95": float("nan"),  # not enough history yet
            "last_bar_time": "2024-03-01T15:30:00+00:00",
            "recent_alerts": [an_alert().to_payload("paper-42")],
            "recent_interventions": [],
        }
        if self.loop_alive is not None:
            status["loop_alive"] = self.loop_alive
        return status

    def ready(self) -> Any:
        if isinstance(self.readiness, Exception):
            raise self.readiness
        return self.readiness


@pytest.fixture()
def agent() -> FakeAgent:
    return FakeAgent()


@pytest.fixture()
def server(agent: FakeAgent) -> Iterator[tuple[MonitoringServer, LiveMetrics]]:
    metrics = LiveMetrics()
    with MonitoringServer(agent.status, metrics, agent.ready) as monitoring:
        yield monitoring, metrics


def test_metrics_endpoint_serves_the_observed_values(server: tuple[MonitoringServer, LiveMetrics]) -> None:
    monitoring, metrics = server
    metrics.observe_decision("trader", 0.001)
    metrics.set_portfolio(100_000.0, 250.0, 0.02, 0.011, TradingState.ACTIVE, {"AAPL": 10.0})
    response = requests.get(monitoring.url + "/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
    values = samples(response.content)
    assert values[("decisions_total", (("role", "trader"),))] == 1
    assert values[("equity", ())] == 100_000.0
    assert values[("positions", (("symbol", "AAPL"),))] == 10.0


def test_healthz_follows_the_loop_thread(
    server: tuple[MonitoringServer, LiveMetrics], agent: FakeAgent
) -> None:
    url = server[0].url + "/healthz"
    response = requests.get(url, timeout=10)
    assert (response.status_code, response.json()) == (200, {"status": "ok"})
    agent.loop_alive = False
    response = requests.get(url, timeout=10)
    assert (response.status_code, response.json()["reason"]) == (503, "trading loop is not alive")
    agent.loop_alive = None
    assert "does not report loop_alive" in requests.get(url, timeout=10).json()["reason"]
    agent.loop_alive, agent.fail = True, True
    assert requests.get(url, timeout=10).status_code == 503


def test_readyz_reports_the_reason(server: tuple[MonitoringServer, LiveMetrics], agent: FakeAgent) -> None:
    url = server[0].url + "/readyz"
    assert requests.get(url, timeout=10).status_code == 200
    agent.readiness = False
    assert requests.get(url, timeout=10).status_code == 503
    agent.readiness = (False, "broker unreachable")
    response = requests.get(url, timeout=10)
    assert (response.status_code, response.json()) == (
        503,
        {"status": "not ready", "reason": "broker unreachable"},
    )
    agent.readiness = (True, "")
    assert requests.get(url, timeout=10).status_code == 200
    agent.readiness = ConnectionError("model store down")
    response = requests.get(url, timeout=10)
    assert (response.status_code, response.json()["reason"]) == (503, "ConnectionError")


def test_api_status_is_plain_json(server: tuple[MonitoringServer, LiveMetrics], agent: FakeAgent) -> None:
    response = requests.get(server[0].url + "/api/status?ts=1", timeout=10)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("application/json")
    assert response.headers["Cache-Control"] == "no-store"
    status = json.loads(response.text)  # strict: a bare NaN would not be valid JSON for the browser
    assert status["trading_state"] == "REDUCING" and status["kill_switch"] is False
    assert status["var_95"] is None
    assert status["equity_curve"] == [{"t": "2024-03-01T00:00:00+00:00", "equity": 100_000.0}]
    assert status["positions"][0] == {"symbol": "AAPL", "qty": 10, "price": 180.5, "value": 1805.0}
    assert status["recent_alerts"][0]["rule"] == "drawdown_breach"
    agent.fail = True
    assert requests.get(server[0].url + "/api/status", timeout=10).status_code == 500


def test_dashboard_is_served_self_contained(server: tuple[MonitoringServer, LiveMetrics]) -> None:
    for path in ("/", "/dashboard"):
        response = requests.get(server[0].url + path, timeout=10)
        assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/html")
        assert "connect-src 'self'" in response.headers["Content-Security-Policy"]
        page = response.text
        assert 'id="equity-path"' in page and 'id="positions-table"' in page and 'fetch("api/status"' in page
        # No external resource: the only absolute URL is the SVG namespace name, which is never fetched.
        assert page.replace("http://www.w3.org/2000/svg", "").count("http") == 0
        assert "<link" not in page and "<script src" not in page


def test_unknown_paths_head_and_lifecycle(agent: FakeAgent) -> None:
    monitoring = MonitoringServer(agent.status, LiveMetrics(), agent.ready)
    with pytest.raises(RuntimeError, match="not running"):
        monitoring.url  # noqa: B018
    with monitoring:
        url = monitoring.url
        assert requests.get(url + "/nope", timeout=10).status_code == 404
        head = requests.head(url + "/healthz", timeout=10)
        assert head.status_code == 200 and head.content == b""
        with pytest.raises(RuntimeError, match="already running"):
            monitoring.start()
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/healthz", timeout=10)
    monitoring.stop()  # stopping twice is harmless


# ------------------------------------------------------------------------------- champion monitoring: regimes

MONITORED_TICKERS = ["AAPL", "JPM", "KO", "MSFT"]
# The champion's run, as its data tags say: trained to mid-2017, tested on the rest of 2017.
CHAMPION_TAGS = {
    "data_train_start": "2016-02-16",
    "data_train_end": "2017-06-30",
    "data_test_start": "2017-07-03",
    "data_test_end": "2017-12-29",
}


class FixedActionPolicy:
    """A policy that always answers the same action (not a trained agent): monitoring only needs its returns."""

    def __init__(self, size: int) -> None:
        self.action = np.full(size, 0.5, dtype=np.float32)

    def predict(self, observation: np.ndarray, state=None, episode_start=None, deterministic: bool = True):
        return self.action, state


class FakeChampionRegistry:
    """The registry calls champion_monitoring makes, in memory: champion v3, its decision bundle and run tags."""

    model_name = "rl_trading_agent"

    def __init__(self, policy: FixedActionPolicy, spec: DecisionSpec) -> None:
        self.bundle = (policy, spec)

    def version_for_alias(self, alias: str) -> str | None:
        return "3" if alias == CHAMPION_ALIAS else None

    def version_run_tags(self, version: str) -> dict[str, str]:
        return dict(CHAMPION_TAGS)

    def load_decision_bundle(self, version: str):
        return self.bundle


@pytest.fixture(scope="module")
def monitored(dow30_bars: pd.DataFrame) -> tuple[pd.DataFrame, MarketRegimes, FakeChampionRegistry]:
    """Real bars 2016 .. March 2018 (through the February 2018 volatility shock): features, the regime model
    fitted on the champion's training dates, and a registry holding a fixed-action champion."""
    bars = to_validated_bars(select_window(dow30_bars, MONITORED_TICKERS, "2016-01-01", "2018-03-29"))
    features = build_features(bars)
    regimes = fit_market_regimes(
        bars,
        pd.Timestamp(CHAMPION_TAGS["data_train_start"]),
        pd.Timestamp(CHAMPION_TAGS["data_train_end"]),
        RegimeConfig(n_restarts=1),
    )
    env_spec = EnvSpec(n_envs=1)
    spec = DecisionSpec(
        tickers=tuple(MONITORED_TICKERS),
        feature_columns=tuple(feature_columns_of(features)),
        env_spec=env_spec,
        reference_quantiles=feature_deciles(features, indicator_columns_of(features)),
    )
    size = env_spec.engine_action.action_size(len(MONITORED_TICKERS))
    return features, regimes, FakeChampionRegistry(FixedActionPolicy(size), spec)


def run_monitoring(monitored, **settings) -> dg.Output:
    features, regimes, registry = monitored
    outputs = champion_monitoring(
        dg.build_asset_context(),
        config=ChampionMonitoringSettings(recent_dates=40, **settings),
        features=features,
        market_regimes=regimes,
        model_registry=registry,
    )
    return next(o for o in outputs if isinstance(o, dg.Output))


def test_monitoring_records_the_lasting_regime_change_since_training_and_the_sensor_retrains(monitored):
    output = run_monitoring(monitored)
    health, metadata = output.value, output.metadata
    shift = health.regime_shift
    # Measured on the real bars: calm when training ended, a turbulent spell in August 2017 and back, then
    # turbulent since 2018-02-02 (confirmed 2018-02-08).
    assert (shift.regime_then, shift.regime_now, shift.current_regime) == (0, 1, 1)
    assert shift.changes["date"].dt.date.astype(str).tolist() == ["2017-08-17", "2017-08-31", "2018-02-02"]
    assert shift.changes["to_regime"].tolist() == [1, 0, 1]
    assert shift.changes["confirmed_on"].iloc[-1] == pd.Timestamp("2018-02-08")
    assert health.reasons[-1] == health.regime_reason and health.regime_reason.startswith("regime change: ")
    assert health.retrain_recommended and health.regime_reason not in health.degradation_reasons
    assert metadata["current_regime"].value == 1
    assert metadata["regime_change_key"].value == "v3-0-to-1-since-2018-02-02"
    assert "since 2018-02-02" in metadata["regime_change"].value
    assert "regime change: " not in metadata["degradation_reasons"].value
    # The stored model dict filtered forward gives the regimes the market_regimes asset stored.
    _, regimes, _ = monitored
    assert regimes.frame.loc["2018-02-02":, "regime"].eq(1).all()
    # What the degradation sensor makes of this materialization.
    request = degradation_request(output.metadata, "run-1")
    assert isinstance(request, dg.RunRequest)
    assert "regime change: " in request.tags["reasons"] and "2018-02-02" in request.tags["regime_change"]


def test_a_regime_spell_shorter_than_the_minimum_is_no_reason(monitored):
    output = run_monitoring(monitored, regime_min_days=60)  # the turbulent spell has lasted 39 dates
    shift = output.value.regime_shift
    assert not shift.changed and shift.current_regime == 1
    assert output.value.regime_reason == "" and not any("regime" in r for r in output.value.reasons)
    assert output.metadata["regime_change"].value == "" and output.metadata["regime_change_key"].value == ""
