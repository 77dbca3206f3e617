"""The backtest's tearsheet: QuantStats' HTML with every section, offline, and a trade log equal to the fills."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trading_core.envs.spec import EnvSpec
from trading_core.evaluation.backtester import run_backtest
from trading_core.evaluation.tearsheet import (
    TEARSHEET_SECTIONS,
    TRADE_LOG_COLUMNS,
    gross_exposure,
    trade_log,
    write_tearsheet,
)
from trading_core.features.batch import build_features
from trading_core.market.arrays import as_market


class RotatingPolicy:
    """Answers a different fixed action each day, so the backtest trades."""

    def __init__(self, size: int) -> None:
        self.actions = np.random.default_rng(0).uniform(-1, 1, (64, size)).astype(np.float32)
        self.calls = 0

    def predict(self, observation, state=None, episode_start=None, deterministic: bool = True):
        self.calls += 1
        return self.actions[self.calls % len(self.actions)], state


@pytest.fixture(scope="module")
def backtest(slice_bars: pd.DataFrame):
    frame = build_features(slice_bars[slice_bars["date"] >= "2019-01-01"], use_turbulence=False)
    market = as_market(frame[frame["date"] >= "2019-06-01"])
    env_spec = EnvSpec(n_envs=1)
    result = run_backtest(
        RotatingPolicy(env_spec.engine_action.action_size(market.n_assets)), market, env_spec
    )
    return result, market


def test_the_trade_log_holds_every_fill_with_side_and_cost(backtest):
    result, _ = backtest
    trades = result.record.trades
    log = trade_log(trades)
    assert list(log.columns) == list(TRADE_LOG_COLUMNS)
    assert len(log) == len(trades) > 0
    np.testing.assert_array_equal(log["shares"], trades["shares"].abs())
    assert (log["side"] == np.where(trades["shares"] > 0, "buy", "sell")).all()
    np.testing.assert_allclose(log["cost"], trades[["commission", "spread_cost", "impact_cost"]].sum(axis=1))
    np.testing.assert_allclose(
        log["cost"].sum(),
        result.record.cost_breakdown["commission"]
        + result.record.cost_breakdown["spread_cost"]
        + result.record.cost_breakdown["impact_cost"],
    )


def test_the_tearsheet_is_written_offline_with_every_section(backtest, tmp_path: Path, monkeypatch):
    import urllib.request

    def no_network(*args, **kwargs):
        raise AssertionError("the tearsheet tried to reach the network")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    result, market = backtest
    closes = pd.DataFrame(market.close, index=market.dates, columns=list(market.tickers))
    files = write_tearsheet(
        tmp_path,
        "agent v1",
        result.equity,
        result.benchmark_equity,
        result.record.positions,
        closes,
        result.record.trades,
    )
    html = files.html.read_text()
    for section in TEARSHEET_SECTIONS:
        assert f'id="{section}"' in html, section
    assert "agent v1" in html
    logged = pd.read_csv(files.trade_log)
    assert len(logged) == len(result.record.trades)
    np.testing.assert_allclose(logged["price"], result.record.trades["price"])
    assert files.exposure.read_bytes().startswith(b"\x89PNG")
    exposure = gross_exposure(result.record.positions, closes, result.equity)
    assert exposure.between(0.0, 1.0 + 1e-9).all() and exposure.max() > 0
