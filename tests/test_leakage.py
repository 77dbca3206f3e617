"""The truncate-and-compare check catches lookahead and passes causal features."""

from __future__ import annotations

import pandas as pd

from trading_core.data.leakage import spread_cutoffs, truncate_and_compare
from trading_core.features.batch import build_features


def test_causal_features_pass(slice_bars):
    cutoffs = spread_cutoffs(slice_bars["date"], count=2)
    assert truncate_and_compare(slice_bars, build_features, cutoffs) == []


def test_centered_window_is_caught(slice_bars):
    def leaking(bars: pd.DataFrame) -> pd.DataFrame:
        frame = bars.sort_values(["tic", "date"]).copy()
        # A centered moving average peeks two days ahead.
        frame["smooth"] = frame.groupby("tic")["close"].transform(
            lambda c: c.rolling(5, center=True, min_periods=1).mean()
        )
        return frame[["date", "tic", "smooth"]]

    cutoffs = spread_cutoffs(slice_bars["date"], count=2)
    findings = truncate_and_compare(slice_bars, leaking, cutoffs)
    assert [f.cutoff for f in findings] == cutoffs
    assert all(f.columns == ("smooth",) and f.max_abs_difference > 0 for f in findings)
