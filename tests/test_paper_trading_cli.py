"""The documented paper-trading command against the fake Alpaca, then the review assets on what it recorded."""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from mlflow import MlflowClient

from pipelines import paper_trading
from resources.mlflow_registry import CHALLENGER_ALIAS, CHAMPION_ALIAS, MlflowRegistryResource
from resources.state_home import StateHome
from resources.trading_state import TradingStateResource
from testkit.fake_alpaca import DEFAULT_API_KEY, DEFAULT_SECRET, FakeAlpacaServer
from tests.live_support import LIVE_TICKERS, register_agent, train_live_agent
from trading_assets.paper_trading import ab_test, fill_reconciliation, paper_trading_sessions
from trading_core.data.schema import select_window
from trading_core.live.sources import read_bars
from trading_core.live.state import CHAMPION, TradingStateStore
from trading_core.monitoring.alerts import AlertSnapshot

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def registered_home(tmp_path, monkeypatch, dow30_bars):
    home = StateHome(tmp_path / "home").prepare()
    monkeypatch.setenv("RL_TRADING_HOME", str(home.root))
    registry = MlflowRegistryResource(
        tracking_uri=home.mlflow_tracking_uri, artifact_root=home.mlflow_artifact_root
    )
    register_agent(*train_live_agent(dow30_bars, seed=3), registry)  # v1, champion
    challenger = register_agent(*train_live_agent(dow30_bars, seed=4), registry)  # v2 takes champion...
    registry.set_alias("1", "champion")  # ...give it back: v1 trades, v2 is the shadow challenger
    registry.set_alias(challenger, CHALLENGER_ALIAS)
    bars = tmp_path / "daily.csv"
    select_window(dow30_bars, LIVE_TICKERS, "2018-06-01", "2019-12-31").to_csv(bars, index=False)
    return home, bars


def test_paper_session_against_fake_alpaca_then_review(registered_home, capsys):
    home, bars = registered_home
    args = [
        "--fake-alpaca",
        "--bars",
        str(bars),
        "--start",
        "2019-06-03",
        "--max-bars",
        "60",
        "--monitor-port",
        "0",
        "--no-keep-dashboard",  # a `pytest -s` at a terminal must not wait for Ctrl-C
    ]
    seen: dict[str, object] = {}
    printed: list[str] = []

    def scrape() -> None:
        # While the session runs, the monitoring server answers; find its URL in the printed output.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "health" not in seen:
            printed.append(capsys.readouterr().out)
            url = next(
                (
                    line.split()[1].removesuffix("/dashboard")
                    for line in "".join(printed).splitlines()
                    if line.startswith("Monitoring: ")
                ),
                None,
            ) or seen.get("url")
            if url:
                seen["url"] = url
                try:
                    seen["health"] = json.loads(urllib.request.urlopen(f"{url}/healthz", timeout=2).read())
                    seen["metrics"] = urllib.request.urlopen(f"{url}/metrics", timeout=2).read().decode()
                    seen["status"] = json.loads(urllib.request.urlopen(f"{url}/api/status", timeout=2).read())
                except OSError:
                    pass
            time.sleep(0.05)

    watcher = threading.Thread(target=scrape, daemon=True)
    watcher.start()
    assert paper_trading.main(args) == 0
    watcher.join(timeout=5)
    output = "".join(printed) + capsys.readouterr().out
    assert "rl_trading_agent v1 ('champion') on the alpaca broker, challenger v2 in shadow" in output
    assert seen.get("health") == {"status": "ok"}
    assert "rl_trading_decisions_total" in seen["metrics"]
    status = seen["status"]
    assert (status["model"], status["shadow"], status["session_status"]) == (
        "rl_trading_agent v1 (champion)",
        "shadow: rl_trading_agent v2 (challenger)",
        "running",
    )
    assert "Traded: rl_trading_agent v1 (champion); shadow: rl_trading_agent v2 (challenger)" in output
    assert "traded v1 (champion)  : equity 100,000 -> " in output  # aligned with the shadow's line
    assert "shadow v2 (challenger): equity 100,000 -> " in output
    assert "(served while the session ran)" in output

    resources = {"trading_state": TradingStateResource(url=home.trading_state_url)}
    result = dg.materialize([paper_trading_sessions, fill_reconciliation, ab_test], resources=resources)
    assert result.success
    sessions = result.asset_value("paper_trading_sessions")
    assert (
        len(sessions) == 1 and sessions["broker"].iloc[0] == "alpaca_paper" and sessions["bars"].iloc[0] == 60
    )
    slippage = result.asset_value("fill_reconciliation")
    assert len(slippage) > 0 and slippage["slippage_bps"].notna().all()
    # The fake fills at the next open without spread or impact; the shared cost model charges both, so the
    # broker's fills look cheaper than the simulator's (negative slippage = better than expected).
    assert slippage["slippage_bps"].mean() < 0
    comparison = result.asset_value("ab_test")
    # 60 daily bars are 60 sessions: enough for a verdict at the default 20.
    assert comparison["sessions"] == 60
    assert comparison["verdict"] in {"challenger better", "challenger worse", "no significant difference"}


