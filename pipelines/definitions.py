"""The Dagster code location: every asset, check, job, schedule and the resources of the chosen deployment."""

from __future__ import annotations

import dagster as dg

from pipelines.jobs import full_pipeline_job, weekly_retraining_job
from pipelines.resources_by_env import resources_for
from pipelines.schedules import weekly_retraining_schedule
from trading_assets import evaluation, features, ingestion, learning, robustness, training, validation

all_assets = dg.load_assets_from_modules(
    [ingestion, validation, features, learning, training, evaluation, robustness]
)

defs = dg.Definitions(
    assets=all_assets,
    jobs=[full_pipeline_job, weekly_retraining_job],
    schedules=[weekly_retraining_schedule],
    resources=resources_for(),
)
