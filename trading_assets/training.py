"""Stage 4: train the agent, log it to MLflow and register it."""

import time
from dataclasses import dataclass
from typing import Literal

import dagster as dg
import numpy as np
import pandas as pd

from resources.mlflow_registry import CHALLENGER_ALIAS, TRIAL_TAG, MlflowRegistryResource, RegisteredVersion
from trading_assets.features import DatasetSplits
from trading_assets.learning import RegisteredForecaster
from trading_assets.metadata import markdown_table
from trading_core.agents.decision_spec import DecisionSpec, feature_deciles
from trading_core.agents.pyfunc import log_agent_model
from trading_core.agents.training import PPOConfig, train_ppo
from trading_core.backtest import run_backtest
from trading_core.data.schema import frame_fingerprint
from trading_core.distributed import single_torch_thread
from trading_core.environment import EnvSpec
from trading_core.envs.stock_trading import observation_at
from trading_core.features import BASE_COLUMNS, indicator_columns_of
from trading_core.market.costs import CostModel, LinearImpact, NoImpact, SquareRootImpact, commission_model
from trading_core.market.data import MarketArrays
from trading_core.market.execution import ExecutionConfig
from trading_core.market.risk import RiskLimits
from trading_core.market.simulator import SimulationConfig
from trading_core.metrics import PerformanceMetrics
from trading_core.provenance import code_version, pinned_requirements

MODEL_REQUIREMENTS = (
    "stable-baselines3",
    "sb3-contrib",
    "torch",
    "gymnasium",
    "numpy",
    "pandas",
    "cloudpickle",
)


class TrainingSettings(dg.Config):
    """Agent, budget and environment settings of a training run (the backtest reuses the environment)."""

    seed: int = 42
    total_timesteps: int = 20_000
    learning_rate: float = 2.5e-4
    n_steps: int = 2048
    batch_size: int = 128
    ent_coef: float = 0.01
    env_engine: Literal["fast", "finrl"] = "fast"
    n_envs: int = 4
    initial_amount: float = 100_000.0
    hmax: int = 100
    commission: str = "interactive_brokers_fixed"
    spread: Literal["auto", "quotes", "corwin_schultz", "fixed", "none"] = "auto"
    spread_bps: float = 10.0
    impact: Literal["linear", "square_root", "none"] = "linear"
    fill_timing: Literal["next_open", "same_close"] = "next_open"
    order_type: Literal["market", "limit"] = "market"
    participation_cap: float | None = 0.1
    risk_enabled: bool = True
    max_weight: float = 0.25
    var_limit: float | None = 0.02
    max_drawdown_halt: float | None = 0.2
    daily_loss_limit: float | None = 0.05
    finrl_cost_pct: float = 0.001
    use_learned_features: bool = True

    def env_spec(self) -> EnvSpec:
        """The environment these settings describe."""
        impact = {"linear": LinearImpact(), "square_root": SquareRootImpact(), "none": NoImpact()}[
            self.impact
        ]
        risk = (
            RiskLimits(
                max_weight=self.max_weight,
                var_limit=self.var_limit,
                max_drawdown_halt=self.max_drawdown_halt,
                daily_loss_limit=self.daily_loss_limit,
            )
            if self.risk_enabled
            else None
        )
        simulation = SimulationConfig(
            initial_amount=self.initial_amount,
            cost_model=CostModel(commission_model(self.commission), impact),
            spread=self.spread,
            spread_bps=self.spread_bps,
            execution=ExecutionConfig(
                fill_timing=self.fill_timing,
                order_type=self.order_type,
                participation_cap=self.participation_cap,
            ),
            risk=risk,
        )
        return EnvSpec(
            engine=self.env_engine,
            simulation=simulation,
            hmax=self.hmax,
            n_envs=self.n_envs,
            finrl_cost_pct=self.finrl_cost_pct,
        )


@dataclass(frozen=True)
class TrainedAgent:
    """Where a trained agent was logged and how it was trained."""

    def observation_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        """A features frame cut to the columns this agent observes, in its order."""
        return frame[[*BASE_COLUMNS, *self.feature_columns]]

    run_id: str
    model_uri: str
    algorithm: str
    seed: int
    env_spec: EnvSpec
    feature_columns: tuple[str, ...]
    ppo_config: PPOConfig
    data_sha256: str
    validation_metrics: PerformanceMetrics
    forecaster: str = ""  # registered CNN+LSTM "name/version" whose outputs the agent observes


def decision_spec_for(splits: DatasetSplits, env_spec: EnvSpec, forecaster: str) -> DecisionSpec:
    """The spec registered with an agent trained on ``splits`` (forecaster as "name/version", or empty)."""
    return DecisionSpec(
        tickers=tuple(splits.tickers),
        feature_columns=tuple(splits.feature_columns),
        env_spec=env_spec,
        forecaster_uri=f"models:/{forecaster}" if forecaster else None,
        use_turbulence="turbulence" in splits.feature_columns,
        uses_vix="vix" in splits.feature_columns,
        reference_quantiles=feature_deciles(
            splits.train, [c for c in indicator_columns_of(splits.train) if not c.startswith("cnn_lstm_")]
        ),
    )


