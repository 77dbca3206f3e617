"""Performance and risk metrics of an equity curve (daily bars, 252 periods a year, zero risk-free rate; the
annualised figures take ``periods_per_year`` for intraday bars).

Definitions follow empyrical's conventions so the test suite can cross-check each figure against it (and against
quantstats where its conventions agree). Sharpe-based statistical tests (probabilistic and deflated Sharpe ratio)
work on per-period, non-annualised Sharpe ratios, as in Bailey & López de Prado.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy.stats import kurtosis, norm, skew

from trading_core.market import measures
from trading_core.market.measures import PERIODS_PER_YEAR

EULER_MASCHERONI = 0.5772156649015329


@dataclass(frozen=True)
class PerformanceMetrics:
    """Headline metrics of one equity curve; fractions, not percent.

    ``max_drawdown_duration`` is in periods (trading days), ``probabilistic_sharpe`` is a probability, and
    ``turnover`` / ``cost_drag`` are annualised fractions of equity (0.0 when the trades were not given).
    """

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
    max_drawdown_duration: int = 0
    cvar_95: float = 0.0
    probabilistic_sharpe: float = 0.0
    turnover: float = 0.0
    cost_drag: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def daily_returns(equity: pd.Series) -> pd.Series:
    """Simple returns between consecutive equity values."""
    return equity.pct_change().dropna()


def sharpe_ratio(returns: pd.Series, periods_per_year: float = PERIODS_PER_YEAR) -> float:
    """Annualised Sharpe ratio of per-period returns (zero risk-free rate).

    :param periods_per_year: bars a year (252 for daily bars; 252 x bars per session for intraday bars)
    """
    std = returns.std(ddof=1)
    return float(np.sqrt(periods_per_year) * returns.mean() / std) if std > 0 else 0.0


def sortino_ratio(returns: pd.Series, periods_per_year: float = PERIODS_PER_YEAR) -> float:
    downside = np.sqrt(np.mean(np.minimum(returns.to_numpy(), 0.0) ** 2)) * np.sqrt(periods_per_year)
    return float(returns.mean() * periods_per_year / downside) if downside > 0 else 0.0


def max_drawdown(equity: pd.Series) -> float:
    """Largest peak-to-trough loss as a positive fraction (:func:`trading_core.market.measures.max_drawdown`)."""
    return measures.max_drawdown(equity.to_numpy(dtype=float))


def max_drawdown_duration(equity: pd.Series) -> int:
    """Longest run of consecutive periods the equity spends below a previous peak.

    A run starts on the first period after a peak that closes below it and lasts until the equity regains the peak
    (the recovery period itself is not counted) or, if it never does, until the end of the curve. In other words it
    is the most periods elapsed since the last running high, the usual "time under water"; the number of steps from
    the peak to the recovery date is one more than this for a recovered drawdown. For example
    ``[100, 90, 95, 100, 80]`` has runs of 2 (recovered) and 1 (open at the end), so the result is 2. Equals the
    longest ``days`` of quantstats' ``drawdown_details`` on a calendar-daily index.
    """
    return measures.max_drawdown_duration(equity.to_numpy(dtype=float))


def annual_return(equity: pd.Series, periods_per_year: float = PERIODS_PER_YEAR) -> float:
    """Compound annual growth rate over the curve's number of periods (``periods_per_year`` of them a year)."""
    periods = len(equity) - 1
    if periods <= 0:
        return 0.0
    growth = equity.iloc[-1] / equity.iloc[0]
    return float(growth ** (periods_per_year / periods) - 1.0)


def win_rate(returns: pd.Series) -> float:
    """Share of periods with a gain among periods where the value changed."""
    moved = returns[returns != 0]
    return float((moved > 0).mean()) if len(moved) else 0.0


def value_at_risk(returns: pd.Series, level: float = 0.95) -> float:
    """Historical one-day VaR as a positive fraction of the portfolio (:func:`~trading_core.market.measures.var_of_returns`)."""
    return measures.var_of_returns(returns.to_numpy(dtype=float), level)


