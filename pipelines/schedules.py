"""Schedules: weekly retraining before the Monday open, daily champion monitoring after the close."""

from __future__ import annotations

from datetime import date

import dagster as dg

from pipelines.jobs import (
    RETRAINING_TIMEZONE,
    RETRAINING_WEEKS,
    champion_monitoring_job,
    paper_trading_review_job,
    weekly_data_cutoff,
    weekly_retraining_job,
)

# The start mode the scheduled retraining asks for: ``auto`` warm-starts from the champion when the latest
# walk-forward verdict says warm starts beat training from scratch. Only the schedule asks for it: a backfill of
# an old week keeps the partition's own config (scratch), since today's champion has seen that week's future.
SCHEDULED_START_MODE = "auto"


def weekly_retraining_run_config(partition_key: str) -> dict:
    """The scheduled run's config: the partition's data cutoff, and ``trained_agent`` in the ``auto`` start mode."""
    run_config = weekly_data_cutoff.get_run_config_for_partition_key(partition_key)
    ops = dict(run_config.get("ops", {}))
    trained = dict(ops.get("trained_agent", {}))
    trained["config"] = {**trained.get("config", {}), "start_mode": SCHEDULED_START_MODE}
    return {**run_config, "ops": {**ops, "trained_agent": trained}}


def newest_retraining_week(instance: dg.DagsterInstance, before: date) -> str | None:
    """The newest week partition whose last trading day is before ``before``, ``None`` when there is none."""
    keys = [key for key in instance.get_dynamic_partitions(RETRAINING_WEEKS.name) if key < before.isoformat()]
    return max(keys, default=None)


# Weeks become partitions once they end (new_market_data_sensor adds them), so the schedule fires Mondays at 06:00
# for the newest one: the week just ended when the source has its bars, else the last week the source holds.
@dg.schedule(
    job=weekly_retraining_job,
    cron_schedule="0 6 * * 1",
    execution_timezone=RETRAINING_TIMEZONE,
    name="weekly_retraining_schedule",
    description="Mondays 06:00 New York: retrain on the data up to the newest week the source holds (warm-started "
    "from the champion when the walk-forward verdict says so) and gate promotion; each week once.",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def weekly_retraining_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
    """The run of the newest week partition, with the ``auto`` start mode; its key is the run key, so a week
    the source has not moved past is not retrained twice."""
    key = newest_retraining_week(context.instance, context.scheduled_execution_time.date())
    if key is None:
        return dg.SkipReason(
            f"no week partition of {RETRAINING_WEEKS.name} yet: new_market_data_sensor adds each ended week of bars"
        )
    return dg.RunRequest(run_key=key, partition_key=key, run_config=weekly_retraining_run_config(key))


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
