"""Metrics agree with empyrical and quantstats on the same equity curves; new metrics on hand-computed cases.

Library conventions, checked figure by figure (quantstats 0.0.86, empyrical-reloaded 0.7):

- Sharpe, Sortino, annual volatility, CAGR, Calmar, max drawdown: both libraries, zero risk-free rate, 252
  periods. quantstats' Sortino divides the sum of squared negative returns by *all* n returns, which is the same
  downside deviation as empyrical's at ``required_return=0`` (older quantstats releases used other definitions).
- VaR: empyrical only. quantstats' ``value_at_risk`` is the parametric (normal) VaR, a different estimator.
- CVaR: both. quantstats with ``method="historical"`` (its default is parametric); empyrical's index-based tail
  equals it whenever the cut-off return is not tied, which holds for continuous returns.
- Win rate: quantstats only (empyrical has none); both exclude zero returns.
- Probabilistic Sharpe ratio: quantstats (benchmark 0 only) and an independent implementation below.
- Max drawdown duration: quantstats' ``drawdown_details`` counts calendar days from the first to the last day
  under water, so it is compared on the curve relabelled with consecutive calendar dates.
"""

from __future__ import annotations

import warnings

import empyrical
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate
from scipy.stats import norm

from trading_core.evaluation.metrics import (
    PerformanceMetrics,
    compute_metrics,
    conditional_value_at_risk,
    cost_drag,
    daily_returns,
    deflated_sharpe_ratio,
    expected_max_sharpe,
    max_drawdown_duration,
    probabilistic_sharpe_ratio,
    turnover,
    value_at_risk,
    win_rate,
)
from trading_core.market.measures import PERIODS_PER_YEAR

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import quantstats.stats as qs


@pytest.fixture(scope="module")
def real_equity(slice_bars) -> pd.Series:
    closes = slice_bars.pivot(index="date", columns="tic", values="close")
    return (closes / closes.iloc[0]).mean(axis=1) * 100_000


@pytest.fixture(scope="module")
def real_closes(slice_bars) -> pd.DataFrame:
    return slice_bars.pivot(index="date", columns="tic", values="close")


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
    assert metrics.cvar_95 == pytest.approx(
        -empyrical.conditional_value_at_risk(returns, cutoff=0.05), rel=1e-9
    )


def assert_matches_quantstats(equity: pd.Series) -> None:
    metrics = compute_metrics(equity)
    returns = daily_returns(equity)
    assert metrics.sharpe == pytest.approx(qs.sharpe(returns, periods=PERIODS_PER_YEAR), rel=1e-9)
    assert metrics.sortino == pytest.approx(qs.sortino(returns, periods=PERIODS_PER_YEAR), rel=1e-9)
    assert metrics.annual_volatility == pytest.approx(
        qs.volatility(returns, periods=PERIODS_PER_YEAR), rel=1e-9
    )
    # quantstats' CAGR counts years as the number of returns / 252, like annual_return's len(equity) - 1.
    assert metrics.annual_return == pytest.approx(qs.cagr(returns, periods=PERIODS_PER_YEAR), rel=1e-9)
    assert metrics.calmar == pytest.approx(qs.calmar(returns, periods=PERIODS_PER_YEAR), rel=1e-9)
    # From returns quantstats starts the curve at 1.0 (= the first equity value); from prices at the first price.
    assert metrics.max_drawdown == pytest.approx(-qs.max_drawdown(returns), rel=1e-9)
    if equity.min() >= 1:  # quantstats reads a series with values below 1 as returns
        assert metrics.max_drawdown == pytest.approx(-qs.max_drawdown(equity), rel=1e-9)
    assert metrics.cvar_95 == pytest.approx(-qs.cvar(returns, confidence=0.95, method="historical"), rel=1e-9)
    assert metrics.win_rate == pytest.approx(qs.win_rate(returns), rel=1e-12)
    assert metrics.probabilistic_sharpe == pytest.approx(
        qs.probabilistic_sharpe_ratio(returns), rel=1e-9, abs=1e-12
    )


def test_metrics_match_empyrical_on_real_equity(real_equity):
    assert_matches_empyrical(real_equity)


