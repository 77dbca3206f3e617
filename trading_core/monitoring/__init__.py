"""Monitoring of the live trading agent: Prometheus metrics, health and status endpoints with a dashboard, alert
rules and delivery, and drift/decay statistics shared with the pipeline's champion monitoring."""

from trading_core.monitoring.alerts import (
    Alert,
    AlertEvaluator,
    AlertRule,
    AlertRulesConfig,
    AlertSink,
    AlertSnapshot,
    BackgroundAlertSink,
    Breach,
    BreakerTripRule,
    DrawdownBreachRule,
    FanOutAlertSink,
    LogAlertSink,
    ModelDriftRule,
    StaleDataRule,
    WebhookAlertSink,
    default_rules,
)
from trading_core.monitoring.drift import (
    LiveDriftScore,
    PerformanceDecay,
    feature_drift,
    performance_decay,
    population_stability_index,
)
from trading_core.monitoring.live_metrics import LiveMetrics
from trading_core.monitoring.server import MonitoringServer, StatusPayload

__all__ = [
    "Alert",
    "AlertEvaluator",
    "AlertRule",
    "AlertRulesConfig",
    "AlertSink",
    "AlertSnapshot",
    "BackgroundAlertSink",
    "Breach",
    "BreakerTripRule",
    "DrawdownBreachRule",
    "FanOutAlertSink",
    "LiveDriftScore",
    "LiveMetrics",
    "LogAlertSink",
    "ModelDriftRule",
    "MonitoringServer",
    "PerformanceDecay",
    "StaleDataRule",
    "StatusPayload",
    "WebhookAlertSink",
    "default_rules",
    "feature_drift",
    "performance_decay",
    "population_stability_index",
]
