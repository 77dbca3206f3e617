"""Paper trading through the real alpaca-py clients against the local fake Alpaca: faults, and a killed process.

The crash test SIGKILLs the `make paper` process mid-session, restarts it, and compares everything with an
uninterrupted session: nothing is lost and no order reaches the broker twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from resources.mlflow_registry import MlflowRegistryResource
from resources.state_home import PROJECT_ROOT, StateHome
from testkit.fake_alpaca import DEFAULT_API_KEY, DEFAULT_SECRET, FakeAlpacaServer
from tests.live_support import register_agent
from trading_core.broker.alpaca import AlpacaPaperBroker
from trading_core.broker.base import RetryPolicy
from trading_core.live.engine import DecisionEngine
from trading_core.live.loop import LiveConfig, LiveTradingLoop
from trading_core.live.sources import replay
from trading_core.live.state import CHAMPION, TradingStateStore

FAST_RETRY = RetryPolicy(max_attempts=6, base_delay_s=0.01, max_delay_s=0.05)
SESSION_BARS = 150


def publish(server: FakeAlpacaServer, events):
    for event in events:
        for symbol, bar in event.bars.items():
            server.publish_bar(symbol, event.timestamp, bar.open, bar.high, bar.low, bar.close, bar.volume)
        yield event


def test_broker_faults_are_retried_and_never_duplicate_an_order(live_agent, live_minutes, tmp_path):
    policy, spec = live_agent
    history, trading = live_minutes
    store = TradingStateStore.sqlite(tmp_path / "state.db")
    store.create_schema()
    with FakeAlpacaServer(initial_cash=spec.env_spec.initial_amount) as server:
        broker = AlpacaPaperBroker(
            DEFAULT_API_KEY, DEFAULT_SECRET, url_override=server.url, retry=FAST_RETRY, request_timeout_s=0.5
        )
        # Throttling and server errors on order submission, and a reply lost after the order was created.
        server.inject(429, method="POST", path_prefix="/v2/orders", times=2)
        server.inject(503, method="POST", path_prefix="/v2/orders", times=2)
        server.inject(
            "timeout", method="POST", path_prefix="/v2/orders", times=1, after_processing=True, hang_s=1.0
        )
        server.inject(502, method="GET", path_prefix="/v2/positions", times=2)
        loop = LiveTradingLoop(
            LiveConfig(session_id="faults"),
            store,
            broker,
            (DecisionEngine(policy, spec), "1"),
            history=history,
            retry=FAST_RETRY,
        )
        loop.run(publish(server, replay(trading)), max_bars=80)
        server_ids = [order["client_order_id"] for order in server.orders]
        stored = store.orders("faults")
    assert loop.summary.orders_sent > 0
    assert len(server_ids) == len(set(server_ids))  # every order once, despite the lost reply
    sent = stored[stored["status"] != "pending_submit"]
    assert set(sent["client_order_id"]) == set(server_ids)
    assert server.route_counts.get("POST /v2/orders", 0) > len(server_ids)  # retries really happened


def _write_minute_file(frame: pd.DataFrame, path: Path) -> Path:
    local = frame["timestamp"].dt.tz_convert("America/New_York").dt.tz_localize(None)
    frame.assign(datetime=local)[["datetime", "tic", "open", "high", "low", "close", "volume"]].to_csv(
        path, index=False
    )
    return path


def _paper_command(server: FakeAlpacaServer, bars: Path, state_db: str, resume: bool = False) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pipelines.paper_trading",
        "--broker",
        "alpaca",
        "--alpaca-url",
        server.url,
        "--publish-to-fake",
        "--bars",
        str(bars),
        "--session-id" if resume else "--new-session-id",
        "crash-test",
        "--state-db",
        state_db,
        "--monitor-port",
        "-1",
        "--challenger-alias",
        "",
    ]


def _finish_session(server: FakeAlpacaServer, bars: Path, state_db: Path, env: dict[str, str], resume: bool):
    """Run the paper command to the end; the client order ids the fake received and its final positions."""
    finished = subprocess.run(
        _paper_command(server, bars, f"sqlite:///{state_db}", resume),
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    orders = [order["client_order_id"] for order in server.orders]
    return orders, AlpacaPaperBroker(DEFAULT_API_KEY, DEFAULT_SECRET, url_override=server.url).positions()


def test_killed_session_restarts_without_losing_or_repeating_anything(live_agent, live_minutes, tmp_path):
    policy, spec = live_agent
    history, trading = live_minutes
    home = StateHome(tmp_path / "home").prepare()
    registry = MlflowRegistryResource(
        tracking_uri=home.mlflow_tracking_uri, artifact_root=home.mlflow_artifact_root
    )
    register_agent(policy, spec, registry)
    first_day = history.rename(columns={"date": "timestamp"})
    bars = _write_minute_file(
        pd.concat([first_day, trading[trading["timestamp"] < trading["timestamp"].unique()[SESSION_BARS]]]),
        tmp_path / "bars.csv",
    )
    env = {
        **os.environ,
        "RL_TRADING_HOME": str(home.root),
        "ALPACA_API_KEY": DEFAULT_API_KEY,
        "ALPACA_SECRET_KEY": DEFAULT_SECRET,
        "PYTHONPATH": str(PROJECT_ROOT),
    }

    crashed_db, reference_db = tmp_path / "crashed.db", tmp_path / "reference.db"
    first_log = tmp_path / "first_run.log"  # a file, not a pipe: a full pipe would stall the child
    with FakeAlpacaServer(initial_cash=spec.env_spec.initial_amount) as server, first_log.open("w") as log:
        process = subprocess.Popen(
            _paper_command(server, bars, f"sqlite:///{crashed_db}"),
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 240
        decided = 0
        while decided < SESSION_BARS // 2 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
            if crashed_db.exists():
                try:
                    decided = len(TradingStateStore(f"sqlite:///{crashed_db}").decisions("crash-test"))
                except Exception:  # noqa: BLE001 - the schema may not exist yet
                    decided = 0
        assert process.poll() is None, first_log.read_text()[-2000:]
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert decided < SESSION_BARS
        crashed_orders, crashed_positions = _finish_session(server, bars, crashed_db, env, resume=True)

    with FakeAlpacaServer(initial_cash=spec.env_spec.initial_amount) as reference_server:
        reference_orders, reference_positions = _finish_session(
            reference_server, bars, reference_db, env, resume=False
        )

    assert len(crashed_orders) == len(set(crashed_orders))  # nothing sent twice
    assert sorted(crashed_orders) == sorted(reference_orders)  # nothing lost
    assert crashed_positions == reference_positions
    crashed, uninterrupted = (
        TradingStateStore(f"sqlite:///{crashed_db}"),
        TradingStateStore(f"sqlite:///{reference_db}"),
    )
    pd.testing.assert_frame_equal(
        crashed.equity_curve("crash-test", CHAMPION), uninterrupted.equity_curve("crash-test", CHAMPION)
    )
    assert len(crashed.decisions("crash-test", CHAMPION)) == SESSION_BARS
    assert crashed.get_session("crash-test").status == "finished"
    assert not set(crashed.alerts("crash-test")["rule"]) & {"position_reconciliation", "order_reconciliation"}
