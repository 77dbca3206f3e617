"""The batched backtester: B portfolios at once equal B single backtests exactly, a panel passed as arrays gives
what its frame gives, the observation layout is one function, and the backtester agrees with vectorbt."""

from __future__ import annotations

import importlib.util
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from trading_core.agents.decision_spec import DecisionSpec
from trading_core.data.schema import feature_columns_of
from trading_core.data.validation import to_validated_bars
from trading_core.envs.fast import ActionSpec, observation_at
from trading_core.envs.spec import EnvSpec
from trading_core.evaluation.backtester import (
    BacktestRecord,
    EventDrivenBacktester,
    run_backtest,
    run_backtests,
)
from trading_core.features.batch import build_features
from trading_core.live.engine import DecisionEngine, PortfolioBook
from trading_core.market.arrays import MarketArrays, date_window
from trading_core.market.costs import CostModel, LinearImpact, SquareRootImpact, commission_model
from trading_core.market.execution import ExecutionConfig, FillBar, execute_orders
from trading_core.market.limits import RiskLimits
from trading_core.market.simulator import SimulationConfig


@pytest.fixture(scope="module")
def features(slice_bars) -> pd.DataFrame:
    frame = build_features(slice_bars)
    return frame[frame["date"] >= "2018-06-01"].reset_index(drop=True)


# The scripted policy speaks FinRL's share actions.
SHARES = ActionSpec(mode="shares")


class ScriptedPolicy:
    """Deterministic actions that depend on the observation (elementwise, so a row's action is its own)."""

    def __init__(self, frequency: float = 7.0) -> None:
        self.frequency = frequency

    def predict(self, observation, deterministic=True):
        observation = np.asarray(observation, dtype=np.float64)
        n = (observation.shape[-1] - 1) // 11  # 1 + 2N + 9N with FinRL's 8 indicators and turbulence
        closes = observation[..., 1 : 1 + n]
        return np.sin(closes * self.frequency + observation[..., :1] * 1e-4).astype(np.float32), None


def assert_same_record(batched: BacktestRecord, single: BacktestRecord) -> None:
    for name in ("equity", "risk_states", "costs", "traded_notional"):
        pd.testing.assert_series_equal(getattr(batched, name), getattr(single, name), check_exact=True)
    for name in ("positions", "trades", "interventions"):
        pd.testing.assert_frame_equal(getattr(batched, name), getattr(single, name), check_exact=True)


