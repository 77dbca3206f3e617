"""Dated splits are consecutive and never overlap."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trading_core.data.splits import DateSplit, apply_split, make_date_split

DATES = pd.bdate_range("2015-01-01", periods=500)


@given(train=st.floats(0.2, 0.8), validation=st.floats(0.05, 0.15))
def test_fraction_splits_partition_the_dates(train, validation):
    split = make_date_split(DATES, train_fraction=train, validation_fraction=validation)
    frame = pd.DataFrame({"date": DATES, "tic": "X"})
    parts = apply_split(frame, split)
    assert sum(len(p) for p in parts.values()) == len(frame)
    assert parts["train"]["date"].max() < parts["validation"]["date"].min()
    assert parts["validation"]["date"].max() < parts["test"]["date"].min()


def test_explicit_dates_win_over_fractions():
    split = make_date_split(DATES, train_end="2016-01-03", validation_end="2016-06-30")
    assert split.train_end == pd.Timestamp("2016-01-01")  # last date on or before Sunday 2016-01-03
    assert split.validation_start == pd.Timestamp("2016-01-04")
    assert split.test_start == pd.Timestamp("2016-07-01")


def test_overlapping_periods_are_rejected():
    with pytest.raises(ValueError, match="must not overlap"):
        DateSplit(
            *(
                pd.Timestamp(d)
                for d in ["2015-01-01", "2016-01-01", "2015-06-01", "2016-06-01", "2016-07-01", "2017-01-01"]
            )
        )


def test_split_past_the_data_is_rejected():
    with pytest.raises(ValueError, match="empty period"):
        make_date_split(DATES, train_end="2030-01-01")
