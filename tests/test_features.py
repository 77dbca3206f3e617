"""Features are FinRL's indicators, complete, and strictly causal (truncate-and-compare)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from trading_core.data.schema import feature_columns_of, indicator_columns_of
from trading_core.features.batch import balanced_panel, build_features
from trading_core.features.finrl_adapter import FINRL_INDICATORS


@pytest.fixture(scope="module")
def vix_series(vix_file) -> pd.Series:
    vix = pd.read_csv(vix_file, usecols=["date", "close"], parse_dates=["date"])
    return vix.set_index("date")["close"]


@pytest.fixture(scope="module")
def full_features(slice_bars, vix_series) -> pd.DataFrame:
    return build_features(slice_bars, vix=vix_series)


def test_features_hold_finrl_indicators_turbulence_and_vix_without_gaps(full_features, slice_bars):
    assert indicator_columns_of(full_features) == list(FINRL_INDICATORS)
    assert {"turbulence", "vix"} <= set(feature_columns_of(full_features))
    assert not full_features[feature_columns_of(full_features)].isna().any().any()
    per_date = full_features.groupby("date")["tic"].nunique()
    assert (per_date == slice_bars["tic"].nunique()).all()
    assert full_features["date"].min() > slice_bars["date"].min()  # warm-up dropped, not back-filled


@pytest.mark.parametrize("cut_index", [300, 700, 1000])
def test_no_lookahead_truncated_history_gives_identical_features(
    full_features, slice_bars, vix_series, cut_index
):
    dates = np.sort(slice_bars["date"].unique())
    cutoff = dates[cut_index]
    truncated = build_features(
        slice_bars[slice_bars["date"] <= cutoff], vix=vix_series[vix_series.index <= cutoff]
    )
    columns = feature_columns_of(full_features)
    full_rows = full_features[full_features["date"] <= cutoff].reset_index(drop=True)
    pd.testing.assert_frame_equal(full_rows[["date", "tic", *columns]], truncated[["date", "tic", *columns]])


def test_future_shock_does_not_change_past_features(slice_bars):
    shocked = slice_bars.copy()
    last = shocked["date"].max()
    shocked.loc[shocked["date"] == last, ["open", "high", "low", "close"]] *= 3.0
    base, after = build_features(slice_bars), build_features(shocked)
    columns = feature_columns_of(base)
    before_last = base["date"] < last
    pd.testing.assert_frame_equal(base.loc[before_last, columns], after.loc[after["date"] < last, columns])


def test_balanced_panel_drops_dates_missing_a_ticker(slice_bars):
    gap = slice_bars.drop(index=slice_bars[(slice_bars["tic"] == "KO")].index[5])
    panel = balanced_panel(gap)
    assert panel["date"].nunique() == slice_bars["date"].nunique() - 1


def test_a_missing_bar_costs_only_its_own_ticker_that_date(slice_bars, full_features):
    date = np.sort(full_features["date"].unique())[100]
    gap = slice_bars.drop(index=slice_bars[(slice_bars["tic"] == "KO") & (slice_bars["date"] == date)].index)
    features = build_features(gap)
    assert features["date"].nunique() == build_features(slice_bars)["date"].nunique()
    on_date = features[features["date"] == date]
    assert sorted(on_date["tic"]) == sorted(set(slice_bars["tic"]) - {"KO"})
