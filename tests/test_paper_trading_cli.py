"""The documented paper-trading command against the fake Alpaca, then the review assets on what it recorded."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import dagster as dg
import pytest

from pipelines import paper_trading
from resources.mlflow_registry import CHALLENGER_ALIAS, MlflowRegistryResource
from resources.state_home import StateHome
from resources.trading_state import TradingStateResource
from tests.live_support import LIVE_TICKERS, register_agent, train_live_agent
from trading_assets.paper_trading import ab_test, fill_reconciliation, paper_trading_sessions
from trading_core.data.schema import select_window


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
