"""Zoo agents train, predict continuous actions, backtest and round-trip with their normaliser and learning curve;
the discrete table trades; ensembles select and blend."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from gymnasium import spaces

from trading_core.agents.ensemble import MANIFEST, WeightedEnsemblePolicy, softmax_weights
from trading_core.agents.training import PPOConfig, train_ppo
from trading_core.agents.zoo import (
    ALGORITHMS,
    DEFAULT_CONFIGS,
    AgentConfig,
    ContinuousPolicyAdapter,
    DiscretePortfolioActions,
    TrainedPolicy,
    discrete_action_table,
    load_policy,
    target_allocations,
    train_agent,
)
from trading_core.envs.fast import ActionSpec, StockTradingVecEnv, actions_for_weights, portfolio_weights
from trading_core.envs.spec import EnvSpec
from trading_core.evaluation.backtester import run_backtest
from trading_core.evaluation.selection import (
    RebalanceWindow,
    rebalance_windows,
    rolling_selection,
    select_by_validation_sharpe,
    weighted_ensemble_from_validation,
)
from trading_core.features.batch import build_features
from trading_core.market.simulator import SimulationConfig

ENV_SPEC = EnvSpec(n_envs=2)
N_ASSETS = 4
ACTION_SIZE = N_ASSETS + 1  # weights over the assets and cash
CASH = actions_for_weights(np.eye(ACTION_SIZE)[-1])
EQUAL = actions_for_weights(np.r_[np.full(N_ASSETS, 1 / N_ASSETS), 0.0])
FIRST = actions_for_weights(np.eye(ACTION_SIZE)[0])
SEED = 7
BUDGET = 256


def tiny_config(algorithm: str) -> AgentConfig:
    """The default config with a test-sized budget, networks and replay settings."""
    config = replace(DEFAULT_CONFIGS[algorithm], total_timesteps=BUDGET, net_arch=(32, 32))
    if algorithm == "ppo":
        return config.with_hyperparameters(n_steps=128, batch_size=64)
    if algorithm == "a2c":
        return config
    config = config.with_hyperparameters(learning_starts=64, batch_size=32, buffer_size=1_000)
    if algorithm == "qrdqn":
        return config.with_hyperparameters(target_update_interval=64, policy_kwargs=(("n_quantiles", 16),))
    return config


def _parameters(policy: TrainedPolicy) -> list[np.ndarray]:
    return [p.detach().numpy().copy() for p in policy.model.policy.parameters()]


def _actions(policy, observations: np.ndarray) -> np.ndarray:
    return np.asarray(policy.predict(observations, deterministic=True)[0])


class ConstantPolicy:
    """Always the same continuous action, for one observation or a batch."""

    def __init__(self, value: float | np.ndarray) -> None:
        self.value = np.broadcast_to(np.asarray(value, dtype=np.float32), (ACTION_SIZE,))

    def predict(self, observation, state=None, episode_start=None, deterministic=True):
        observation = np.asarray(observation)
        return np.broadcast_to(self.value, observation.shape[:-1] + (ACTION_SIZE,)).copy(), None


@pytest.fixture(scope="module")
def data(slice_bars) -> dict[str, pd.DataFrame]:
    features = build_features(slice_bars)
    is_train = features["date"] <= pd.Timestamp("2018-06-30")
    return {"train": features[is_train], "validation": features[~is_train]}


@pytest.fixture(scope="module")
def observations(data) -> np.ndarray:
    """A fixed batch of validation-period observations with varied cash and holdings."""
    env = StockTradingVecEnv(data["validation"], n_envs=3)
    rng = np.random.default_rng(0)
    batch = [env.reset()]
    for _ in range(4):
        env.step_async(rng.uniform(-1, 1, size=(3, ACTION_SIZE)))
        batch.append(env.step_wait()[0])
    return np.concatenate(batch).astype(np.float32)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> dict[str, tuple[TrainedPolicy, list[str], Path]]:
    """Each algorithm trained once with checkpoints and progress reports."""
    runs = {}
    for algorithm in ALGORITHMS:
        checkpoints = tmp_path_factory.mktemp(f"checkpoints_{algorithm}")
        messages: list[str] = []
        policy = train_agent(
            algorithm,
            data["train"],
            ENV_SPEC,
            tiny_config(algorithm),
            seed=SEED,
            checkpoint_dir=checkpoints,
            checkpoint_every=128,
            report=messages.append,
        )
        runs[algorithm] = (policy, messages, checkpoints)
    return runs


# --- the zoo ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_agent_trains_predicts_backtests_and_round_trips(algorithm, trained, data, observations, tmp_path):
    policy = trained[algorithm][0]
    assert (policy.algorithm, policy.seed, policy.config) == (algorithm, SEED, tiny_config(algorithm))

    assert policy.action == ENV_SPEC.action and policy.normalizer is not None
    single, _ = policy.predict(observations[0], deterministic=True)
    assert single.shape == (ACTION_SIZE,)
    assert np.issubdtype(single.dtype, np.floating)
    batch = _actions(policy, observations)
    assert batch.shape == (len(observations), ACTION_SIZE)
    assert np.all((batch >= -1) & (batch <= 1))

    result = run_backtest(policy, data["validation"], ENV_SPEC)
    assert len(result.equity) == data["validation"]["date"].nunique()
    assert math.isfinite(result.metrics.sharpe)

    saved = policy.save(tmp_path / "agent")
    assert saved == tmp_path / "agent.zip" and saved.exists()
    restored = load_policy(algorithm, tmp_path / "agent")
    assert (restored.algorithm, restored.seed, restored.config) == (algorithm, SEED, policy.config)
    assert (restored.action, restored.normalizer) == (policy.action, policy.normalizer)
    assert restored.learning_curve == policy.learning_curve
    assert type(restored.model) is type(policy.model)
    np.testing.assert_array_equal(_actions(restored, observations), batch)
    assert run_backtest(restored, data["validation"], ENV_SPEC).metrics == result.metrics


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_checkpoints_and_progress_reports(algorithm, trained):
    _, messages, checkpoints = trained[algorithm]
    steps = sorted(checkpoints.glob(f"{algorithm}_*_steps.zip"))
    assert steps, f"no checkpoints in {list(checkpoints.iterdir())}"
    assert (checkpoints / f"{algorithm}_final.zip").exists()
    # Every checkpoint carries the metadata (the normaliser above all) it needs to predict on raw observations.
    checkpoint = load_policy(algorithm, steps[0])
    assert checkpoint.seed == SEED and checkpoint.normalizer == trained[algorithm][0].normalizer
    progress = [m for m in messages if m.startswith(f"{algorithm.upper()}: ") and "timesteps" in m]
    assert len(progress) >= 2
    assert messages[-1].startswith(f"{algorithm.upper()}: finished")


@pytest.mark.parametrize("algorithm", ["ppo", "sac", "qrdqn"])
def test_same_seed_same_agent(algorithm, trained, data, observations):
    first = trained[algorithm][0]
    again = train_agent(algorithm, data["train"], ENV_SPEC, tiny_config(algorithm), seed=SEED, report=print)
    np.testing.assert_array_equal(_actions(again, observations), _actions(first, observations))
    for a, b in zip(_parameters(first), _parameters(again), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_learning_curve_records_the_training_rewards(algorithm, trained):
    curve = trained[algorithm][0].learning_curve
    steps = [point[0] for point in curve]
    assert len(curve) >= 10 and steps == sorted(steps) and steps[-1] >= BUDGET  # whole rollouts
    assert all(np.isfinite(value) for _, value in curve)
    # Mean log return per step: a fraction of a percent a day, never a dollar amount.
    assert max(abs(value) for _, value in curve) < 0.05
    assert json.loads(json.dumps(trained[algorithm][0].metadata()))["learning_curve"] == [
        list(p) for p in curve
    ]


def test_different_seed_differs(trained, data):
    other = train_agent("ppo", data["train"], ENV_SPEC, tiny_config("ppo"), seed=SEED + 1, report=print)
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(_parameters(trained["ppo"][0]), _parameters(other), strict=True)
    )


def test_zoo_ppo_is_train_ppo(data, observations):
    """The zoo's PPO is the project's PPO: same config and seed, same weights."""
    legacy = train_ppo(
        data["train"], ENV_SPEC, PPOConfig(total_timesteps=BUDGET, n_steps=128, batch_size=64), seed=SEED
    )
    config = replace(DEFAULT_CONFIGS["ppo"], total_timesteps=BUDGET).with_hyperparameters(
        n_steps=128, batch_size=64
    )
    zoo = train_agent("ppo", data["train"], ENV_SPEC, config, seed=SEED, report=print)
    for a, b in zip(legacy.model.policy.parameters(), zoo.model.policy.parameters(), strict=True):
        assert torch.equal(a, b)


def test_unknown_algorithm_and_mismatched_config(data):
    with pytest.raises(ValueError, match="ppo, a2c, sac, td3, ddpg, qrdqn"):
        train_agent("dqn", data["train"], ENV_SPEC)
    with pytest.raises(ValueError, match="not ppo"):
        train_agent("ppo", data["train"], ENV_SPEC, tiny_config("sac"))
    with pytest.raises(ValueError, match="unknown algorithm"):
        load_policy("rainbow", "nowhere.zip")


def test_agent_config_is_hashable_and_round_trips_through_json():
    for algorithm, config in DEFAULT_CONFIGS.items():
        assert config.algorithm == algorithm
        hash(config)
        assert AgentConfig.from_dict(json.loads(json.dumps(config.as_dict()))) == config
    config = AgentConfig("sac", 100, 1e-3, hyperparameters={"tau": 0.01, "batch_size": 8})
    assert config.hyperparameters == (("batch_size", 8), ("tau", 0.01))
    assert config == AgentConfig("sac", 100, 1e-3, hyperparameters=(("tau", 0.01), ("batch_size", 8)))
    with pytest.raises(ValueError, match="twice"):
        AgentConfig("sac", 100, 1e-3, hyperparameters=(("tau", 0.01), ("tau", 0.02)))
    assert config.with_hyperparameters(tau=0.02).params == {"batch_size": 8, "tau": 0.02}
    with pytest.raises(TypeError, match="hashable"):
        AgentConfig("sac", 100, 1e-3, hyperparameters={"policy_kwargs": {"a": 1}})


# --- discrete actions ---------------------------------------------------------------------------------------


def test_discrete_action_table_is_exact_in_shares_mode():
    table = discrete_action_table(3, ActionSpec.finrl())
    expected = [
        [0, 0, 0],  # hold
        [1, 1, 1],  # buy all
        [-1, -1, -1],  # sell all
        [1, 0, 0],  # buy asset 0 only
        [0, 1, 0],
        [0, 0, 1],
        [-1, 0, 0],  # sell asset 0 only
        [0, -1, 0],
        [0, 0, -1],
    ]
    np.testing.assert_array_equal(table, np.array(expected, dtype=np.float32))
    assert table.dtype == np.float32


def test_discrete_actions_map_to_the_intended_weights():
    allocations = target_allocations(3)
    expected = [
        [0, 0, 0, 1],  # all cash
        [1 / 3, 1 / 3, 1 / 3, 0],  # equal weight
        [1 / 6, 1 / 6, 1 / 6, 0.5],  # half invested
        [0.5, 0.25, 0.25, 0],  # tilted toward asset 0
        [0.25, 0.5, 0.25, 0],
        [0.25, 0.25, 0.5, 0],
    ]
    np.testing.assert_allclose(allocations, expected, rtol=1e-12)
    for temperature in (ActionSpec.temperature, 2.0):
        table = discrete_action_table(3, ActionSpec(temperature=temperature))
        assert table.shape == (6, 4) and table.dtype == np.float32 and np.abs(table).max() <= 1.0
        # Exact up to eps = 1 / (exp(2 T) - 1) per entry: 4.5e-5 at the default temperature.
        tolerance = 4 / np.expm1(2 * temperature) + 1e-6
        np.testing.assert_allclose(portfolio_weights(table, temperature), expected, atol=tolerance)
    assert discrete_action_table(3).shape == (6, 4)  # weights mode is the default


class _RecordingVecEnv(StockTradingVecEnv):
    def step_async(self, actions):
        self.received = np.array(actions)
        super().step_async(actions)


def test_discrete_wrapper_steps_the_continuous_env(data):
    shares = ActionSpec.finrl()
    wrapped = DiscretePortfolioActions(_RecordingVecEnv(data["validation"], n_envs=4, action=shares), shares)
    assert wrapped.action_space == spaces.Discrete(2 * N_ASSETS + 3)
    assert wrapped.observation_space == wrapped.venv.observation_space
    wrapped.reset()
    # hold, buy all, buy asset 2 only, sell asset 1 only
    observation, rewards, dones, _ = wrapped.step(np.array([0, 1, 3 + 2, 3 + N_ASSETS + 1]))
    np.testing.assert_array_equal(
        wrapped.venv.received,
        np.array([[0, 0, 0, 0], [1, 1, 1, 1], [0, 0, 1, 0], [0, -1, 0, 0]], dtype=np.float32),
    )
    wrapped.reset()
    wrapped.step(np.array([2, 2, 2, 2]))  # sell all
    np.testing.assert_array_equal(wrapped.venv.received, -np.ones((4, N_ASSETS)))
    assert observation.shape[0] == rewards.shape[0] == dones.shape[0] == 4

    # Without the risk manager, whose 25% weight cap would trim the tilt of four assets.
    weights = DiscretePortfolioActions(_RecordingVecEnv(data["validation"], SimulationConfig(risk=None), 2))
    assert weights.action_space == spaces.Discrete(N_ASSETS + 3)
    weights.reset()
    weights.step(np.array([0, 3 + 1]))  # all cash; tilted toward asset 1
    np.testing.assert_array_equal(weights.venv.received, discrete_action_table(N_ASSETS)[[0, 4]])
    simulator = weights.venv.simulator
    assert (simulator.holdings[0] == 0).all() and (simulator.holdings[1] > 0).all()
    values = simulator.holdings[1] * simulator.market.close[0]
    assert values.argmax() == 1 and values[1] == pytest.approx(2 * np.delete(values, 1).mean(), rel=0.05)


def test_qrdqn_adapter_returns_only_table_vectors(trained, observations):
    policy = trained["qrdqn"][0]
    table = discrete_action_table(N_ASSETS)
    actions = _actions(policy, observations)
    assert all(any(np.array_equal(row, vector) for vector in table) for row in actions)
    choices, _ = policy.model.predict(policy.normalizer(observations), deterministic=True)
    np.testing.assert_array_equal(actions, table[choices])
    adapter = ContinuousPolicyAdapter(policy.model, policy.action)
    np.testing.assert_array_equal(adapter.predict(policy.normalizer(observations[3]))[0], table[choices[3]])


def synthetic_features(n_dates: int = 160, seed: int = 0) -> pd.DataFrame:
    """A synthetic three-asset panel: one asset trends up steadily, two wander; one feature per asset."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2020-01-01", periods=n_dates)
    drift = np.array([0.004, 0.0, -0.001])
    closes = 50.0 * np.exp(np.cumsum(drift + rng.normal(0, 0.005, size=(n_dates, 3)), axis=0))
    rows = []
    for t, date in enumerate(dates):
        for i, tic in enumerate(["SYN_A", "SYN_B", "SYN_C"]):
            close = closes[t, i]
            rows.append(
                {
                    "date": date,
                    "tic": tic,
                    "open": closes[t - 1, i] if t else close,
                    "high": close * 1.002,
                    "low": close * 0.998,
                    "close": close,
                    "volume": 1e7,
                    "momentum": np.log(close / closes[max(t - 5, 0), i]),
                }
            )
    return pd.DataFrame(rows)


