"""A registry that explains itself: experiment kind, run names, datasets, named signatures, gate records,
descriptions, model cards, forecaster aliases and the champion-vs-challenger comparison."""

import json
from pathlib import Path

import dagster as dg
import mlflow
import numpy as np
import pandas as pd
import pytest

from resources.mlflow_registry import (
    CHALLENGER_ALIAS,
    CHAMPION_ALIAS,
    EXPERIMENT_KIND_TAG,
    MODEL_CARD_FACTS_FILE,
    MODEL_TRAINING_KIND,
    MlflowRegistryResource,
)
from tests.live_support import LIVE_TICKERS
from trading_assets.comparison import BUY_AND_HOLD, compare_aliases
from trading_assets.reporting import model_card_facts
from trading_assets.training import candidate_run_name, example_at, log_datasets
from trading_core.agents.pyfunc import log_agent_model, observation_names
from trading_core.data.schema import select_window
from trading_core.data.splits import DatasetSplits, apply_split, make_date_split
from trading_core.data.validation import to_validated_bars
from trading_core.evaluation.promotion import GateRecord, GateResult
from trading_core.features.batch import build_features

FORECASTER = "rl_trading_cnn_lstm"


@pytest.fixture()
def registry(tmp_path: Path):
    """A registry in ``tmp_path``, with MLflow's process-wide URIs pointed at it for the test's own runs."""
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    registry = MlflowRegistryResource(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=(tmp_path / "artifacts").as_uri()
    )
    mlflow.set_tracking_uri(registry.tracking_uri)
    mlflow.set_registry_uri(registry.tracking_uri)
    yield registry
    mlflow.set_tracking_uri(previous[0])
    mlflow.set_registry_uri(previous[1])


@pytest.fixture(scope="module")
def frame(dow30_bars: pd.DataFrame) -> pd.DataFrame:
    bars = to_validated_bars(select_window(dow30_bars, LIVE_TICKERS, "2018-01-01", "2019-12-31"))
    return build_features(bars)


def _log_agent(
    live_agent, registry: MlflowRegistryResource, example: pd.DataFrame | None = None
) -> tuple[str, str]:
    policy, spec = live_agent
    with mlflow.start_run(experiment_id=registry.experiment_id()) as run:
        info = log_agent_model(policy, "ppo", spec, example)
    return info.model_uri, run.info.run_id


def test_the_experiment_opens_as_model_training(registry: MlflowRegistryResource):
    experiment = mlflow.MlflowClient(registry.tracking_uri).get_experiment(registry.experiment_id())
    assert experiment.tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND


def test_runs_are_named_and_log_their_datasets_with_hashes(registry: MlflowRegistryResource, frame):
    split = make_date_split(frame["date"], train_end="2018-12-31", validation_end="2019-06-28")
    splits = DatasetSplits(split, **apply_split(frame, split))
    with mlflow.start_run(experiment_id=registry.experiment_id()) as run:
        mlflow.set_tag("mlflow.runName", candidate_run_name("ppo", 42, splits))
        log_datasets(splits)
    logged = mlflow.get_run(run.info.run_id)
    assert logged.info.run_name == f"ppo seed 42 · train {split.train_start.date()}..2018-12-31"
    inputs = logged.inputs.dataset_inputs
    assert len(inputs) == 3
    by_context = {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i for i in inputs}
    assert set(by_context) == {"training", "validation", "test"}
    sha = next(t.value for t in by_context["training"].tags if t.key == "sha256")
    assert len(sha) == 64 and by_context["training"].dataset.digest == sha[:32]


def test_the_signature_names_every_observation_feature(registry: MlflowRegistryResource, live_agent, frame):
    policy, spec = live_agent
    market = spec.market_of(frame[frame["date"] >= "2019-06-03"])
    example = example_at(market, spec.env_spec)
    model_uri, _ = _log_agent(live_agent, registry, example)
    loaded = mlflow.pyfunc.load_model(model_uri)
    names = observation_names(spec.tickers, spec.feature_columns)
    assert loaded.metadata.get_input_schema().input_names() == names
    assert names[:2] == ["cash", f"close_{spec.tickers[0]}"]
    expected, _ = policy.predict(example.to_numpy(dtype=np.float32), deterministic=True)
    np.testing.assert_allclose(loaded.predict(example), expected)