def test_metrics_match_quantstats_on_real_equity(real_equity):
    assert_matches_quantstats(real_equity)


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
    assert_matches_quantstats(equity)


def test_win_rate_and_var_on_known_returns():
    returns = pd.Series([0.01, -0.02, 0.0, 0.03, -0.01])
    assert win_rate(returns) == pytest.approx(0.5)
    assert value_at_risk(pd.Series(np.linspace(-0.05, 0.05, 101))) == pytest.approx(0.045)


def test_old_constructor_calls_still_work_and_new_fields_come_last():
    old = PerformanceMetrics(0.1, 0.05, 0.2, 1.0, 1.5, 0.5, 0.1, 0.55, 0.02, 252)
    assert (
        old.max_drawdown_duration,
        old.cvar_95,
        old.probabilistic_sharpe,
        old.turnover,
        old.cost_drag,
    ) == (
        0,
        0.0,
        0.0,
        0.0,
        0.0,
    )
    assert list(old.as_dict())[9:] == [
        "days",
        "max_drawdown_duration",
        "cvar_95",
        "probabilistic_sharpe",
        "turnover",
        "cost_drag",
    ]


# --- CVaR ---------------------------------------------------------------------------------------------------


def test_cvar_on_known_returns():
    returns = pd.Series(np.linspace(-0.05, 0.05, 101))  # 5% quantile -0.045: the tail is -0.050 ... -0.045
    assert conditional_value_at_risk(returns) == pytest.approx(0.0475)
    assert conditional_value_at_risk(returns, level=0.99) == pytest.approx(0.0495)
    assert conditional_value_at_risk(returns) >= value_at_risk(returns)
    assert conditional_value_at_risk(pd.Series([0.01, 0.02, 0.03])) == 0.0  # a tail of gains is no loss
    assert conditional_value_at_risk(pd.Series([], dtype=float)) == 0.0


def test_cvar_matches_both_libraries_at_other_levels(real_equity):
    returns = daily_returns(real_equity)
    for level in (0.9, 0.99):
        ours = conditional_value_at_risk(returns, level)
        assert ours == pytest.approx(-qs.cvar(returns, confidence=level, method="historical"), rel=1e-9)
        assert ours == pytest.approx(
            -empyrical.conditional_value_at_risk(returns, cutoff=1 - level), rel=1e-9
        )
        assert ours >= value_at_risk(returns, level)


# --- Max drawdown duration -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            [100, 90, 95, 100, 80],
            2,
        ),  # 90, 95 under water, recovered at 100; the open 80 at the end is shorter
        ([100, 99, 98, 97], 3),  # never recovered: counted to the end
        ([1, 2, 1, 1, 1, 2, 3, 2, 2], 3),  # the longest of two spells
        ([1, 2, 1, 1, 1, 3, 2, 2, 2, 2], 4),  # the open spell at the end is the longest
        ([100, 100, 100], 0),  # flat at the peak is not a drawdown
        ([1, 2, 3, 4], 0),
        ([5], 0),
        ([], 0),
    ],
)
def test_max_drawdown_duration_hand_cases(values, expected):
    assert max_drawdown_duration(pd.Series(values, dtype=float)) == expected


def test_max_drawdown_duration_matches_quantstats_on_real_equity(real_equity):
    ours = max_drawdown_duration(real_equity)
    # drawdown_details counts calendar days under water: one calendar day per period makes it count periods.
    relabelled = pd.Series(
        real_equity.to_numpy(), index=pd.date_range("2000-01-01", periods=len(real_equity), freq="D")
    )
    theirs = qs.drawdown_details(qs.to_drawdown_series(relabelled))["days"].max()
    assert ours == theirs
    assert compute_metrics(real_equity).max_drawdown_duration == ours
    assert 0 < ours < len(real_equity)


# --- Turnover and cost drag --------------------------------------------------------------------------------------