def test_qrdqn_on_a_synthetic_panel_trades():
    """The weights table gives QR-DQN trades in every choice but all cash; trained, it invests."""
    features = synthetic_features()
    spec = EnvSpec(n_envs=2)
    config = replace(
        DEFAULT_CONFIGS["qrdqn"], total_timesteps=1_200, learning_rate=1e-3, net_arch=(32,)
    ).with_hyperparameters(
        learning_starts=100,
        batch_size=32,
        buffer_size=2_000,
        target_update_interval=100,
        exploration_fraction=0.5,
        policy_kwargs=(("n_quantiles", 8),),
    )
    policy = train_agent("qrdqn", features, spec, config, seed=0, report=print)
    result = run_backtest(policy, features, spec)
    assert result.trades > 0
    assert (result.record.positions.sum(axis=1) > 0).mean() > 0.5  # invested most days, not sitting in cash
    again = train_agent("qrdqn", features, spec, config, seed=0, report=print)
    pd.testing.assert_series_equal(run_backtest(again, features, spec).equity, result.equity)


# --- ensembles ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def candidates(trained) -> dict[str, object]:
    return {
        "ppo": trained["ppo"][0],
        "qrdqn": trained["qrdqn"][0],
        "cash": ConstantPolicy(CASH),
        "buy_all": ConstantPolicy(EQUAL),
        "buy_first": ConstantPolicy(FIRST),
    }


