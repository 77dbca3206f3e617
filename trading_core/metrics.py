"""Performance and risk metrics of an equity curve (daily bars, 252 periods a year, zero risk-free rate).

Definitions follow empyrical's conventions so the test suite can cross-check each figure against it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

PERIODS_PER_YEAR = 252


@dataclass(frozen=True)
class PerformanceMetrics:
    """Headline metrics of one equity curve; fractions, not percent."""

    total_return: float
    annual_return: float
    annual_volatility: float
    sharpe: float
    sortino: float
    calmar: float
    max_drawdown: float
    win_rate: float
    var_95: float
    days: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def daily_returns(equity: pd.Series) -> pd.Series:
    """Simple returns between consecutive equity values."""
    return equity.pct_change().dropna()


def sharpe_ratio(returns: pd.Series) -> float:
    std = returns.std(ddof=1)
    return float(np.sqrt(PERIODS_PER_YEAR) * returns.mean() / std) if std > 0 else 0.0


def sortino_ratio(returns: pd.Series) -> float:
    downside = np.sqrt(np.mean(np.minimum(returns.to_numpy(), 0.0) ** 2)) * np.sqrt(PERIODS_PER_YEAR)
    return float(returns.mean() * PERIODS_PER_YEAR / downside) if downside > 0 else 0.0


def max_drawdown(equity: pd.Series) -> float:
    """Largest peak-to-trough loss as a positive fraction."""
    running_peak = equity.cummax()
    return float(-(equity / running_peak - 1.0).min())


def annual_return(equity: pd.Series) -> float:
    """Compound annual growth rate over the curve's number of periods."""
    periods = len(equity) - 1
    if periods <= 0:
        return 0.0
    growth = equity.iloc[-1] / equity.iloc[0]
    return float(growth ** (PERIODS_PER_YEAR / periods) - 1.0)


def win_rate(returns: pd.Series) -> float:
    """Share of periods with a gain among periods where the value changed."""
    moved = returns[returns != 0]
    return float((moved > 0).mean()) if len(moved) else 0.0


def value_at_risk(returns: pd.Series, level: float = 0.95) -> float:
    """Historical one-day VaR as a positive fraction of the portfolio."""
    return float(max(-np.quantile(returns.to_numpy(), 1.0 - level), 0.0)) if len(returns) else 0.0


def compute_metrics(equity: pd.Series) -> PerformanceMetrics:
    """All headline metrics of an equity curve indexed by date."""
    returns = daily_returns(equity)
    drawdown = max_drawdown(equity)
    cagr = annual_return(equity)
    return PerformanceMetrics(
        total_return=float(equity.iloc[-1] / equity.iloc[0] - 1.0),
        annual_return=cagr,
        annual_volatility=float(returns.std(ddof=1) * np.sqrt(PERIODS_PER_YEAR)) if len(returns) > 1 else 0.0,
        sharpe=sharpe_ratio(returns),
        sortino=sortino_ratio(returns),
        calmar=float(cagr / drawdown) if drawdown > 0 else 0.0,
        max_drawdown=drawdown,
        win_rate=win_rate(returns),
        var_95=value_at_risk(returns),
        days=len(equity),
    )