def test_turnover_and_cost_drag_hand_computed():
    dates = pd.bdate_range("2021-01-04", periods=4)
    equity = pd.Series([100.0, 200.0, 100.0, 50.0], index=dates)
    notional = pd.Series([0.0, 100.0, 50.0, 0.0], index=dates)  # ratios 0, .5, .5, 0: mean .25
    costs = pd.Series([0.0, 1.0, 0.5, 0.5], index=dates)  # ratios 0, .005, .005, .01: mean .005
    assert turnover(notional, equity) == pytest.approx(0.25 * 252)
    assert cost_drag(costs, equity) == pytest.approx(0.005 * 252)
    # Only the days with trades given: the other days count as no trading.
    assert turnover(notional[notional > 0], equity) == pytest.approx(0.25 * 252)
    metrics = compute_metrics(equity, traded_notional=notional, costs=costs)
    assert (metrics.turnover, metrics.cost_drag) == (pytest.approx(63.0), pytest.approx(1.26))
    assert (compute_metrics(equity).turnover, compute_metrics(equity).cost_drag) == (0.0, 0.0)
    with pytest.raises(ValueError, match="not in the equity index"):
        turnover(pd.Series([1.0], index=[pd.Timestamp("1999-01-01")]), equity)


def test_turnover_and_cost_drag_of_daily_rebalancing_on_real_prices(real_closes):
    """Equal weights rebalanced every close at 10 bps: turnover and cost drag against an explicit loop."""
    prices = real_closes.to_numpy()
    n_assets = prices.shape[1]
    cost_rate = 0.001
    value = 100_000.0
    holdings = value / n_assets / prices[0]
    equity, notional, costs = [value], [0.0], [0.0]
    for day in range(1, len(prices)):
        value = float(holdings @ prices[day])
        target = value / n_assets / prices[day]
        traded = float(np.abs(target - holdings) @ prices[day])
        value -= traded * cost_rate
        holdings = value / n_assets / prices[day]
        equity.append(value)
        notional.append(traded)
        costs.append(traded * cost_rate)
    index = real_closes.index
    equity_s, notional_s, costs_s = (pd.Series(x, index=index) for x in (equity, notional, costs))

    expected_turnover = sum(n / e for n, e in zip(notional, equity, strict=True)) / len(equity) * 252
    expected_drag = sum(c / e for c, e in zip(costs, equity, strict=True)) / len(equity) * 252
    metrics = compute_metrics(equity_s, traded_notional=notional_s, costs=costs_s)
    assert metrics.turnover == pytest.approx(expected_turnover, rel=1e-12)
    assert metrics.cost_drag == pytest.approx(expected_drag, rel=1e-12)
    assert metrics.cost_drag == pytest.approx(cost_rate * metrics.turnover, rel=1e-12)
    assert 0.5 < metrics.turnover < 20  # daily drift of four large caps: a few times the book a year


# --- Probabilistic and deflated Sharpe ratio ---------------------------------------------------------------------


def reference_psr(returns: pd.Series, benchmark_sharpe: float = 0.0) -> float:
    """Bailey & López de Prado (2012) written out from the sample moments, bias-corrected by hand."""
    x = returns.to_numpy(dtype=float)
    n = len(x)
    sr = x.mean() / x.std(ddof=1)
    d = x - x.mean()
    m2, m3, m4 = (d**2).mean(), (d**3).mean(), (d**4).mean()
    skewness = np.sqrt(n * (n - 1)) / (n - 2) * m3 / m2**1.5
    excess = (n - 1) / ((n - 2) * (n - 3)) * ((n + 1) * (m4 / m2**2 - 3) + 6)
    raw_kurtosis = excess + 3
    z = (sr - benchmark_sharpe) * np.sqrt(n - 1) / np.sqrt(1 - skewness * sr + (raw_kurtosis - 1) / 4 * sr**2)
    return float(norm.cdf(z))


def test_psr_matches_reference_and_quantstats_on_real_returns(real_equity):
    returns = daily_returns(real_equity)
    sr = returns.mean() / returns.std()
    for benchmark in (0.0, 0.02, sr / 2, sr, 0.1):
        assert probabilistic_sharpe_ratio(returns, benchmark) == pytest.approx(
            reference_psr(returns, benchmark), rel=1e-10, abs=1e-14
        )
    assert probabilistic_sharpe_ratio(returns) == pytest.approx(
        qs.probabilistic_sharpe_ratio(returns), rel=1e-10
    )
    # Annual Sharpe 1.3 over five years: strong evidence against zero, none against the observed Sharpe itself.
    assert probabilistic_sharpe_ratio(returns) > 0.99
    assert probabilistic_sharpe_ratio(returns, sr) == pytest.approx(0.5)