def test_selection_picks_the_best_validation_sharpe(candidates, data):
    chosen, sharpes = select_by_validation_sharpe(candidates, data["validation"], ENV_SPEC)
    direct = {
        name: run_backtest(policy, data["validation"], ENV_SPEC).metrics.sharpe
        for name, policy in candidates.items()
    }
    assert sharpes == direct
    assert sharpes["cash"] == 0.0
    assert sharpes[chosen] == max(direct.values())
    assert chosen == next(name for name, value in direct.items() if value == max(direct.values()))


def test_weighted_ensemble_averages_actions_with_softmax_weights(candidates, data, observations):
    ensemble = weighted_ensemble_from_validation(candidates, data["validation"], ENV_SPEC, temperature=0.5)
    sharpes = {
        name: run_backtest(policy, data["validation"], ENV_SPEC).metrics.sharpe
        for name, policy in candidates.items()
    }
    exponentials = {name: math.exp(value / 0.5) for name, value in sharpes.items()}
    expected_weights = {name: value / sum(exponentials.values()) for name, value in exponentials.items()}
    assert ensemble.weights == pytest.approx(expected_weights, rel=1e-12)
    assert ensemble.sharpes == sharpes

    expected = sum(
        expected_weights[name] * _actions(policy, observations) for name, policy in candidates.items()
    )
    action = _actions(ensemble, observations)
    assert action.shape == (len(observations), ACTION_SIZE)
    np.testing.assert_allclose(action, np.clip(expected, -1, 1), rtol=1e-6, atol=1e-7)
    single, _ = ensemble.predict(observations[0])
    np.testing.assert_allclose(single, action[0], rtol=1e-6)
    assert math.isfinite(run_backtest(ensemble, data["validation"], ENV_SPEC).metrics.sharpe)


