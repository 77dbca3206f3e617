"""The fast environment: FinRL parity, next-bar fills without lookahead, batching, SB3 compatibility and the
portfolio-weights action space."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from trading_core.data.schema import select_window
from trading_core.data.validation import to_validated_bars
from trading_core.envs.fast import (
    ActionSpec,
    FastStockTradingEnv,
    StockTradingVecEnv,
    actions_for_weights,
    build_observation,
    portfolio_weights,
    targets_from_actions,
)
from trading_core.envs.finrl import TradingEnvConfig, make_stock_trading_env
from trading_core.features.batch import build_features
from trading_core.market.arrays import MarketArrays
from trading_core.market.costs import CostModel, NoImpact, ProportionalCommission
from trading_core.market.execution import ExecutionConfig
from trading_core.market.limits import RiskLimits
from trading_core.market.simulator import PortfolioSimulator, SimulationConfig


@pytest.fixture(scope="module")
def dow_features(dow30_bars) -> pd.DataFrame:
    """29 Dow stocks (DOW itself starts in 2019) over 2018-2019 with FinRL's features."""
    bars = to_validated_bars(select_window(dow30_bars, None, "2017-01-01", "2019-12-31"))
    bars = bars[bars["tic"] != "DOW"]
    features = build_features(bars)
    return features[features["date"] >= "2018-06-01"].reset_index(drop=True)


@pytest.fixture(scope="module")
def small_features(slice_bars) -> pd.DataFrame:
    features = build_features(slice_bars)
    return features[features["date"] >= "2019-01-01"].reset_index(drop=True)


def rollout_finrl(
    features: pd.DataFrame, actions: np.ndarray, initial: float, hmax: int, cost: float
) -> np.ndarray:
    env = make_stock_trading_env(features, TradingEnvConfig(initial_amount=initial, hmax=hmax, cost_pct=cost))
    env.reset()
    for action in actions:
        env.step(action)
    return np.asarray(env.asset_memory)


def rollout_fast(
    features: pd.DataFrame, actions: np.ndarray, initial: float, hmax: int, cost: float
) -> np.ndarray:
    env = FastStockTradingEnv(features, SimulationConfig.finrl_parity(initial, cost), ActionSpec.finrl(hmax))
    env.reset()
    for action in actions:
        env.step(action)
    return np.asarray(env.equity_memory)


@pytest.mark.parametrize(
    ("initial", "hmax", "seed"), [(1_000_000, 100, 0), (50_000, 100, 1), (20_000, 500, 2)]
)
def test_portfolio_values_equal_finrl_stock_trading_env(dow_features, initial, hmax, seed):
    steps = dow_features["date"].nunique() - 1
    actions = np.random.default_rng(seed).uniform(-1, 1, size=(steps, dow_features["tic"].nunique()))
    finrl = rollout_finrl(dow_features, actions, initial, hmax, 0.001)
    fast = rollout_fast(dow_features, actions, initial, hmax, 0.001)
    assert len(fast) == len(finrl) == steps + 1
    relative_error = np.abs(fast - finrl) / np.abs(finrl)
    assert relative_error.max() < 1e-9
    assert np.abs(np.diff(finrl)).max() > 0  # the portfolios really traded


def test_observation_layout_matches_finrl(small_features):
    finrl_env = make_stock_trading_env(small_features, TradingEnvConfig())
    finrl_state, _ = finrl_env.reset()
    fast_env = FastStockTradingEnv(small_features, SimulationConfig.finrl_parity())
    fast_state, _ = fast_env.reset()
    np.testing.assert_allclose(fast_state, np.asarray(finrl_state, dtype=np.float32), rtol=1e-6)
    assert fast_env.observation_space.shape == (finrl_env.state_space,)


