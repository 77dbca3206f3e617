"""Metrics agree with empyrical on the same equity curves."""

from __future__ import annotations

import empyrical
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trading_core.metrics import compute_metrics, daily_returns, value_at_risk, win_rate


@pytest.fixture(scope="module")
def real_equity(slice_bars) -> pd.Series:
    closes = slice_bars.pivot(index="date", columns="tic", values="close")
    return (closes / closes.iloc[0]).mean(axis=1) * 100_000


def assert_matches_empyrical(equity: pd.Series) -> None:
    metrics = compute_metrics(equity)
    returns = daily_returns(equity)
    assert metrics.sharpe == pytest.approx(empyrical.sharpe_ratio(returns), rel=1e-9)
    assert metrics.sortino == pytest.approx(empyrical.sortino_ratio(returns), rel=1e-9)
    assert metrics.max_drawdown == pytest.approx(-empyrical.max_drawdown(returns), rel=1e-9)
    assert metrics.annual_return == pytest.approx(empyrical.annual_return(returns), rel=1e-9)
    assert metrics.calmar == pytest.approx(empyrical.calmar_ratio(returns), rel=1e-9)
    assert metrics.annual_volatility == pytest.approx(empyrical.annual_volatility(returns), rel=1e-9)
    assert metrics.var_95 == pytest.approx(-empyrical.value_at_risk(returns, cutoff=0.05), rel=1e-9)


def test_metrics_match_empyrical_on_real_equity(real_equity):
    assert_matches_empyrical(real_equity)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-0.08, 0.08), min_size=30, max_size=300), st.integers(0, 2**31 - 1))
def test_metrics_match_empyrical_on_random_paths(returns, seed):
    noise = np.random.default_rng(seed).normal(0, 1e-4, len(returns))  # avoid constant series
    equity = pd.Series(
        100.0 * np.cumprod(1 + np.asarray(returns) + noise),
        index=pd.bdate_range("2020-01-01", periods=len(returns)),
    )
    if (daily_returns(equity) < 0).sum() == 0:
        return
    assert_matches_empyrical(equity)


def test_win_rate_and_var_on_known_returns():
    returns = pd.Series([0.01, -0.02, 0.0, 0.03, -0.01])
    assert win_rate(returns) == pytest.approx(0.5)
    assert value_at_risk(pd.Series(np.linspace(-0.05, 0.05, 101))) == pytest.approx(0.045)