def conditional_value_at_risk(returns: pd.Series, level: float = 0.95) -> float:
    """Historical one-day CVaR (expected shortfall) as a positive fraction of the portfolio.

    Convention of quantstats' ``conditional_value_at_risk(returns, confidence=level, method="historical")``: the
    mean of the returns at or below their ``1 - level`` quantile (linear interpolation, the quantile
    :func:`value_at_risk` uses), sign-flipped. Without ties at the cut-off this is also empyrical's
    ``conditional_value_at_risk(returns, cutoff=1 - level)``. Like :func:`value_at_risk` it is floored at 0 (a tail
    made of gains is no loss), so ``cvar >= var`` always; NaNs are ignored and an empty series gives 0.0.
    """
    return measures.cvar_of_returns(returns.to_numpy(dtype=float), level)


def _aligned(flows: pd.Series, equity: pd.Series, name: str) -> np.ndarray:
    """Per-period ``flows / equity`` on the equity's index; periods missing from ``flows`` count as 0."""
    if not flows.index.equals(equity.index):
        unknown = flows.index.difference(equity.index)
        if len(unknown):
            raise ValueError(f"{name} has {len(unknown)} labels not in the equity index, e.g. {unknown[0]!r}")
        flows = flows.reindex(equity.index, fill_value=0.0)
    return flows.to_numpy(dtype=float) / equity.to_numpy(dtype=float)


def turnover(
    traded_notional: pd.Series, equity: pd.Series, periods_per_year: float = PERIODS_PER_YEAR
) -> float:
    """Annualised turnover: the mean over periods of traded notional / equity of that period, times 252.

    ``traded_notional`` is the gross (unsigned, buys plus sells) value traded in each period, indexed like
    ``equity`` (a subset of its labels is fine: the missing periods had no trades). A portfolio that trades its
    whole value once a day has a turnover of 252 (25,200 %) a year.
    """
    if len(equity) == 0:
        return 0.0
    return float(np.nanmean(_aligned(traded_notional, equity, "traded_notional")) * periods_per_year)


def cost_drag(costs: pd.Series, equity: pd.Series, periods_per_year: float = PERIODS_PER_YEAR) -> float:
    """Annualised trading costs as a fraction of equity: mean over periods of costs / equity, times 252.

    ``costs`` are the per-period costs paid (commission, spread, impact) in currency, aligned like in
    :func:`turnover`. Roughly the annual return given up to costs.
    """
    if len(equity) == 0:
        return 0.0
    return float(np.nanmean(_aligned(costs, equity, "costs")) * periods_per_year)


def probabilistic_sharpe_ratio(returns: pd.Series, benchmark_sharpe: float = 0.0) -> float:
    """Probability that the true Sharpe ratio exceeds ``benchmark_sharpe`` (Bailey & López de Prado, 2012).

    ``PSR = Φ((SR - SR*) * sqrt(n - 1) / sqrt(1 - γ3 * SR + (γ4 - 1) / 4 * SR²))`` with ``SR`` the per-period
    (not annualised, ddof=1) Sharpe ratio of the ``n`` returns, ``SR*`` = ``benchmark_sharpe`` also per period
    (divide an annual figure by sqrt(252)), ``γ3`` the skewness and ``γ4`` the *raw, non-excess* kurtosis (3 for
    normal returns). Both moments are the bias-corrected sample estimators (``scipy.stats`` with ``bias=False``,
    pandas' ``skew``/``kurt() + 3``), as quantstats' ``probabilistic_sharpe_ratio`` uses. Fewer than 4 returns or
    zero volatility give 0.0 (no evidence of skill).
    """
    values = returns.to_numpy(dtype=float)
    values = values[~np.isnan(values)]
    n = len(values)
    if n < 4:
        return 0.0
    std = values.std(ddof=1)
    if not std > 0:
        return 0.0
    sr = values.mean() / std
    g3 = float(skew(values, bias=False))
    g4 = float(kurtosis(values, fisher=False, bias=False))
    # (1 - γ3 SR/2)² <= this for population moments; small-sample estimates can break that, so keep it positive.
    variance = max(1.0 - g3 * sr + (g4 - 1.0) / 4.0 * sr**2, 1e-12)
    return float(norm.cdf((sr - benchmark_sharpe) * np.sqrt(n - 1) / np.sqrt(variance)))


