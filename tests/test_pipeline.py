"""The asset graph materializes in-process on real data into a temporary MLflow store, and bad data stops it."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import mlflow
import numpy as np
import pandas as pd
import pytest

from pipelines.definitions import all_assets
from pipelines.jobs import PIPELINE_SELECTION
from resources.market_data import MarketDataResource
from resources.mlflow_registry import CHALLENGER_ALIAS, CHAMPION_ALIAS, MlflowRegistryResource, mlflow_run
from resources.trading_state import TradingStateResource
from tests.test_validation import corrupt
from trading_assets.training import ENSEMBLE_MODEL_NAME

ALL_ASSET_NAMES = {
    "raw_daily_bars",
    "validated_daily_bars",
    "features",
    "dataset_splits",
    "trained_agent",
    "registered_model",
    "backtest",
    "champion_model",
    "stress_tests",
    "walk_forward",
    "performance_attribution",
    "cnn_lstm_model",
    "learned_features",
    "seed_sweep",
    "agent_zoo",
    "agent_ensemble",
    "candidate_verdicts",
    "classical_allocators",
    "candidate_leaderboard",
    "market_regimes",
    "sector_map",
    "sized_candidates",
    "execution_comparison",
    "champion_vs_challenger",
}
TINY_TRAINING = {"total_timesteps": 256, "n_steps": 128, "batch_size": 64, "seed": 11}
LENIENT_GATE = {"min_sharpe": -100.0, "max_drawdown": 1.0, "max_var_95": 1.0, "must_beat_buy_and_hold": False}


def pipeline_resources(tmp_path: Path, data_path: Path, vix_path: Path | None = None) -> dict[str, object]:
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    artifact_root = (tmp_path / "artifacts").as_uri()
    return {
        "market_data": MarketDataResource(
            source="csv", path=str(data_path), vix_path=str(vix_path) if vix_path else None
        ),
        "model_registry": MlflowRegistryResource(tracking_uri=tracking_uri, artifact_root=artifact_root),
        "mlflow": mlflow_run.configured(
            {
                "experiment_name": "rl_trading",
                "mlflow_tracking_uri": tracking_uri,
                "artifact_root": artifact_root,
            }
        ),
        "io_manager": dg.FilesystemIOManager(base_dir=str(tmp_path / "storage")),
        "trading_state": TradingStateResource(url=f"sqlite:///{tmp_path / 'trading_state.db'}"),
    }


TINY_WALK_FORWARD = {
    "n_windows": 2,
    "test_dates": 60,
    "timesteps_per_window": 256,
    "warm_start_timesteps": 64,
    "use_ray": False,
}
TINY_FORECASTER = {"max_epochs": 2, "patience": 1}
LENIENT_SWEEP = {
    "n_seeds": 2,
    "timesteps": 256,
    "use_ray": False,
    "min_p25_sharpe": -100.0,
    "min_deflated_sharpe": 0.0,
    "must_beat_yardsticks": False,
}


# The gate tests need no tilt candidate (its prior refits daily); the whole-graph test trains one.
TINY_ZOO = {"algorithms": ["a2c", "qrdqn"], "tilts": [], "n_seeds": 1, "timesteps": 200, "use_ray": False}
TINY_SEARCH = {"algorithm": "a2c", "n_trials": 2, "timesteps": 128, "use_ray": False}
SHORT_ENSEMBLE_WINDOWS = {"rebalance_dates": 20, "validation_dates": 20}


def run_config(gate: dict | None = None, stress_limit: float = 1.0, tilts: tuple[str, ...] = ()) -> dict:
    config = {
        "ops": {
            "agent_zoo": {"config": {**TINY_ZOO, "tilts": list(tilts)}},
            "agent_ensemble": {"config": SHORT_ENSEMBLE_WINDOWS},
            "trained_agent": {"config": TINY_TRAINING},
            "walk_forward": {"config": TINY_WALK_FORWARD},
            "cnn_lstm_model": {"config": TINY_FORECASTER},
            "seed_sweep": {"config": LENIENT_SWEEP},
            "stress_tests": {"config": {"max_stress_drawdown": stress_limit}},
        }
    }
    if gate:
        config["ops"]["backtest"] = {"config": gate}
    return config


def materialized(result: dg.ExecuteInProcessResult) -> set[str]:
    return {event.asset_key.to_user_string() for event in result.get_asset_materialization_events()}


def test_whole_graph_materializes_registers_and_promotes(tmp_path, slice_csv, vix_file):
    resources = pipeline_resources(tmp_path, slice_csv, vix_file)
    instance = dg.DagsterInstance.ephemeral()
    first = dg.materialize(
        all_assets,
        selection=PIPELINE_SELECTION,
        resources=resources,
        run_config=run_config(LENIENT_GATE, tilts=("ppo_tilt",)),
        instance=instance,
    )
    assert first.success
    assert materialized(first) == ALL_ASSET_NAMES
    registry: MlflowRegistryResource = resources["model_registry"]
    assert registry.version_for_alias(CHAMPION_ALIAS) == "1"
    assert registry.version_for_alias(CHALLENGER_ALIAS) == "1"

    client = mlflow.MlflowClient(tracking_uri=registry.tracking_uri)
    agent = first.asset_value("trained_agent")
    assert {"cnn_lstm_mean", "cnn_lstm_emb_0"} <= set(agent.feature_columns)  # forecasts in the observation
    forecaster_version = client.get_model_version("rl_trading_cnn_lstm", "1")
    assert {a.path for a in client.list_artifacts(forecaster_version.run_id)} >= {"forecaster"}
    registered = first.asset_value("registered_model")
    leaderboard = first.asset_value("candidate_leaderboard")
    assert registered.candidate == leaderboard.pick  # validation's pick, whichever agent it is
    assert set(leaderboard.table["candidate"]) >= {"ppo_recipe", "a2c", "qrdqn", "equal_weight_buy_and_hold"}
    assert leaderboard.allocator_pick in set(
        leaderboard.table.loc[leaderboard.table["kind"] == "allocator", "candidate"]
    )
    # Issue 12's candidates and splits: sector rotation, sized variants, per-regime test Sharpe, regime features.
    assert "sector_momentum" in set(leaderboard.table["candidate"])
    sized = set(leaderboard.table.loc[leaderboard.table["kind"] == "sized", "candidate"])
    assert {"risk_parity+volatility_target", "ppo_recipe+inverse_volatility"} <= sized
    assert {"test_sharpe_regime_0", "test_sharpe_regime_1"} <= set(leaderboard.table.columns)
    assert {"p_regime_0", "p_regime_1"} <= set(agent.feature_columns)
    assert set(first.asset_value("sector_map")["tic"]) >= set(first.asset_value("dataset_splits").tickers)
    sweep = first.asset_value("seed_sweep")
    seeds = [registered.seed, registered.seed + 1]
    assert list(sweep.table["seed"]) == seeds and sweep.n_trials >= 3  # zoo runs + two seed runs
    assert {"min", "p25", "median", "max"} <= set(sweep.distribution.columns)
    lookahead = [e for e in first.get_asset_check_evaluations() if e.check_name == "no_lookahead"]
    assert len(lookahead) == 1 and lookahead[0].passed
    recipe_run = client.get_run(agent.run_id)
    assert recipe_run.data.params["seed"] == "11" and recipe_run.data.params["algorithm"] == "PPO"
    assert "evaluation/leaderboard.json" in {
        a.path for a in client.list_artifacts(agent.run_id, "evaluation")
    }
    run = client.get_run(registered.run_id)  # the registered version's run holds its evaluation
    assert run.data.params["seed"] == str(registered.seed)
    assert len(run.data.tags["data_sha256"]) == 64
    assert run.data.tags["cnn_lstm_model"] == "rl_trading_cnn_lstm/1" == agent.forecaster
    assert len(run.data.tags["code_version"]) >= 7
    assert run.data.tags["data_train_start"] <= run.data.tags["data_train_end"]
    assert {"test_sharpe", "test_max_drawdown", "test_buy_and_hold_sharpe", "validation_sharpe"} <= set(
        run.data.metrics
    )
    artifacts = {a.path for a in client.list_artifacts(registered.run_id, "evaluation")}
    assert "evaluation/test_equity_curve.png" in artifacts
    report = first.asset_value("backtest")
    assert run.data.metrics["test_sharpe"] == pytest.approx(report.metrics.sharpe)
    # The walk-forward re-runs the trained recipe, so it reports to the recipe's run.
    assert "walk_forward_sharpe" in client.get_run(agent.run_id).data.metrics
    assert {"stress_worst_max_drawdown", "attribution_net_return"} <= set(run.data.metrics)
    assert {
        "evaluation/stress_tests.png",
        "evaluation/performance_attribution.png",
    } <= artifacts
    attribution = first.asset_value("performance_attribution")
    assert attribution["net_pnl"].sum() == pytest.approx(
        report.equity.iloc[-1] - report.equity.iloc[0], rel=1e-9
    )
    assert report.equity.index.min() > first.asset_value("dataset_splits").split.validation_end

    verdicts = first.asset_value("candidate_verdicts").table()
    judged = ["a2c", "qrdqn", "ppo_tilt", "weighted_ensemble", "rolling_selection"]
    assert list(verdicts["candidate"]) == judged
    assert verdicts["verdict"].str.match(r"^(pass|fail: .+)$").all()
    ensemble = first.asset_value("agent_ensemble")
    loaded = registry.load_policy(ensemble.version.version, model_name=ENSEMBLE_MODEL_NAME)
    assert set(loaded.weights) == {"a2c", "qrdqn"}
    observation = np.zeros((1, *loaded.members["a2c"].model.observation_space.shape), dtype=np.float32)
    action, _ = loaded.predict(observation)
    assert action.shape == (
        1,
        len(first.asset_value("dataset_splits").tickers) + 1,
    )  # weights: assets and cash
    assert registry.version_for_alias(CHALLENGER_ALIAS, model_name=ENSEMBLE_MODEL_NAME) == "1"

    # Champion monitoring reads the champion's decision spec and forecaster back from the registry.
    monitored = dg.materialize(
        all_assets, selection=dg.AssetSelection.groups("monitoring"), resources=resources, instance=instance
    )
    assert monitored.success
    health = monitored.asset_value("champion_monitoring")
    assert health.version == "1" and set(health.drift.columns) >= {"psi", "ks_pvalue", "drifted"}
    assert {"rsi_30", "cci_30", "dx_30"} == set(health.drift.index) and health.decay.recent_periods > 10
    checks = {e.check_name for e in monitored.get_asset_check_evaluations()}
    assert checks == {
        "feature_drift",
        "performance_decay",
        "feed_completeness",
        "feed_latency",
        "feed_freshness",
    }

    # The optional hyperparameter search runs on demand from the stored upstream values.
    trials_before = registry.trial_count()
    search = dg.materialize(
        all_assets,
        selection=dg.AssetSelection.groups("tuning"),
        resources=resources,
        run_config={"ops": {"tuned_hyperparameters": {"config": TINY_SEARCH}}},
        instance=instance,
    )
    assert search.success
    tuned = search.asset_value("tuned_hyperparameters")
    assert len(tuned.trials) == 2 and "learning_rate" in tuned.best_params
    assert registry.trial_count() == trials_before + 2  # every trial counts for the deflated Sharpe

    # A step in another process starts with MLflow's default store; registering must not depend on it.
    mlflow.set_tracking_uri((tmp_path / "elsewhere").as_uri())
    extra = registry.register(agent.model_uri, agent.run_id, tags={})
    assert extra.version == "2"

    second = dg.materialize(
        all_assets,
        selection=PIPELINE_SELECTION,
        resources=resources,
        run_config=run_config(LENIENT_GATE),
        instance=instance,
    )
    assert second.success
    assert registry.version_for_alias(CHAMPION_ALIAS) == "3"
    assert registry.version_for_alias("previous") == "1"

    assert registry.rollback() == ("3", "1")
    assert registry.version_for_alias(CHAMPION_ALIAS) == "1"
    assert registry.version_for_alias("previous") == "3"


def test_failed_gate_blocks_promotion_and_keeps_champion(tmp_path, slice_csv):
    resources = pipeline_resources(tmp_path, slice_csv)
    registry: MlflowRegistryResource = resources["model_registry"]
    impossible = {**LENIENT_GATE, "min_sharpe": 100.0}
    result = dg.materialize(
        all_assets,
        selection=PIPELINE_SELECTION,
        resources=resources,
        run_config=run_config(impossible),
        raise_on_error=False,
    )
    # A rejection is a verdict: the run succeeds, the failed check is red, the promotion step says why.
    assert result.success
    assert {"backtest", "performance_attribution", "champion_model"} <= materialized(result)
    failed = {e.check_name for e in result.get_asset_check_evaluations() if not e.passed}
    assert failed == {"min_sharpe"}
    decision = result.asset_value("champion_model")
    assert (decision["promoted"], decision["verdict"], decision["champion"]) == (False, "not promoted", None)
    assert len(decision["reasons"]) == 1 and decision["reasons"][0].startswith("backtest min_sharpe: Sharpe ")
    assert "vs required >= 100.00" in decision["reasons"][0]
    assert registry.version_for_alias(CHAMPION_ALIAS) is None
    assert registry.version_for_alias(CHALLENGER_ALIAS) == "1"
    with pytest.raises(ValueError, match="rollback needs"):
        registry.rollback()


def test_failed_stress_limit_blocks_promotion(tmp_path, slice_csv):
    resources = pipeline_resources(tmp_path, slice_csv)
    registry: MlflowRegistryResource = resources["model_registry"]
    result = dg.materialize(
        all_assets,
        selection=PIPELINE_SELECTION,
        resources=resources,
        run_config=run_config(LENIENT_GATE, stress_limit=0.0),
        raise_on_error=False,
    )
    assert result.success and {"stress_tests", "champion_model"} <= materialized(result)
    failed = {e.check_name for e in result.get_asset_check_evaluations() if not e.passed}
    assert failed == {"stress_drawdown_limit"}
    reasons = result.asset_value("champion_model")["reasons"]
    assert reasons[0].startswith("stress_tests stress_drawdown_limit: ")
    assert registry.version_for_alias(CHAMPION_ALIAS) is None


@pytest.mark.parametrize(
    "case",
    [
        "null",
        "negative_price",
        "high_below_low",
        "duplicate",
        "bad_date",
        "missing_column",
        "negative_volume",
    ],
)
def test_bad_input_fails_checks_and_nothing_downstream_is_built_or_overwritten(tmp_path, slice_csv, case):
    resources = pipeline_resources(tmp_path, slice_csv)
    instance = dg.DagsterInstance.ephemeral()
    wanted = {"raw_daily_bars", "validated_daily_bars", "features"}  # enough to see blocking downstream
    selection = [a for a in all_assets if {k.to_user_string() for k in a.keys} <= wanted]
    good = dg.materialize(selection, resources=resources, instance=instance)
    assert good.success
    stored = tmp_path / "storage" / "validated_daily_bars"
    good_bytes = stored.read_bytes()

    bad_file = tmp_path / "bad.csv"
    corrupt(pd.read_csv(slice_csv, dtype={"date": str}), case).to_csv(bad_file, index=False)
    bad_resources = {**resources, "market_data": MarketDataResource(source="csv", path=str(bad_file))}
    result = dg.materialize(selection, resources=bad_resources, instance=instance, raise_on_error=False)

    assert not result.success
    assert materialized(result) == {"raw_daily_bars"}
    failed = [e for e in result.get_asset_check_evaluations() if not e.passed and e.severity.value == "ERROR"]
    assert failed
    descriptions = " ".join(e.description or "" for e in failed)
    assert str(bad_file) in descriptions
    if case != "missing_column":
        assert "row 3" in descriptions
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert str(bad_file) in failure.event_specific_data.error.message
    assert stored.read_bytes() == good_bytes  # the last good validated bars are untouched
