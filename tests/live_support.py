"""A small real agent for the live tests: PPO trained on daily Dow-30 bars of tickers the 1-minute file holds."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd

from resources.mlflow_registry import CHAMPION_ALIAS, MlflowRegistryResource
from trading_core.agents.decision_spec import DecisionSpec, feature_deciles
from trading_core.agents.pyfunc import log_agent_model
from trading_core.agents.zoo import AgentConfig, TrainedPolicy, train_agent
from trading_core.data.schema import feature_columns_of, indicator_columns_of, select_window
from trading_core.data.validation import to_validated_bars
from trading_core.envs.spec import EnvSpec
from trading_core.features.batch import build_features
from trading_core.live.sources import read_bars

LIVE_TICKERS = ["AAPL", "JPM", "MSFT", "V"]
INTRADAY_FILE = "intraday_1min_us_equities_2019.csv.gz"


def train_live_agent(dow30_bars: pd.DataFrame, seed: int = 3) -> tuple[TrainedPolicy, DecisionSpec]:
    """A tiny PPO and its decision spec (no forecaster), trained on 2016-2018 daily bars."""
    bars = to_validated_bars(select_window(dow30_bars, LIVE_TICKERS, "2016-01-01", "2018-12-31"))
    features = build_features(bars)
    env_spec = EnvSpec(n_envs=2)
    config = AgentConfig(
        "ppo", total_timesteps=512, learning_rate=3e-4, hyperparameters={"n_steps": 128, "batch_size": 64}
    )
    policy = train_agent("ppo", features, env_spec, config, seed=seed)
    spec = DecisionSpec(
        tickers=tuple(sorted(LIVE_TICKERS)),
        feature_columns=tuple(feature_columns_of(features)),
        env_spec=env_spec,
        use_turbulence=True,
        reference_quantiles=feature_deciles(features, indicator_columns_of(features)),
    )
    return policy, spec


def minute_bars(shared_data: Path) -> pd.DataFrame:
    # The shared file is real, checked data: skip the validation suite's start-up cost in every live test.
    return read_bars(shared_data / INTRADAY_FILE, LIVE_TICKERS, validate=False)


def split_first_day(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(history: the first session, to warm features up; the rest, to trade)."""
    first = frame["timestamp"].dt.tz_convert("America/New_York").dt.normalize()
    history = frame[first == first.min()].rename(columns={"timestamp": "date"})
    return history, frame[first != first.min()]


def register_agent(policy: TrainedPolicy, spec: DecisionSpec, registry: MlflowRegistryResource) -> str:
    """Log the agent as the pipeline does (pyfunc with its decision spec), register it and make it champion."""
    experiment_id = registry.experiment_id()
    mlflow.set_tracking_uri(registry.tracking_uri)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        info = log_agent_model(policy, "ppo", spec)
        mlflow.set_tags({"data_test_start": "2019-02-12", "data_test_end": "2019-02-15"})
        run_id = run.info.run_id
    version = registry.register(info.model_uri, run_id, tags={})
    registry.set_alias(version.version, CHAMPION_ALIAS)
    return version.version