def test_weighted_ensemble_of_constants_is_exact_and_clipped(observations):
    members = {
        "up": ConstantPolicy([1.0, 1.0, 0.2, -1.0, 0.0]),
        "down": ConstantPolicy([-0.5, 1.0, 0.6, -1.0, 0.0]),
    }
    ensemble = WeightedEnsemblePolicy(members, {"up": 0.75, "down": 0.25})
    action, state = ensemble.predict(observations[0])
    np.testing.assert_allclose(action, [0.625, 1.0, 0.3, -1.0, 0.0], rtol=1e-7)
    assert state is None and action.dtype == np.float32
    with pytest.raises(ValueError, match="sum to one"):
        WeightedEnsemblePolicy(members, {"up": 0.7, "down": 0.7})
    with pytest.raises(ValueError, match="exactly the members"):
        WeightedEnsemblePolicy(members, {"up": 1.0})


def test_softmax_weights_edge_cases():
    assert softmax_weights({"a": -3.0, "b": -3.0}) == {"a": 0.5, "b": 0.5}
    weights = softmax_weights({"a": 1.0, "b": float("nan"), "c": 1.0 + math.log(3.0)})
    assert weights == pytest.approx({"a": 0.25, "b": 0.0, "c": 0.75})
    assert softmax_weights({"a": float("nan"), "b": float("nan")}) == {"a": 0.5, "b": 0.5}
    with pytest.raises(ValueError, match="temperature"):
        softmax_weights({"a": 1.0}, temperature=0.0)


