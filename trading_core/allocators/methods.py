"""One fit of a classical allocator on a window of returns: skfolio's optimisers, momentum, sector momentum,
the weight cap.

:func:`fit_weights` turns a complete returns window ``[L, n]`` (no gaps) of the assets eligible for a fit into
long-only weights summing to 1. An optimiser that fails (no convergence, infeasible, non-finite weights) never
stops a backtest: the fit falls back to equal weights and says why, in the log and in its return value.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import numpy as np
from skfolio.measures import RiskMeasure
from skfolio.moments import EmpiricalCovariance, LedoitWolf, ShrunkCovariance, ShrunkMu
from skfolio.optimization import (
    BaseOptimization,
    HierarchicalRiskParity,
    InverseVolatility,
    MeanRisk,
    ObjectiveFunction,
    RiskBudgeting,
)
from skfolio.prior import EmpiricalPrior

from trading_core.allocators.config import AllocatorConfig
from trading_core.sectors.classification import UNKNOWN_SECTOR

logger = logging.getLogger(__name__)

_COVARIANCES = {"ledoit_wolf": LedoitWolf, "shrunk": ShrunkCovariance, "empirical": EmpiricalCovariance}
# Weights this far below zero or above the cap are solver tolerance, not a failed fit.
_TOLERANCE = 1e-6


def _prior(config: AllocatorConfig, shrunk_mu: bool = False) -> EmpiricalPrior:
    return EmpiricalPrior(
        mu_estimator=ShrunkMu() if shrunk_mu else None,
        covariance_estimator=_COVARIANCES[config.covariance](),
    )


# skfolio estimator of each optimiser method, built afresh per fit (estimators keep their fitted state).
OPTIMISERS: dict[str, Callable[[AllocatorConfig], BaseOptimization]] = {
    # Inverse volatility reads the sample variances: shrinking them toward their mean is not what it means.
    "inverse_volatility": lambda config: InverseVolatility(prior_estimator=EmpiricalPrior()),
    "minimum_variance": lambda config: MeanRisk(
        objective_function=ObjectiveFunction.MINIMIZE_RISK,
        risk_measure=RiskMeasure.VARIANCE,
        prior_estimator=_prior(config),
        max_weights=config.cap,
    ),
    "risk_parity": lambda config: RiskBudgeting(
        risk_measure=RiskMeasure.VARIANCE, prior_estimator=_prior(config), max_weights=config.cap
    ),
    "hierarchical_risk_parity": lambda config: HierarchicalRiskParity(
        risk_measure=RiskMeasure.VARIANCE, prior_estimator=_prior(config), max_weights=config.cap
    ),
    "mean_variance": lambda config: MeanRisk(
        objective_function=ObjectiveFunction.MAXIMIZE_UTILITY,
        risk_measure=RiskMeasure.VARIANCE,
        risk_aversion=config.risk_aversion,
        prior_estimator=_prior(config, shrunk_mu=True),
        max_weights=config.cap,
    ),
}


def cap_weights(weights: np.ndarray, cap: float) -> np.ndarray:
    """Long-only weights summing to 1 projected under ``cap`` per asset, the excess spread over the others in
    proportion to their weights (water-filling). With fewer than ``1 / cap`` assets every asset gets the cap
    and the rest stays in cash."""
    weights = np.clip(np.asarray(weights, dtype=np.float64), 0.0, None)
    total = weights.sum()
    n = len(weights)
    weights = weights / total if total > 0.0 else np.full(n, 1.0 / n)
    if cap >= 1.0 or n == 0:
        return weights
    if n * cap <= 1.0:
        return np.full(n, cap)
    capped = np.zeros(n, dtype=bool)
    while True:
        over = ~capped & (weights > cap)
        if not over.any():
            return np.minimum(weights, cap)
        capped |= over
        free, rest = 1.0 - cap * capped.sum(), weights[~capped].sum()
        spread = weights * (free / rest) if rest > 0.0 else np.full(n, free / (~capped).sum())
        weights = np.where(capped, cap, spread)


def momentum_weights(returns: np.ndarray, config: AllocatorConfig) -> np.ndarray:
    """Cross-sectional momentum: equal weights on the assets with the best return over the window, leaving
    out its last ``momentum_skip`` bars; ties go to the earlier column."""
    n = returns.shape[1]
    kept = returns[: len(returns) - config.momentum_skip]
    score = np.prod(1.0 + kept, axis=0)
    # Enough names to invest fully under the cap, however small the top fraction.
    held = min(n, max(math.ceil(config.momentum_top * n), _held_for_the_cap(config.cap)))
    weights = np.zeros(n)
    weights[np.argsort(-score, kind="stable")[:held]] = 1.0 / held
    return weights


def _held_for_the_cap(cap: float) -> int:
    """The fewest equal-weighted assets that invest fully under ``cap``."""
    return math.ceil(1.0 / cap - 1e-12)


def sector_momentum_weights(
    returns: np.ndarray, sectors: Sequence[str] | None, config: AllocatorConfig
) -> tuple[np.ndarray, str | None]:
    """Sector rotation: the ``sector_top`` sectors with the best momentum of their equal-weight return (the
    window less its last ``momentum_skip`` bars), equal weights across those sectors and within each; and why it
    fell back to plain momentum across assets (``None`` when it did not).

    More sectors are held, in rank order, until they have enough assets to invest fully under the cap; ties go
    to the sector name first in alphabetical order. Assets of the ``Unknown`` sector are no sector to rotate
    into: they are never held, unless fewer than two sectors are known and plain momentum ranks every asset.

    :param returns: a complete returns window ``[L, n]``
    :param sectors: the n columns' sector labels (``None``: the panel carries none)
    """
    n = returns.shape[1]
    if sectors is None:
        return momentum_weights(returns, config), "sector_momentum has no sector labels: plain momentum"
    labels = np.asarray(sectors, dtype=object)
    if labels.shape != (n,):
        raise ValueError(f"sector_momentum needs a sector for every ticker: {len(labels)} labels, {n} assets")
    names, members = np.unique(labels, return_inverse=True)
    known = names != UNKNOWN_SECTOR
    if known.sum() < 2:
        reason = f"sector_momentum: {n} eligible assets in {known.sum()} known sector(s) {list(names[known])}: plain momentum"
        return momentum_weights(returns, config), reason
    kept = returns[: len(returns) - config.momentum_skip]
    sector_daily = np.stack([kept[:, members == index].mean(axis=1) for index in range(len(names))], axis=1)
    ranked = np.argsort(-np.prod(1.0 + sector_daily, axis=0), kind="stable")
    ranked = ranked[known[ranked]]
    sizes, needed = np.bincount(members, minlength=len(names))[ranked], _held_for_the_cap(config.cap)
    if sizes.sum() < needed:  # the cap would push the rest onto assets no sector holds
        reason = f"sector_momentum: known sectors hold {sizes.sum()} assets, the cap needs {needed}: plain momentum"
        return momentum_weights(returns, config), reason
    enough = int(np.searchsorted(np.cumsum(sizes), needed)) + 1
    held = ranked[: max(config.sector_top, enough)]
    weights = np.zeros(n)
    for index in held:
        inside = members == index
        weights[inside] = 1.0 / (len(held) * inside.sum())
    return weights, None


def fit_weights(
    returns: np.ndarray, config: AllocatorConfig, sectors: Sequence[str] | None = None
) -> tuple[np.ndarray, str | None]:
    """Weights summing to 1 over the columns of a complete returns window ``[L, n]``, and why the fit fell back
    (to equal weights, or sector momentum to plain momentum; ``None`` when it did not). The cap is not applied
    here (see :func:`cap_weights`).

    :param sectors: the columns' sector labels, read by ``sector_momentum`` only
    """
    n = returns.shape[1]
    # Under a cap that n assets can only just fill (or cannot), every weight is the cap: nothing to optimise, and
    # an optimiser asked for it is infeasible or degenerate.
    if config.method == "equal_weight" or n * config.cap <= 1.0 + 1e-12:
        return np.full(n, 1.0 / n), None
    if config.method == "momentum":
        return momentum_weights(returns, config), None
    if config.method == "sector_momentum":
        return sector_momentum_weights(returns, sectors, config)
    try:
        estimator = OPTIMISERS[config.method](config)
        estimator.fit(returns)
        weights = np.asarray(estimator.weights_, dtype=np.float64)
        if weights.shape != (n,) or not np.all(np.isfinite(weights)):
            raise ValueError(f"the optimiser returned non-finite or misshapen weights {weights!r}")
        if weights.min() < -_TOLERANCE or weights.sum() <= _TOLERANCE:
            raise ValueError(f"the optimiser returned short or empty weights (min {weights.min():.3g})")
    except Exception as error:  # any solver or estimator failure: a backtest must go on
        reason = (
            f"{config.method} failed on {returns.shape[0]} bars x {n} assets: {type(error).__name__}: {error}"
        )
        logger.warning("%s; holding equal weights instead", reason)
        return np.full(n, 1.0 / n), reason
    return weights, None


__all__ = ["OPTIMISERS", "cap_weights", "fit_weights", "momentum_weights", "sector_momentum_weights"]