# ------------------------------------------------------------------------------ sessions, files and keys


def test_unknown_sessions_give_one_line_naming_the_store_and_the_known_ones(tmp_path):
    url = f"sqlite:///{tmp_path / 'state.db'}"
    with TradingStateStore(url) as store:
        store.create_schema()
        store.start_session("known-1", model_name="m", model_version="1", broker="simulated")
    for argv in (["--session-id", "xyz"], ["--kill", "operator", "--session-id", "xyz"]):
        with pytest.raises(SystemExit) as stopped:
            paper_trading.main([*argv, "--state-db", url])
        assert stopped.value.code == f"no paper-trading session 'xyz' in {url}; known: known-1"
    with pytest.raises(SystemExit) as exists:
        paper_trading.main(["--new-session-id", "known-1", "--state-db", url])
    assert str(exists.value.code).endswith("exists in " + url + "; resume it with --session-id known-1")


def test_bars_files_that_cannot_be_replayed_give_one_line(tmp_path, dow30_bars):
    good = select_window(dow30_bars, LIVE_TICKERS, "2019-01-02", "2019-03-29")

    def failure(path) -> str:
        with pytest.raises(SystemExit) as stopped:
            paper_trading.bars_file(str(path), LIVE_TICKERS, read_bars)
        message = str(stopped.value.code)
        assert "\n" not in message and message.startswith(f"--bars {path}")
        return message

    binary = tmp_path / "binary.csv"
    binary.write_bytes(bytes(range(256)) * 64)
    assert "is not a readable bars file" in failure(binary)

    missing = tmp_path / "missing.csv"
    good.drop(columns=["high", "volume"]).to_csv(missing, index=False)
    assert "missing column(s) high, volume" in failure(missing)

    bad = tmp_path / "bad_rows.csv"
    broken = good.copy()
    broken.loc[7, "close"] = -1.0
    broken.to_csv(bad, index=False)
    message = failure(bad)
    assert "positive_prices" in message and "column close" in message and "row 7" in message

    other = tmp_path / "other_tickers.csv"
    good.to_csv(other, index=False)
    with pytest.raises(SystemExit) as stopped:
        paper_trading.bars_file(str(other), [*LIVE_TICKERS, "GOOG"], read_bars)
    assert stopped.value.code == f"--bars {other}: no bars for GOOG; it holds AAPL, JPM, MSFT, V"


@pytest.fixture()
def one_model_home(tmp_path, monkeypatch, live_agent, dow30_bars):
    home = StateHome(tmp_path / "home").prepare()
    monkeypatch.setenv("RL_TRADING_HOME", str(home.root))
    registry = MlflowRegistryResource(
        tracking_uri=home.mlflow_tracking_uri, artifact_root=home.mlflow_artifact_root
    )
    register_agent(*live_agent, registry)
    bars = tmp_path / "daily.csv"
    select_window(dow30_bars, LIVE_TICKERS, "2018-06-01", "2019-06-25").to_csv(bars, index=False)
    return home, bars


