"""Sensors: retrain when the data source has new bars, or when champion monitoring recommends it."""

from __future__ import annotations

import dagster as dg

from pipelines.jobs import full_pipeline_job
from resources.market_data import MarketDataResource

CHAMPION_MONITORING_KEY = dg.AssetKey("champion_monitoring")


@dg.sensor(
    name="new_market_data_sensor",
    job=full_pipeline_job,
    minimum_interval_seconds=3600,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Hourly: when the market-data source holds a bar newer than the last one seen, retrain on it.",
)
def new_market_data_sensor(context: dg.SensorEvaluationContext, market_data: MarketDataResource):
    latest = market_data.latest_bar_date()
    if latest is None:
        return dg.SkipReason("the market-data source holds no bars")
    seen = context.cursor
    context.update_cursor(latest.date().isoformat())
    if seen is None:
        return dg.SkipReason(
            f"first look: newest bar {latest.date()} recorded; the next new bar triggers a run"
        )
    if latest.date().isoformat() <= seen:
        return dg.SkipReason(f"no bar newer than {seen}")
    return dg.RunRequest(
        run_key=f"new-data-through-{latest.date()}",
        tags={"trigger": "new_market_data", "data_through": latest.date().isoformat()},
    )


@dg.asset_sensor(
    name="champion_degradation_sensor",
    asset_key=CHAMPION_MONITORING_KEY,
    job=full_pipeline_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Retrain when champion monitoring finds feature drift or performance decay.",
)
def champion_degradation_sensor(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry):
    materialization = asset_event.asset_materialization
    metadata = materialization.metadata if materialization else {}
    recommended = metadata.get("retrain_recommended")
    if recommended is None or not recommended.value:
        return dg.SkipReason("champion monitoring found no reason to retrain")
    reasons = metadata.get("reasons")
    return dg.RunRequest(
        run_key=f"champion-degraded-{asset_event.run_id}-{asset_event.timestamp}",
        tags={"trigger": "champion_degradation", "reasons": str(reasons.value if reasons else "")[:200]},
    )
