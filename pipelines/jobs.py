"""Jobs over the asset graph."""

from __future__ import annotations

from datetime import datetime, timedelta

import dagster as dg

from resources.state_home import RETRAINING_TAGS

RETRAINING_TIMEZONE = "America/New_York"


@dg.weekly_partitioned_config(
    start_date=datetime(2005, 1, 3), day_offset=1, hour_offset=6, timezone=RETRAINING_TIMEZONE
)
def weekly_data_cutoff(start: datetime, end: datetime) -> dict:
    """Each weekly partition retrains on the bars up to the last day of its week (Monday 06:00 to Monday 06:00)."""
    return {"ops": {"raw_daily_bars": {"config": {"as_of": (end - timedelta(days=1)).date().isoformat()}}}}


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
    description="One partition per week: retrain on the data up to the week's end, register, backtest and gate "
    "promotion. Backfill old weeks to see how the recipe would have fared.",
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
