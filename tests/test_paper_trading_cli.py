"""The documented paper-trading command against the fake Alpaca, then the review assets on what it recorded."""

from __future__ import annotations

import json
import math
import shlex
import threading
import time
import urllib.request

import dagster as dg
import pytest

from pipelines import paper_trading
from resources.mlflow_registry import CHALLENGER_ALIAS, MlflowRegistryResource
from resources.state_home import StateHome
from resources.trading_state import TradingStateResource
from testkit.fake_alpaca import DEFAULT_API_KEY, DEFAULT_SECRET, FakeAlpacaServer
from tests.live_support import LIVE_TICKERS, register_agent, train_live_agent
from trading_assets.paper_trading import ab_test, fill_reconciliation, paper_trading_sessions
from trading_core.data.schema import select_window
from trading_core.live.sources import read_bars
from trading_core.live.state import CHAMPION, TradingStateStore


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