def test_paper_fake_ignores_exported_keys_and_its_printed_command_resumes_the_same_account(
    one_model_home, monkeypatch, capsys, caplog
):
    home, bars = one_model_home
    secret = "real-secret-that-must-never-be-sent"
    monkeypatch.setenv("ALPACA_API_KEY", "PKREALKEYOFTHEUSER00")
    monkeypatch.setenv("ALPACA_SECRET_KEY", secret)
    first = ["--fake-alpaca", "--bars", str(bars), "--start", "2019-06-03", "--max-bars", "10"]
    first += ["--monitor-port", "-1", "--new-session-id", "fake-resume"]
    assert paper_trading.main(first) == 0
    printed = capsys.readouterr().out
    store = TradingStateStore(home.trading_state_url)
    session = store.get_session("fake-resume")
    assert (session.status, session.stop_reason) == ("stopped", "max_bars=10 bars processed")
    assert (home.root / "live" / "fake_alpaca" / "fake-resume.jsonl").exists()
    positions = store.positions("fake-resume", CHAMPION)
    assert positions, "the agent should hold something after ten days"

    # What `make paper-fake ARGS='...'` runs: the target adds --fake-alpaca to the printed ARGS.
    [command] = [line for line in printed.splitlines() if line.startswith("Resume this session: ")]
    make, target, assignment = shlex.split(command.removeprefix("Resume this session: "))
    assert (make, target) == ("make", "paper-fake")
    resumed = shlex.split(assignment.removeprefix("ARGS="))
    assert resumed[-2:] == ["--session-id", "fake-resume"] and "--new-session-id" not in resumed
    assert paper_trading.main(["--fake-alpaca", *resumed]) == 0
    output = printed + capsys.readouterr().out

    session = store.get_session("fake-resume")
    assert (session.status, session.stop_reason) == ("finished", "the bars ran out")
    trading_days = 17  # 2019-06-03 .. 2019-06-25
    assert len(store.decisions("fake-resume", CHAMPION)) == len(store.equity_curve("fake-resume", CHAMPION))
    assert len(store.equity_curve("fake-resume", CHAMPION)) == trading_days
    alerts = store.alerts("fake-resume")
    # The resumed fake held the same positions and orders: nothing to reconcile, no flood of alerts.
    assert not set(alerts["rule"]) & {"position_reconciliation", "order_reconciliation", "broker_outage"}
    assert len(alerts) <= 2
    ids = [row.client_order_id for row in store.orders("fake-resume").itertuples()]
    assert len(ids) == len(set(ids))
    assert secret not in output and all(secret not in r.getMessage() for r in caplog.records)
    store.close()


def test_a_broker_outage_past_the_grace_exits_3_with_one_line_and_the_session_stopped(
    one_model_home, monkeypatch, capsys, live_agent
):
    home, bars = one_model_home
    monkeypatch.setenv("ALPACA_API_KEY", DEFAULT_API_KEY)
    monkeypatch.setenv("ALPACA_SECRET_KEY", DEFAULT_SECRET)
    with FakeAlpacaServer(initial_cash=live_agent[1].env_spec.initial_amount) as server:
        server.inject(503, for_s=math.inf)  # Alpaca is down from the start and stays down
        argv = ["--broker", "alpaca", "--alpaca-url", server.url, "--publish-to-fake", "--bars", str(bars)]
        argv += ["--start", "2019-06-03", "--monitor-port", "-1", "--outage-grace-s", "0.2"]
        assert paper_trading.main([*argv, "--new-session-id", "down"]) == paper_trading.EXIT_STOPPED
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("paper-trading session down stopped: the broker was unreachable for ")
    assert "past the 0.2 s grace" in last and "HTTP 503" in last and "--session-id down" in last
    with TradingStateStore(home.trading_state_url) as store:
        session = store.get_session("down")
        assert session.status == "stopped" and "grace" in session.stop_reason
        assert store.orders("down").empty
        assert {"broker_outage", "session_stopped"} <= set(store.alerts("down")["rule"])