@dg.asset(group_name="training", compute_kind="stable_baselines3", required_resource_keys={"mlflow"})
def trained_agent(
    context: dg.AssetExecutionContext,
    config: TrainingSettings,
    learned_features: DatasetSplits,
    cnn_lstm_model: RegisteredForecaster,
) -> dg.Output[TrainedAgent]:
    """A PPO agent trained over the training period (fast env with costs and risk by default), logged to MLflow."""
    tracking = context.resources.mlflow  # dagster-mlflow: one MLflow run per Dagster run
    env_spec = config.env_spec()
    dataset_splits = learned_features if config.use_learned_features else learned_features.without_learned()
    ppo_config = PPOConfig(
        total_timesteps=config.total_timesteps,
        learning_rate=config.learning_rate,
        n_steps=config.n_steps,
        batch_size=config.batch_size,
        ent_coef=config.ent_coef,
    )
    started = time.perf_counter()
    # One torch thread: the seed sweep's run of this seed then reproduces this agent exactly.
    with single_torch_thread():
        model = train_ppo(
            dataset_splits.train, env_spec, ppo_config, seed=config.seed, report=context.log.info
        )
    training_seconds = time.perf_counter() - started
    validation = run_backtest(model, dataset_splits.validation, env_spec)

    data_hash = frame_fingerprint(dataset_splits.train)
    split = dataset_splits.split.as_dict()
    forecaster = (
        f"{cnn_lstm_model.version.name}/{cnn_lstm_model.version.version}"
        if config.use_learned_features
        else ""
    )
    tracking.log_params(
        {
            "algorithm": "PPO",
            "seed": config.seed,
            **{f"ppo_{k}": v for k, v in ppo_config.as_dict().items()},
            **{f"env_{k}": v for k, v in env_spec.describe().items()},
            "tickers": ",".join(dataset_splits.tickers),
            "feature_columns": ",".join(dataset_splits.feature_columns),
        }
    )
    tracking.set_tags(
        {
            "data_sha256": data_hash,
            "code_version": code_version(),
            "dagster_asset": "trained_agent",
            "cnn_lstm_model": forecaster or "none",
            TRIAL_TAG: "candidate",
            **{f"data_{k}": v for k, v in split.items()},
        }
    )
    tracking.log_metrics(
        {
            "training_seconds": training_seconds,
            **{f"validation_{k}": v for k, v in validation.metrics.as_dict().items()},
        }
    )
    market = MarketArrays.from_features(dataset_splits.test)
    observation = observation_at(
        market, 0, np.array([env_spec.initial_amount]), np.zeros((1, market.n_assets))
    )
    example = pd.DataFrame(observation).rename(columns=lambda i: f"obs_{i}")
    model_info = log_agent_model(
        model,
        "ppo",
        decision_spec_for(dataset_splits, env_spec, forecaster),
        example,
        pinned_requirements(MODEL_REQUIREMENTS),
    )
    run_id = tracking.active_run().info.run_id
    tracking.end_run()

    agent = TrainedAgent(
        run_id=run_id,
        model_uri=model_info.model_uri,
        algorithm="PPO",
        seed=config.seed,
        env_spec=env_spec,
        feature_columns=tuple(dataset_splits.feature_columns),
        ppo_config=ppo_config,
        data_sha256=data_hash,
        validation_metrics=validation.metrics,
        forecaster=forecaster,
    )
    return dg.Output(
        agent,
        metadata={
            "mlflow_run_id": run_id,
            "model_uri": model_info.model_uri,
            "training_seconds": dg.MetadataValue.float(round(training_seconds, 1)),
            "total_timesteps": config.total_timesteps,
            "seed": config.seed,
            "data_sha256": data_hash,
            "cnn_lstm_model": forecaster or "none",
            "validation_metrics": markdown_table([validation.metrics.as_dict()]),
        },
    )


@dg.asset(group_name="training", compute_kind="mlflow")
def registered_model(
    trained_agent: TrainedAgent, dataset_splits: DatasetSplits, model_registry: MlflowRegistryResource
) -> dg.Output[RegisteredVersion]:
    """The trained agent as a new version in the MLflow model registry, aliased ``challenger``."""
    version = model_registry.register(
        trained_agent.model_uri,
        trained_agent.run_id,
        tags={
            "algorithm": trained_agent.algorithm,
            "seed": str(trained_agent.seed),
            "data_sha256": trained_agent.data_sha256,
            "cnn_lstm_model": trained_agent.forecaster or "none",
            "code_version": code_version(),
            "test_period": f"{dataset_splits.split.test_start.date()}..{dataset_splits.split.test_end.date()}",
        },
    )
    model_registry.set_alias(version.version, CHALLENGER_ALIAS)
    return dg.Output(
        version,
        metadata={
            "model_name": version.name,
            "version": version.version,
            "alias": CHALLENGER_ALIAS,
            "run_id": version.run_id,
        },
    )
