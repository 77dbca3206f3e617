"""Schedules: weekly retraining before the Monday open."""

from __future__ import annotations

import dagster as dg

from pipelines.jobs import weekly_retraining_job

weekly_retraining_schedule = dg.ScheduleDefinition(
    name="weekly_retraining_schedule",
    job=weekly_retraining_job,
    cron_schedule="0 6 * * 1",
    execution_timezone="America/New_York",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Mondays 06:00 New York: retrain on the latest data and gate promotion of the new version.",
)