def test_next_bar_fills_use_the_next_open_and_never_the_future_in_observations(small_features):
    market = MarketArrays.from_features(small_features)
    config = SimulationConfig(
        cost_model=CostModel(ProportionalCommission(0.0), NoImpact()),
        spread="none",
        execution=ExecutionConfig(participation_cap=None),
        risk=None,
    )
    simulator = PortfolioSimulator(market, config)
    simulator.reset()
    observation_before = build_observation(simulator).copy()
    target = np.array([[10.0, 0.0, 5.0, 0.0]])
    outcome = simulator.step(target)
    np.testing.assert_allclose(outcome.fills.price[0, [0, 2]], market.open[1, [0, 2]])
    expected_cash = config.initial_amount - 10 * market.open[1, 0] - 5 * market.open[1, 2]
    assert simulator.cash[0] == pytest.approx(expected_cash)
    # Rewriting every bar after the decision date leaves the decision's observation unchanged.
    future = small_features.copy()
    future.loc[future["date"] > market.dates[0], ["open", "high", "low", "close"]] *= 1.5
    shifted = PortfolioSimulator(MarketArrays.from_features(future), config)
    shifted.reset()
    np.testing.assert_array_equal(build_observation(shifted), observation_before)


def test_participation_cap_and_limit_orders(small_features):
    market = MarketArrays.from_features(small_features)
    capped = SimulationConfig(
        initial_amount=1e12,
        cost_model=CostModel(ProportionalCommission(0.0), NoImpact()),
        spread="none",
        execution=ExecutionConfig(participation_cap=0.01),
        risk=None,
    )
    simulator = PortfolioSimulator(market, capped)
    simulator.reset()
    outcome = simulator.step(np.full((1, 4), 1e9))
    np.testing.assert_array_equal(outcome.fills.shares[0], np.floor(0.01 * market.volume[1]))

    limit = SimulationConfig(
        cost_model=CostModel(ProportionalCommission(0.0), NoImpact()),
        spread="none",
        execution=ExecutionConfig(order_type="limit", limit_offset_bps=50.0, participation_cap=None),
        risk=None,
    )
    simulator = PortfolioSimulator(market, limit)
    simulator.reset()
    outcome = simulator.step(np.full((1, 4), 10.0))
    limit_price = market.close[0] * (1 - 50e-4)
    traded_through = market.low[1] < limit_price
    np.testing.assert_array_equal(outcome.fills.shares[0] > 0, traded_through)
    filled = outcome.fills.shares[0] > 0
    np.testing.assert_allclose(
        outcome.fills.price[0, filled], np.minimum(market.open[1], limit_price)[filled]
    )


def test_batched_portfolios_match_single_portfolio_runs(small_features):
    config = SimulationConfig()
    steps = small_features["date"].nunique() - 1
    rng = np.random.default_rng(5)
    actions = rng.uniform(-1, 1, size=(steps, 3, ActionSpec().action_size(4))).astype(np.float32)
    vec = StockTradingVecEnv(small_features, config, n_envs=3)
    vec.reset()
    finals = None
    for step in range(steps):
        _, _, dones, infos = vec.step(actions[step])
        if dones.all():
            finals = [info["final_equity"] for info in infos]
    assert finals is not None
    for index in range(3):
        single = FastStockTradingEnv(small_features, config)
        single.reset()
        for step in range(steps):
            single.step(actions[step, index])
        assert single.equity_memory[-1] == pytest.approx(finals[index], rel=1e-12)


def test_risk_limits_hold_along_a_random_rollout(small_features):
    limits = RiskLimits(max_weight=0.3, var_limit=0.015)
    env = FastStockTradingEnv(
        small_features, SimulationConfig(risk=limits), ActionSpec(mode="shares", hmax=500)
    )
    env.reset()
    rng = np.random.default_rng(9)
    done = False
    while not done:
        simulator = env.simulator
        prices, equity = simulator.prices.copy(), simulator.equity()[0]
        _, _, done, _, _ = env.step(rng.uniform(-0.2, 1, size=4))
        review = env.last_outcome.review
        # Post-review targets respect the weight limit at the decision prices.
        assert (np.abs(review.approved[0] * prices) <= limits.max_weight * equity * (1 + 1e-9)).all()
        assert simulator.cash[0] >= -1e-6


