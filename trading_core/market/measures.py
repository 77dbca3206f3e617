"""Risk measures, written once for the risk manager, the performance metrics and the live loop.

Value at risk and expected shortfall (historical and parametric), the sample and Ledoit-Wolf covariances, the
correlation clusters and risk contributions the risk manager caps, drawdown from a running peak and its duration,
and the annualisation constant. Every function is plain numpy on arrays; the batched ones
work on ``[B, N]`` weights against an ``[L, N]`` window of asset returns and return one figure per portfolio.

Conventions: returns are simple one-period returns; VaR and CVaR are losses as positive fractions of equity at a
confidence level such as 0.95; drawdowns are positive fractions of the running peak. Quantiles interpolate
linearly between order statistics, exactly as ``np.quantile`` (empyrical's and quantstats' convention).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Literal

import numpy as np

PERIODS_PER_YEAR = 252  # daily bars: trading days a year, for every annualised figure


# --------------------------------------------------------------------------------------------------------------
# Value at risk and expected shortfall
# --------------------------------------------------------------------------------------------------------------


def normal_quantile(confidence: float) -> float:
    """Standard normal quantile ``z`` with ``P(Z <= z) = confidence``."""
    return NormalDist().inv_cdf(confidence)


def sample_covariance(returns_window: np.ndarray) -> np.ndarray:
    """Sample covariance ``[N, N]`` (``ddof=1``) of a returns window ``[L, N]``; same as ``np.cov(rowvar=False)``."""
    centred = returns_window - returns_window.mean(axis=0)
    return centred.T @ centred / (returns_window.shape[0] - 1)


def ledoit_wolf_covariance(returns_window: np.ndarray) -> np.ndarray:
    """Ledoit-Wolf covariance ``[N, N]`` of a returns window ``[L, N]``: the maximum-likelihood covariance shrunk
    toward a scaled identity with the intensity that minimises the expected squared error
    (``sklearn.covariance.ledoit_wolf``)."""
    # Imported here: scikit-learn costs a second to import and only this estimate needs it.
    from sklearn.covariance import ledoit_wolf

    return ledoit_wolf(np.asarray(returns_window, dtype=np.float64))[0]


def asset_covariance(
    returns_window: np.ndarray, method: Literal["sample", "ledoit_wolf"] = "sample"
) -> np.ndarray:
    """Covariance ``[N, N]`` of a returns window ``[L, N]`` by ``method``: ``sample`` (:func:`sample_covariance`)
    or ``ledoit_wolf`` (:func:`ledoit_wolf_covariance`).

    :raises ValueError: an unknown method
    """
    if method == "sample":
        return sample_covariance(returns_window)
    if method == "ledoit_wolf":
        return ledoit_wolf_covariance(returns_window)
    raise ValueError(f"covariance method must be 'sample' or 'ledoit_wolf', got {method!r}")


def correlation_of(cov: np.ndarray) -> np.ndarray:
    """Correlation matrix of a covariance ``[N, N]``; an asset without variance is uncorrelated with every other."""
    std = np.sqrt(np.maximum(np.diag(cov), 0.0))
    outer = np.outer(std, std)
    corr = np.divide(cov, outer, out=np.zeros_like(cov, dtype=np.float64), where=outer > 0.0)
    np.fill_diagonal(corr, 1.0)
    return np.clip(corr, -1.0, 1.0)


def correlation_clusters(corr: np.ndarray, threshold: float) -> np.ndarray:
    """Cluster labels ``[N]`` (0, 1, ...) of assets whose correlations link them: average-linkage hierarchical
    clustering on the distance ``1 - corr``, cut at ``1 - threshold``, so two clusters merge when the average
    correlation between their members is at least ``threshold``.

    :param corr: correlation matrix ``[N, N]``
    :param threshold: average correlation at which clusters merge
    """
    n = corr.shape[0]
    if n < 2:
        return np.zeros(n, dtype=np.int64)
    # Imported here: scipy's clustering costs most of a second to import and only this rule needs it.
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    distance = np.maximum(1.0 - 0.5 * (corr + corr.T), 0.0)
    np.fill_diagonal(distance, 0.0)
    tree = linkage(squareform(distance, checks=False), method="average")
    labels = fcluster(tree, t=1.0 - threshold, criterion="distance")
    return np.unique(labels, return_inverse=True)[1].astype(np.int64)


def group_gross_exposure(weights: np.ndarray, labels: np.ndarray, n_groups: int) -> np.ndarray:
    """Gross exposure ``sum |w_i|`` over the assets of each group, ``[B, n_groups]``.

    :param weights: portfolio weights ``[B, N]``, fractions of equity
    :param labels: group of each asset ``[N]``, integers in ``[0, n_groups)``
    :param n_groups: number of groups
    """
    membership = np.zeros((len(labels), n_groups))
    membership[np.arange(len(labels)), labels] = 1.0
    return np.abs(weights) @ membership


def risk_contributions(weights: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Share of the portfolio variance each asset carries, ``w_i (cov w)_i / (w' cov w)``, ``[B, N]``.

    The shares of a portfolio sum to 1; a hedge carries a negative share. A portfolio without variance (flat, or
    only riskless assets) has every share 0: there is no risk to share.

    :param weights: portfolio weights ``[B, N]`` (or ``[N]``)
    :param cov: covariance of asset returns ``[N, N]``
    """
    weights = np.asarray(weights, dtype=np.float64)
    marginal = weights @ cov
    parts = weights * marginal
    variance = parts.sum(axis=-1, keepdims=True)
    return np.divide(parts, variance, out=np.zeros_like(parts), where=variance > 0.0)


