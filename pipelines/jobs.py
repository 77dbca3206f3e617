"""Jobs over the asset graph."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, timedelta

import dagster as dg
import pandas as pd

from resources.state_home import RETRAINING_TAGS

RETRAINING_TIMEZONE = "America/New_York"

# One partition per week of data: its key is the week's last trading day, the cutoff its run retrains on. The
# new-data sensor (and `make run`) add each week once it has ended, so the set ends at the source's last bar.
RETRAINING_WEEKS = dg.DynamicPartitionsDefinition(name="retraining_weeks")


def retraining_week_keys(bar_dates: Iterable, today: date) -> list[str]:
    """The partition keys of the bars' dates, oldest first: the last trading day of every week (Monday to
    Sunday) that holds a bar and ended before ``today``, so a week still in progress is no partition yet."""
    days = pd.to_datetime(pd.Series(list(bar_dates)), errors="coerce").dropna().dt.normalize()
    if days.empty:
        return []
    week_end = days + pd.to_timedelta(6 - days.dt.dayofweek, unit="D")  # the Sunday closing each bar's week
    last_days = days[week_end.dt.date < today].groupby(week_end).max()
    return sorted(day.date().isoformat() for day in last_days)


def _week_of(key: str) -> date:
    """The Sunday closing the week of a partition key."""
    day = date.fromisoformat(key)
    return day + timedelta(days=6 - day.weekday())


def week_partition_changes(known: Iterable[str], keys: Iterable[str]) -> tuple[list[str], list[str]]:
    """The partitions to add and to delete so that the known ones become ``keys``' weeks: a new week is added,
    and a week whose bars arrived after it had become a partition moves to its new last trading day. Weeks
    the source no longer holds stay: their runs are history."""
    known_by_week = {_week_of(key): key for key in known}
    add = [key for key in keys if known_by_week.get(_week_of(key)) != key]
    delete = [known_by_week[_week_of(key)] for key in add if _week_of(key) in known_by_week]
    return add, delete


def retraining_week_requests(instance: dg.DagsterInstance, bar_dates: Iterable, today: date) -> list:
    """The dynamic-partition requests that bring the instance's week partitions up to ``bar_dates``."""
    known = instance.get_dynamic_partitions(RETRAINING_WEEKS.name)
    add, delete = week_partition_changes(known, retraining_week_keys(bar_dates, today))
    requests = [RETRAINING_WEEKS.build_delete_request(delete)] if delete else []
    return requests + ([RETRAINING_WEEKS.build_add_request(add)] if add else [])


def apply_partition_requests(instance: dg.DagsterInstance, requests: Iterable) -> None:
    """Carry out dynamic-partition requests here, as the daemon does with a sensor's."""
    for request in requests:
        if isinstance(request, dg.AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        else:
            for key in request.partition_keys:
                instance.delete_dynamic_partition(request.partitions_def_name, key)


def _week_cutoff_config(partition_key: str) -> dict:
    """A week's run reads the bars up to its key, the week's last trading day: each week adds new bars."""
    return {"ops": {"raw_daily_bars": {"config": {"as_of": partition_key}}}}


weekly_data_cutoff = dg.PartitionedConfig(
    partitions_def=RETRAINING_WEEKS, run_config_for_partition_key_fn=_week_cutoff_config
)


# Monitoring and the paper-trading review run on their own schedules, the hyperparameter search on demand, the
# minute-bar agent in its own jobs; none belongs to a retraining run.
PIPELINE_SELECTION = dg.AssetSelection.all() - dg.AssetSelection.groups(
    "monitoring", "tuning", "paper_trading", "intraday"
)
# The executor comparison studies minute bars the retraining never trains on: a full run shows it, a weekly
# retraining does not repeat it.
RETRAINING_SELECTION = PIPELINE_SELECTION - dg.AssetSelection.groups("execution")

# Both retraining jobs carry the retraining tag: the instance's run queue (resources/state_home.py) starts one
# such run at a time, since their stored values and the registry's aliases are shared between runs.
full_pipeline_job = dg.define_asset_job(
    name="full_pipeline",
    selection=PIPELINE_SELECTION,
    description="Raw bars to validated data, features, training, registration, backtest and promotion.",
    tags=RETRAINING_TAGS,
)

weekly_retraining_job = dg.define_asset_job(
    name="weekly_retraining",
    selection=RETRAINING_SELECTION,
    config=weekly_data_cutoff,
    description="One partition per week of data (key: the week's last trading day): retrain on the bars up to it, "
    "register, backtest and gate promotion. Backfill old weeks to see how the recipe would have fared.",
    tags=RETRAINING_TAGS,
)

# Named apart from the asset it materializes: a job and an op may not share a name in one code location.
champion_monitoring_job = dg.define_asset_job(
    name="monitor_champion",
    selection=dg.AssetSelection.groups("monitoring"),
    description="Feature drift and performance decay of the model holding alias champion.",
)

hyperparameter_search_job = dg.define_asset_job(
    name="hyperparameter_search",
    selection=dg.AssetSelection.groups("tuning"),
    description="Optional: Optuna search of one agent's hyperparameters on validation (trials count for the DSR).",
)

paper_trading_review_job = dg.define_asset_job(
    name="paper_trading_review",
    selection=dg.AssetSelection.groups("paper_trading"),
    description="Sessions recorded by paper trading, fill reconciliation against the simulator, and the A/B test.",
)

# Minute bars: one run per exchange session validates its bars (partitioned), then the agent's job reads them all.
MINUTE_SESSION_SELECTION = dg.AssetSelection.assets("raw_minute_bars", "validated_minute_bars")

minute_bars_ingestion_job = dg.define_asset_job(
    name="minute_bars_ingestion",
    selection=MINUTE_SESSION_SELECTION,
    description="One partition per exchange session: the session's minute bars, validated by the intraday rules.",
)

minute_bars_pipeline_job = dg.define_asset_job(
    name="minute_bars_pipeline",
    selection=dg.AssetSelection.groups("intraday") - MINUTE_SESSION_SELECTION,
    description="Every validated session's minute bars to features, a PPO trained on the training sessions, its "
    "backtest after costs on the test sessions against buy-and-hold, the leaderboard row and the gate.",
)