# ------------------------------------------------------------------------------ names, shadow and dashboard


class AliasRegistry:
    """A registry that only answers which version holds an alias."""

    def __init__(self, aliases: dict[str, str]) -> None:
        self.aliases = aliases

    def version_for_alias(self, alias: str, model_name: str) -> str | None:
        return self.aliases.get(alias)


def named_versions(aliases: dict[str, str], *argv: str) -> paper_trading.Models:
    """The Models a session would run with ``aliases`` in the registry (no engines loaded)."""
    args = paper_trading.parse_args(["--no-keep-dashboard", *argv])
    registry = AliasRegistry(aliases)
    version, alias = paper_trading.resolve_versions(registry, args)
    shadow, no_shadow = paper_trading.shadow_version(registry, args, version)
    return paper_trading.Models(
        registry,
        version,
        alias,
        None,
        challenger_version=shadow,
        model_name=args.model_name,
        challenger_alias=args.challenger_alias,
        no_shadow=no_shadow,
    )


def test_the_traded_version_is_named_by_the_alias_it_holds_and_the_shadow_or_its_absence_is_said(capsys):
    both = named_versions({"champion": "3", "challenger": "4"})
    assert (both.traded, both.shadow) == (
        "rl_trading_agent v3 (champion)",
        "shadow: rl_trading_agent v4 (challenger)",
    )
    # Nothing promoted: the challenger trades, called challenger, and it cannot shadow itself.
    unpromoted = named_versions({"challenger": "1"})
    assert (unpromoted.traded, unpromoted.shadow) == (
        "rl_trading_agent v1 (challenger)",
        "no shadow: v1, which holds 'challenger', is the one trading",
    )
    assert "no version of rl_trading_agent holds 'champion'" in capsys.readouterr().out
    alone = named_versions({"champion": "2"})
    assert alone.shadow == "no shadow: no version of rl_trading_agent holds 'challenger'"
    refused = named_versions({"champion": "2", "challenger": "5"}, "--challenger-alias", "")
    assert refused.shadow == "no shadow: --challenger-alias is empty"


def test_the_dashboard_is_kept_only_when_asked_or_watched_at_a_terminal(monkeypatch):
    assert paper_trading.parse_args(["--keep-dashboard"]).keep_dashboard is True
    assert paper_trading.parse_args(["--no-keep-dashboard"]).keep_dashboard is False
    for terminal in (True, False):
        monkeypatch.setattr(paper_trading, "watched_in_a_terminal", lambda terminal=terminal: terminal)
        assert paper_trading.parse_args([]).keep_dashboard is terminal


def test_alert_counts_tell_raised_from_resolved():
    alerts = pd.DataFrame(
        {
            "rule": ["model_drift", "drawdown_breach", "drawdown_breach", "model_drift"],
            "message": ["model drift score 0.400", "drawdown 11%", "resolved: drawdown 11%", "x"],
        }
    )
    assert paper_trading.alert_counts(alerts) == ("Alerts: 4: drawdown_breach 1 (1 resolved), model_drift 2")
    assert paper_trading.alert_counts(alerts.iloc[:0]) == "Alerts: 0"


@pytest.fixture()
def unpromoted_home(one_model_home):
    """As ``make run`` leaves a home whose gate promoted nothing: v1 holds only 'challenger'."""
    home, bars = one_model_home
    registry = MlflowRegistryResource(
        tracking_uri=home.mlflow_tracking_uri, artifact_root=home.mlflow_artifact_root
    )
    registry.set_alias("1", CHALLENGER_ALIAS)
    MlflowClient(home.mlflow_tracking_uri).delete_registered_model_alias(registry.model_name, CHAMPION_ALIAS)
    return home, bars