def portfolio_volatility(weights: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """One-period volatility ``sqrt(w' cov w)`` of each weight vector ``[B, N]`` (or ``[N]``)."""
    variance = np.einsum("...i,...i->...", weights @ cov, weights)
    # Rounding can leave a tiny negative variance for a (near-)riskless portfolio.
    return np.sqrt(np.maximum(variance, 0.0))


def parametric_var(weights: np.ndarray, cov: np.ndarray, confidence: float = 0.95) -> np.ndarray:
    """Normal (variance-covariance) 1-day VaR ``z * sqrt(w' cov w)`` of each weight vector.

    :param weights: portfolio weights ``[B, N]`` (or ``[N]``), fractions of equity
    :param cov: covariance of asset returns ``[N, N]``
    :param confidence: VaR confidence level
    :return: VaR per portfolio ``[B]`` as a fraction of equity (non-negative)
    """
    return normal_quantile(confidence) * portfolio_volatility(np.asarray(weights, dtype=np.float64), cov)


def lower_tail_quantile(pnl: np.ndarray, q: float) -> np.ndarray:
    """``np.quantile(pnl, q, axis=-1)`` with linear interpolation, several times faster at these sizes.

    Rows holding NaN give what their sorted finite values give (NaN sorts last), not NaN as ``np.quantile``.
    """
    n = pnl.shape[-1]
    virtual = q * (n - 1)
    lo = int(math.floor(virtual))
    hi = min(lo + 1, n - 1)
    gamma = virtual - lo
    ordered = np.sort(pnl, axis=-1)  # faster than np.partition with two pivots at these sizes
    below, above = ordered[..., lo], ordered[..., hi]
    # numpy's _lerp: interpolate from the nearer end so the result matches np.quantile to the last bit.
    diff = above - below
    return below + diff * gamma if gamma < 0.5 else above - diff * (1.0 - gamma)


def historical_var(weights: np.ndarray, returns_window: np.ndarray, confidence: float = 0.95) -> np.ndarray:
    """Historical 1-day VaR: ``-quantile_{1-confidence}(returns_window @ w)`` (linear interpolation).

    :param weights: portfolio weights ``[B, N]`` (or ``[N]``)
    :param returns_window: trailing asset returns ``[L, N]``
    :param confidence: VaR confidence level
    :return: VaR per portfolio ``[B]`` as a fraction of equity (negative when even the tail is a gain)
    """
    weights = np.asarray(weights, dtype=np.float64)
    pnl = weights @ np.asarray(returns_window, dtype=np.float64).T  # [B, L]
    return -lower_tail_quantile(pnl, 1.0 - confidence)


def historical_cvar(weights: np.ndarray, returns_window: np.ndarray, confidence: float = 0.95) -> np.ndarray:
    """Historical expected shortfall: mean loss of the ``floor((1 - confidence) * L)`` worst returns (at least one).

    Counting the tail instead of comparing against the VaR cut-off keeps the estimate positively homogeneous
    when returns tie at the cut-off; every counted return lies at or below the historical VaR quantile, so
    CVaR >= VaR. (:func:`cvar_of_returns` is the reporting convention of quantstats instead.)

    :param weights: portfolio weights ``[B, N]`` (or ``[N]``)
    :param returns_window: trailing asset returns ``[L, N]``
    :param confidence: VaR confidence level
    :return: CVaR per portfolio ``[B]`` as a fraction of equity
    """
    weights = np.asarray(weights, dtype=np.float64)
    pnl = np.sort(weights @ np.asarray(returns_window, dtype=np.float64).T, axis=-1)
    # The small epsilon keeps e.g. (1 - 0.9) * 20 = 2.0000000000000004 from counting as 3.
    count = max(int(np.floor((1.0 - confidence) * pnl.shape[-1] + 1e-9)), 1)
    return -pnl[..., :count].mean(axis=-1)


def var_of_returns(returns: np.ndarray, confidence: float = 0.95) -> float:
    """Historical one-period VaR of one return sample, floored at 0 (a tail of gains is no loss).

    An empty sample gives 0.0; a sample holding NaN gives NaN, as ``np.quantile`` does.
    """
    values = np.asarray(returns, dtype=np.float64)
    if values.size == 0:
        return 0.0
    if np.isnan(values).any():
        return math.nan
    return float(max(-lower_tail_quantile(values, 1.0 - confidence), 0.0))


def cvar_of_returns(returns: np.ndarray, confidence: float = 0.95) -> float:
    """Historical one-period CVaR of one return sample: the mean of the returns at or below their ``1 - confidence``
    quantile (the cut-off :func:`var_of_returns` uses), sign-flipped and floored at 0; NaNs are ignored.

    This is quantstats' ``conditional_value_at_risk(method="historical")``; an empty sample gives 0.0.
    """
    values = np.asarray(returns, dtype=np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return 0.0
    tail = values[values <= lower_tail_quantile(values, 1.0 - confidence)]
    return float(max(-tail.mean(), 0.0))


# --------------------------------------------------------------------------------------------------------------
# Drawdown
# --------------------------------------------------------------------------------------------------------------


def _relative_to_peak(equity: np.ndarray, peak: np.ndarray) -> np.ndarray:
    """``equity / peak`` where the peak is positive, 0 elsewhere (never positive: fully under water)."""
    equity, peak = np.asarray(equity, dtype=np.float64), np.asarray(peak, dtype=np.float64)
    out = np.zeros(equity.shape if equity.shape == peak.shape else np.broadcast(equity, peak).shape)
    return np.divide(equity, peak, out=out, where=peak > 0.0)


def drawdown_from_peak(equity: np.ndarray | float, peak: np.ndarray | float) -> np.ndarray:
    """Drawdown ``1 - equity / peak`` elementwise; 1 where the peak is not positive (or NaN).

    :param equity: current equity (any shape)
    :param peak: running peak equity, broadcastable against ``equity``
    """
    return 1.0 - _relative_to_peak(equity, peak)


def running_peak(equity: np.ndarray) -> np.ndarray:
    """Running maximum of a 1-D equity curve; NaN values are skipped (pandas' ``cummax``)."""
    return np.fmax.accumulate(np.asarray(equity, dtype=np.float64))


def max_drawdown(equity: np.ndarray) -> float:
    """Largest peak-to-trough loss of an equity curve as a positive fraction; NaN values are skipped.

    Computed as ``-min(equity / peak - 1)``, empyrical's form, so a curve that never falls gives ``-0.0`` as it
    always did (printed summaries keep their sign); an empty or all-NaN curve gives NaN.
    """
    values = np.asarray(equity, dtype=np.float64)
    shortfall = _relative_to_peak(values, running_peak(values)) - 1.0
    shortfall = shortfall[~np.isnan(shortfall)]
    return -float(shortfall.min()) if shortfall.size else math.nan


def max_drawdown_duration(equity: np.ndarray) -> int:
    """Longest run of consecutive periods an equity curve spends below its running peak (0 for an empty curve).

    A period counts when it closes below the highest earlier value; the run ends on the period that regains the
    peak (not counted). This is the most periods elapsed since the last running high.
    """
    values = np.asarray(equity, dtype=np.float64)
    if values.size == 0:
        return 0
    underwater = values < running_peak(values)
    index = np.arange(values.size)
    last_high = np.maximum.accumulate(np.where(underwater, -1, index))
    return int((index - last_high).max())


__all__ = [
    "PERIODS_PER_YEAR",
    "asset_covariance",
    "correlation_clusters",
    "correlation_of",
    "cvar_of_returns",
    "drawdown_from_peak",
    "group_gross_exposure",
    "historical_cvar",
    "historical_var",
    "ledoit_wolf_covariance",
    "lower_tail_quantile",
    "max_drawdown",
    "max_drawdown_duration",
    "normal_quantile",
    "parametric_var",
    "portfolio_volatility",
    "risk_contributions",
    "running_peak",
    "sample_covariance",
    "var_of_returns",
]
