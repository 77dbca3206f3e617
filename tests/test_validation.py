"""Data rules: real data passes; each kind of bad input fails its rule and names the rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from trading_core.data.sample import load_sample_daily_bars
from trading_core.data.schema import select_window
from trading_core.data.validation import (
    RULES,
    DataValidationError,
    ValidationConfig,
    blocking_failures,
    to_validated_bars,
    validate_daily_bars,
)


@pytest.fixture()
def raw_slice(dow30_bars: pd.DataFrame) -> pd.DataFrame:
    return select_window(dow30_bars, ["AAPL", "KO"], "2019-01-01", "2019-06-30")


def outcome(outcomes, name):
    return next(o for o in outcomes if o.name == name)


def test_real_slice_passes_every_blocking_rule(raw_slice):
    outcomes = validate_daily_bars(raw_slice)
    assert [o.name for o in outcomes] == list(RULES)
    assert blocking_failures(outcomes) == []


def test_sample_package_data_passes_with_one_real_outlier_warning():
    outcomes = validate_daily_bars(load_sample_daily_bars())
    assert blocking_failures(outcomes) == []
    outliers = outcome(outcomes, "return_outliers")
    assert not outliers.passed and outliers.severity == "WARN"
    assert "2000-09-29 AAPL" in outliers.description  # Apple's real -52% day


def corrupt(frame: pd.DataFrame, case: str) -> pd.DataFrame:
    bad = frame.copy()
    if case == "null":
        bad.loc[3, "open"] = np.nan
    elif case == "negative_price":
        bad.loc[3, "close"] = -1.0
    elif case == "high_below_low":
        bad.loc[3, "high"] = bad.loc[3, "low"] * 0.5
    elif case == "duplicate":
        bad = pd.concat([bad, bad.iloc[[3]]], ignore_index=True)
    elif case == "bad_date":
        bad.loc[3, "date"] = "2019-13-45"
    elif case == "missing_column":
        bad = bad.drop(columns=["volume"])
    elif case == "negative_volume":
        bad.loc[3, "volume"] = -100
    return bad


@pytest.mark.parametrize(
    ("case", "rule", "column"),
    [
        ("null", "no_nulls", "open"),
        ("negative_price", "positive_prices", "close"),
        ("high_below_low", "high_is_max", "high"),
        ("duplicate", "unique_date_tic", "date,tic"),
        ("bad_date", "parseable_sorted_dates", "date"),
        ("missing_column", "required_columns", "volume"),
        ("negative_volume", "non_negative_volume", "volume"),
    ],
)
def test_bad_input_fails_its_rule_and_names_the_rows(raw_slice, case, rule, column):
    outcomes = validate_daily_bars(corrupt(raw_slice, case))
    failed = outcome(outcomes, rule)
    assert failed.blocking
    assert column in (failed.column or "")
    if case != "missing_column":
        assert 3 in failed.failing_rows
        assert "row 3" in failed.description
    error = DataValidationError("bars.csv", blocking_failures(outcomes))
    assert "bars.csv" in str(error) and rule in str(error)


def test_out_of_order_dates_are_reported(raw_slice):
    swapped = raw_slice.copy()
    swapped.loc[[0, 2], "date"] = swapped.loc[[2, 0], "date"].to_numpy()  # AAPL rows 0 and 2 trade places
    failed = outcome(validate_daily_bars(swapped), "parseable_sorted_dates")
    assert failed.blocking and failed.failing_rows


def test_completeness_counts_exchange_sessions(raw_slice):
    aapl_dates = raw_slice.loc[raw_slice["tic"] == "AAPL", "date"]
    dropped = raw_slice.drop(index=aapl_dates.index[10:14])  # 4 of ~124 sessions missing: ~96.8%
    result = outcome(validate_daily_bars(dropped), "completeness")
    assert result.blocking
    assert "AAPL" in result.description and "KO" not in result.description
    assert result.details["completeness_by_ticker"]["KO"] == 1.0
    lenient = outcome(validate_daily_bars(dropped, ValidationConfig(min_completeness=0.95)), "completeness")
    assert lenient.passed


def test_validated_bars_are_typed_and_sorted(raw_slice):
    validated = to_validated_bars(raw_slice.sample(frac=1.0, random_state=0))
    assert pd.api.types.is_datetime64_any_dtype(validated["date"])
    assert validated.equals(validated.sort_values(["date", "tic"], ignore_index=True))
    assert (validated.dtypes[["open", "high", "low", "close", "volume"]] == "float64").all()
