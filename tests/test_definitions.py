"""The code location loads with the whole graph, its checks, jobs and the weekly schedule."""

from __future__ import annotations

import os

import dagster as dg

from tests.test_pipeline import ALL_ASSET_NAMES


def test_definitions_load_with_full_graph():
    from pathlib import Path

    from pipelines.definitions import defs

    dg.Definitions.validate_loadable(defs)  # what `dagster dev` does: names unique across jobs and ops
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert keys == ALL_ASSET_NAMES | {
        "tuned_hyperparameters",
        "champion_monitoring",
        "paper_trading_sessions",
        "fill_reconciliation",
        "ab_test",
        "data_quality_history",
        # Issue 13's minute-bar jobs (group intraday).
        "raw_minute_bars",
        "validated_minute_bars",
        "minute_features",
        "minute_dataset_splits",
        "minute_agent",
        "minute_backtest",
    }
    check_names = {key.name for key in graph.asset_check_keys}
    assert {"no_nulls", "completeness", "return_outliers", "min_sharpe", "beats_buy_and_hold"} <= check_names
    assert defs.resolve_job_def("full_pipeline") is not None
    schedule = defs.resolve_schedule_def("weekly_retraining_schedule")
    assert schedule.cron_schedule == "0 6 * * 1"
    assert schedule.job_name == "weekly_retraining"
    assert (Path(os.environ["RL_TRADING_HOME"]) / "dagster" / "dagster.yaml").exists()


def test_workspace_yaml_points_at_the_definitions():
    import yaml

    from resources.state_home import PROJECT_ROOT

    workspace = yaml.safe_load((PROJECT_ROOT / "workspace.yaml").read_text())
    module = workspace["load_from"][0]["python_module"]["module_name"]
    loaded = dg.Definitions.merge(__import__(module, fromlist=["defs"]).defs)
    assert loaded.resolve_asset_graph().get_all_asset_keys()


def test_run_pipeline_prints_a_readable_summary(monkeypatch, capsys):
    from pipelines import run_pipeline

    monkeypatch.setenv("DAGSTER_HOME", os.environ["RL_TRADING_HOME"])  # restored after the test
    exit_code = run_pipeline.main(
        ["--timesteps", "256", "--seed", "5", "--walk-forward-timesteps", "256", "--zoo-timesteps", "256"]
    )
    summary = capsys.readouterr().out
    assert exit_code == 0, summary
    for expected in (
        "Data source : bokeh-sampledata daily OHLCV",
        "Tickers     : AAPL, GOOG, IBM, MSFT",
        "Data checks : 11 passed, 1 failed",
        "Coverage    : AAPL 2000-",
        "GOOG 2004-08-19..2013-03-01 (late listing)",
        "Leaderboard : every candidate after costs, ranked on validation",
        "equal_weight_buy_and_hold",
        "hierarchical_risk_parity",
        "validation picks ",
        "Model       : rl_trading_agent version",
        "(validation's pick from the leaderboard)",
        "risk states: ",
        "p25_beats_allocator",
        "buy & hold",
        "Promotion gate (",
        "stress_drawdown_limit",
        "Walk-forward:",
        "Seed variance (",
        "seed_p25_sharpe",
        "Attribution :",
        "Environment : fast engine",
        "Forecaster  : CNN+LSTM rl_trading_cnn_lstm v1",
        "Verdict     :",
        "Candidates  : gate verdict per candidate",
        "weighted_ensemble",
        "rolling_selection",
        "Ensemble    : rl_trading_ensemble",
        "Regimes     : 2-state HMM",
        "test Sharpe per regime (calm first)",
        "Sectors     : 4 tickers in 1 sectors (Information Technology 4)",
        "sector_momentum test Sharpe",
        "Sizing      : equal_weight: best ",
        "ppo_recipe: best ",
        "Execution   : ",
        "Start mode  : weekly retraining would use ",
        "dagster dev -w workspace.yaml",
        "mlflow ui --backend-store-uri",
    ):
        assert expected in summary

    # `make paper` on what `make run` registered: the CNN+LSTM agent (no champion: the challenger, said aloud)
    # replays the default data over its test period on the local broker.
    from pipelines import paper_trading

    assert paper_trading.main(["--monitor-port", "-1", "--max-bars", "40", "--challenger-alias", ""]) == 0
    paper = capsys.readouterr().out
    assert "trading version 1, which holds 'challenger'" in paper or "('champion')" in paper
    assert "decisions 40" in paper and "on the local broker" in paper
