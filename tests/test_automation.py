"""Weekly partitions cut the data at their week's end; sensors ask for retraining on new data or degradation."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pandas as pd

from pipelines.definitions import defs
from pipelines.jobs import weekly_data_cutoff
from pipelines.sensors import champion_degradation_sensor, new_market_data_sensor
from resources.market_data import MarketDataResource
from trading_assets.ingestion import raw_daily_bars


def test_weekly_schedule_runs_mondays_before_the_open_on_the_partitioned_job():
    schedule = defs.resolve_schedule_def("weekly_retraining_schedule")
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("0 6 * * 1", "America/New_York")
    job = defs.resolve_job_def("weekly_retraining")
    assert job.partitions_def is not None
    assert schedule.job_name == "weekly_retraining"


def test_partition_config_cuts_data_at_the_weeks_end():
    partitions = weekly_data_cutoff.partitions_def
    key = "2010-06-07"  # a Monday: the week 2010-06-07 06:00 .. 2010-06-14 06:00
    assert partitions.has_partition_key(key)
    config = weekly_data_cutoff.get_run_config_for_partition_key(key)
    assert config["ops"]["raw_daily_bars"]["config"]["as_of"] == "2010-06-13"


def test_raw_bars_respect_as_of(slice_csv):
    resource = MarketDataResource(source="csv", path=str(slice_csv))
    result = dg.materialize(
        [raw_daily_bars],
        resources={"market_data": resource},
        run_config={"ops": {"raw_daily_bars": {"config": {"as_of": "2019-06-30"}}}},
    )
    frame = result.asset_value("raw_daily_bars").frame
    assert pd.to_datetime(frame["date"]).max() <= pd.Timestamp("2019-06-30")
    assert pd.to_datetime(frame["date"]).max() >= pd.Timestamp("2019-06-24")  # the week's bars are in
    too_early = dg.materialize(
        [raw_daily_bars],
        resources={"market_data": resource},
        run_config={"ops": {"raw_daily_bars": {"config": {"as_of": "1990-01-01"}}}},
        raise_on_error=False,
    )
    assert not too_early.success


def test_new_data_sensor_triggers_once_per_new_bar(tmp_path: Path, slice_bars: pd.DataFrame):
    path = tmp_path / "bars.csv"
    dates = sorted(slice_bars["date"].unique())
    slice_bars[slice_bars["date"] <= dates[-2]].to_csv(path, index=False)
    resource = MarketDataResource(source="csv", path=str(path))
    instance = dg.DagsterInstance.ephemeral()

    def evaluate(cursor: str | None):
        context = dg.build_sensor_context(
            instance=instance, cursor=cursor, resources={"market_data": resource}
        )
        return new_market_data_sensor(context), context.cursor

    first, cursor = evaluate(None)
    assert isinstance(first, dg.SkipReason) and cursor == pd.Timestamp(dates[-2]).date().isoformat()
    unchanged, cursor = evaluate(cursor)
    assert isinstance(unchanged, dg.SkipReason)
    slice_bars.to_csv(path, index=False)  # one more session arrives
    request, cursor = evaluate(cursor)
    assert isinstance(request, dg.RunRequest)
    assert request.run_key == f"new-data-through-{pd.Timestamp(dates[-1]).date()}"
    assert cursor == pd.Timestamp(dates[-1]).date().isoformat()


def _monitoring_materialization(instance: dg.DagsterInstance, retrain: bool) -> None:
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            "champion_monitoring",
            metadata={
                "retrain_recommended": retrain,
                "reasons": "feature drift in rsi_30" if retrain else "",
            },
        )
    )


def test_degradation_sensor_requests_retraining_only_when_monitoring_recommends_it():
    instance = dg.DagsterInstance.ephemeral()

    def tick(cursor: str | None):
        context = dg.build_sensor_context(instance=instance, cursor=cursor)
        data = champion_degradation_sensor.evaluate_tick(context)
        return data, data.cursor

    _monitoring_materialization(instance, retrain=False)
    healthy, cursor = tick(None)
    assert not healthy.run_requests
    _monitoring_materialization(instance, retrain=True)
    degraded, cursor = tick(cursor)
    assert len(degraded.run_requests) == 1
    assert degraded.run_requests[0].tags["trigger"] == "champion_degradation"
    again, _ = tick(cursor)
    assert not again.run_requests  # the same materialization never triggers twice