def test_fast_env_trains_with_stable_baselines3(small_features):
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_checker import check_env

    check_env(FastStockTradingEnv(small_features), warn=False)
    vec = StockTradingVecEnv(small_features, n_envs=4)
    model = PPO("MlpPolicy", vec, n_steps=32, batch_size=64, seed=0, device="cpu")
    model.learn(total_timesteps=256)
    check_env(FastStockTradingEnv(small_features, action=ActionSpec.finrl()), warn=False)
    weights_env = StockTradingVecEnv(small_features, n_envs=2)
    assert weights_env.action_space.shape == (5,)  # four assets and cash
    observation = weights_env.reset()
    _, rewards, _, _ = weights_env.step(np.zeros((2, 5), dtype=np.float32))
    assert observation.shape == (2, weights_env.observation_space.shape[0]) and np.isfinite(rewards).all()
    held = weights_env.simulator.holdings[0] * weights_env.simulator.prices
    assert held.sum() <= weights_env.simulator.equity()[0]


def test_spreads_come_from_quotes_when_the_data_has_them(small_features):
    quoted = small_features.assign(bid=small_features["close"] * 0.999, ask=small_features["close"] * 1.001)
    market = MarketArrays.from_features(quoted)
    assert "bid" not in market.feature_names and market.bid is not None
    simulator = PortfolioSimulator(market, SimulationConfig())  # spread="auto"
    np.testing.assert_allclose(simulator.half_spread, 0.001, rtol=1e-9)
    without = PortfolioSimulator(MarketArrays.from_features(small_features), SimulationConfig())
    assert not np.allclose(without.half_spread, 0.001)  # Corwin–Schultz from high/low instead
    with pytest.raises(ValueError, match="bid and ask"):
        PortfolioSimulator(MarketArrays.from_features(small_features), SimulationConfig(spread="quotes"))


# --- portfolio weights ---------------------------------------------------------------------------------------


def test_weights_are_a_softmax_over_assets_and_cash():
    actions = np.random.default_rng(2).uniform(-1, 1, size=(50, 6))
    weights = portfolio_weights(actions, temperature=3.0)
    assert weights.shape == (50, 6) and (weights >= 0).all()
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(portfolio_weights(np.zeros((1, 6))), 1 / 6)  # a zero action: equal weight
    logits = 3.0 * actions[0]
    np.testing.assert_allclose(weights[0], np.exp(logits) / np.exp(logits).sum(), rtol=1e-12)


def test_weight_targets_never_spend_more_than_the_equity(small_features):
    market = MarketArrays.from_features(small_features)
    rng = np.random.default_rng(4)
    spec = ActionSpec()
    prices = market.close[0]
    for whole_shares in (True, False):
        holdings = rng.integers(0, 200, size=(64, 4)).astype(np.float64)
        cash = rng.uniform(0, 50_000, size=64)
        equity = cash + holdings @ prices
        actions = rng.uniform(-1, 1, size=(64, 5))
        targets = targets_from_actions(actions, holdings, equity, prices, spec, whole_shares)
        assert (targets >= 0).all()
        invested = targets * prices
        # Every re-weighted asset sits at its weight (or none below the band); held ones inside it keep theirs.
        assert (invested.sum(axis=1) <= equity * (spec.invest + 4 * spec.rebalance_band) + 1e-9).all()
        moved = targets != holdings
        wanted = portfolio_weights(actions)[:, :4] * (equity * spec.invest)[:, None] / prices
        expected = np.floor(wanted) if whole_shares else wanted
        expected[expected * prices < spec.rebalance_band * equity[:, None]] = 0.0  # too small to hold
        np.testing.assert_allclose(targets[moved], expected[moved], rtol=1e-12)
        assert whole_shares == bool((targets == np.round(targets)).all())


