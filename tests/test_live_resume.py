"""Resuming a live session: its saved state is JSON that cannot run code, and a killed session raises exactly the
alerts of an uninterrupted one (drift and alert memory are saved with every bar, undelivered alerts are delivered)."""

from __future__ import annotations

import base64
import json
import pickle
from pathlib import Path

import pandas as pd
import pytest

from trading_core.broker.simulated import SimulatedBroker
from trading_core.live.engine import DecisionEngine
from trading_core.live.loop import STATE_SCHEMA, STATE_VERSION, LiveConfig, LiveTradingLoop
from trading_core.live.sources import replay
from trading_core.live.state import CHAMPION, TradingStateStore
from trading_core.monitoring.alerts import Alert, AlertEvaluator, AlertRulesConfig
from trading_core.runtime.stored_json import PickledStateError, StoredStateError, to_document

BARS = 100
# Tight enough that one-minute bars of a tiny agent breach them: drawdown and drift alerts, and a resolution.
RULES = AlertRulesConfig(drawdown_limit=0.002, drift_threshold=0.5)
# Small drift windows so a drift score exists within the test's bars.
CONFIG = {"drift_window": 20, "drift_every": 5}


class RecordingSink:
    """Keeps what it was handed; with ``die_on`` set, the process 'dies' delivering that alert (0-based)."""

    def __init__(self, die_on: int | None = None) -> None:
        self.alerts: list[Alert] = []
        self.die_on = die_on

    def send(self, alert: Alert) -> None:
        if self.die_on is not None and len(self.alerts) == self.die_on:
            raise SystemExit("simulated kill while delivering an alert")
        self.alerts.append(alert)


class KilledBroker(SimulatedBroker):
    """Dies on the first order after ``kill_after``: between the bar's write-ahead and its commit."""

    kill_after: pd.Timestamp | None = None

    def submit_order(self, request):
        if self.kill_after is not None and self._last_time is not None and self._last_time > self.kill_after:
            raise SystemExit("simulated kill in the middle of a bar")
        return super().submit_order(request)


def make_loop(live_agent, history, store, sink, broker=None, challenger=False) -> LiveTradingLoop:
    policy, spec = live_agent
    loop: LiveTradingLoop

    def bar_clock() -> float:  # as replays run: alerts are timed by the bar they belong to
        return loop.last_bar_time.timestamp() if loop.last_bar_time is not None else 0.0

    loop = LiveTradingLoop(
        LiveConfig(session_id="s1", **CONFIG),
        store,
        broker or SimulatedBroker(list(spec.tickers), spec.env_spec.simulation),
        (DecisionEngine(policy, spec), "1"),
        (DecisionEngine(policy, spec), "2") if challenger else None,
        alerts=(AlertEvaluator(RULES.rules(), clock=bar_clock), sink),
        history=history,
    )
    return loop


def new_store(tmp_path: Path, name: str) -> TradingStateStore:
    store = TradingStateStore.sqlite(tmp_path / name)
    store.create_schema()
    return store


def alert_rows(store: TradingStateStore) -> list[tuple]:
    alerts = store.alerts("s1")
    return list(alerts[["rule", "raised_at", "severity", "message"]].itertuples(index=False, name=None))


def delivered(sink: RecordingSink) -> list[tuple]:
    return [(a.rule, pd.Timestamp(a.raised_at), a.severity, a.message, a.resolved) for a in sink.alerts]


@pytest.fixture(scope="module")
def events(live_minutes):
    return list(replay(live_minutes[1]))[:BARS]


@pytest.fixture(scope="module")
def uninterrupted(live_agent, live_minutes, events, tmp_path_factory):
    store = new_store(tmp_path_factory.mktemp("reference"), "state.db")
    sink = RecordingSink()
    make_loop(live_agent, live_minutes[0], store, sink).run(events)
    return store, sink


def test_the_reference_session_alerts_once_per_breach(uninterrupted) -> None:
    store, sink = uninterrupted
    rows = alert_rows(store)
    assert {rule for rule, *_ in rows} >= {"model_drift", "drawdown_breach"}
    assert [row[:3] for row in rows] == [d[:3] for d in delivered(sink)]
    # The drift score stays above the threshold from its first breach on: one alert, not one per bar.
    assert sum(rule == "model_drift" for rule, *_ in rows) == 1
    assert store.undelivered_alerts("s1").empty