def test_psr_sanity_properties():
    rng = np.random.default_rng(7)
    returns = pd.Series(rng.normal(0.0005, 0.01, 1000))
    sr = returns.mean() / returns.std()
    assert probabilistic_sharpe_ratio(returns, sr) == pytest.approx(0.5, abs=1e-12)
    # Monotone in the Sharpe ratio: shifting the mean up raises the Sharpe and leaves std, skew, kurtosis alone.
    shifted = [probabilistic_sharpe_ratio(returns + shift) for shift in np.linspace(-0.002, 0.002, 9)]
    assert np.all(np.diff(shifted) > 0)
    # ...and decreasing in the benchmark.
    against = [probabilistic_sharpe_ratio(returns, b) for b in np.linspace(-0.1, 0.1, 9)]
    assert np.all(np.diff(against) < 0)
    assert all(0.0 < p < 1.0 for p in shifted + against)
    # Normal returns: close to the normal-theory value (skew 0, kurtosis 3).
    normal_theory = norm.cdf(sr * np.sqrt(len(returns) - 1) / np.sqrt(1 + sr**2 / 2))
    assert probabilistic_sharpe_ratio(returns) == pytest.approx(normal_theory, abs=0.01)
    # Negative skew and fat tails make the same Sharpe less convincing.
    crashy = pd.Series(np.where(rng.random(1000) < 0.02, -0.05, 0.0015))
    crashy_sr = crashy.mean() / crashy.std()
    assert crashy_sr > 0
    gaussian_psr = norm.cdf(crashy_sr * np.sqrt(999) / np.sqrt(1 + crashy_sr**2 / 2))
    assert probabilistic_sharpe_ratio(crashy) < gaussian_psr
    # Degenerate input carries no evidence.
    assert probabilistic_sharpe_ratio(pd.Series([0.01, 0.01, 0.01, 0.01, 0.01])) == 0.0
    assert probabilistic_sharpe_ratio(pd.Series([0.01, -0.01])) == 0.0


def test_expected_max_sharpe_against_order_statistics_and_paper():
    assert expected_max_sharpe(1, 0.3) == 0.0
    # Bailey & López de Prado (2014), numerical example: N=100, V=1/2 annualised, 250 days -> SR0 ~ 0.1132.
    assert expected_max_sharpe(100, 0.5 / 250) == pytest.approx(0.1132, abs=1e-4)
    for n in (100, 1000):  # the approximation of E[max of n standard normals], exact by numerical integration
        exact, _ = integrate.quad(lambda x, n=n: x * n * norm.pdf(x) * norm.cdf(x) ** (n - 1), -12, 12)
        assert expected_max_sharpe(n, 1.0) == pytest.approx(exact, rel=0.01)
        assert expected_max_sharpe(n, 4.0) == pytest.approx(2 * expected_max_sharpe(n, 1.0))
    with pytest.raises(ValueError):
        expected_max_sharpe(0, 1.0)
    with pytest.raises(ValueError):
        expected_max_sharpe(2, -1.0)


def test_deflated_sharpe_ratio(real_equity):
    returns = daily_returns(real_equity)
    variance = 0.5 / PERIODS_PER_YEAR  # trials' Sharpe ratios spread by sqrt(0.5) a year
    assert deflated_sharpe_ratio(returns, 1, variance) == pytest.approx(
        probabilistic_sharpe_ratio(returns, 0.0)
    )
    deflated = [deflated_sharpe_ratio(returns, n, variance) for n in (1, 2, 10, 100, 1000)]
    assert np.all(np.diff(deflated) < 0)
    assert deflated[-1] < 0.5  # 1.3 a year is no better than the luckiest of 1000 trials with that spread
    assert deflated_sharpe_ratio(returns, 100, 0.0) == pytest.approx(probabilistic_sharpe_ratio(returns))
    sr0 = expected_max_sharpe(100, variance)
    assert deflated_sharpe_ratio(returns, 100, variance) == pytest.approx(
        reference_psr(returns, sr0), rel=1e-10
    )
