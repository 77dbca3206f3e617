"""The minute-bar jobs end to end on the shared real 15-minute file: the sensor finds its sessions, each session's
bars are validated, and the agent is trained, backtested after costs and gated; bad bars stop it before features."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from pipelines.jobs import MINUTE_SESSION_SELECTION, PIPELINE_SELECTION
from pipelines.sensors import intraday_sessions_sensor
from resources.market_data import MarketDataResource
from tests.conftest import SHARED_DATA, _require
from trading_assets import intraday
from trading_core.evaluation.minute_bars import LEADERBOARD_COLUMNS, MINUTE_CANDIDATE

MINUTE_ASSETS = dg.load_assets_from_modules([intraday])
TICKERS = ["AAPL", "JPM", "MSFT", "SPY", "V", "XLP"]
# A small seeded budget: the job's wiring and figures, not a trained strategy.
TINY_RECIPE = {"total_timesteps": 512, "n_steps": 64, "batch_size": 64, "seed": 7}
PIPELINE = dg.AssetSelection.groups("intraday") - MINUTE_SESSION_SELECTION


def resources(tmp_path: Path, intraday_path: Path, start: str = "2019-01-22") -> dict[str, object]:
    market_data = MarketDataResource(
        intraday_path=str(intraday_path),
        intraday_timeframe="15Min",
        tickers=TICKERS,
        start_date=start,
        end_date="2019-02-15",
    )
    return {
        "market_data": market_data,
        "io_manager": dg.FilesystemIOManager(base_dir=str(tmp_path / "storage")),
    }


def ingest(instance: dg.DagsterInstance, resources: dict[str, object]) -> list[dg.ExecuteInProcessResult]:
    """What the sensor asks for: each new session added as a partition and materialized in its own run."""
    context = dg.build_sensor_context(instance=instance, resources=resources)
    result = intraday_sessions_sensor(context)
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return [
        dg.materialize(
            MINUTE_ASSETS,
            selection=MINUTE_SESSION_SELECTION,
            partition_key=run.partition_key,
            resources=resources,
            instance=instance,
            raise_on_error=False,
        )
        for run in result.run_requests
    ]


def test_the_minute_job_trains_backtests_and_gates_on_real_15_minute_bars(tmp_path):
    data = _require(SHARED_DATA / "intraday_15min_us_equities_2019.csv.gz")
    instance = dg.DagsterInstance.ephemeral()
    res = resources(tmp_path, data)
    runs = ingest(instance, res)
    assert len(runs) == 19 and all(run.success for run in runs)  # 2019-01-22 .. 2019-02-15
    assert isinstance(
        intraday_sessions_sensor(dg.build_sensor_context(instance=instance, resources=res)), dg.SkipReason
    )

    result = dg.materialize(
        MINUTE_ASSETS,
        selection=PIPELINE,
        resources=res,
        instance=instance,
        run_config={"ops": {"minute_agent": {"config": TINY_RECIPE}}},
    )
    assert result.success
    features = result.asset_value("minute_features")
    assert {"macd", "rsi_30", "ms_realized_vol", "ms_amihud", "ms_cs_spread", "ms_ar_spread"} <= set(features)
    assert "turbulence" not in features
    splits = result.asset_value("minute_dataset_splits")
    assert splits.train["date"].max() < splits.validation["date"].min() <= splits.validation["date"].max()
    assert splits.validation["date"].max() < splits.test["date"].min()
    # Whole sessions: 19 - int(19 * 0.6) - int(19 * 0.2) test the agent.
    assert splits.test["date"].dt.normalize().nunique() == 5

    report = result.asset_value("minute_backtest")
    board = report.leaderboard
    assert list(board.columns) == list(LEADERBOARD_COLUMNS)
    assert list(board["candidate"]) == [MINUTE_CANDIDATE, "equal_weight_buy_and_hold"]
    agent = board.iloc[0]
    assert agent["bar_minutes"] == 15 and agent["periods_per_year"] == 252 * 26
    assert agent["test_bars"] == splits.test["date"].nunique()
    assert agent["test_sharpe"] == pytest.approx(report.test.metrics.sharpe)
    assert agent["sharpe_vs_buy_and_hold"] == pytest.approx(
        report.test.metrics.sharpe - report.test.benchmark_metrics.sharpe
    )
    # Annualised over intraday bars: the daily convention would understate the Sharpe by sqrt(26).
    returns = report.test.equity.pct_change().dropna()
    assert agent["test_sharpe"] == pytest.approx(returns.mean() / returns.std() * (252 * 26) ** 0.5)
    assert report.test.total_cost > 0 and agent["test_turnover"] > 0
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(checks) == set(intraday.MINUTE_GATE_CHECKS)
    by_name = {g.name: g for g in report.gate}
    assert checks["minute_min_sharpe"].passed == (agent["test_sharpe"] >= 1.0) == by_name["min_sharpe"].passed
    assert checks["minute_beats_buy_and_hold"].passed == (agent["sharpe_vs_buy_and_hold"] > 0)


def test_bad_minute_bars_stop_the_job_before_features(tmp_path):
    source = pd.read_csv(_require(SHARED_DATA / "intraday_15min_us_equities_2019.csv.gz"))
    source = source[source["tic"].isin(TICKERS) & (source["datetime"] >= "2019-02-11")]
    # Synthetic corruption of real bars: one high below its close on 2019-02-13.
    row = source.index[(source["datetime"] == "2019-02-13 10:30:00") & (source["tic"] == "MSFT")][0]
    source.loc[row, "high"] = source.loc[row, "close"] - 1.0
    path = tmp_path / "synthetic_broken_15min.csv"
    source.to_csv(path, index=False)
    instance = dg.DagsterInstance.ephemeral()
    res = resources(tmp_path, path, start="2019-02-11")
    runs = {run.dagster_run.tags["dagster/partition"]: run for run in ingest(instance, res)}
    failed = [day for day, run in runs.items() if not run.success]
    assert failed == ["2019-02-13"]
    failure = runs["2019-02-13"].failure_data_for_node("validated_minute_bars")
    message = failure.error.message.strip().splitlines()
    assert f"{path} session 2019-02-13: high_is_max: high below open or close" in message[-1]
    assert "(2019-02-13 10:30 MSFT)" in message[-1]

    result = dg.materialize(
        MINUTE_ASSETS, selection=PIPELINE, resources=res, instance=instance, raise_on_error=False
    )
    assert not result.success
    assert result.get_asset_materialization_events() == []
    error = result.failure_data_for_node("minute_features").error.message.strip()
    assert error.endswith(
        "validated_minute_bars: session(s) 2019-02-13 have no validated bars (validation failed or never ran): "
        "materialize them with minute_bars_ingestion first"
    )


def test_without_an_intraday_source_the_minute_job_is_skipped_with_the_reason(tmp_path):
    res = {
        "market_data": MarketDataResource(),
        "io_manager": dg.FilesystemIOManager(base_dir=str(tmp_path / "storage")),
    }
    instance = dg.DagsterInstance.ephemeral()
    skipped = intraday_sessions_sensor(dg.build_sensor_context(instance=instance, resources=res))
    assert "no intraday source" in skipped.skip_message
    result = dg.materialize(MINUTE_ASSETS, selection=PIPELINE, resources=res, instance=instance)
    assert result.success and result.get_asset_materialization_events() == []
    logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any("minute_features skipped: no intraday source" in message for message in logs)


def test_the_retraining_jobs_leave_the_minute_assets_out():
    from pipelines.definitions import all_assets

    keys = {key.to_user_string() for key in PIPELINE_SELECTION.resolve(all_assets)}
    assert {"raw_daily_bars", "backtest"} <= keys
    assert not keys & {"raw_minute_bars", "validated_minute_bars", "minute_features", "minute_backtest"}