@pytest.mark.parametrize("kill", ["mid-bar", "after-commit"])
def test_a_killed_session_resumes_with_exactly_the_alerts_of_an_uninterrupted_one(
    kill, live_agent, live_minutes, events, uninterrupted, tmp_path
) -> None:
    reference_store, reference_sink = uninterrupted
    policy, spec = live_agent
    store = new_store(tmp_path, "killed.db")
    if kill == "mid-bar":
        broker = KilledBroker(list(spec.tickers), spec.env_spec.simulation)
        # After the first alert: the drift score and the evaluator's memory must survive the kill.
        broker.kill_after = reference_store.alerts("s1")["raised_at"].iloc[0] + pd.Timedelta(minutes=7)
        first_sink = RecordingSink()
    else:
        broker = None
        first_sink = RecordingSink(die_on=1)  # the second alert's bar is committed; its delivery dies
    with pytest.raises(SystemExit):
        make_loop(live_agent, live_minutes[0], store, first_sink, broker=broker).run(events)
    killed_after = store.get_session("s1").last_bar_time
    assert events[0].timestamp < killed_after < events[-1].timestamp

    second_sink = RecordingSink()  # a new process: fresh objects, the replay from the top
    make_loop(live_agent, live_minutes[0], store, second_sink).run(events)

    assert alert_rows(store) == alert_rows(reference_store)
    assert delivered(first_sink) + delivered(second_sink) == delivered(reference_sink)
    assert store.undelivered_alerts("s1").empty
    pd.testing.assert_frame_equal(
        store.equity_curve("s1", CHAMPION), reference_store.equity_curve("s1", CHAMPION), check_exact=True
    )


def test_every_part_of_the_saved_state_comes_back_exactly(live_agent, live_minutes, events, tmp_path) -> None:
    store = new_store(tmp_path, "state.db")
    loop = make_loop(live_agent, live_minutes[0], store, RecordingSink(), challenger=True)
    loop.run(events[:40])
    saved = store.load_broker_snapshot("s1").payload
    parts = saved["data"]
    assert parts["drift"]["rows"] is not None and parts["alerts"]["active"]  # drift window and a live breach
    assert all(part is not None for part in (parts["shadow"], parts["broker"], *parts["risk"]))

    resumed = make_loop(live_agent, live_minutes[0], store, RecordingSink(), challenger=True)
    resumed.start()
    again = json.dumps(to_document(STATE_SCHEMA, STATE_VERSION, resumed._engine_state()), allow_nan=False)
    assert again == json.dumps(saved, allow_nan=False)  # the same floats, arrays, books and memories
    assert (
        resumed.drift.score == loop.drift.score
        and resumed.status()["recent_alerts"] == loop.status()["recent_alerts"]
    )


class _WritesMarker:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_a_crafted_blob_in_the_state_database_is_refused_and_never_run(
    live_agent, live_minutes, events, tmp_path
) -> None:
    store = new_store(tmp_path, "state.db")
    make_loop(live_agent, live_minutes[0], store, RecordingSink()).run(events[:3])
    bar_time = store.get_session("s1").last_bar_time
    marker = tmp_path / "marker"
    blob = base64.b64encode(pickle.dumps(_WritesMarker(marker))).decode()
    store.save_broker_snapshot("s1", bar_time, {"engine_state": blob})  # the format before JSON
    with pytest.raises(PickledStateError, match="saved state of session s1 is a pickle"):
        make_loop(live_agent, live_minutes[0], store, RecordingSink()).start()
    assert not marker.exists()

    foreign = {
        "schema": STATE_SCHEMA,
        "version": STATE_VERSION,
        "data": {"__stored__": "dataclass", "type": "Popen"},
    }
    store.save_broker_snapshot("s1", bar_time, foreign)
    with pytest.raises(StoredStateError, match="saved state of session s1: data: a dataclass needs the keys"):
        make_loop(live_agent, live_minutes[0], store, RecordingSink()).start()
    store.save_broker_snapshot("s1", bar_time, {**foreign, "data": {"features": {}}})
    with pytest.raises(StoredStateError, match="saved state of session s1 is corrupt: missing 'risk'"):
        make_loop(live_agent, live_minutes[0], store, RecordingSink()).start()