# The VaR limit is off: the risk manager's VaR multiplies all portfolios' weights in one matrix product, which
# may round a portfolio differently from when it is alone (every other rule works row by row).
CONFIGS = {
    "costs_impact_and_risk": SimulationConfig(risk=RiskLimits(max_weight=0.3, var_limit=None)),
    "tight_risk": SimulationConfig(
        risk=RiskLimits(max_weight=0.05, var_limit=None, drawdown_reduce=0.02, daily_loss_limit=0.01)
    ),
    "finrl_parity": SimulationConfig.finrl_parity(),
    "limit_orders": SimulationConfig(
        execution=ExecutionConfig(order_type="limit", limit_offset_bps=20.0), risk=None
    ),
    "fractional_next_open": SimulationConfig(execution=ExecutionConfig(whole_shares=False), risk=None),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_batched_backtest_equals_single_backtests(features, name):
    policies = [ScriptedPolicy(frequency) for frequency in (7.0, 3.0, 11.0, 5.0)]
    backtester = EventDrivenBacktester(features, CONFIGS[name], replace(SHARES, hmax=400))
    batched = backtester.run_many(policies)
    assert len(batched) == len(policies)
    for policy, record in zip(policies, batched, strict=True):
        assert_same_record(record, backtester.run(policy))
    assert len({round(r.equity.iloc[-1], 6) for r in batched}) == len(policies)  # they really differ
    assert sum(len(r.trades) for r in batched) > 0


def test_batched_target_rows_equal_single_runs(features):
    market = MarketArrays.from_features(features)
    weights = np.random.default_rng(3).dirichlet(np.ones(market.n_assets), 5)
    config = SimulationConfig(risk=None)
    backtester = EventDrivenBacktester(market, config)

    def rebalance(rows: np.ndarray):
        def decide(day, simulator):
            return np.floor(rows * simulator.equity()[:, None] * 0.98 / simulator.prices)

        return decide

    batched = backtester.run_batch(rebalance(weights), len(weights))
    for row, record in enumerate(batched):
        assert_same_record(record, backtester.run_targets(rebalance(weights[row : row + 1])))


def test_run_backtests_equal_run_backtest_each(features):
    spec = EnvSpec(simulation=SimulationConfig(risk=RiskLimits(var_limit=None)), action=SHARES)
    policies = [ScriptedPolicy(2.0), ScriptedPolicy(9.0)]
    for result, policy in zip(run_backtests(policies, features, spec), policies, strict=True):
        alone = run_backtest(policy, features, spec)
        assert result.metrics == alone.metrics and result.benchmark_metrics == alone.benchmark_metrics
        assert_same_record(result.record, alone.record)


@pytest.mark.parametrize("engine", ["fast", "finrl"])
def test_a_panel_given_as_arrays_backtests_as_its_frame(features, engine):
    spec = EnvSpec(engine=engine, action=SHARES)
    from_frame = run_backtest(ScriptedPolicy(), features, spec)
    from_arrays = run_backtest(ScriptedPolicy(), MarketArrays.from_features(features), spec)
    pd.testing.assert_series_equal(from_arrays.equity, from_frame.equity, check_exact=True)
    pd.testing.assert_series_equal(
        from_arrays.benchmark_equity, from_frame.benchmark_equity, check_exact=True, check_index_type=False
    )
    assert from_arrays.metrics == from_frame.metrics


def test_arrays_round_trip_through_frames_and_date_windows(features):
    market = MarketArrays.from_features(features)
    again = MarketArrays.from_features(market.to_frame())
    for name in ("open", "high", "low", "close", "volume", "features", "turbulence"):
        np.testing.assert_array_equal(getattr(again, name), getattr(market, name))
    assert again.feature_names == market.feature_names and again.dates.equals(market.dates)
    start, end = market.dates[10], market.dates[40]
    window = date_window(market, start, end)
    expected = MarketArrays.from_features(date_window(features, start, end))
    assert window.dates.equals(expected.dates)
    np.testing.assert_array_equal(window.features, expected.features)
    np.testing.assert_array_equal(window.close, expected.close)


def test_live_observation_is_the_training_observation(features):
    market = MarketArrays.from_features(features)
    spec = DecisionSpec(
        tickers=market.tickers, feature_columns=tuple(feature_columns_of(features)), env_spec=EnvSpec()
    )
    engine = DecisionEngine(ScriptedPolicy(), spec)
    day = 30
    rows = features[features["date"] == market.dates[day]].sort_values("tic")
    columns = tuple(spec.observation_columns[2:])
    values = rows[list(columns)].to_numpy(dtype=np.float64)
    book = PortfolioBook(cash=12_345.678, holdings=np.array([3.0, 0.0, 17.0, 250.0]))
    live = engine.observation(values, columns, book)
    training = observation_at(market, day, np.array([book.cash]), book.holdings[None, :])
    assert live.dtype == training.dtype == np.float32
    np.testing.assert_array_equal(live, training)


def test_backtester_agrees_with_vectorbt_on_the_benchmark_rebalance(dow30_bars):
    if importlib.util.find_spec("vectorbt") is None:
        pytest.skip("vectorbt is not installed (pip install -e '.[dev]')")
    from benchmarks.backtest_throughput import project_final_values, vectorbt_final_values

    bars = to_validated_bars(dow30_bars)
    bars = bars[(bars["date"] >= "2019-06-01") & (bars["date"] <= "2020-12-31")]
    market = MarketArrays.from_features(bars, feature_names=[])  # DOW trades on all these dates
    n_assets = market.n_assets
    weights = np.vstack(
        [np.full(n_assets, 1.0 / n_assets), np.random.default_rng(0).dirichlet(np.ones(n_assets), 3)]
    )
    ours = project_final_values(market, weights)
    theirs = vectorbt_final_values(market, weights)
    np.testing.assert_allclose(ours, theirs, rtol=1e-3)
    assert np.abs(ours / 1_000_000.0 - 1.0).min() > 0.01  # the portfolios really moved


def reference_fills(orders, holdings, cash, bar, cost_model, whole_shares):
    """The fill rule written as a plain loop, one buy rank at a time for all portfolios (market orders)."""
    requested = np.trunc(orders) if whole_shares else orders.copy()
    requested = np.maximum(requested, -np.maximum(holdings, 0.0))
    execution = cost_model.execute(requested, bar.reference_price, bar.half_spread, bar.adv, bar.sigma)
    sells, buys = requested < 0, np.where(requested > 0, requested, 0.0)
    available = cash + np.where(sells, -requested * execution.fill_price - execution.commission, 0.0).sum(
        axis=1
    )
    shares = np.where(sells, requested, 0.0)
    price = execution.fill_price.copy()
    per_share = np.divide(
        buys * execution.fill_price + np.where(buys > 0, execution.commission, 0.0),
        buys,
        out=np.zeros_like(buys),
        where=buys > 0,
    )
    priority = np.argsort(requested, axis=1)[:, ::-1]
    rows = np.arange(len(buys))
    for rank in range(buys.shape[1]):
        column = priority[:, rank]
        wanted = buys[rows, column]
        buying = wanted > 0
        unit = np.where(per_share[rows, column] > 0, per_share[rows, column], np.inf)
        affordable = np.floor_divide(available, unit) if whole_shares else available / unit
        quantity = np.minimum(wanted, np.maximum(affordable, 0.0))
        fill_price, fee = execution.fill_price[rows, column], execution.commission[rows, column]
        reduced = buying & (quantity < wanted)
        if reduced.any():
            at = (rows, column)
            partial = cost_model.execute(
                quantity, bar.reference_price[at], bar.half_spread[at], bar.adv[at], bar.sigma[at]
            )
            fill_price = np.where(reduced, partial.fill_price, fill_price)
            fee = np.where(reduced, partial.commission, fee)
            # A smaller order can cost more per share (a minimum commission): cut it to what the cash covers
            # at its prices and price it again; a second miss buys nothing.
            shrunk = np.zeros(len(buys), dtype=bool)
            while (
                over := reduced
                & (quantity > 0)
                & (quantity * fill_price + fee > available + 1e-9 * np.maximum(np.abs(available), 1.0))
            ).any():
                cut = (
                    np.floor_divide(available - fee, fill_price)
                    if whole_shares
                    else (available - fee) / fill_price
                )
                smaller = np.where(shrunk, 0.0, np.minimum(quantity, np.maximum(cut, 0.0)))
                quantity, shrunk = np.where(over, smaller, quantity), shrunk | over
                partial = cost_model.execute(
                    quantity, bar.reference_price[at], bar.half_spread[at], bar.adv[at], bar.sigma[at]
                )
                fill_price = np.where(over, partial.fill_price, fill_price)
                fee = np.where(over, partial.commission, fee)
        active = buying & (quantity > 0)
        available = available - np.where(active, quantity * fill_price + fee, 0.0)
        shares[rows, column] = np.where(buying, np.where(active, quantity, 0.0), shares[rows, column])
        price[rows, column] = np.where(buying, fill_price, price[rows, column])
    return shares, price, available - cash


@pytest.mark.parametrize("whole_shares", [True, False])
def test_fills_equal_the_plain_loop_of_the_fill_rule(whole_shares):
    rng = np.random.default_rng(11)
    models = [
        CostModel(commission_model("interactive_brokers_fixed"), LinearImpact()),
        CostModel(commission_model("flat_retail"), SquareRootImpact()),
        CostModel(commission_model("finrl")),
    ]
    config = ExecutionConfig(participation_cap=None, whole_shares=whole_shares)
    for trial in range(300):
        n_books, n_assets = int(rng.integers(1, 7)), int(rng.integers(1, 25))
        shape = (n_books, n_assets)
        reference = rng.uniform(5, 300, shape)
        holdings = np.where(rng.random(shape) < 0.5, rng.integers(0, 200, shape), 0).astype(float)
        cash = rng.uniform(0, 40_000, n_books)
        orders = rng.uniform(-300, 300, shape) * (rng.random(shape) < 0.8)
        volume, half_spread = rng.uniform(1e3, 1e6, shape), rng.uniform(0, 2e-3, shape)
        adv, sigma = rng.uniform(1e4, 1e6, shape), rng.uniform(0, 0.03, shape)
        bar = FillBar(reference, reference, reference, volume, half_spread, adv, sigma)
        model = models[trial % len(models)]
        fills = execute_orders(orders, holdings, cash, reference, bar, model, config)
        shares, price, cash_change = reference_fills(orders, holdings, cash, bar, model, whole_shares)
        np.testing.assert_array_equal(fills.shares, shares)
        np.testing.assert_array_equal(fills.price, price)
        np.testing.assert_array_equal(fills.cash_change, cash_change)
