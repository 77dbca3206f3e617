"""Position sizing: fractional Kelly, inverse-volatility and equal-risk-contribution (risk parity) weights.

Pure numpy functions of expected returns, volatilities or a covariance; nothing sizes through them yet (a later
issue wires them into the allocators), their properties are tested in ``tests/test_risk.py``.
"""

from __future__ import annotations

import numpy as np


def capped_kelly_fraction(
    mean_return: np.ndarray | float, variance: np.ndarray | float, cap: float = 0.25, fraction: float = 0.5
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


__all__ = ["capped_kelly_fraction", "inverse_volatility_weights", "risk_parity_weights"]
