"""Features are FinRL's indicators, complete, and strictly causal (truncate-and-compare)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from trading_core.data.schema import feature_columns_of, indicator_columns_of
from trading_core.features.batch import _turbulence, balanced_panel, build_features
from trading_core.features.finrl_adapter import FINRL_INDICATORS, FeatureEngineer


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


def test_turbulence_equals_finrls_own_on_a_ragged_real_panel(dow30_bars):
    # DOW lists in March 2019 and a gap is cut into KO, inside the trailing year FinRL's column filter reads.
    from trading_core.data.schema import select_window
    from trading_core.data.validation import to_validated_bars

    bars = to_validated_bars(
        select_window(dow30_bars, ["AAPL", "DOW", "JPM", "KO"], "2018-06-01", "2020-06-30")
    )
    bars = bars.drop(index=bars[bars["tic"] == "KO"].index[300:305])
    carried = (
        bars.pivot(index="date", columns="tic", values="close")
        .ffill()
        .reset_index()
        .melt(id_vars="date", var_name="tic", value_name="close")
        .dropna()
        .sort_values(["date", "tic"], ignore_index=True)
    )
    expected = FeatureEngineer().calculate_turbulence(carried)
    ours = _turbulence(bars)

    assert (ours["turbulence"] > 0).sum() > 200  # past the warm-up, through the listing and the gap
    pd.testing.assert_series_equal(ours["date"], expected["date"])
    np.testing.assert_allclose(
        ours["turbulence"], expected["turbulence"].astype(float), rtol=1e-9, atol=1e-12
    )


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
