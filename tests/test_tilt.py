"""Agents over an allocator: the prior column is causal, a zero tilt is the allocator, tilts stay within their
bounds, and a tilt agent saves, loads, registers and decides live on the same prior as in batch."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from trading_core.agents.decision_spec import DecisionSpec
from trading_core.agents.tilt import TILT_CANDIDATES, TiltCandidate
from trading_core.agents.zoo import AgentConfig, discrete_action_table, load_policy, train_agent
from trading_core.allocators.config import PRIOR_FEATURE, AllocatorConfig
from trading_core.allocators.prior import history_needed, prior_weights, with_prior, with_prior_column
from trading_core.allocators.schedule import weights_at
from trading_core.data.schema import feature_columns_of, select_window
from trading_core.data.validation import to_validated_bars
from trading_core.envs.fast import ActionSpec, StockTradingVecEnv, targets_from_actions, tilted_weights
from trading_core.envs.spec import EnvSpec
from trading_core.evaluation.allocator_backtests import backtest_allocator
from trading_core.evaluation.backtester import EventDrivenBacktester
from trading_core.evaluation.seed_sweep import (
    SeedOutcome,
    ZooConfig,
    seed_table,
    tilt_tasks,
    train_and_evaluate,
)
from trading_core.features.batch import build_features
from trading_core.live.engine import DecisionEngine, PortfolioBook
from trading_core.market.arrays import MarketArrays
from trading_core.market.simulator import SimulationConfig

TICKERS = ["AAPL", "CVX", "IBM", "JPM", "KO", "MSFT", "PG", "WMT"]
# Short windows keep the fits few and fast; the methods are the zoo's priors.
PRIOR = AllocatorConfig(method="risk_parity", lookback=42, min_history=21)
FAST_PRIOR = replace(PRIOR, method="inverse_volatility")
TILT = ActionSpec(mode="tilt", prior=PRIOR)
TINY_PPO = AgentConfig(
    "ppo", total_timesteps=128, learning_rate=3e-4, hyperparameters={"n_steps": 64, "batch_size": 32}
)


class ConstantTilt:
    """Always the same tilt action, for one observation or a batch."""

    def __init__(self, n_assets: int, value: float = 0.0) -> None:
        self.n_assets, self.value = n_assets, value

    def predict(self, observation, state=None, episode_start=None, deterministic=True):
        shape = np.shape(observation)[:-1] + (self.n_assets,)
        return np.full(shape, self.value, dtype=np.float32), None


@pytest.fixture(scope="module")
def features(dow30_bars) -> pd.DataFrame:
    """Eight real tickers, 2017-2018 (with FinRL's indicators)."""
    return build_features(to_validated_bars(select_window(dow30_bars, TICKERS, "2017-01-01", "2018-12-31")))


@pytest.fixture(scope="module")
def market(features) -> MarketArrays:
    return MarketArrays.from_features(features)


@pytest.fixture(scope="module")
def tilted(market) -> MarketArrays:
    return with_prior(market, PRIOR)


# --- the prior column ---------------------------------------------------------------------------------------


def test_prior_column_is_causal_truncate_and_compare(market, tilted):
    column = tilted.features[:, tilted.feature_names.index(PRIOR_FEATURE)]
    for cut in (30, 120):
        truncated = with_prior(market.between(market.dates[0], market.dates[cut]), PRIOR)
        np.testing.assert_array_equal(truncated.features[:, -1], column[: cut + 1])
    # Every row is the one fit at its own close, the fit the live engine makes on its history.
    for day in (0, 25, 200):
        np.testing.assert_array_equal(column[day], weights_at(market, day, PRIOR))


def test_prior_column_ignores_every_later_price(market):
    cut = 150
    before = prior_weights(market, FAST_PRIOR)
    shocked_close = market.close.copy()
    shocked_close[cut + 1 :] *= np.linspace(0.5, 2.0, market.n_assets)
    after = prior_weights(replace(market, close=shocked_close), FAST_PRIOR)
    np.testing.assert_array_equal(after[: cut + 1], before[: cut + 1])
    assert not np.allclose(after[cut + 30 :], before[cut + 30 :])  # the shock is seen once it happened


def test_prior_fits_are_reused_only_for_the_same_prices_and_config(market, monkeypatch):
    from trading_core.allocators import prior as prior_module

    calls: list[AllocatorConfig] = []
    fit = prior_module.allocation_schedule
    monkeypatch.setattr(prior_module, "_cache", type(prior_module._cache)())
    monkeypatch.setattr(prior_module, "allocation_schedule", lambda m, c: calls.append(c) or fit(m, c))
    first = prior_weights(market, FAST_PRIOR)
    first[:] = -1.0  # a caller writing into its copy leaves the cached fit alone
    again = prior_weights(market, FAST_PRIOR)
    assert len(calls) == 1 and (again >= 0).all()
    np.testing.assert_array_equal(again, fit(market, replace(FAST_PRIOR, rebalance_every=1)).weights)
    shocked = market.close.copy()
    shocked[-1] *= 1.1
    prior_weights(replace(market, close=shocked), FAST_PRIOR)
    prior_weights(market, replace(FAST_PRIOR, lookback=FAST_PRIOR.lookback + 1))
    assert len(calls) == 3


def test_prior_column_on_a_frame_equals_the_arrays(features, market):
    frame = with_prior_column(features, FAST_PRIOR)
    assert list(frame.columns) == [*features.columns, PRIOR_FEATURE]
    arrays = MarketArrays.from_features(frame)
    np.testing.assert_array_equal(arrays.features[:, -1], prior_weights(market, FAST_PRIOR))
    with pytest.raises(ValueError, match="already"):
        with_prior_column(frame, FAST_PRIOR)


def test_env_spec_market_for_adds_the_prior_only_for_tilts(market):
    assert EnvSpec().market_for(market) is market
    spec = EnvSpec(action=replace(TILT, prior=FAST_PRIOR))
    assert spec.market_for(market).feature_names == (*market.feature_names, PRIOR_FEATURE)


# --- tilt actions -------------------------------------------------------------------------------------------


def test_zero_tilt_reproduces_the_allocators_backtest(market, tilted):
    """Same weights every close and no band: the zero tilt trades exactly what the allocator refitted every bar
    trades (the designed difference: by default a tilt agent decides every bar under the rebalance band, the
    allocator every ``rebalance_every`` bars without one)."""
    simulation = SimulationConfig()
    start, end = "2018-01-01", "2018-12-31"
    spec = replace(TILT, rebalance_band=0.0)
    tilt = EventDrivenBacktester(tilted.between(start, end), simulation, spec).run(
        ConstantTilt(market.n_assets)
    )
    allocator = backtest_allocator(market, start, end, simulation, replace(PRIOR, rebalance_every=1)).record
    pd.testing.assert_series_equal(tilt.equity, allocator.equity)
    pd.testing.assert_frame_equal(tilt.trades, allocator.trades)
    assert len(tilt.trades) > market.n_assets  # it did trade, on many dates


def _random_prior(rng: np.random.Generator, n_books: int, n_assets: int, cap: float) -> np.ndarray:
    raw = rng.dirichlet(np.full(n_assets, 0.5), size=n_books) * rng.uniform(0.5, 0.99, size=(n_books, 1))
    return np.minimum(raw, cap)


@pytest.mark.parametrize("max_weight", [0.25, 0.15, None])
def test_tilts_stay_within_their_bounds(max_weight):
    rng = np.random.default_rng(0)
    spec = replace(TILT, max_weight=max_weight)
    n_books, n_assets = 400, 12
    prior = _random_prior(rng, n_books, n_assets, spec.cap)
    actions = rng.uniform(-1.0, 1.0, size=(n_books, n_assets))
    actions[:50] = np.sign(actions[:50])  # the corners of the action box
    tradable = rng.random((n_books, n_assets)) > 0.2
    weights = tilted_weights(actions, prior, spec, tradable)
    invested = np.where(tradable, prior, 0.0).sum(axis=1)
    assert (weights >= 0.0).all() and (weights <= spec.cap + 1e-12).all()
    assert (weights[~tradable] == 0.0).all()
    assert (weights.sum(axis=1) <= np.minimum(invested, spec.invest) + 1e-12).all()
    # Where the cap leaves room, the invested fraction is the prior's.
    roomy = tradable.sum(axis=1) * spec.cap >= invested + 1e-9
    np.testing.assert_allclose(weights.sum(axis=1)[roomy], invested[roomy])
    # Before the re-scaling every asset moved by at most the bound; a tilt that keeps the invested fraction
    # (opposite moves on two assets, away from 0 and the cap) is applied exactly.
    before = np.clip(prior + spec.tilt_bound * actions, 0.0, spec.cap)
    assert (np.abs(before - prior) <= spec.tilt_bound + 1e-12).all()
    flat = np.full((1, 4), 0.1)
    swap = np.array([[1.0, -1.0, 0.0, 0.0]])
    np.testing.assert_allclose(tilted_weights(swap, flat, spec), flat + spec.tilt_bound * swap)


def test_zero_tilt_is_the_prior_and_an_all_out_tilt_keeps_it():
    prior = np.array([[0.1, 0.2, 0.0, 0.2]])
    np.testing.assert_array_equal(tilted_weights(np.zeros((1, 4)), prior, TILT), prior)
    np.testing.assert_array_equal(
        tilted_weights(-np.ones((1, 4)), prior, replace(TILT, tilt_bound=0.5)), prior
    )


def test_non_tradable_assets_get_no_target():
    holdings = np.zeros((1, 3))
    prices = np.array([10.0, 20.0, 30.0])
    prior = np.array([0.3, 0.3, 0.3])
    targets = targets_from_actions(
        np.ones((1, 3)),
        holdings,
        np.array([1e5]),
        prices,
        TILT,
        tradable=np.array([True, False, True]),
        prior=prior,
    )
    assert targets[0, 1] == 0.0 and targets[0, 0] > 0 and targets[0, 2] > 0
    # An asset without a price gets nothing either.
    priced = targets_from_actions(
        np.zeros((1, 3)), holdings, np.array([1e5]), [10.0, np.nan, 30.0], TILT, prior=prior
    )
    assert priced[0, 1] == 0.0
    with pytest.raises(ValueError, match="prior"):
        targets_from_actions(np.zeros((1, 3)), holdings, np.array([1e5]), prices, TILT)


def test_tilts_need_a_prior_the_column_and_the_fast_engine(market):
    with pytest.raises(ValueError, match="prior"):
        ActionSpec(mode="tilt")
    with pytest.raises(ValueError, match="prior_weight"):
        StockTradingVecEnv(market, action=TILT)
    with pytest.raises(ValueError, match="fast engine"):
        EnvSpec(engine="finrl", action=TILT)
    with pytest.raises(ValueError, match="continuous"):
        discrete_action_table(4, TILT)


def test_action_spec_round_trips_with_its_prior():
    assert ActionSpec.from_dict(TILT.as_dict()) == TILT
    assert TILT.as_dict()["prior_method"] == "risk_parity"
    assert ActionSpec.from_dict(ActionSpec().as_dict()) == ActionSpec()


# --- the agent ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tilt_agent(tilted):
    spec = EnvSpec(n_envs=2, action=TILT)
    return train_agent("ppo", tilted.between("2017-01-01", "2017-12-31"), spec, TINY_PPO, seed=3), spec


def test_tilt_agent_saves_loads_and_goes_through_the_pyfunc(tilt_agent, tilted, tmp_path):
    import mlflow

    from trading_core.agents.pyfunc import StableBaselinesPolicy, policy_artifacts

    policy, spec = tilt_agent
    assert policy.action == TILT and policy.model.action_space.shape == (tilted.n_assets,)
    env = StockTradingVecEnv(tilted.between("2018-01-01", "2018-12-31"), spec.simulation, 2, TILT)
    observations = env.reset()
    loaded = load_policy("ppo", policy.save(tmp_path / "tilt"))
    assert loaded.action == TILT
    np.testing.assert_array_equal(loaded.predict(observations)[0], policy.predict(observations)[0])
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        experiment = mlflow.create_experiment("tilt", artifact_location=(tmp_path / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment):
            info = mlflow.pyfunc.log_model(
                name="agent",
                python_model=StableBaselinesPolicy(),
                artifacts=policy_artifacts(policy, tmp_path / "saved"),
                model_config={"algorithm": "ppo"},
            )
        pyfunc = mlflow.pyfunc.load_model(info.model_uri)
    finally:
        mlflow.set_tracking_uri(previous)
    np.testing.assert_array_equal(pyfunc.predict(pd.DataFrame(observations)), policy.predict(observations)[0])


def _tilt_spec(features: pd.DataFrame, prior: AllocatorConfig = PRIOR) -> DecisionSpec:
    return DecisionSpec(
        tickers=tuple(TICKERS),
        feature_columns=(*feature_columns_of(features), PRIOR_FEATURE),
        env_spec=EnvSpec(action=replace(TILT, prior=prior)),
    )


def test_decision_spec_round_trips_with_its_prior(features, tmp_path):
    spec = _tilt_spec(features)
    loaded = DecisionSpec.load(spec.save(tmp_path / "spec.pkl"))
    assert loaded == spec and loaded.prior == PRIOR
    with pytest.raises(ValueError, match=PRIOR_FEATURE):
        DecisionSpec(tuple(TICKERS), tuple(feature_columns_of(features)), spec.env_spec)


def test_live_engine_computes_the_batch_prior_and_decides_on_it(features, tilted):
    spec = _tilt_spec(features)
    engine = DecisionEngine(ConstantTilt(len(TICKERS), 0.5), spec)
    assert engine.history_dates == history_needed(PRIOR) and engine.needs_history
    dates = tilted.dates
    column = tilted.features[:, -1]
    for day in (history_needed(PRIOR) - 1, 200, len(dates) - 1):
        recent = features[features["date"].isin(dates[day - engine.history_dates + 1 : day + 1])]
        matrix, columns = engine.feature_matrix(recent)
        np.testing.assert_array_equal(matrix[:, columns.index(PRIOR_FEATURE)], column[day])
        book = PortfolioBook(cash=1e6, holdings=np.zeros(len(TICKERS)))
        decision = engine.decide(dates[day], matrix, columns, book)
        expected = targets_from_actions(
            np.full((1, len(TICKERS)), 0.5),
            np.zeros((1, len(TICKERS))),
            np.array([1e6]),
            tilted.close[day],
            spec.env_spec.action,
            prior=column[day],
        )
        np.testing.assert_array_equal(decision.targets, expected[0])
    # While the history is shorter than the fit's window the engine waits, as it does for a forecaster.
    short = features[features["date"].isin(dates[:10])]
    assert engine.feature_matrix(short) is None


def test_live_loop_trades_a_tilt_agent_from_its_warm_up_history(live_minutes, tmp_path):
    from tests.live_support import LIVE_TICKERS
    from trading_core.broker.simulated import SimulatedBroker
    from trading_core.features.streaming import StreamingFeatures
    from trading_core.live.loop import LiveConfig, LiveTradingLoop
    from trading_core.live.sources import replay
    from trading_core.live.state import TradingStateStore

    history, bars = live_minutes
    columns = StreamingFeatures(LIVE_TICKERS).columns[7:]  # the live features after the base columns
    prior = replace(FAST_PRIOR, lookback=30, min_history=10)
    spec = DecisionSpec(
        tuple(sorted(LIVE_TICKERS)), (*columns, PRIOR_FEATURE), EnvSpec(action=replace(TILT, prior=prior))
    )
    store = TradingStateStore.sqlite(tmp_path / "state.db")
    store.create_schema()
    loop = LiveTradingLoop(
        LiveConfig(session_id="tilt", calendar=None),
        store,
        SimulatedBroker(list(spec.tickers), spec.env_spec.simulation),
        (DecisionEngine(ConstantTilt(len(LIVE_TICKERS)), spec), "1"),
        history=history,
    )
    summary = loop.run(replay(bars), max_bars=30)
    assert summary.decisions == 30 and summary.orders_sent > 0


# --- the zoo ------------------------------------------------------------------------------------------------


def test_the_zoo_trains_a_tilt_candidate_in_its_own_environment(market):
    assert ZooConfig().tilts == tuple(TILT_CANDIDATES) == ("ppo_tilt",)
    with pytest.raises(ValueError, match="unknown tilt"):
        ZooConfig(tilts=("sac_tilt",))
    plan = ZooConfig(algorithms=(), n_seeds=1, timesteps=TINY_PPO.total_timesteps)
    periods = {
        "split": (
            market.between("2017-01-01", "2017-12-31"),
            market.between("2018-01-01", "2018-06-30"),
            market.between("2018-07-01", "2018-12-31"),
        )
    }
    base = EnvSpec(n_envs=2)
    candidate = TiltCandidate(prior=FAST_PRIOR)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(TILT_CANDIDATES, "ppo_tilt", candidate)
        (task,) = tilt_tasks(plan, market, periods, base)
    assert (task.candidate, task.algorithm) == ("ppo_tilt", "ppo")
    assert task.env_spec == candidate.env_spec(base) and task.env_spec.action.mode == "tilt"
    # Each period is cut from the full-history prior: validation's first prior saw the training year.
    validation = task.validation
    assert validation.feature_names[-1] == PRIOR_FEATURE
    np.testing.assert_array_equal(
        validation.features[0, -1], weights_at(market, len(periods["split"][0].dates), FAST_PRIOR)
    )
    outcome = train_and_evaluate(replace(task, config=replace(TINY_PPO, total_timesteps=64)))
    assert outcome.candidate == "ppo_tilt" and outcome.candidate_run().candidate == "ppo_tilt"
    assert outcome.env_spec == task.env_spec
    assert seed_table([outcome]).loc[0, ["candidate", "algorithm"]].tolist() == ["ppo_tilt", "ppo"]


def test_outcomes_default_their_candidate_to_the_algorithm_and_the_zoo_picks_per_candidate():
    from trading_assets.training import AgentZooReport

    def outcome(candidate: str, seed: int, sharpe: float) -> SeedOutcome:
        return SeedOutcome("ppo", seed, sharpe, 0.0, 0.0, 0.0, pd.Series(dtype=float), candidate=candidate)

    assert SeedOutcome("sac", 1, 0.0, 0.0, 0.0, 0.0, pd.Series(dtype=float)).candidate == "sac"
    runs = (
        outcome("ppo", 1, 0.5),
        outcome("ppo", 2, 0.7),
        outcome("ppo_tilt", 1, 0.9),
        outcome("ppo_tilt", 2, 0.1),
    )
    best = AgentZooReport(seed_table(list(runs)), runs).best_by_validation()
    assert {name: o.seed for name, o in best.items()} == {"ppo": 2, "ppo_tilt": 1}


def test_registration_helpers_carry_the_prior_column(features):
    from trading_assets.training import decision_spec_for, observation_example
    from trading_core.data.splits import DatasetSplits, apply_split, make_date_split

    split = make_date_split(features["date"], train_end="2017-12-31", validation_end="2018-06-30")
    splits = DatasetSplits(split, **apply_split(features, split))
    env_spec = EnvSpec(action=replace(TILT, prior=FAST_PRIOR))
    spec = decision_spec_for(splits, env_spec, forecaster="")
    assert spec.feature_columns == (*splits.feature_columns, PRIOR_FEATURE) and spec.prior == FAST_PRIOR
    assert decision_spec_for(splits, EnvSpec(), forecaster="").prior is None
    example = observation_example(splits, env_spec).to_numpy()[0]
    n = len(TICKERS)
    # The last feature block is the prior at the test period's first close, fit on all the history before it.
    first_test = int(MarketArrays.from_features(features).dates.searchsorted(split.test_start))
    expected = prior_weights(MarketArrays.from_features(features), FAST_PRIOR)[first_test]
    np.testing.assert_allclose(example[-n:], expected.astype(np.float32))
