"""The live loop on real 1-minute bars: orders, fills, durable state, kill switch, market hours, crash recovery."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from tests.live_support import LIVE_TICKERS, train_live_agent
from tests.test_postgres_stores import postgres_database  # noqa: F401 - a fixture
from trading_core.broker.simulated import SimulatedBroker
from trading_core.live.engine import DecisionEngine
from trading_core.live.loop import LiveConfig, LiveTradingLoop, kill_session
from trading_core.live.sources import BarEvent, replay
from trading_core.live.state import CHALLENGER, CHAMPION, TradingStateStore

BARS = 240


@pytest.fixture(scope="module")
def other_agent(dow30_bars):
    return train_live_agent(dow30_bars, seed=4)


def make_loop(live_agent, live_minutes, store, session="s1", challenger=None, broker=None) -> LiveTradingLoop:
    policy, spec = live_agent
    history, _ = live_minutes
    broker = broker or SimulatedBroker(list(spec.tickers), spec.env_spec.simulation)
    return LiveTradingLoop(
        LiveConfig(session_id=session),
        store,
        broker,
        (DecisionEngine(policy, spec), "1"),
        (DecisionEngine(challenger[0], challenger[1]), "2") if challenger else None,
        history=history,
    )


def new_store(tmp_path, name="state.db") -> TradingStateStore:
    store = TradingStateStore.sqlite(tmp_path / name)
    store.create_schema()
    return store


def test_session_trades_records_and_fills_next_bar(live_agent, other_agent, live_minutes, tmp_path):
    store = new_store(tmp_path)
    loop = make_loop(live_agent, live_minutes, store, challenger=other_agent)
    summary = loop.run(replay(live_minutes[1]), max_bars=BARS)
    assert summary.bars == BARS and summary.decisions == BARS  # warm from the first day's history
    assert summary.orders_sent > 0
    orders = store.orders("s1")
    fills = store.fills("s1")
    assert set(orders["status"]) <= {"new", "accepted", "filled", "canceled", "partially_filled"}
    broker_fills = fills[fills["source"] == "broker"]
    assert len(broker_fills) > 0
    # Orders decided at bar t fill on a later bar, never on the bar they were decided on.
    decided = orders.set_index("client_order_id")["decision_time"]
    assert (
        broker_fills["filled_at"].to_numpy() > decided.loc[broker_fills["client_order_id"]].to_numpy()
    ).all()
    # The local broker and the simulated mirror run the same fill code: no slippage between them.
    merged = broker_fills.merge(fills[fills["source"] == "simulated"], on="client_order_id")
    assert len(merged) == len(broker_fills)
    np.testing.assert_allclose(merged["price_x"], merged["price_y"])
    assert store.positions("s1", CHAMPION) == {k: v for k, v in loop.broker.positions().items() if v}
    assert len(store.decisions("s1", CHALLENGER)) == BARS  # the challenger decided in shadow on every bar
    assert len(store.equity_curve("s1", CHAMPION)) == BARS
    status = loop.status()
    assert status["session_id"] == "s1" and len(status["equity_curve"]) == BARS


def test_market_hours_come_from_the_exchange_calendar(live_agent, live_minutes, tmp_path):
    loop = make_loop(live_agent, live_minutes, new_store(tmp_path))
    saturday = pd.Timestamp("2019-02-16 15:00", tz="UTC")
    assert not loop.market_open(saturday)
    assert loop.market_open(pd.Timestamp("2019-02-12 15:00", tz="UTC"))  # 10:00 New York on a Tuesday
    assert not loop.market_open(pd.Timestamp("2019-02-18 15:00", tz="UTC"))  # Presidents' Day
    event = next(replay(live_minutes[1]))
    loop.run([BarEvent(saturday, event.bars)])
    assert loop.summary.skipped_closed == 1 and loop.summary.bars == 0


def test_kill_switch_cancels_flattens_and_stops_deciding(live_agent, live_minutes, tmp_path):
    store = new_store(tmp_path)
    loop = make_loop(live_agent, live_minutes, store)
    events = list(replay(live_minutes[1]))[:160]
    loop.run(events[:100])
    assert loop.broker.positions(), "the agent should hold something before the kill"
    kill_session(store, "s1", "operator test")
    resumed = make_loop(live_agent, live_minutes, store)
    resumed.run(events)
    assert resumed.summary.killed
    assert resumed.summary.decisions == 0
    assert not resumed.broker.positions()  # closed on the bar after the kill
    assert "kill_switch" in set(store.alerts("s1")["rule"])


class CrashingBroker(SimulatedBroker):
    """Dies after its n-th order reached it: the process 'crashes' between the broker call and the commit."""

    crash_after = 0

    def submit_order(self, request):
        state = super().submit_order(request)
        CrashingBroker.crash_after -= 1
        if CrashingBroker.crash_after == 0:
            raise SystemExit("simulated crash")
        return state


def test_restart_after_a_crash_loses_nothing_and_sends_nothing_twice(live_agent, live_minutes, tmp_path):
    policy, spec = live_agent
    events = list(replay(live_minutes[1]))[:BARS]
    reference_store = new_store(tmp_path, "reference.db")
    reference = make_loop(live_agent, live_minutes, reference_store, session="same")
    reference.run(events)

    store = new_store(tmp_path, "crashed.db")
    CrashingBroker.crash_after = 7
    crashing = make_loop(
        live_agent,
        live_minutes,
        store,
        session="same",
        broker=CrashingBroker(list(spec.tickers), spec.env_spec.simulation),
    )
    with pytest.raises(SystemExit):
        crashing.run(events)
    # A new process: a fresh broker object, state restored from the store, the replay restarted from the top.
    restarted = make_loop(live_agent, live_minutes, store, session="same")
    restarted.run(events)

    for role in (CHAMPION,):
        pd.testing.assert_frame_equal(
            store.equity_curve("same", role), reference_store.equity_curve("same", role), check_exact=True
        )
    crashed_orders = store.orders("same").set_index("client_order_id").sort_index()
    reference_orders = reference_store.orders("same").set_index("client_order_id").sort_index()
    assert list(crashed_orders.index) == list(reference_orders.index)  # same ids, each once
    assert (crashed_orders["status"] == reference_orders["status"]).all()
    assert restarted.broker.positions() == reference.broker.positions()
    assert len(store.decisions("same", CHAMPION)) == len(events)
    fills = store.fills("same")
    assert not fills.duplicated(["client_order_id", "source"]).any()


def test_live_tickers_are_the_specs(live_agent):
    assert sorted(LIVE_TICKERS) == list(live_agent[1].tickers)


def test_alpaca_bar_stream_groups_bars_by_minute(live_minutes):
    from testkit.fake_alpaca import DEFAULT_API_KEY, DEFAULT_SECRET, FakeAlpacaServer
    from trading_core.live.sources import AlpacaBarStream

    _, trading = live_minutes
    first = trading[trading["timestamp"] < trading["timestamp"].unique()[3]]
    with FakeAlpacaServer() as server:
        stream = AlpacaBarStream(
            DEFAULT_API_KEY, DEFAULT_SECRET, LIVE_TICKERS, url_override=server.stream_url
        )
        events = iter(stream)
        publisher_done = []

        def publish() -> None:
            assert server.wait_for_subscription(LIVE_TICKERS, timeout_s=20)
            for row in first.itertuples(index=False):
                # Alpaca stamps a bar with its start; the recorded file labels bar ends.
                start = row.timestamp - pd.Timedelta(minutes=1)
                server.publish_bar(row.tic, start, row.open, row.high, row.low, row.close, row.volume)
            publisher_done.append(True)

        import threading

        threading.Thread(target=publish, daemon=True).start()
        received = [next(events), next(events)]  # the third minute is released by the fourth or by stop()
        stream.stop()
    expected = list(replay(first))[:2]
    assert [e.timestamp for e in received] == [e.timestamp for e in expected]
    assert [sorted(e.bars) for e in received] == [sorted(e.bars) for e in expected]
    assert received[0].bars["AAPL"] == expected[0].bars["AAPL"]
    assert repr(stream).startswith("AlpacaBarStream(") and DEFAULT_SECRET not in repr(stream)


def test_session_state_on_postgresql(live_agent, live_minutes, postgres_database):  # noqa: F811 - the fixture
    from tests.test_postgres_stores import sqlalchemy_url

    store = TradingStateStore(sqlalchemy_url(postgres_database))
    store.create_schema()
    loop = make_loop(live_agent, live_minutes, store, session="pg")
    loop.run(replay(live_minutes[1]), max_bars=60)
    # A second process resumes the same session from PostgreSQL and continues where the first stopped.
    resumed = make_loop(live_agent, live_minutes, store, session="pg")
    resumed.run(replay(live_minutes[1]), max_bars=20)
    assert len(store.decisions("pg", CHAMPION)) == 80
    assert store.get_session("pg").last_bar_time == list(replay(live_minutes[1]))[79].timestamp
    store.close()


def test_dashboard_of_a_live_session_renders_in_chromium(live_agent, live_minutes, tmp_path):
    import shutil
    import subprocess

    from trading_core.monitoring.live_metrics import LiveMetrics
    from trading_core.monitoring.server import MonitoringServer

    chromium = next(
        (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None
    )
    if chromium is None:
        pytest.skip("no headless browser on PATH (apt-get install -y chromium)")
    store = new_store(tmp_path)
    loop = make_loop(live_agent, live_minutes, store)
    loop.run(replay(live_minutes[1]), max_bars=120)
    loop.alive = True  # the status of a session between bars
    screenshot = tmp_path / "dashboard.png"
    with MonitoringServer(loop.status, LiveMetrics(namespace="rl_trading"), loop.ready) as server:
        base = [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=5000",
            "--window-size=1280,900",
        ]
        shot = subprocess.run(
            [*base, f"--screenshot={screenshot}", f"{server.url}/dashboard"], capture_output=True, timeout=120
        )
        dom = subprocess.run(
            [*base, "--dump-dom", f"{server.url}/dashboard"], capture_output=True, text=True, timeout=120
        )
    assert screenshot.exists() and screenshot.stat().st_size > 10_000, shot.stderr[-1000:]
    for symbol in loop.broker.positions():
        assert symbol in dom.stdout
    assert "s1" in dom.stdout and "<svg" in dom.stdout
    if os.environ.get("DASHBOARD_SCREENSHOT"):
        shutil.copy(screenshot, os.environ["DASHBOARD_SCREENSHOT"])


def test_readiness_fails_when_a_live_stream_goes_quiet_while_the_market_is_open(
    live_agent, live_minutes, tmp_path
):
    policy, spec = live_agent
    loop = LiveTradingLoop(
        LiveConfig(session_id="quiet", max_bar_age_s=180.0),
        new_store(tmp_path),
        SimulatedBroker(list(spec.tickers), spec.env_spec.simulation),
        (DecisionEngine(policy, spec), "1"),
        history=live_minutes[0],
    )
    assert loop.ready() == (False, "the trading loop is not running")
    loop.start()
    started = loop._started_wall
    tuesday_open = pd.Timestamp("2019-02-12 15:00", tz="UTC")
    loop._started_wall = tuesday_open - pd.Timedelta(seconds=60)
    assert loop.ready(now=tuesday_open) == (True, "ok")
    loop._started_wall = tuesday_open - pd.Timedelta(seconds=600)
    ready, reason = loop.ready(now=tuesday_open)
    assert not ready and reason.startswith("no bar for 600 s")
    assert loop.ready(now=pd.Timestamp("2019-02-16 15:00", tz="UTC")) == (
        True,
        "ok",
    )  # Saturday: quiet is fine
    assert started is not None
