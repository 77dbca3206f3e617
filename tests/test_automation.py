"""Weekly partitions cut the data at their week's end; sensors ask for retraining on new data or degradation."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pandas as pd

from pipelines.definitions import defs
from pipelines.jobs import weekly_data_cutoff
from pipelines.sensors import (
    build_champion_degradation_sensor,
    champion_degradation_sensor,
    degradation_request,
    new_market_data_sensor,
)
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


REGIME_CHANGE = (
    "regime 0 at the end of training (2017-12-29) is regime 1 since 2018-02-05, 38 dates to 2018-03-29 "
    "(lasting: at least 5)"
)


def _regime_metadata(degradation: str = "", regime_change: str = REGIME_CHANGE) -> dict:
    """Metadata of a monitoring run that watches regimes, as champion_monitoring writes it."""
    regime_reason = f"regime change: {regime_change}" if regime_change else ""
    reasons = "; ".join(r for r in (degradation, regime_reason) if r)
    return {
        "retrain_recommended": bool(reasons),
        "reasons": reasons,
        "degradation_reasons": degradation,
        "regime_change": regime_change,
        "regime_change_key": "v3-0-to-1-since-2018-02-05" if regime_change else "",
    }


def test_a_lasting_regime_change_requests_one_retraining_per_change():
    instance = dg.DagsterInstance.ephemeral()
    keys, cursor = [], None
    for _ in range(2):  # two monitoring runs see the same change
        instance.report_runless_asset_event(
            dg.AssetMaterialization("champion_monitoring", metadata=_regime_metadata())
        )
        tick = champion_degradation_sensor.evaluate_tick(
            dg.build_sensor_context(instance=instance, cursor=cursor)
        )
        cursor = tick.cursor
        (request,) = tick.run_requests
        keys.append(request.run_key)
        assert request.tags["trigger"] == "champion_degradation"
        assert request.tags["regime_change"] == REGIME_CHANGE
        assert request.tags["reasons"].startswith("regime change: regime 0 at the end of training")
    # Both ask with the change's run key, which Dagster launches once.
    assert keys == ["champion-regime-change-v3-0-to-1-since-2018-02-05"] * 2


def test_a_regime_change_alone_is_skipped_with_its_reason_when_switched_off():
    metadata = {key: dg.MetadataValue.text(str(value)) for key, value in _regime_metadata().items()}
    metadata["retrain_recommended"] = dg.MetadataValue.bool(True)
    skipped = degradation_request(metadata, "run-1", retrain_on_regime_change=False)
    assert isinstance(skipped, dg.SkipReason)
    assert (
        "retraining on regime changes is off" in skipped.skip_message and "2018-02-05" in skipped.skip_message
    )
    # Drift still asks for retraining with the switch off, keyed by its materialization.
    drifted = {
        key: dg.MetadataValue.text(str(value))
        for key, value in _regime_metadata(degradation="feature drift: 67% of features drifted").items()
    }
    request = degradation_request(drifted, "run-2", retrain_on_regime_change=False)
    assert isinstance(request, dg.RunRequest) and request.run_key == "champion-degraded-run-2"
    assert (
        request.tags["reasons"] == "feature drift: 67% of features drifted"
        and "regime_change" not in request.tags
    )
    # With the switch on, both reasons travel in the tags.
    both = degradation_request(drifted, "run-2")
    assert both.run_key == "champion-degraded-run-2" and both.tags["regime_change"] == REGIME_CHANGE
    assert both.tags["reasons"].startswith("feature drift") and "; regime change: " in both.tags["reasons"]
    quiet = {
        key: dg.MetadataValue.text(str(value)) for key, value in _regime_metadata(regime_change="").items()
    }
    assert (
        degradation_request(quiet, "run-3").skip_message == "champion monitoring found no reason to retrain"
    )


def test_a_switched_off_sensor_keeps_its_name_and_says_so():
    off = build_champion_degradation_sensor(retrain_on_regime_change=False)
    assert off.name == champion_degradation_sensor.name == "champion_degradation_sensor"
    assert "regime change" in champion_degradation_sensor.description
    assert "regime change" not in off.description
    instance = dg.DagsterInstance.ephemeral()
    instance.report_runless_asset_event(
        dg.AssetMaterialization("champion_monitoring", metadata=_regime_metadata())
    )
    tick = off.evaluate_tick(dg.build_sensor_context(instance=instance))
    assert not tick.run_requests and "retraining on regime changes is off" in tick.skip_message