def test_weighted_ensemble_save_load_is_identical(trained, data, observations, tmp_path):
    members = {name: trained[name][0] for name in ("ppo", "sac", "qrdqn")}
    ensemble = weighted_ensemble_from_validation(members, data["validation"], ENV_SPEC)
    manifest = ensemble.save(tmp_path / "ensemble")
    assert manifest == tmp_path / "ensemble" / MANIFEST
    content = json.loads(manifest.read_text())
    assert [m["algorithm"] for m in content["members"]] == ["ppo", "sac", "qrdqn"]
    assert [m["weight"] for m in content["members"]] == list(ensemble.weights.values())

    restored = WeightedEnsemblePolicy.load(tmp_path / "ensemble")
    assert restored.weights == ensemble.weights and restored.sharpes == ensemble.sharpes
    assert restored.temperature == ensemble.temperature
    np.testing.assert_array_equal(_actions(restored, observations), _actions(ensemble, observations))
    with pytest.raises(TypeError, match="TrainedPolicy"):
        WeightedEnsemblePolicy({"cash": ConstantPolicy(CASH)}, {"cash": 1.0}).save(tmp_path / "other")


def test_rebalance_windows_follow_finrl():
    dates = pd.bdate_range("2020-01-01", periods=20)
    windows = rebalance_windows(dates, rebalance_window=5, validation_window=4)
    assert len(windows) == 3  # trade windows [4, 9), [9, 14), [14, 19); the partial tail is dropped
    first = windows[0]
    assert (first.validation_start, first.validation_end) == (dates[0], dates[3])
    assert (first.trade_start, first.trade_end) == (dates[4], dates[8])
    assert (windows[-1].trade_start, windows[-1].trade_end) == (dates[14], dates[18])
    for previous, current in zip(windows, windows[1:], strict=False):
        assert current.trade_start == dates[dates.get_loc(previous.trade_end) + 1]
    with pytest.raises(ValueError, match="precede"):
        RebalanceWindow(dates[5], dates[6], dates[6], dates[7])


