"""The Dagster code location: every asset, check, job, schedule and the resources of the chosen deployment."""

from __future__ import annotations

import dagster as dg

from pipelines.jobs import (
    champion_monitoring_job,
    full_pipeline_job,
    hyperparameter_search_job,
    minute_bars_ingestion_job,
    minute_bars_pipeline_job,
    paper_trading_review_job,
    weekly_retraining_job,
)
from pipelines.resources_by_env import resources_for
from pipelines.schedules import (
    champion_monitoring_schedule,
    paper_trading_review_schedule,
    weekly_retraining_schedule,
)
from pipelines.sensors import champion_degradation_sensor, intraday_sessions_sensor, new_market_data_sensor
from trading_assets import (
    comparison,
    data_quality,
    evaluation,
    execution_quality,
    features,
    ingestion,
    intraday,
    learning,
    monitoring,
    paper_trading,
    regimes,
    sectors,
    selection,
    sizing,
    training,
    tuning,
    validation,
)

all_assets = dg.load_assets_from_modules(
    [
        ingestion,
        validation,
        features,
        regimes,
        sectors,
        learning,
        training,
        selection,
        sizing,
        evaluation,
        comparison,
        execution_quality,
        tuning,
        monitoring,
        paper_trading,
        data_quality,
        intraday,
    ]
)

defs = dg.Definitions(
    assets=all_assets,
    jobs=[
        full_pipeline_job,
        weekly_retraining_job,
        champion_monitoring_job,
        hyperparameter_search_job,
        paper_trading_review_job,
        minute_bars_ingestion_job,
        minute_bars_pipeline_job,
    ],
    schedules=[weekly_retraining_schedule, champion_monitoring_schedule, paper_trading_review_schedule],
    sensors=[new_market_data_sensor, champion_degradation_sensor, intraday_sessions_sensor],
    resources=resources_for(),
)
