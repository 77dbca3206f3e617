"""Schedules: weekly retraining before the Monday open, daily champion monitoring after the close."""

from __future__ import annotations

import dagster as dg

from pipelines.jobs import (
    RETRAINING_TIMEZONE,
    champion_monitoring_job,
    paper_trading_review_job,
    weekly_retraining_job,
)

# The partitioned config's weeks run Monday 06:00 to Monday 06:00 New York, so the schedule fires Mondays at 06:00
# for the week that just ended.
weekly_retraining_schedule = dg.build_schedule_from_partitioned_job(
    weekly_retraining_job,
    name="weekly_retraining_schedule",
    description="Mondays 06:00 New York: retrain on the data up to the week just ended and gate promotion.",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)

champion_monitoring_schedule = dg.ScheduleDefinition(
    name="champion_monitoring_schedule",
    job=champion_monitoring_job,
    cron_schedule="30 17 * * 1-5",
    execution_timezone=RETRAINING_TIMEZONE,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Weekdays 17:30 New York: check the champion for feature drift and performance decay.",
)

paper_trading_review_schedule = dg.ScheduleDefinition(
    name="paper_trading_review_schedule",
    job=paper_trading_review_job,
    cron_schedule="45 17 * * 1-5",
    execution_timezone=RETRAINING_TIMEZONE,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Weekdays 17:45 New York: reconcile the day's fills and update the champion/challenger A/B test.",
)
