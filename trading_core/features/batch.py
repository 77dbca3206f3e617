"""Causal features: FinRL's technical indicators (stockstats), turbulence and optional VIX.

FinRL's ``FeatureEngineer.preprocess_data`` ends with ``ffill().bfill()``, which copies future values into the
warm-up rows. This module reuses FinRL's indicator and turbulence code but never back-fills: warm-up dates are
dropped instead, so the value at date t depends only on bars up to t.
"""

from __future__ import annotations

import contextlib
import io

import pandas as pd

from trading_core.data.schema import BASE_COLUMNS, feature_columns_of
from trading_core.features.finrl_adapter import FINRL_INDICATORS, FeatureEngineer


def balanced_panel(bars: pd.DataFrame) -> pd.DataFrame:
    """Keep only dates on which every ticker has a bar (FinRL's environments need a rectangular panel)."""
    tickers = bars["tic"].nunique()
    counts = bars.groupby("date")["tic"].nunique()
    full_dates = counts.index[counts == tickers]
    return bars[bars["date"].isin(full_dates)].sort_values(["date", "tic"], ignore_index=True)


def build_features(
    bars: pd.DataFrame,
    indicators: tuple[str, ...] | list[str] = FINRL_INDICATORS,
    use_turbulence: bool = True,
    vix: pd.Series | None = None,
) -> pd.DataFrame:
    """Add FinRL technical indicators, turbulence and VIX to validated bars, strictly causally.

    :param bars: validated long-format bars with ``date`` as timestamps
    :param indicators: stockstats indicator names (FinRL's ``config.INDICATORS`` by default)
    :param use_turbulence: add FinRL's turbulence index (Mahalanobis distance of today's returns from the
        trailing 252-day history)
    :param vix: VIX close indexed by date; joined as column ``vix`` with the latest value known on each date
    :return: one row per (date, tic), sorted by date then ticker, warm-up dates removed
    """
    panel = balanced_panel(bars.loc[:, list(BASE_COLUMNS)])
    engineer = FeatureEngineer(tech_indicator_list=list(indicators))
    # FinRL prints per-ticker exceptions instead of raising; capture them and fail loudly instead.
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        features = engineer.add_technical_indicator(panel)
    if printed.getvalue().strip():
        raise ValueError(f"stockstats could not compute indicators: {printed.getvalue().strip()}")
    if use_turbulence:
        turbulence = engineer.calculate_turbulence(panel)
        features = features.merge(turbulence, on="date", how="left")
    if vix is not None:
        vix_frame = vix.rename("vix").rename_axis("date").reset_index().sort_values("date")
        features = pd.merge_asof(features.sort_values("date"), vix_frame, on="date", direction="backward")
    feature_columns = feature_columns_of(features)
    features = features.sort_values(["date", "tic"], ignore_index=True)
    incomplete_dates = features.loc[features[feature_columns].isna().any(axis=1), "date"].unique()
    # Warm-up rows (indicator windows not yet filled) are dropped, never back-filled.
    features = features[~features["date"].isin(incomplete_dates)].reset_index(drop=True)
    return features