def test_the_cash_action_goes_flat_and_equal_weight_invests(small_features):
    spec = ActionSpec()
    cash_action = actions_for_weights(np.array([0, 0, 0, 0, 1.0]), spec.temperature)
    np.testing.assert_allclose(cash_action, [-1, -1, -1, -1, 1], atol=1e-6)
    env = FastStockTradingEnv(small_features, SimulationConfig(risk=None))
    env.reset()
    env.step(actions_for_weights(np.array([0.25, 0.25, 0.25, 0.25, 0.0])))
    simulator = env.simulator
    # At the decision's closes, a quarter each of what the costs leave of 99% of the equity.
    weights = simulator.holdings[0] * simulator.market.close[0] / SimulationConfig().initial_amount
    assert weights.sum() > 0.95 and np.abs(weights - 0.2475).max() < 0.005
    env.step(cash_action)
    np.testing.assert_array_equal(simulator.holdings, 0.0)
    assert simulator.cash[0] == pytest.approx(simulator.equity()[0])
    # Thirty assets too: each one's weight under the most-cash action stays below the band.
    thirty = actions_for_weights(np.eye(31)[-1])[None, :]
    invested = np.full((1, 30), 150.0)
    targets = targets_from_actions(thirty, invested, np.array([100_000.0]), np.full(30, 20.0), spec)
    np.testing.assert_array_equal(targets, 0.0)


def test_small_re_weightings_stay_inside_the_rebalance_band():
    prices = np.array([100.0, 50.0])
    equity = np.array([10_000.0])
    holdings = np.array([[40.0, 80.0]])  # 40% and 40% of the equity
    spec = ActionSpec(invest=1.0, rebalance_band=0.05)
    # 42% / 38% / 20%: each asset moves 2% of the equity, less than the band's 5%: kept.
    near = actions_for_weights(np.array([0.42, 0.38, 0.20]))[None, :]
    targets = targets_from_actions(near, holdings, equity, prices, spec)
    np.testing.assert_array_equal(targets, holdings)
    far = actions_for_weights(np.array([0.10, 0.70, 0.20]))[None, :]
    moved = targets_from_actions(far, holdings, equity, prices, spec)
    assert moved[0, 0] < 15 and moved[0, 1] > 130
    # Selling out is never held back by the band.
    out = targets_from_actions(
        actions_for_weights(np.array([0.0, 0.8, 0.2]))[None, :], holdings, equity, prices, spec
    )
    assert out[0, 0] < holdings[0, 0]


def test_actions_for_weights_inverts_the_softmax():
    for temperature in (1.0, 5.0):
        eps = 1 / np.expm1(2 * temperature)
        weights = np.random.default_rng(6).dirichlet(np.ones(7), size=20)
        weights[0] = np.eye(7)[3]
        actions = actions_for_weights(weights, temperature)
        assert np.abs(actions).max() <= 1.0
        np.testing.assert_allclose(
            portfolio_weights(actions, temperature), (weights + eps) / (1 + 7 * eps), atol=1e-6
        )


def test_action_spec_round_trips_and_refuses_nonsense():
    spec = ActionSpec(temperature=2.0, rebalance_band=0.01)
    assert ActionSpec.from_dict(spec.as_dict()) == spec
    finrl = ActionSpec.finrl(hmax=7)
    assert (finrl.mode, finrl.hmax, finrl.reward.kind, finrl.action_size(3)) == (
        "shares",
        7,
        "value_change",
        3,
    )
    assert ActionSpec().action_size(3) == 4
    with pytest.raises(ValueError, match="action mode"):
        ActionSpec(mode="orders")
    with pytest.raises(ValueError, match="temperature"):
        ActionSpec(temperature=0.0)


def test_a_spec_pickled_before_action_specs_reads_as_finrl_shares():
    import pickle

    from trading_core.envs.spec import EnvSpec

    old = {
        name: value for name, value in EnvSpec().__dict__.items() if name not in ("action", "normalization")
    }
    spec = EnvSpec.__new__(EnvSpec)
    spec.__setstate__({**old, "hmax": 7, "reward_scaling": 1e-3})
    assert spec.action == ActionSpec.finrl(hmax=7, value_scaling=1e-3) and spec.normalization is None
    assert pickle.loads(pickle.dumps(EnvSpec())) == EnvSpec()  # current pickles are untouched