def expected_max_sharpe(n_trials: int, trials_sharpe_variance: float) -> float:
    """Expected maximum of ``n_trials`` independent Sharpe estimates with true Sharpe 0 (False Strategy Theorem).

    ``SR0 = sqrt(V) * ((1 - γ) Φ⁻¹(1 - 1/N) + γ Φ⁻¹(1 - 1/(N e)))``, γ the Euler–Mascheroni constant, ``V`` the
    variance of the trials' per-period Sharpe ratios; 0 for a single trial.
    """
    if n_trials < 1:
        raise ValueError(f"n_trials must be at least 1, got {n_trials}")
    if trials_sharpe_variance < 0:
        raise ValueError(f"trials_sharpe_variance must be non-negative, got {trials_sharpe_variance}")
    if n_trials == 1:
        return 0.0
    g = EULER_MASCHERONI
    return float(
        np.sqrt(trials_sharpe_variance)
        * ((1.0 - g) * norm.ppf(1.0 - 1.0 / n_trials) + g * norm.ppf(1.0 - 1.0 / (n_trials * np.e)))
    )


def per_period_sharpe_variance(annual_sharpes: Sequence[float]) -> float:
    """Variance of per-period (daily) Sharpe ratios given annualised ones: the V of the deflated Sharpe ratio
    (0 for fewer than two trials)."""
    annual = np.asarray(annual_sharpes, dtype=np.float64)
    return float(np.var(annual / np.sqrt(PERIODS_PER_YEAR), ddof=1)) if annual.size > 1 else 0.0


def deflated_sharpe_ratio(returns: pd.Series, n_trials: int, trials_sharpe_variance: float) -> float:
    """Deflated Sharpe ratio (Bailey & López de Prado, 2014): PSR against the best Sharpe expected by luck.

    :func:`probabilistic_sharpe_ratio` with the benchmark :func:`expected_max_sharpe` of ``n_trials`` independent
    trials whose per-period Sharpe ratios have variance ``trials_sharpe_variance``; with one trial it is PSR(0).
    """
    return probabilistic_sharpe_ratio(returns, expected_max_sharpe(n_trials, trials_sharpe_variance))


def compute_metrics(
    equity: pd.Series,
    traded_notional: pd.Series | None = None,
    costs: pd.Series | None = None,
    periods_per_year: float = PERIODS_PER_YEAR,
) -> PerformanceMetrics:
    """All headline metrics of an equity curve indexed by date.

    :param traded_notional: gross value traded per period (for ``turnover``; 0.0 when not given)
    :param costs: trading costs paid per period (for ``cost_drag``; 0.0 when not given)
    :param periods_per_year: bars a year for every annualised figure (252 x bars per session for intraday
        bars); VaR and CVaR stay per bar
    """
    returns = daily_returns(equity)
    drawdown = max_drawdown(equity)
    cagr = annual_return(equity, periods_per_year)
    return PerformanceMetrics(
        total_return=float(equity.iloc[-1] / equity.iloc[0] - 1.0),
        annual_return=cagr,
        annual_volatility=float(returns.std(ddof=1) * np.sqrt(periods_per_year)) if len(returns) > 1 else 0.0,
        sharpe=sharpe_ratio(returns, periods_per_year),
        sortino=sortino_ratio(returns, periods_per_year),
        calmar=float(cagr / drawdown) if drawdown > 0 else 0.0,
        max_drawdown=drawdown,
        win_rate=win_rate(returns),
        var_95=value_at_risk(returns),
        days=len(equity),
        max_drawdown_duration=max_drawdown_duration(equity),
        cvar_95=conditional_value_at_risk(returns),
        probabilistic_sharpe=probabilistic_sharpe_ratio(returns),
        turnover=turnover(traded_notional, equity, periods_per_year) if traded_notional is not None else 0.0,
        cost_drag=cost_drag(costs, equity, periods_per_year) if costs is not None else 0.0,
    )