def read_until(process: subprocess.Popen, marker: str, timeout_s: float) -> list[str]:
    """The process's output lines up to the one holding ``marker`` (fails past ``timeout_s``)."""
    lines: list[str] = []
    seen = threading.Event()

    def read() -> None:
        for line in process.stdout:
            lines.append(line)
            if marker in line:
                seen.set()

    threading.Thread(target=read, daemon=True).start()
    assert seen.wait(timeout_s), "".join(lines)[-3000:]
    return lines


def test_a_finished_replay_keeps_its_dashboard_with_the_final_state_until_ctrl_c(unpromoted_home):
    home, bars = unpromoted_home
    command = [sys.executable, "-m", "pipelines.paper_trading", "--bars", str(bars), "--start", "2019-06-03"]
    command += ["--monitor-port", "0", "--keep-dashboard", "--new-session-id", "kept"]
    process = subprocess.Popen(
        command,
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = read_until(process, "The dashboard stays up at", timeout_s=240)
        [url] = [
            line.split()[1].removesuffix("/dashboard") for line in lines if line.startswith("Monitoring: ")
        ]
        time.sleep(0.5)
        assert process.poll() is None, "the command exited instead of keeping the dashboard up"
        status = json.loads(urllib.request.urlopen(f"{url}/api/status", timeout=5).read())
        page = urllib.request.urlopen(f"{url}/dashboard", timeout=5).read().decode()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    output = "".join(lines) + process.stdout.read()
    trading_days = 17  # 2019-06-03 .. 2019-06-25
    assert (status["session_status"], status["stop_reason"], status["loop_alive"]) == (
        "finished",
        "the bars ran out",
        False,
    )
    assert (status["model"], status["shadow"]) == (
        "rl_trading_agent v1 (challenger)",
        "no shadow: v1, which holds 'challenger', is the one trading",
    )
    assert len(status["equity_curve"]) == trading_days and status["positions"]
    assert status["equity"] == status["equity_curve"][-1]["equity"]
    assert 'id="session-status"' in page and 'id="ended"' in page
    assert "Traded: rl_trading_agent v1 (challenger); no shadow: v1, which holds 'challenger'" in output
    summary = output[output.index("Paper-trading session kept") :]
    assert "traded v1 (challenger): equity 100,000 -> " in summary and "champion" not in summary
    assert "(kept up with the final state until Ctrl-C)" in output
    assert output.rstrip().endswith("dashboard stopped")
    with TradingStateStore(home.trading_state_url) as store:
        assert store.get_session("kept").status == "finished"


def test_the_sessions_alerts_come_once_per_episode_on_a_replay_clock():
    """The command's own evaluator, clocked by replayed daily bars (a day apart: past any cooldown): a constant
    drift score and a drawdown hovering at its limit alert once each, and again only after clearing by the margin."""

    class ReplayLoop:
        last_bar_time = pd.Timestamp("2019-06-03 20:00", tz="UTC")

    args = paper_trading.parse_args(["--no-keep-dashboard"])
    evaluator, _ = paper_trading.alerting(args, "episodes", lambda: ReplayLoop)
    raised = []
    drawdowns = [0.101, 0.099, 0.104, 0.097, 0.1005, 0.09] * 10  # hovering at the 10% limit for 60 bars
    drawdowns += [0.05, 0.11]  # back under the 8% clearing level, then a new breach
    for bar, drawdown in enumerate(drawdowns):
        ReplayLoop.last_bar_time += pd.Timedelta(days=1)
        snapshot = AlertSnapshot(drawdown=drawdown, drift_score=0.4, market_open=False)
        raised += [(bar, alert.rule, alert.resolved) for alert in evaluator.evaluate(snapshot)]
    assert raised == [
        (0, "drawdown_breach", False),
        (0, "model_drift", False),
        (60, "drawdown_breach", True),
        (61, "drawdown_breach", False),
    ]
