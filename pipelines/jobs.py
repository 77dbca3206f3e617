"""Jobs over the asset graph."""

from __future__ import annotations

import dagster as dg

full_pipeline_job = dg.define_asset_job(
    name="full_pipeline",
    selection=dg.AssetSelection.all(),
    description="Raw bars to validated data, features, training, registration, backtest and promotion.",
)

weekly_retraining_job = dg.define_asset_job(
    name="weekly_retraining",
    selection=dg.AssetSelection.all(),
    description="Refresh and validate the data, then retrain, register, backtest and gate promotion.",
)
