"""Walk-forward windows, stress scenarios and performance attribution."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.test_backtester import SHARES, ScriptedPolicy
from trading_core.agents.training import PPOConfig
from trading_core.envs.spec import EnvSpec
from trading_core.evaluation.attribution import attribute_pnl, attribution_summary
from trading_core.evaluation.backtester import run_backtest
from trading_core.evaluation.stress import (
    liquidity_drop,
    run_stress_tests,
    shock_correlation,
    shock_gap,
    shock_volatility,
)
from trading_core.evaluation.walk_forward import run_walk_forward, stitch, walk_forward_windows
from trading_core.features.batch import build_features
from trading_core.market.costs import LinearImpact
from trading_core.market.simulator import SimulationConfig

DATES = pd.bdate_range("2015-01-01", periods=400)


@pytest.fixture(scope="module")
def features(slice_bars) -> pd.DataFrame:
    return build_features(slice_bars)


@pytest.mark.parametrize("scheme", ["rolling", "expanding"])
def test_windows_are_ordered_gapped_and_disjoint(scheme):
    windows = walk_forward_windows(
        DATES, n_windows=3, test_size=50, train_size=200, scheme=scheme, purge=3, embargo=2
    )
    positions = {date: i for i, date in enumerate(DATES)}
    for window in windows:
        assert positions[window.test_start] - positions[window.train_end] == 3 + 2 + 1
        assert positions[window.test_end] - positions[window.test_start] == 49
        if scheme == "rolling":
            assert positions[window.train_end] - positions[window.train_start] == 199
        else:
            assert window.train_start == DATES[0]
    for earlier, later in zip(windows, windows[1:], strict=False):
        assert positions[later.test_start] == positions[earlier.test_end] + 1
    assert windows[-1].test_end == DATES[-1]
    with pytest.raises(ValueError, match="cannot hold"):
        walk_forward_windows(DATES, n_windows=10, test_size=50, train_size=200)


def test_stitched_curve_chains_window_returns():
    first = pd.Series([100.0, 110.0, 121.0], index=DATES[:3])
    second = pd.Series([50.0, 45.0], index=DATES[3:5])
    stitched = stitch([first, second], 1000.0)
    assert stitched.iloc[-1] == pytest.approx(1000.0 * 1.1 * 1.1 * 0.9)
    assert len(stitched) == 4  # the start, two returns of the first window, one of the second


def test_walk_forward_retrains_per_window_and_is_deterministic(features):
    windows = walk_forward_windows(features["date"], n_windows=2, test_size=60, scheme="expanding")
    spec = EnvSpec(n_envs=2)
    budget = PPOConfig(total_timesteps=256, n_steps=128, batch_size=64)
    first = run_walk_forward(features, windows, spec, budget, seed=3)
    second = run_walk_forward(features, windows, spec, budget, seed=3, use_ray=True)  # windows as Ray tasks
    pd.testing.assert_series_equal(first.equity, second.equity)
    assert len(first.results) == 2
    assert first.equity.index.min() == windows[0].test_start
    assert first.equity.index.max() == windows[-1].test_end
    expected = np.prod([1 + r.metrics.total_return for r in first.results])
    assert first.equity.iloc[-1] / first.equity.iloc[0] == pytest.approx(expected)
    assert list(first.table()["test"]) == [f"{w.test_start.date()}..{w.test_end.date()}" for w in windows]


def test_synthetic_shocks_change_only_the_future(slice_bars):
    start = pd.Timestamp("2019-06-03")
    before = slice_bars["date"] < start
    for shocked in (
        shock_gap(slice_bars, start),
        shock_volatility(slice_bars, start),
        shock_correlation(slice_bars, start),
    ):
        pd.testing.assert_frame_equal(
            shocked[before].reset_index(drop=True), slice_bars[before].reset_index(drop=True)
        )
        assert (shocked["high"] >= shocked[["open", "close"]].max(axis=1) - 1e-9).all()
    gapped = shock_gap(slice_bars, start)
    np.testing.assert_allclose(gapped.loc[~before, "close"], 0.9 * slice_bars.loc[~before, "close"])

    def window_returns(bars: pd.DataFrame) -> pd.DataFrame:
        closes = bars.pivot(index="date", columns="tic", values="close")
        return closes.pct_change()[closes.index > start]

    original = window_returns(slice_bars)
    volatile = window_returns(shock_volatility(slice_bars, start))
    np.testing.assert_allclose(volatile.std(), 3 * original.std(), rtol=0.02)
    correlated = window_returns(shock_correlation(slice_bars, start))
    assert correlated.corr().to_numpy().min() > 0.999
    np.testing.assert_allclose(correlated.std(), original.std(), rtol=0.05)


def test_liquidity_drop_scales_impact_and_participation():
    config = SimulationConfig()
    dropped = liquidity_drop(config)
    assert isinstance(dropped.cost_model.impact, LinearImpact)
    assert dropped.cost_model.impact.alpha == pytest.approx(10 * config.cost_model.impact.alpha)
    assert dropped.execution.participation_cap == pytest.approx(config.execution.participation_cap / 10)


def test_stress_tests_replay_crises_in_the_data_and_apply_shocks(slice_bars, features):
    spec = EnvSpec(action=SHARES)  # the scripted policy's share actions
    test_start, test_end = pd.Timestamp("2019-01-02"), pd.Timestamp("2019-12-31")
    results = {
        r.name: r
        for r in run_stress_tests(ScriptedPolicy(), slice_bars, features, test_start, test_end, spec)
    }
    assert {"aug_2015_china_devaluation", "q4_2018_selloff"} <= set(results)  # inside 2015-2019
    assert {"gap_down_10pct", "volatility_x3", "correlations_to_1", "liquidity_drop"} <= set(results)
    q4 = results["q4_2018_selloff"]
    assert q4.start >= pd.Timestamp("2018-10-01") and q4.end <= pd.Timestamp("2018-12-31")
    assert q4.benchmark_return < 0  # the real sell-off
    gap = results["gap_down_10pct"]
    baseline = run_backtest(
        ScriptedPolicy(), features[(features["date"] >= test_start)].reset_index(drop=True), spec
    )
    # Fully invested buy-and-hold loses about the gap on top of the normal path.
    assert gap.benchmark_return == pytest.approx(
        (1 + baseline.benchmark_metrics.total_return) * 0.9 - 1, abs=0.02
    )


def test_attribution_adds_up_to_the_equity_change(features):
    test = features[features["date"] >= "2019-01-01"].reset_index(drop=True)
    result = run_backtest(ScriptedPolicy(), test, EnvSpec(action=SHARES))
    closes = test.pivot(index="date", columns="tic", values="close")
    table = attribute_pnl(result.record, closes)
    assert table["net_pnl"].sum() == pytest.approx(result.equity.iloc[-1] - result.equity.iloc[0], rel=1e-9)
    costs = table[["commission", "spread_cost", "impact_cost"]].sum(axis=1)
    np.testing.assert_allclose(table["gross_pnl"] - table["net_pnl"], costs)
    summary = attribution_summary(table, result.equity.iloc[0], result.benchmark_metrics.total_return)
    assert summary["net_return"] == pytest.approx(result.metrics.total_return, rel=1e-9)
    assert summary["costs_return"] == pytest.approx(result.total_cost / result.equity.iloc[0])
