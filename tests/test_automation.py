"""Weekly partitions: one per week of data, cut at its last trading day; sensors add them and ask for retraining
on new data or degradation."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import pandas as pd

from pipelines.definitions import defs
from pipelines.jobs import (
    RETRAINING_WEEKS,
    apply_partition_requests,
    retraining_week_keys,
    week_partition_changes,
    weekly_data_cutoff,
)
from pipelines.schedules import weekly_retraining_schedule
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


def test_week_partitions_end_at_the_sources_last_bar_and_cut_distinct_data():
    bars = MarketDataResource().load_daily_bars().frame  # the sample data: 2000-03-01 .. 2013-03-01
    keys = retraining_week_keys(bars["date"], today=date(2030, 1, 1))
    weeks = pd.to_datetime(bars["date"]).dt.to_period("W-SUN").nunique()
    assert len(keys) == len(set(keys)) == weeks  # one partition per week that holds a bar, none beyond
    assert (keys[0], keys[-1]) == ("2000-03-03", "2013-03-01")
    # A holiday week ends on its last trading day: Thursday before Good Friday 2012.
    assert "2012-04-05" in keys and "2012-04-06" not in keys
    # A week still in progress is no partition yet: on Saturday 2013-03-02 the week ends tomorrow.
    assert retraining_week_keys(bars["date"], today=date(2013, 3, 2))[-1] == "2013-02-22"
    cutoffs = [weekly_data_cutoff.get_run_config_for_partition_key(key) for key in keys[-2:]]
    assert [c["ops"]["raw_daily_bars"]["config"]["as_of"] for c in cutoffs] == ["2013-02-22", "2013-03-01"]


def test_a_week_whose_bars_arrive_late_moves_to_its_new_last_day():
    add, delete = week_partition_changes(
        ["2019-12-20", "2019-12-30"], ["2019-12-20", "2019-12-31", "2020-01-10"]
    )
    assert (add, delete) == (["2019-12-31", "2020-01-10"], ["2019-12-30"])
    assert week_partition_changes(["2019-12-20"], ["2019-12-20"]) == ([], [])


def test_the_weekly_schedule_requests_the_newest_existing_week():
    monday = datetime(2013, 3, 4, 6, 0, tzinfo=ZoneInfo("America/New_York"))
    with dg.instance_for_test() as instance:
        with dg.build_schedule_context(instance=instance, scheduled_execution_time=monday) as context:
            assert isinstance(weekly_retraining_schedule(context), dg.SkipReason)  # no partition yet
            instance.add_dynamic_partitions(RETRAINING_WEEKS.name, ["2013-02-22", "2013-03-01"])
            request = weekly_retraining_schedule(context)
        assert request.partition_key == request.run_key == "2013-03-01"
        assert request.partition_key in instance.get_dynamic_partitions(RETRAINING_WEEKS.name)
    assert request.run_config["ops"]["raw_daily_bars"]["config"]["as_of"] == "2013-03-01"


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


def test_new_data_sensor_adds_each_new_week_and_triggers_once_per_new_bar(
    tmp_path: Path, slice_bars: pd.DataFrame
):
    path = tmp_path / "bars.csv"
    slice_bars[slice_bars["date"] <= "2019-12-27"].to_csv(path, index=False)  # through a Friday
    resource = MarketDataResource(source="csv", path=str(path))
    instance = dg.DagsterInstance.ephemeral()

    def evaluate(cursor: str | None):
        context = dg.build_sensor_context(
            instance=instance, cursor=cursor, resources={"market_data": resource}
        )
        result = new_market_data_sensor(context)
        apply_partition_requests(instance, result.dynamic_partitions_requests or [])
        return result, context.cursor, instance.get_dynamic_partitions(RETRAINING_WEEKS.name)

    first, cursor, weeks = evaluate(None)
    assert not first.run_requests and cursor == "2019-12-27"
    assert "first look" in first.skip_reason.skip_message
    assert weeks == retraining_week_keys(slice_bars["date"][slice_bars["date"] <= "2019-12-27"], date.today())
    assert (weeks[0], weeks[-1]) == ("2015-01-02", "2019-12-27")  # seeded: every week of the file
    unchanged, cursor, same_weeks = evaluate(cursor)
    assert not unchanged.run_requests and same_weeks == weeks
    slice_bars.to_csv(path, index=False)  # the next week's two sessions arrive: 2019-12-30 and 12-31
    request, cursor, new_weeks = evaluate(cursor)
    assert [r.run_key for r in request.run_requests] == ["new-data-through-2019-12-31"]
    assert cursor == "2019-12-31" and new_weeks == [*weeks, "2019-12-31"]


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
