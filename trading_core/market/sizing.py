"""Position sizing: fractional Kelly, inverse-volatility, equal-risk-contribution (risk parity) and
volatility-targeted weights, and :class:`SizingConfig`, the modes a sizing layer re-sizes a candidate's signal in.

Pure numpy functions of expected returns, volatilities, a covariance or a trailing returns window.
:func:`size_weights` re-sizes one portfolio's signal (weights of equity: which assets, which side, how much) on a
window of trailing returns; :mod:`trading_core.evaluation.sizing_overlays` wraps any decision function with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from trading_core.market.measures import PERIODS_PER_YEAR, portfolio_volatility, sample_covariance

SizingMode = Literal["none", "fractional_kelly", "risk_parity", "inverse_volatility", "volatility_target"]
SIZING_MODES: tuple[SizingMode, ...] = get_args(SizingMode)


@dataclass(frozen=True)
class SizingConfig:
    """How a sizing layer re-sizes a candidate's signal, every default written once.

    The candidate's weights say which assets it holds and on which side; the mode says how much of each:

    - ``none``: the candidate's weights as they are;
    - ``inverse_volatility``: weights proportional to ``1 / vol`` on the held assets (the candidate's conviction
      per asset is replaced, as risk parity and Kelly replace it), keeping its signs and its gross exposure;
    - ``risk_parity``: equal risk contributions on the held assets' trailing covariance, at the candidate's gross;
    - ``fractional_kelly``: ``kelly_fraction * mean / variance`` per held asset, clipped to ``[0, kelly_cap]``
      on the candidate's side (a long with a negative trailing edge is closed), scaled down to the candidate's
      gross when the sum is larger;
    - ``volatility_target``: the candidate's weights scaled so their trailing annualised volatility is
      ``target_volatility``, with at most ``max_leverage`` gross exposure.

    :param mode: one of :data:`SIZING_MODES`
    :param lookback: trailing close-to-close returns each sizing reads (up to and including the decision's close);
        an asset with fewer keeps the candidate's weight
    :param kelly_fraction: Kelly multiplier (0.5 = half-Kelly, which keeps most of the growth at far less variance)
    :param kelly_cap: largest Kelly weight per asset, as a fraction of equity
    :param target_volatility: annualised portfolio volatility ``volatility_target`` sizes to
    :param max_leverage: largest gross exposure ``volatility_target`` may scale up to, as a fraction of equity
    """

    mode: SizingMode = "none"
    lookback: int = 63
    kelly_fraction: float = 0.5
    kelly_cap: float = 0.25
    target_volatility: float = 0.10
    max_leverage: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in SIZING_MODES:
            raise ValueError(f"sizing mode must be one of {', '.join(SIZING_MODES)}, got {self.mode!r}")
        if not isinstance(self.lookback, int | np.integer) or self.lookback < 2:
            raise ValueError(
                f"sizing lookback must be an integer of at least 2 returns, got {self.lookback!r}"
            )
        for name in ("kelly_fraction", "kelly_cap", "target_volatility", "max_leverage"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0.0):
                raise ValueError(f"sizing {name} must be positive and finite, got {value!r}")


def capped_kelly_fraction(
    mean_return: np.ndarray | float,
    variance: np.ndarray | float,
    cap: float = SizingConfig.kelly_cap,
    fraction: float = SizingConfig.kelly_fraction,
) -> np.ndarray:
    """Fractional Kelly position size ``fraction * mean / variance`` clipped to ``[0, cap]``.

    :param mean_return: expected per-period excess return(s)
    :param variance: per-period return variance(s)
    :param cap: largest fraction of equity
    :param fraction: Kelly multiplier (0.5 = half-Kelly, which keeps most of the growth at far less variance)
    :return: fraction of equity to hold, same shape as the broadcast inputs
    """
    mean_return = np.asarray(mean_return, dtype=np.float64)
    variance = np.asarray(variance, dtype=np.float64)
    shape = np.broadcast_shapes(mean_return.shape, variance.shape)
    # A riskless positive edge is worth the cap; a riskless non-positive one nothing.
    kelly = np.where(np.broadcast_to(mean_return > 0.0, shape), np.inf, 0.0)
    np.divide(fraction * mean_return, variance, out=kelly, where=np.broadcast_to(variance > 0.0, shape))
    return np.clip(kelly, 0.0, cap)


def inverse_volatility_weights(vol: np.ndarray) -> np.ndarray:
    """Long-only weights proportional to ``1 / vol`` along the last axis, summing to 1.

    Assets with a non-positive or non-finite volatility get no weight; a row without any usable volatility
    falls back to equal weights.

    :param vol: volatilities ``[..., N]``
    :return: weights of the same shape
    """
    vol = np.asarray(vol, dtype=np.float64)
    usable = np.isfinite(vol) & (vol > 0.0)
    inverse = np.zeros_like(vol)
    np.divide(1.0, vol, out=inverse, where=usable)
    total = inverse.sum(axis=-1, keepdims=True)
    equal = np.full_like(vol, 1.0 / vol.shape[-1])
    return np.where(total > 0.0, inverse / np.where(total > 0.0, total, 1.0), equal)


def risk_parity_weights(cov: np.ndarray, iterations: int = 500, tol: float = 1e-12) -> np.ndarray:
    """Long-only equal-risk-contribution weights: every ``w_i (cov w)_i`` equal, weights summing to 1.

    Solves Spinu's convex formulation ``min_y 1/2 y' cov y - sum_i log(y_i) / N`` by damped Newton steps (its
    optimum has ``y_i (cov y)_i = 1/N``) and normalises ``y``. Unlike the plain multiplicative fixed-point
    update this converges for every positive-definite covariance, quadratically near the optimum.

    :param cov: covariance ``[N, N]`` with a positive diagonal
    :param iterations: most Newton steps
    :param tol: stop when the largest relative gap between risk contributions falls below this
    :return: weights ``[N]``
    """
    cov = np.asarray(cov, dtype=np.float64)
    n = cov.shape[0]
    if cov.shape != (n, n) or np.any(np.diag(cov) <= 0.0):
        raise ValueError("risk parity needs a square covariance with positive variances")
    diagonal = np.diag(cov)
    budget = 1.0 / n
    y = 1.0 / np.sqrt(diagonal)
    y /= np.sqrt(y @ cov @ y)  # at the optimum y' cov y = sum of budgets = 1

    def objective(point: np.ndarray) -> float:
        return 0.5 * point @ cov @ point - budget * np.log(point).sum()

    for _ in range(iterations):
        marginal = cov @ y
        contributions = y * marginal
        if np.max(np.abs(contributions - budget)) <= tol * budget:
            break
        gradient = marginal - budget / y
        step = -np.linalg.solve(cov + np.diag(budget / y**2), gradient)
        decrement = -(gradient @ step)  # squared Newton decrement: twice the predicted decrease
        if decrement <= 1e-30:
            break
        t = 1.0
        while np.any(y + t * step <= 0.0):  # stay inside the domain y > 0
            t *= 0.5
        if decrement > 1e-8:
            # Far from the optimum: backtrack until the objective decreases (Armijo). Closer in, the decrease
            # drowns in rounding of the objective while full Newton steps converge quadratically anyway.
            current = objective(y)
            while objective(y + t * step) > current - 1e-4 * t * decrement and t > 1e-10:
                t *= 0.5
        y = y + t * step
    return y / y.sum()


def volatility_target_scale(
    weights: np.ndarray,
    cov: np.ndarray,
    target_volatility: float = SizingConfig.target_volatility,
    max_gross: float = SizingConfig.max_leverage,
) -> np.ndarray:
    """Factor ``k`` per weight vector with annualised ``vol(k w) = target_volatility``, capped so the scaled gross
    ``k sum|w|`` stays within ``max_gross``.

    A riskless non-empty portfolio scales to the cap; an empty one keeps factor 1 (nothing to scale).

    :param weights: weights ``[B, N]`` (or ``[N]``) of equity
    :param cov: one-period covariance ``[N, N]`` of the assets' returns
    :param target_volatility: annualised volatility to hit (``PERIODS_PER_YEAR`` periods a year)
    :param max_gross: largest gross exposure after scaling
    :return: factors ``[B]`` (or a scalar array)
    """
    weights = np.asarray(weights, dtype=np.float64)
    gross = np.abs(weights).sum(axis=-1)
    volatility = portfolio_volatility(weights, cov) * np.sqrt(PERIODS_PER_YEAR)
    cap = np.divide(max_gross, gross, out=np.ones_like(gross), where=gross > 0.0)
    to_target = np.divide(
        target_volatility, volatility, out=np.full_like(volatility, np.inf), where=volatility > 0.0
    )
    return np.where(gross > 0.0, np.minimum(to_target, cap), 1.0)


def _risk_parity_of(cov: np.ndarray) -> np.ndarray:
    """Risk parity weights, or inverse volatility where the sample covariance is singular (more assets than
    returns), where equal risk contributions are not defined."""
    try:
        np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        return inverse_volatility_weights(np.sqrt(np.diag(cov)))
    return risk_parity_weights(cov)


def size_weights(
    signal: np.ndarray, returns: np.ndarray, config: SizingConfig, max_gross: float | None = None
) -> np.ndarray:
    """Re-size one portfolio's signal by ``config.mode`` (see :class:`SizingConfig`) on a trailing returns window.

    Every asset of ``signal`` must be sizable: a full window of returns with a positive variance (the overlay
    leaves the others at the candidate's weight). Assets at weight 0 stay at 0.

    :param signal: the candidate's weights ``[K]`` of equity (sign: side)
    :param returns: trailing one-period returns ``[L, K]`` of the same assets, the last row the decision's close
    :param config: the sizing mode and its settings
    :param max_gross: largest gross ``volatility_target`` may reach (default ``config.max_leverage``; less when
        other positions already take some)
    :return: sized weights ``[K]``
    """
    signal = np.asarray(signal, dtype=np.float64)
    returns = np.asarray(returns, dtype=np.float64)
    if returns.ndim != 2 or returns.shape[1] != signal.shape[-1]:
        raise ValueError(
            f"returns must be [L, {signal.shape[-1]}] for the signal's assets, got {returns.shape}"
        )
    sign = np.sign(signal)
    gross = float(np.abs(signal).sum())
    held = sign != 0.0
    sized = np.zeros_like(signal)
    if config.mode == "none" or not held.any():
        return signal.copy()
    if config.mode == "volatility_target":
        limit = config.max_leverage if max_gross is None else max_gross
        scale = volatility_target_scale(signal, sample_covariance(returns), config.target_volatility, limit)
        return signal * float(scale)
    window = returns[:, held]
    if config.mode == "inverse_volatility":
        sized[held] = inverse_volatility_weights(window.std(axis=0, ddof=1)) * gross
    elif config.mode == "risk_parity":
        # Equal contributions of the positions as held: a short's returns count with their sign flipped.
        side = sign[held]
        sized[held] = _risk_parity_of(sample_covariance(window * side)) * gross
    else:  # fractional_kelly, on the candidate's side of each asset
        edge = window.mean(axis=0) * sign[held]
        kelly = capped_kelly_fraction(
            edge, window.var(axis=0, ddof=1), config.kelly_cap, config.kelly_fraction
        )
        total = float(kelly.sum())
        sized[held] = kelly * (gross / total) if total > gross else kelly
    return sized * sign


__all__ = [
    "SIZING_MODES",
    "SizingConfig",
    "SizingMode",
    "capped_kelly_fraction",
    "inverse_volatility_weights",
    "risk_parity_weights",
    "size_weights",
    "volatility_target_scale",
]