def test_rolling_selection_picks_per_window(data):
    features = data["validation"]
    pool = {"cash": ConstantPolicy(CASH), "buy_all": ConstantPolicy(EQUAL)}
    windows = rebalance_windows(features["date"], rebalance_window=63, validation_window=63)
    selections = rolling_selection(pool, features, windows, ENV_SPEC)
    assert [s.window for s in selections] == windows
    for selection in selections:
        validation = selection.window.validation_slice(features)
        assert validation["date"].min() == selection.window.validation_start
        direct = {name: run_backtest(p, validation, ENV_SPEC).metrics.sharpe for name, p in pool.items()}
        assert selection.sharpes == direct
        assert selection.chosen == max(direct, key=direct.get)
    # Late 2018's sell-off makes holding cash win some windows and buying win others.
    assert {s.chosen for s in selections} == {"cash", "buy_all"}

    per_window = [pool] * (len(windows) - 1) + [{"first": ConstantPolicy(FIRST)}]
    assert rolling_selection(per_window, features, windows, ENV_SPEC)[-1].chosen == "first"
    with pytest.raises(ValueError, match="candidate sets"):
        rolling_selection([pool], features, windows, ENV_SPEC)


@pytest.mark.parametrize("algorithm", ["sac", "qrdqn"])
def test_registry_pyfunc_loads_any_algorithm(algorithm, trained, observations, tmp_path):
    import mlflow

    from trading_core.agents.pyfunc import StableBaselinesPolicy, policy_artifacts

    policy = trained[algorithm][0]
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        experiment = mlflow.create_experiment("zoo", artifact_location=(tmp_path / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment):
            info = mlflow.pyfunc.log_model(
                name="agent",
                python_model=StableBaselinesPolicy(),
                artifacts=policy_artifacts(policy, tmp_path / "saved"),
                model_config={"algorithm": algorithm},
            )
        loaded = mlflow.pyfunc.load_model(info.model_uri)
    finally:
        mlflow.set_tracking_uri(previous)
    expected, _ = policy.predict(observations, deterministic=True)
    np.testing.assert_array_equal(loaded.predict(pd.DataFrame(observations)), expected)
