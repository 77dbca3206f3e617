"""Sensors: add each ended week of bars as a retraining partition; retrain when the data source has new bars, or
when champion monitoring recommends it (feature drift, performance decay, or a market regime change that lasted)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from zoneinfo import ZoneInfo

import dagster as dg
import pandas as pd

from pipelines.jobs import (
    RETRAINING_TIMEZONE,
    full_pipeline_job,
    minute_bars_ingestion_job,
    retraining_week_requests,
)
from resources.market_data import MarketDataResource
from trading_assets.intraday import INTRADAY_SESSIONS, intraday_source_missing
from trading_core.data.intraday import session_days

CHAMPION_MONITORING_KEY = dg.AssetKey("champion_monitoring")


@dg.sensor(
    name="new_market_data_sensor",
    job=full_pipeline_job,
    minimum_interval_seconds=3600,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Hourly: adds each ended week of bars as a partition of weekly_retraining, and when the "
    "market-data source holds a bar newer than the last one seen, retrains on it.",
)
def new_market_data_sensor(context: dg.SensorEvaluationContext, market_data: MarketDataResource):
    dates = pd.to_datetime(market_data.load_daily_bars().frame["date"], errors="coerce").dropna()
    if dates.empty:
        return dg.SkipReason("the market-data source holds no bars")
    today = datetime.now(ZoneInfo(RETRAINING_TIMEZONE)).date()
    weeks = retraining_week_requests(context.instance, dates, today)
    request = _new_bar_request(context, pd.Timestamp(dates.max()).date())
    if isinstance(request, dg.SkipReason):
        added = sum(len(r.partition_keys) for r in weeks if isinstance(r, dg.AddDynamicPartitionsRequest))
        note = f"; {added} week partition(s) added" if added else ""
        return dg.SensorResult(skip_reason=f"{request.skip_message}{note}", dynamic_partitions_requests=weeks)
    return dg.SensorResult(run_requests=[request], dynamic_partitions_requests=weeks)


def _new_bar_request(context: dg.SensorEvaluationContext, latest: date) -> dg.RunRequest | dg.SkipReason:
    """A retraining run when ``latest`` is newer than the bar the cursor last saw (the cursor moves to it)."""
    seen = context.cursor
    context.update_cursor(latest.isoformat())
    if seen is None:
        return dg.SkipReason(f"first look: newest bar {latest} recorded; the next new bar triggers a run")
    if latest.isoformat() <= seen:
        return dg.SkipReason(f"no bar newer than {seen}")
    return dg.RunRequest(
        run_key=f"new-data-through-{latest}",
        tags={"trigger": "new_market_data", "data_through": latest.isoformat()},
    )


def _text(metadata: Mapping[str, dg.MetadataValue], key: str) -> str:
    entry = metadata.get(key)
    return str(entry.value) if entry is not None and entry.value is not None else ""


def degradation_request(
    metadata: Mapping[str, dg.MetadataValue],
    event_key: str,
    retrain_on_regime_change: bool = True,
) -> dg.RunRequest | dg.SkipReason:
    """What one champion-monitoring materialization asks for: a retraining run for feature drift or performance
    decay, or for a lasting regime change when ``retrain_on_regime_change``; a skip that says why otherwise.

    A run for drift or decay is keyed by the materialization, so each recommendation asks once. A run for a
    regime change alone is keyed by the change (``regime_change_key``: the champion and the switch), so the
    monitoring runs that keep seeing the same change ask for one retraining, not one each.

    :param metadata: the materialization's metadata (``retrain_recommended``, ``reasons``, and from monitoring
        that watches regimes ``degradation_reasons``, ``regime_change`` and ``regime_change_key``)
    :param event_key: unique to the materialization (its run id and timestamp)
    :param retrain_on_regime_change: whether a lasting regime change alone requests retraining
    """
    regime_change = _text(metadata, "regime_change")
    if "degradation_reasons" in metadata:
        degradation = _text(metadata, "degradation_reasons")
    else:  # monitoring that does not watch regimes: every reason it gives is drift or decay
        recommended = metadata.get("retrain_recommended")
        degradation = _text(metadata, "reasons") if recommended is not None and recommended.value else ""
    regime_reason = f"regime change: {regime_change}" if regime_change and retrain_on_regime_change else ""
    if not degradation and not regime_reason:
        if regime_change:
            return dg.SkipReason(
                f"regime change ({regime_change}) seen, but retraining on regime changes is off; "
                "no feature drift or performance decay"
            )
        return dg.SkipReason("champion monitoring found no reason to retrain")
    reasons = "; ".join(reason for reason in (degradation, regime_reason) if reason)
    tags = {"trigger": "champion_degradation", "reasons": reasons[:200]}
    if regime_reason:
        tags["regime_change"] = regime_change[:200]
    if degradation:
        return dg.RunRequest(run_key=f"champion-degraded-{event_key}", tags=tags)
    change_key = _text(metadata, "regime_change_key") or event_key
    return dg.RunRequest(run_key=f"champion-regime-change-{change_key}", tags=tags)


def build_champion_degradation_sensor(retrain_on_regime_change: bool = True) -> dg.SensorDefinition:
    """The sensor that retrains when champion monitoring finds drift, decay or (when on) a lasting regime change.

    :param retrain_on_regime_change: whether a lasting regime change alone requests retraining (it is always
        recorded by monitoring)
    """

    @dg.asset_sensor(
        name="champion_degradation_sensor",
        asset_key=CHAMPION_MONITORING_KEY,
        job=full_pipeline_job,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Retrain when champion monitoring finds feature drift or performance decay"
        + (", or a regime change that lasted." if retrain_on_regime_change else "."),
    )
    def champion_degradation_sensor(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry):
        materialization = asset_event.asset_materialization
        metadata = materialization.metadata if materialization else {}
        return degradation_request(
            metadata, f"{asset_event.run_id}-{asset_event.timestamp}", retrain_on_regime_change
        )

    return champion_degradation_sensor


champion_degradation_sensor = build_champion_degradation_sensor()


@dg.sensor(
    name="intraday_sessions_sensor",
    job=minute_bars_ingestion_job,
    minimum_interval_seconds=3600,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Hourly: adds each exchange session the intraday source holds as a partition of the minute bars "
    "and asks for its ingestion run.",
)
def intraday_sessions_sensor(context: dg.SensorEvaluationContext, market_data: MarketDataResource):
    reason = intraday_source_missing(market_data)
    if reason is not None:
        return dg.SkipReason(reason)
    known = set(context.instance.get_dynamic_partitions(INTRADAY_SESSIONS.name))
    new = [day for day in session_days(market_data.load_intraday_bars().frame) if day not in known]
    if not new:
        return dg.SkipReason(f"no session beyond the {len(known)} known")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=f"minute-bars-{day}", partition_key=day) for day in new],
        dynamic_partitions_requests=[INTRADAY_SESSIONS.build_add_request(new)],
    )