def test_gate_records_descriptions_model_card_and_forecaster_aliases(
    registry: MlflowRegistryResource, live_agent
):
    model_uri, run_id = _log_agent(live_agent, registry)
    forecaster = registry.register(model_uri, run_id, tags={}, model_name=FORECASTER)
    version = registry.register(
        model_uri, run_id, tags={"cnn_lstm_model": f"{FORECASTER}/{forecaster.version}"}
    ).version
    client = mlflow.MlflowClient(registry.tracking_uri)
    registry.set_alias(version, CHALLENGER_ALIAS)
    assert str(client.get_model_version_by_alias(FORECASTER, CHALLENGER_ALIAS).version) == forecaster.version

    policy, spec = live_agent
    facts = {"gate_steps": ["backtest", "stress_tests"], "tickers": list(spec.tickers), "data": "test bars"}
    registry.log_evaluation(run_id, {"test_sharpe": 1.25}, {}, {MODEL_CARD_FACTS_FILE: facts})
    steps = {
        "backtest": (
            GateResult("min_sharpe", True, 1.25, 1.0, "Sharpe 1.25 vs >= 1.00"),
            GateResult("max_drawdown", False, 0.3, 0.15, "drawdown 30% vs <= 15%"),
        ),
        "stress_tests": (GateResult("stress_drawdown_limit", True, 0.1, 0.5, "worst 10%"),),
    }
    for step, checks in steps.items():
        registry.record_gate(GateRecord.of(step, version, "run-x", checks), checks=checks)

    folder = Path(client.download_artifacts(run_id, "evaluation/promotion_gate.json"))
    gate = json.loads(folder.read_text())
    assert [c["check"] for c in gate["checks"]] == ["max_drawdown", "min_sharpe", "stress_drawdown_limit"]
    assert gate["verdict"].startswith("REJECTED: 1 of 3")
    description = client.get_model_version(registry.model_name, version).description
    assert "REJECTED" in description and "test_sharpe: 1.25" in description
    card = Path(client.download_artifacts(run_id, "model_card.md")).read_text()
    for heading in ("## Data", "## Features", "## Costs and fills", "## Risk limits", "## Promotion gate"):
        assert heading in card
    assert "stress_drawdown_limit" in card and "test bars" in card

    registry.set_alias(version, CHAMPION_ALIAS)
    assert str(client.get_model_version_by_alias(FORECASTER, CHAMPION_ALIAS).version) == forecaster.version
    assert f"Champion: v{version}" in client.get_registered_model(registry.model_name).description


def test_learning_curves_are_step_metrics(registry: MlflowRegistryResource, live_agent):
    policy, _ = live_agent
    run_id = registry.log_trial(
        "curve", {}, {}, "test", curves={"train_mean_reward_per_step": list(policy.learning_curve)}
    )
    history = mlflow.MlflowClient(registry.tracking_uri).get_metric_history(
        run_id, "train_mean_reward_per_step"
    )
    assert len(history) == len(policy.learning_curve) > 1


def test_champion_vs_challenger_side_by_side_and_with_an_alias_missing(
    registry: MlflowRegistryResource, live_agent, frame
):
    model_uri, run_id = _log_agent(live_agent, registry)
    start, end = pd.Timestamp("2019-06-03"), pd.Timestamp("2019-09-30")
    first = registry.register(model_uri, run_id, tags={}).version
    registry.set_alias(first, CHALLENGER_ALIAS)
    alone = compare_aliases(registry, frame, start, end)
    assert "no version" in alone.skipped[CHAMPION_ALIAS]
    assert list(alone.table["model"]) == [f"challenger v{first}", BUY_AND_HOLD]

    registry.set_alias(first, CHAMPION_ALIAS)
    second = registry.register(model_uri, run_id, tags={}).version
    registry.set_alias(second, CHALLENGER_ALIAS)
    report = compare_aliases(registry, frame, start, end)
    assert not report.skipped
    assert list(report.table["model"]) == [f"champion v{first}", f"challenger v{second}", BUY_AND_HOLD]
    for column in (
        "sharpe",
        "total_return",
        "max_drawdown",
        "turnover",
        "cost_drag",
        "sharpe_vs_buy_and_hold",
    ):
        assert report.table[column].notna().all()
    # The same weights on the same window trade alike: the comparison is on equal footing.
    pd.testing.assert_series_equal(
        report.equity[f"champion v{first}"], report.equity[f"challenger v{second}"], check_names=False
    )
    assert report.equity[BUY_AND_HOLD].index[0] >= start


def test_the_comparison_asset_reports_what_it_left_out(registry: MlflowRegistryResource, live_agent, frame):
    from trading_assets.comparison import champion_vs_challenger

    split = make_date_split(frame["date"], train_end="2018-12-31", validation_end="2019-06-28")
    splits = DatasetSplits(split, **apply_split(frame, split))

    from resources.mlflow_registry import RegisteredVersion
    from trading_assets.selection import RegisteredCandidate
    from trading_core.agents.zoo import AgentConfig

    run_id = _log_agent(live_agent, registry)[1]
    candidate = RegisteredCandidate(
        RegisteredVersion(registry.model_name, "1", run_id, "models:/unused"),
        "ppo",
        "ppo",
        3,
        AgentConfig("ppo", total_timesteps=256, learning_rate=3e-4),
        dagster_run_id="direct",
        leaderboard_run_id="direct",
    )

    output = champion_vs_challenger(dg.build_asset_context(), candidate, splits, frame, registry)
    assert "no version" in output.metadata["skipped"].value
    assert output.value.table.empty


def test_model_card_facts_name_costs_and_risk_limits(live_agent, frame):
    _, spec = live_agent
    split = make_date_split(frame["date"], train_end="2018-12-31", validation_end="2019-06-28")
    splits = DatasetSplits(split, **apply_split(frame, split))
    facts = model_card_facts(
        "ppo", "ppo", 3, spec.env_spec, splits, spec.feature_columns, "", "abc", ("backtest",)
    )
    assert facts["costs"]["commission"].startswith("PerShareCommission")
    assert facts["risk_limits"]["max_weight"] == spec.env_spec.simulation.risk.max_weight
    assert facts["periods"]["test period"].endswith("2019-12-31")
    json.dumps(facts)  # stored as JSON
